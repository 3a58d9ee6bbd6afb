//! Edits of YAML text that keep everything else byte for byte: a GitOps repository is
//! read and reviewed by people, so a write-back changes the one value it sets and never
//! reformats the file or drops its comments (a serde round trip would do both).
//!
//! The editor understands block-style YAML (what kustomizations and values files are
//! written in): nested mappings, and sequences of mappings picked by a key's value
//! (`images[name=web]`). A missing key, mapping or sequence item is created at the end
//! of its block. Anything else on the path (flow style, a scalar where a mapping should
//! be, several documents) is refused with [`EditError::Unsupported`]. Every edit is
//! checked afterwards by parsing the result: the path must hold the value written.

use serde_yaml::Value;

/// One step of a path: a mapping key, or the item of a sequence whose `key` is `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Item { key: String, value: String },
}

impl Segment {
    pub fn key(k: &str) -> Self {
        Segment::Key(k.into())
    }

    /// `a.b.c` as keys.
    pub fn dotted(path: &str) -> Vec<Segment> {
        path.split('.').map(Segment::key).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// The file does not hold what the Trigger names (no marked line).
    #[error("{0}")]
    NotFound(String),
    /// The file cannot be edited in place at that path.
    #[error("{0}")]
    Unsupported(String),
}

/// A line: its indentation and where its content starts (after `- ` for the first line
/// of a sequence item being looked into).
#[derive(Debug, Clone, Copy)]
struct Line {
    indent: usize,
    start: usize,
}

struct Doc {
    lines: Vec<String>,
    meta: Vec<Line>,
}

impl Doc {
    fn parse(text: &str) -> Self {
        let lines: Vec<String> = text.split('\n').map(str::to_string).collect();
        let meta = lines
            .iter()
            .map(|l| {
                let indent = l.len() - l.trim_start_matches(' ').len();
                Line {
                    indent,
                    start: indent,
                }
            })
            .collect();
        Doc { lines, meta }
    }

    fn content(&self, i: usize) -> &str {
        self.lines[i][self.meta[i].start..].trim_end_matches('\r')
    }

    /// Blank or comment-only.
    fn insignificant(&self, i: usize) -> bool {
        let c = self.content(i).trim();
        c.is_empty() || c.starts_with('#')
    }

    /// The indentation of the first significant line in `range`.
    fn block_indent(&self, range: (usize, usize)) -> Option<usize> {
        (range.0..range.1)
            .find(|&i| !self.insignificant(i))
            .map(|i| self.meta[i].indent)
    }

    /// The last significant line of `range`, or `range.0 - 1` when there is none.
    fn last_significant(&self, range: (usize, usize), before: usize) -> usize {
        (range.0..range.1)
            .rev()
            .find(|&i| !self.insignificant(i))
            .unwrap_or(before)
    }

    /// Where the children of line `i` (indented `indent`) end.
    fn children_end(&self, i: usize, end: usize, indent: usize, sequence_at_same: bool) -> usize {
        let mut j = i + 1;
        while j < end {
            if !self.insignificant(j) {
                let m = self.meta[j];
                let deeper = m.indent > indent;
                let item_here = sequence_at_same
                    && m.indent == indent
                    && (self.content(j).starts_with("- ") || self.content(j) == "-");
                if !deeper && !item_here {
                    break;
                }
            }
            j += 1;
        }
        j
    }
}

/// The value part of `content` after `key:`, if `content` is that key's entry.
fn entry_value<'c>(content: &'c str, key: &str) -> Option<&'c str> {
    for quoted in [key.to_string(), format!("\"{key}\""), format!("'{key}'")] {
        if let Some(rest) = content.strip_prefix(&quoted)
            && let Some(rest) = rest.strip_prefix(':')
            && (rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\t'))
        {
            return Some(rest);
        }
    }
    None
}

/// Splits a value part into the value and what follows it (spaces and a comment).
fn split_comment(rest: &str) -> (&str, &str) {
    let mut quote = None;
    let bytes = rest.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match (quote, b) {
            (None, b'"' | b'\'') => quote = Some(b),
            (Some(q), c) if c == q => quote = None,
            (None, b'#') if i == 0 || bytes[i - 1] == b' ' || bytes[i - 1] == b'\t' => {
                let value = rest[..i].trim_end();
                return (value, &rest[value.len()..]);
            }
            _ => {}
        }
    }
    let value = rest.trim_end();
    (value, &rest[value.len()..])
}

/// `value` as a YAML scalar: plain when it reads back as the same string, else quoted.
pub fn scalar(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/@:+-".contains(c))
        && !value.starts_with(['-', ':', '@'])
        && serde_yaml::from_str::<Value>(value).ok() == Some(Value::String(value.into()));
    if plain {
        value.into()
    } else {
        serde_json::to_string(value).expect("a string serialises")
    }
}

fn describe(path: &[Segment]) -> String {
    path.iter()
        .map(|s| match s {
            Segment::Key(k) => k.clone(),
            Segment::Item { key, value } => format!("[{key}={value}]"),
        })
        .collect::<Vec<_>>()
        .join(".")
        .replace(".[", "[")
}

/// Lines that create `path` holding `value`, indented `indent`.
fn created(path: &[Segment], value: &str, indent: usize) -> Vec<String> {
    let pad = " ".repeat(indent);
    match path {
        [] => Vec::new(),
        [Segment::Key(k)] => vec![format!("{pad}{}: {}", scalar(k), scalar(value))],
        [Segment::Key(k), rest @ ..] => {
            let mut out = vec![format!("{pad}{}:", scalar(k))];
            let child = match rest.first() {
                Some(Segment::Item { .. }) => indent,
                _ => indent + 2,
            };
            out.extend(created(rest, value, child));
            out
        }
        [Segment::Item { key, value: v }, rest @ ..] => {
            // `- key: v` first, then the rest of the path inside the item.
            let mut inner = vec![format!("{pad}  {}: {}", scalar(key), scalar(v))];
            if !rest.is_empty() && rest != [Segment::Key(key.clone())] {
                inner.extend(created(rest, value, indent + 2));
            }
            inner[0].replace_range(indent..indent + 2, "- ");
            inner
        }
    }
}

/// Sets the scalar at `path` to `value` in the block `range` of `doc` (whose lines
/// start at `indent` when it is empty). Returns the lines to insert, if any, and where.
fn set_in(
    doc: &mut Doc,
    range: (usize, usize),
    default_indent: usize,
    parent_line: usize,
    path: &[Segment],
    value: &str,
) -> Result<(), EditError> {
    let indent = doc.block_indent(range).unwrap_or(default_indent);
    let insert_after = |doc: &Doc| doc.last_significant(range, parent_line);
    match &path[0] {
        Segment::Key(key) => {
            let found = (range.0..range.1).find(|&i| {
                !doc.insignificant(i)
                    && doc.meta[i].indent == indent
                    && entry_value(doc.content(i), key).is_some()
            });
            let Some(i) = found else {
                let at = insert_after(doc) + 1;
                let new = created(path, value, indent);
                doc.lines.splice(at..at, new);
                return Ok(());
            };
            let rest = entry_value(doc.content(i), key).unwrap_or_default();
            let (current, comment) = split_comment(rest);
            let current = current.trim();
            if path.len() == 1 {
                let children = doc.children_end(i, range.1, indent, true);
                if current.is_empty() && doc.block_indent((i + 1, children)).is_some() {
                    return Err(EditError::Unsupported(format!(
                        "{key} holds a mapping or sequence, not a value"
                    )));
                }
                let start = doc.meta[i].start;
                let head_len = doc.content(i).len() - rest.len();
                let line = &doc.lines[i];
                doc.lines[i] = format!("{} {}{comment}", &line[..start + head_len], scalar(value));
                return Ok(());
            }
            if !current.is_empty() && !current.starts_with('&') {
                return Err(EditError::Unsupported(format!(
                    "{key} is {current:?}, not a block mapping or sequence (flow style is not edited)"
                )));
            }
            let seq = matches!(path[1], Segment::Item { .. });
            let end = doc.children_end(i, range.1, indent, seq);
            let child_indent = if seq { indent } else { indent + 2 };
            set_in(doc, (i + 1, end), child_indent, i, &path[1..], value)
        }
        Segment::Item { key, value: wanted } => {
            let items: Vec<usize> = (range.0..range.1)
                .filter(|&i| {
                    !doc.insignificant(i)
                        && doc.meta[i].indent == indent
                        && (doc.content(i).starts_with("- ") || doc.content(i) == "-")
                })
                .collect();
            if items.is_empty() && doc.block_indent(range).is_some() {
                return Err(EditError::Unsupported(format!(
                    "expected a sequence of mappings at {}",
                    describe(path)
                )));
            }
            for (n, &first) in items.iter().enumerate() {
                let end = items.get(n + 1).copied().unwrap_or(range.1);
                // Look into the item as a mapping: its first line's content starts after "- ".
                let saved = doc.meta[first];
                let after_dash = doc.content(first)[1..].len()
                    - doc.content(first)[1..].trim_start_matches(' ').len();
                doc.meta[first] = Line {
                    indent: saved.indent + 1 + after_dash,
                    start: saved.start + 1 + after_dash,
                };
                let item_indent = doc.meta[first].indent;
                let matches = (first..end).any(|i| {
                    !doc.insignificant(i)
                        && doc.meta[i].indent == item_indent
                        && entry_value(doc.content(i), key)
                            .map(|r| unquote(split_comment(r).0.trim()))
                            .as_deref()
                            == Some(wanted.as_str())
                });
                if matches {
                    let rest = &path[1..];
                    if rest.is_empty() {
                        doc.meta[first] = saved;
                        return Ok(());
                    }
                    let result = set_in(doc, (first, end), item_indent, first, rest, value);
                    return result;
                }
                doc.meta[first] = saved;
            }
            let at = insert_after(doc) + 1;
            let new = created(path, value, indent);
            doc.lines.splice(at..at, new);
            Ok(())
        }
    }
}

fn unquote(s: &str) -> String {
    if (s.starts_with('"') && s.ends_with('"') && s.len() >= 2)
        || (s.starts_with('\'') && s.ends_with('\'') && s.len() >= 2)
    {
        serde_yaml::from_str::<String>(s).unwrap_or_else(|_| s[1..s.len() - 1].into())
    } else {
        s.into()
    }
}

/// The value at `path` in parsed YAML.
fn lookup<'v>(mut v: &'v Value, path: &[Segment]) -> Option<&'v Value> {
    for segment in path {
        v = match segment {
            Segment::Key(k) => v.get(k.as_str())?,
            Segment::Item { key, value } => v
                .as_sequence()?
                .iter()
                .find(|item| item.get(key.as_str()).and_then(Value::as_str) == Some(value))?,
        };
    }
    Some(v)
}

/// Sets each `(path, value)` in `text`, leaving the rest of it as it was.
pub fn set_values(text: &str, edits: &[(Vec<Segment>, String)]) -> Result<String, EditError> {
    let parsed: Value = serde_yaml::from_str(text)
        .map_err(|e| EditError::Unsupported(format!("not one YAML document: {e}")))?;
    if !matches!(parsed, Value::Mapping(_) | Value::Null) {
        return Err(EditError::Unsupported(
            "the document is not a mapping".into(),
        ));
    }
    let mut text = text.to_string();
    for (path, value) in edits {
        let mut doc = Doc::parse(&text);
        let end = doc.lines.len();
        let skip = (0..end)
            .find(|&i| !doc.insignificant(i))
            .filter(|&i| doc.content(i).trim_end() == "---")
            .map_or(0, |i| i + 1);
        set_in(&mut doc, (skip, end), 0, skip.wrapping_sub(1), path, value)?;
        text = doc.lines.join("\n");
    }
    let parsed: Value = serde_yaml::from_str(&text)
        .map_err(|e| EditError::Unsupported(format!("the edit would break the file: {e}")))?;
    for (path, value) in edits {
        let now = lookup(&parsed, path).and_then(Value::as_str);
        if now != Some(value.as_str()) {
            return Err(EditError::Unsupported(format!(
                "{} could not be set in place (it reads {now:?} after the edit)",
                describe(path)
            )));
        }
    }
    Ok(text)
}

/// What berth's comment markers may ask for.
pub struct MarkedValues<'v> {
    pub image: &'v str,
    pub tag: &'v str,
    pub digest: &'v str,
}

/// Sets the values of the lines marked `# {"$berth": "NAME"}` (`NAME:tag`,
/// `NAME:digest`). Errors when no line carries a marker for `name`.
pub fn set_marked(text: &str, name: &str, values: &MarkedValues) -> Result<String, EditError> {
    let mut found = 0;
    let mut lines: Vec<String> = Vec::new();
    for line in text.split('\n') {
        let Some((head, marker)) = marker_of(line) else {
            lines.push(line.into());
            continue;
        };
        let value = match marker.strip_prefix(name) {
            Some("") => values.image,
            Some(":tag") => values.tag,
            Some(":digest") => values.digest,
            _ => {
                lines.push(line.into());
                continue;
            }
        };
        found += 1;
        let trimmed = head.trim_start();
        let before = if let Some(colon) = head.find(": ") {
            &head[..colon + 2]
        } else if trimmed.starts_with("- ") {
            &head[..head.len() - trimmed.len() + 2]
        } else {
            return Err(EditError::Unsupported(format!(
                "the line marked for {name:?} holds no `key: value` nor `- value`: {line:?}"
            )));
        };
        let spacing = &head[head.trim_end().len()..];
        lines.push(format!(
            "{before}{}{}{}",
            scalar(value),
            if spacing.is_empty() { " " } else { spacing },
            &line[head.len()..]
        ));
    }
    if found == 0 {
        return Err(EditError::NotFound(format!(
            "no line is marked # {{\"$berth\": \"{name}\"}} (or :tag, :digest)"
        )));
    }
    let out = lines.join("\n");
    serde_yaml::from_str::<serde_yaml::Value>(&out)
        .map_err(|e| EditError::Unsupported(format!("the edit would break the file: {e}")))?;
    Ok(out)
}

/// The part of `line` before a `# {"$berth": "…"}` comment, and the marker's value.
fn marker_of(line: &str) -> Option<(&str, String)> {
    let at = line.find("# {")?;
    let json: serde_json::Value = serde_json::from_str(line[at + 2..].trim()).ok()?;
    let marker = json.get("$berth")?.as_str()?.to_string();
    Some((&line[..at], marker))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str, value: &str) -> Segment {
        Segment::Item {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn a_helm_value_is_set_in_place_keeping_comments_and_order() {
        let text = "# values for web\nreplicas: 2\nimage:\n  repository: r/web # the repo\n  tag: v0  # set by berth\n  pullPolicy: IfNotPresent\nother: 1\n";
        let out = set_values(text, &[(Segment::dotted("image.tag"), "v1".into())]).unwrap();
        assert_eq!(out, text.replace("tag: v0  #", "tag: v1  #"));
    }

    #[test]
    fn missing_keys_and_mappings_are_created_at_the_end_of_their_block() {
        let text = "image:\n  repository: r/web\nother: 1\n";
        let out = set_values(
            text,
            &[
                (Segment::dotted("image.tag"), "v1".into()),
                (Segment::dotted("image.pin.digest"), "sha256:ab".into()),
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            "image:\n  repository: r/web\n  tag: v1\n  pin:\n    digest: sha256:ab\nother: 1\n"
        );
    }

    #[test]
    fn values_that_would_read_as_numbers_or_booleans_are_quoted() {
        let out = set_values("tag: x\n", &[(Segment::dotted("tag"), "1.10".into())]).unwrap();
        assert_eq!(out, "tag: \"1.10\"\n");
        assert_eq!(scalar("v1.2.3"), "v1.2.3");
        assert_eq!(scalar("true"), "\"true\"");
        assert_eq!(scalar("a b"), "\"a b\"");
    }

    #[test]
    fn a_kustomize_images_entry_is_found_by_name_and_updated_or_created() {
        let text = "resources:\n- deploy.yaml\nimages:\n- name: other\n  newTag: \"1\"\n- name: web\n  newName: old/web\n  newTag: v0 # pinned\n";
        let path = |f: &str| vec![Segment::key("images"), item("name", "web"), Segment::key(f)];
        let out = set_values(
            text,
            &[
                (path("newName"), "reg/team/web".into()),
                (path("newTag"), "v1".into()),
                (path("digest"), "sha256:ab".into()),
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            "resources:\n- deploy.yaml\nimages:\n- name: other\n  newTag: \"1\"\n- name: web\n  newName: reg/team/web\n  newTag: v1 # pinned\n  digest: sha256:ab\n"
        );
        let fresh = set_values(
            "resources:\n- deploy.yaml\n",
            &[(path("newTag"), "v1".into())],
        )
        .unwrap();
        assert_eq!(
            fresh,
            "resources:\n- deploy.yaml\nimages:\n- name: web\n  newTag: v1\n"
        );
        let added = set_values(
            "images:\n  - name: other\n    newTag: x\n",
            &[(path("newTag"), "v1".into())],
        )
        .unwrap();
        assert_eq!(
            added,
            "images:\n  - name: other\n    newTag: x\n  - name: web\n    newTag: v1\n"
        );
    }

    #[test]
    fn flow_style_and_mappings_in_place_of_values_are_refused() {
        let flow = set_values(
            "image: {tag: v0}\n",
            &[(Segment::dotted("image.tag"), "v1".into())],
        );
        assert!(matches!(flow, Err(EditError::Unsupported(_))), "{flow:?}");
        let mapping = set_values(
            "image:\n  tag: v0\n",
            &[(Segment::dotted("image"), "v1".into())],
        );
        assert!(
            matches!(mapping, Err(EditError::Unsupported(_))),
            "{mapping:?}"
        );
        let broken = set_values("a: [\n", &[(Segment::dotted("a"), "v1".into())]);
        assert!(matches!(broken, Err(EditError::Unsupported(_))));
    }

    #[test]
    fn marked_lines_get_the_image_the_tag_or_the_digest() {
        let text = "spec:\n  containers:\n  - name: web\n    image: r/web:v0 # {\"$berth\": \"web\"}\n  - image: x # {\"$berth\": \"other\"}\nlist:\n- v0 # {\"$berth\": \"web:tag\"}\ndigest: \"\" # {\"$berth\": \"web:digest\"}\n";
        let values = MarkedValues {
            image: "reg/team/web:v1@sha256:ab",
            tag: "v1",
            digest: "sha256:ab",
        };
        let out = set_marked(text, "web", &values).unwrap();
        assert_eq!(
            out,
            "spec:\n  containers:\n  - name: web\n    image: reg/team/web:v1@sha256:ab # {\"$berth\": \"web\"}\n  - image: x # {\"$berth\": \"other\"}\nlist:\n- v1 # {\"$berth\": \"web:tag\"}\ndigest: sha256:ab # {\"$berth\": \"web:digest\"}\n"
        );
        assert!(matches!(
            set_marked("a: b\n", "web", &values),
            Err(EditError::NotFound(_))
        ));
    }
}

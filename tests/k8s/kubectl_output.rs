//! Reading what kubectl prints: sections of `kubectl explain`, rows of `kubectl get`.

/// Every line of `out` between `header` and the next section (a line starting without
/// indentation), joined.
pub fn section<'a>(out: &'a str, header: &str) -> &'a str {
    let Some(start) = out.find(header) else {
        return "";
    };
    let rest = &out[start + header.len()..];
    let end = rest
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .find(|&i| rest[i..].starts_with(|c: char| c.is_ascii_uppercase()))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// Runs of whitespace as one space (kubectl explain re-wraps descriptions).
pub fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The header and cells of the row whose NAME (or first non-namespace column) is `name`,
/// in `kubectl get` output of one or more tables. Cells are cut at the header's columns.
pub fn find_row(out: &str, name: &str) -> (Vec<String>, Vec<String>) {
    for table in out.split("\n\n") {
        let mut lines = table.lines().filter(|l| !l.trim().is_empty());
        let Some(header) = lines.next() else { continue };
        let starts = column_starts(header);
        let cut = |line: &str| -> Vec<String> {
            let mut cells = Vec::new();
            for (i, &start) in starts.iter().enumerate() {
                let end = starts
                    .get(i + 1)
                    .copied()
                    .unwrap_or(usize::MAX)
                    .min(line.len());
                cells.push(
                    line.get(start.min(end)..end)
                        .unwrap_or("")
                        .trim()
                        .to_string(),
                );
            }
            cells
        };
        for line in lines {
            let cells = cut(line);
            if cells.iter().take(2).any(|c| c == name) {
                return (cut(header), cells);
            }
        }
    }
    panic!("no row for {name} in:\n{out}");
}

/// Where each column of a `kubectl get` header starts: after a run of two or more spaces.
fn column_starts(header: &str) -> Vec<usize> {
    let bytes = header.as_bytes();
    let mut starts = vec![0];
    for i in 2..bytes.len() {
        if bytes[i] != b' ' && bytes[i - 1] == b' ' && bytes[i - 2] == b' ' {
            starts.push(i);
        }
    }
    starts
}

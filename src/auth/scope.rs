//! Token scopes as clients ask for them: `repository:team-a/web:pull,push`,
//! `registry:catalog:*`; several per request, as repeated `scope` parameters or
//! separated by spaces.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub resource_type: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl Scope {
    /// Parses one scope. The name is everything between the first and the last colon,
    /// so names with a registry port (`host:5000/x`) survive.
    pub fn parse(s: &str) -> Option<Scope> {
        let (resource_type, rest) = s.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        if resource_type.is_empty() || name.is_empty() {
            return None;
        }
        Some(Scope {
            resource_type: resource_type.to_string(),
            name: name.to_string(),
            actions: actions
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }

    pub fn render(&self) -> String {
        format!(
            "{}:{}:{}",
            self.resource_type,
            self.name,
            self.actions.join(",")
        )
    }
}

/// Every scope in the given parameter values; malformed ones are ignored, as the
/// token specification asks (the token simply does not grant them).
pub fn parse_all<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Scope> {
    values
        .into_iter()
        .flat_map(|v| v.split(' '))
        .filter_map(Scope::parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_from_repeated_and_space_separated_parameters() {
        let scopes = parse_all([
            "repository:team-a/web:pull,push registry:catalog:*",
            "repository:lib/x:pull",
            "nonsense",
        ]);
        assert_eq!(scopes.len(), 3);
        assert_eq!(scopes[0].name, "team-a/web");
        assert_eq!(scopes[0].actions, vec!["pull", "push"]);
        assert_eq!(scopes[1].render(), "registry:catalog:*");
    }
}

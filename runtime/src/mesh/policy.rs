//! Who may call a component over the mesh: `allow_callers` in its manifest.
//! Deny by default: a component that lists no callers accepts none.

use super::identity::WorkloadId;
use crate::manifest::ComponentName;
use serde::{Deserialize, Serialize};
use std::fmt;

/// One `allow_callers` entry: `"shop/api"` (one component), `"shop/*"`
/// (every component of an app) or `"*"` (every workload of the cluster).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CallerPattern {
    /// `None`: any app.
    app: Option<ComponentName>,
    /// `None`: any component of the app.
    component: Option<ComponentName>,
}

impl CallerPattern {
    /// The app this entry names; `None` for `"*"`.
    pub fn app(&self) -> Option<&ComponentName> {
        self.app.as_ref()
    }

    /// The component this entry names; `None` for `"app/*"` and `"*"`.
    pub fn component(&self) -> Option<&ComponentName> {
        self.component.as_ref()
    }

    /// Whether `caller` matches this entry.
    pub fn matches(&self, caller: &WorkloadId) -> bool {
        self.app.as_ref().is_none_or(|app| *app == caller.app)
            && self
                .component
                .as_ref()
                .is_none_or(|component| *component == caller.component)
    }
}

impl TryFrom<String> for CallerPattern {
    type Error = String;

    fn try_from(text: String) -> Result<CallerPattern, String> {
        if text == "*" {
            return Ok(CallerPattern {
                app: None,
                component: None,
            });
        }
        let invalid = |why: String| {
            format!(
                "invalid caller {text:?} in allow_callers: {why}; use \"app/component\", \"app/*\" or \"*\""
            )
        };
        let Some((app, component)) = text.split_once('/') else {
            return Err(invalid("no '/'".to_string()));
        };
        let app = ComponentName::try_from(app.to_string()).map_err(invalid)?;
        let component = match component {
            "*" => None,
            name => Some(ComponentName::try_from(name.to_string()).map_err(invalid)?),
        };
        Ok(CallerPattern {
            app: Some(app),
            component,
        })
    }
}

impl From<CallerPattern> for String {
    fn from(pattern: CallerPattern) -> String {
        pattern.to_string()
    }
}

impl fmt::Display for CallerPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.app, &self.component) {
            (None, _) => f.write_str("*"),
            (Some(app), None) => write!(f, "{app}/*"),
            (Some(app), Some(component)) => write!(f, "{app}/{component}"),
        }
    }
}

/// The callers one component accepts.
#[derive(Debug, Clone, Default)]
pub struct CallerPolicy {
    allowed: Vec<CallerPattern>,
}

impl CallerPolicy {
    /// The policy of a component whose manifest lists `allowed`.
    pub fn new(allowed: Vec<CallerPattern>) -> CallerPolicy {
        CallerPolicy { allowed }
    }

    /// Whether `caller` may call the component.
    pub fn allows(&self, caller: &WorkloadId) -> bool {
        self.allowed.iter().any(|pattern| pattern.matches(caller))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> WorkloadId {
        let (app, component) = text.split_once('/').unwrap();
        WorkloadId::new(
            ComponentName::try_from(app.to_string()).unwrap(),
            ComponentName::try_from(component.to_string()).unwrap(),
        )
    }

    fn policy(patterns: &[&str]) -> CallerPolicy {
        CallerPolicy::new(
            patterns
                .iter()
                .map(|p| CallerPattern::try_from(p.to_string()).unwrap())
                .collect(),
        )
    }

    #[test]
    fn nothing_listed_denies_everyone() {
        assert!(!policy(&[]).allows(&id("shop/frontend")));
    }

    #[test]
    fn entries_match_one_component_an_app_or_everyone() {
        let p = policy(&["shop/*", "billing/api"]);
        assert!(p.allows(&id("shop/frontend")));
        assert!(p.allows(&id("billing/api")));
        assert!(!p.allows(&id("billing/worker")));
        assert!(!p.allows(&id("shopping/frontend")));
        assert!(policy(&["*"]).allows(&id("anyone/at-all")));
    }

    #[test]
    fn malformed_entries_say_what_is_wrong() {
        for bad in ["shop", "shop/", "Shop/api", "*/api", "shop/a/b", ""] {
            let err = CallerPattern::try_from(bad.to_string()).unwrap_err();
            assert!(err.contains("allow_callers"), "{bad}: {err}");
        }
        for good in ["*", "shop/*", "shop/api"] {
            let pattern = CallerPattern::try_from(good.to_string()).unwrap();
            assert_eq!(pattern.to_string(), good);
        }
    }
}

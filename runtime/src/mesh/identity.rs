//! Workload identity: which app and component a request comes from or goes
//! to, and its SPIFFE form `spiffe://skiff/app/<app>/component/<component>`.

use crate::manifest::ComponentName;
use std::fmt;

/// The trust domain of every SPIFFE ID Skiff issues or checks.
pub const TRUST_DOMAIN: &str = "skiff";

/// One component of one app: the unit that has an identity on the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadId {
    /// The app's name.
    pub app: ComponentName,
    /// The component's name within the app.
    pub component: ComponentName,
}

impl WorkloadId {
    /// The workload `app`/`component`.
    pub fn new(app: ComponentName, component: ComponentName) -> WorkloadId {
        WorkloadId { app, component }
    }

    /// `spiffe://skiff/app/<app>/component/<component>`.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{TRUST_DOMAIN}/app/{}/component/{}",
            self.app, self.component
        )
    }

    /// The workload a SPIFFE ID names; `None` for anything else (a node's
    /// or the control plane's ID, another trust domain, an invalid name).
    pub fn from_spiffe_id(id: &str) -> Option<WorkloadId> {
        let rest = id
            .strip_prefix("spiffe://")?
            .strip_prefix(TRUST_DOMAIN)?
            .strip_prefix("/app/")?;
        let (app, rest) = rest.split_once('/')?;
        let component = rest.strip_prefix("component/")?;
        Some(WorkloadId {
            app: ComponentName::try_from(app.to_string()).ok()?,
            component: ComponentName::try_from(component.to_string()).ok()?,
        })
    }
}

/// `app/component`, as in `allow_callers` and in logs.
impl fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.app, self.component)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(app: &str, component: &str) -> WorkloadId {
        WorkloadId::new(
            ComponentName::try_from(app.to_string()).unwrap(),
            ComponentName::try_from(component.to_string()).unwrap(),
        )
    }

    #[test]
    fn spiffe_ids_round_trip_and_strangers_are_refused() {
        let shop = id("shop", "api");
        assert_eq!(shop.spiffe_id(), "spiffe://skiff/app/shop/component/api");
        assert_eq!(WorkloadId::from_spiffe_id(&shop.spiffe_id()), Some(shop));
        for other in [
            "spiffe://skiff/node/node-1",
            "spiffe://skiff/control-plane",
            "spiffe://other/app/shop/component/api",
            "spiffe://skiff/app/shop/component/api/extra",
            "spiffe://skiff/app/Shop/component/api",
            "spiffe://skiff/app//component/api",
            "http://skiff/app/shop/component/api",
        ] {
            assert_eq!(WorkloadId::from_spiffe_id(other), None, "{other}");
        }
    }
}

//! Environment variables: exactly those in the manifest's `env` table.

use super::{Capability, PrepareContext};
use crate::instance::InstanceBuilder;
use crate::manifest::ComponentSpec;

/// The variables one component is granted.
pub struct Env {
    vars: Vec<(String, String)>,
}

impl Env {
    /// Checks the variable names in `env`.
    ///
    /// # Errors
    ///
    /// A name that is empty or contains `=` or NUL.
    pub fn prepare(spec: &ComponentSpec, cx: &PrepareContext<'_>) -> Result<Env, String> {
        for (name, value) in &spec.env {
            if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
                return Err(format!(
                    "component \"{}\": env variable {name:?} is not a valid name (no '=' or NUL, not empty)",
                    cx.component
                ));
            }
        }
        Ok(Env {
            vars: spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }
}

impl Capability for Env {
    fn grant(&self, instance: &mut InstanceBuilder) -> Result<(), String> {
        instance.wasi.envs(&self.vars);
        Ok(())
    }
}

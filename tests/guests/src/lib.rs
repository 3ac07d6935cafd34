//! Paths of the guest programs the end-to-end tests run, built by this
//! crate's build script: the apps of `examples/` and the test-only programs
//! of `tests/guests/programs/`.

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// The directory of the example apps, each with its `skiff.toml`.
pub const EXAMPLES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

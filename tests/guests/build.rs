//! Builds every guest used by the end-to-end tests for wasm32-wasip2: the
//! apps in `examples/` and the test-only programs in `programs/`. Each
//! workspace keeps its own target dir, so the example manifests find their
//! components where `skiff run --build` would put them. Generates one path
//! constant per guest (`HELLO`, `PROBE`, ...) into `$OUT_DIR/guests.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let repo = manifest_dir.ancestors().nth(2).unwrap().to_path_buf();
    let workspaces = [repo.join("examples"), manifest_dir.join("programs")];
    for dir in [&workspaces[0], &workspaces[1], &repo.join("sdk")] {
        println!("cargo:rerun-if-changed={}", dir.display());
    }

    let mut constants = String::new();
    for workspace in &workspaces {
        build_workspace(workspace);
        for (crate_name, wasm) in guests_of(workspace) {
            let constant = crate_name.to_uppercase().replace('-', "_");
            constants += &format!(
                "/// `{crate_name}` built for wasm32-wasip2.\npub const {constant}: &str = {:?};\n",
                wasm.display().to_string()
            );
        }
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("guests.rs");
    std::fs::write(out, constants).unwrap();
}

/// `cargo build --release --target wasm32-wasip2` in `workspace`, with the
/// outer build's variables removed so the inner cargo starts clean.
fn build_workspace(workspace: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"]);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let keep =
            key == "CARGO_HOME" || key.starts_with("CARGO_NET") || key.starts_with("CARGO_HTTP");
        if (key.starts_with("CARGO_") && !keep)
            || key.starts_with("RUSTC_")
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS"
        {
            cmd.env_remove(&key);
        }
    }
    let status = cmd.status().expect("running cargo for the guests");
    assert!(
        status.success(),
        "building the guests in {} failed; is the wasm32-wasip2 target installed (rustup target add wasm32-wasip2)?",
        workspace.display()
    );
}

/// `(crate name, path of its .wasm)` for each member of `workspace`.
fn guests_of(workspace: &Path) -> Vec<(String, PathBuf)> {
    let mut guests = Vec::new();
    for entry in std::fs::read_dir(workspace).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("Cargo.toml").is_file() || !dir.join("src").is_dir() {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let wasm = workspace
            .join("target/wasm32-wasip2/release")
            .join(format!("{}.wasm", name.replace('-', "_")));
        assert!(
            wasm.is_file(),
            "guest {name} did not produce {}",
            wasm.display()
        );
        guests.push((name, wasm));
    }
    guests.sort();
    guests
}

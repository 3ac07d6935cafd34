//! `skiff new NAME`: a working app to start from, in Rust (with a copy of
//! the Skiff SDK, so it builds outside this repository) or JavaScript
//! (componentize-js), ready for `skiff run NAME --build`.

use anyhow::Context;
use std::path::{Path, PathBuf};

/// Arguments of `skiff new`.
#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The app's name: lower-case letters, digits and '-'; also the
    /// directory made for it.
    name: String,
    /// The language of its one component.
    #[arg(long, value_enum, default_value = "rust")]
    lang: Lang,
    /// Where to make the app's directory; default the current one.
    #[arg(long, default_value = ".", value_hint = clap::ValueHint::DirPath)]
    dir: PathBuf,
}

/// The languages `skiff new` writes an app in.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Lang {
    /// Rust, with the Skiff SDK; builds with cargo for wasm32-wasip2.
    Rust,
    /// JavaScript, built into a component by componentize-js (npm).
    Js,
}

/// A file of a new app: its path in the app and its text, where
/// `{{name}}` stands for the app's name and `{{crate}}` for the Rust
/// crate's (dashes as underscores, as the `.wasm` file is named).
type Template = (&'static str, &'static str);

const RUST: &[Template] = &[
    (
        "Cargo.toml",
        include_str!("../../templates/rust/Cargo.toml.in"),
    ),
    (
        "skiff.toml",
        include_str!("../../templates/rust/skiff.toml.in"),
    ),
    ("src/lib.rs", include_str!("../../templates/rust/lib.rs.in")),
    (".gitignore", include_str!("../../templates/rust/gitignore")),
    (
        "skiff-sdk/Cargo.toml",
        include_str!("../../../sdk/Cargo.toml"),
    ),
    (
        "skiff-sdk/src/lib.rs",
        include_str!("../../../sdk/src/lib.rs"),
    ),
    (
        "skiff-sdk/src/body.rs",
        include_str!("../../../sdk/src/body.rs"),
    ),
    (
        "skiff-sdk/src/config.rs",
        include_str!("../../../sdk/src/config.rs"),
    ),
    (
        "skiff-sdk/src/convert.rs",
        include_str!("../../../sdk/src/convert.rs"),
    ),
    (
        "skiff-sdk/src/outbound.rs",
        include_str!("../../../sdk/src/outbound.rs"),
    ),
    (
        "skiff-sdk/src/serve.rs",
        include_str!("../../../sdk/src/serve.rs"),
    ),
];

/// The JavaScript example, with its name replaced.
const JS: &[Template] = &[
    (
        "skiff.toml",
        include_str!("../../templates/js/skiff.toml.in"),
    ),
    (".gitignore", include_str!("../../templates/js/gitignore")),
    (
        "index.js",
        include_str!("../../../examples/hello-js/hello.js"),
    ),
    (
        "build.sh",
        include_str!("../../../examples/hello-js/build.sh"),
    ),
    (
        "package.json",
        include_str!("../../../examples/hello-js/package.json"),
    ),
    (
        "package-lock.json",
        include_str!("../../../examples/hello-js/package-lock.json"),
    ),
    (
        "wit/hello.wit",
        include_str!("../../../examples/hello-js/wit/hello.wit"),
    ),
    (
        "wit/deps/LICENSE.md",
        include_str!("../../../examples/hello-js/wit/deps/LICENSE.md"),
    ),
    (
        "wit/deps/cli/package.wit",
        include_str!("../../../examples/hello-js/wit/deps/cli/package.wit"),
    ),
    (
        "wit/deps/clocks/package.wit",
        include_str!("../../../examples/hello-js/wit/deps/clocks/package.wit"),
    ),
    (
        "wit/deps/filesystem/package.wit",
        include_str!("../../../examples/hello-js/wit/deps/filesystem/package.wit"),
    ),
    (
        "wit/deps/http/package.wit",
        include_str!("../../../examples/hello-js/wit/deps/http/package.wit"),
    ),
    (
        "wit/deps/io/package.wit",
        include_str!("../../../examples/hello-js/wit/deps/io/package.wit"),
    ),
    (
        "wit/deps/random/package.wit",
        include_str!("../../../examples/hello-js/wit/deps/random/package.wit"),
    ),
    (
        "wit/deps/sockets/package.wit",
        include_str!("../../../examples/hello-js/wit/deps/sockets/package.wit"),
    ),
];

/// Runs `skiff new`.
pub fn new(args: NewArgs) -> anyhow::Result<()> {
    skiff_runtime::manifest::ComponentName::try_from(args.name.clone())
        .map_err(|e| anyhow::anyhow!("cannot name an app {:?}: {e}", args.name))?;
    // Also a Rust crate's and an npm package's name.
    if !args.name.starts_with(|c: char| c.is_ascii_lowercase()) || args.name.ends_with('-') {
        anyhow::bail!(
            "cannot name an app {:?} with `skiff new`: start it with a letter and end it with a letter or digit (it names the app's crate or package too)",
            args.name
        );
    }
    let root = args.dir.join(&args.name);
    if std::fs::read_dir(&root).is_ok_and(|mut entries| entries.next().is_some()) {
        anyhow::bail!(
            "{} already exists and is not empty; pick another name or --dir",
            root.display()
        );
    }
    let templates = match args.lang {
        Lang::Rust => RUST,
        Lang::Js => JS,
    };
    for (path, text) in templates {
        let text = fill(path, text, &args.name);
        write(&root.join(path), &text)?;
    }
    let shown = root.display();
    out!("Created app \"{}\" in {shown}", args.name)?;
    if matches!(args.lang, Lang::Js) {
        out!("It builds with componentize-js from npm (Node.js 20+ and npm needed).")?;
    }
    out!("Run it:  {} run {shown} --build", super::invocation())?;
    out!("Then:    curl http://127.0.0.1:3000/")?;
    Ok(())
}

/// `text` of the file `path` for the app `name`.
fn fill(path: &str, text: &str, name: &str) -> String {
    let crate_name = name.replace('-', "_");
    let text = text
        .replace("{{name}}", name)
        .replace("{{crate}}", &crate_name);
    // The JavaScript example's own names become the app's.
    match path {
        "build.sh" => text
            .replace("hello-js.wasm", &format!("{name}.wasm"))
            .replace("hello.js", "index.js"),
        "package.json" => text
            .replace("\"name\": \"hello-js\"", &format!("\"name\": \"{name}\""))
            .replace(
                "-o hello-js.wasm hello.js",
                &format!("-o {name}.wasm index.js"),
            ),
        "package-lock.json" => {
            text.replace("\"name\": \"hello-js\"", &format!("\"name\": \"{name}\""))
        }
        "index.js" => text
            .replace(
                "The hello app in JavaScript",
                &format!("The app \"{name}\""),
            )
            .replace(", like examples/hello", "")
            .replace(
                "`skiff run examples/hello-js --build`",
                "`skiff run . --build`",
            )
            .replace("from JavaScript!", &format!("from {name}!")),
        _ => text,
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_javascript_example_names_are_all_replaced() {
        for (path, text) in JS {
            let filled = fill(path, text, "shop-front");
            if !path.starts_with("wit/") {
                assert!(!filled.contains("hello-js"), "{path}: {filled}");
            }
        }
        let lib = fill("src/lib.rs", RUST[2].1, "shop-front");
        assert!(lib.contains("from shop-front!"));
        let manifest = fill("skiff.toml", RUST[1].1, "shop-front");
        assert!(manifest.contains("release/shop_front.wasm"), "{manifest}");
    }
}

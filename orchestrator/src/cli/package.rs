//! `skiff build`, `skiff pack`, `skiff images`, `skiff rmi`, `skiff tag`:
//! making packages and managing the local store.

use crate::app_source::AppSource;
use crate::home;
use skiff_runtime::package::{self, Store};
use std::path::PathBuf;

/// Arguments of `skiff build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// A skiff.toml or a directory holding one.
    #[arg(default_value = ".")]
    path: PathBuf,
}

/// Runs every component's build command.
pub fn build(args: BuildArgs) -> anyhow::Result<()> {
    AppSource::open(&args.path)?.build()
}

/// Arguments of `skiff pack`.
#[derive(Debug, clap::Args)]
pub struct PackArgs {
    /// A skiff.toml or a directory holding one.
    #[arg(default_value = ".")]
    path: PathBuf,
    /// Tag for the package; default `<app name>:<app version>`.
    #[arg(long, short)]
    tag: Option<String>,
    /// Run each component's build command first.
    #[arg(long)]
    build: bool,
}

/// Packs an app into the local store and prints its digest.
pub fn pack(args: PackArgs) -> anyhow::Result<()> {
    let mut source = AppSource::open(&args.path)?;
    if args.build {
        source.build()?;
    }
    source.resolve()?;
    let store = Store::open(&home::store_dir())?;
    let packed = package::pack(&source.manifest, &source.base_dir, &store)?;
    let tag = args.tag.unwrap_or_else(|| {
        format!(
            "{}:{}",
            source.manifest.app.name, source.manifest.app.version
        )
    });
    store.tag(&tag, &packed.descriptor)?;
    out!(
        "packed {} ({} bytes) as {}",
        packed.descriptor.digest,
        package::size(&packed.descriptor, &packed.manifest),
        package::store::normalize_reference(&tag)
    )?;
    Ok(())
}

/// Lists the packages in the local store.
pub fn images() -> anyhow::Result<()> {
    let store = Store::open(&home::store_dir())?;
    let entries = store.list()?;
    let width = entries
        .iter()
        .map(|(r, _)| r.len())
        .max()
        .unwrap_or(0)
        .max(9);
    out!("{:<width$}  {:<12}  {:>10}", "REFERENCE", "DIGEST", "SIZE")?;
    for (reference, descriptor) in entries {
        let size = match store.manifest(&descriptor.digest) {
            Ok(image) => package::size(&descriptor, &image).to_string(),
            Err(_) => "damaged".to_string(),
        };
        out!(
            "{reference:<width$}  {:<12}  {size:>10}",
            descriptor.digest.short()
        )?;
    }
    Ok(())
}

/// Arguments of `skiff rmi`.
#[derive(Debug, clap::Args)]
pub struct RmiArgs {
    /// The tag (`name:tag`) or digest (`sha256:...`) to remove.
    reference: String,
}

/// Removes a tag (or every tag of a digest) and the blobs no one needs.
pub fn rmi(args: RmiArgs) -> anyhow::Result<()> {
    let store = Store::open(&home::store_dir())?;
    let removed = store.remove(&args.reference)?;
    out!("removed {} ({})", args.reference, removed.digest)?;
    Ok(())
}

/// Arguments of `skiff tag`.
#[derive(Debug, clap::Args)]
pub struct TagArgs {
    /// An existing tag or digest.
    source: String,
    /// The new tag, e.g. `127.0.0.1:5000/hello:0.1.0` before a push.
    target: String,
}

/// Adds a tag to a package.
pub fn tag(args: TagArgs) -> anyhow::Result<()> {
    let store = Store::open(&home::store_dir())?;
    let descriptor = store.resolve(&args.source)?;
    store.tag(&args.target, &descriptor)?;
    out!(
        "tagged {} as {}",
        descriptor.digest,
        package::store::normalize_reference(&args.target)
    )?;
    Ok(())
}

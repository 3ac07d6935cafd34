//! Getting an app onto a cluster: pack it into the local store (or find
//! its package there), upload each blob the control plane lacks, then
//! declare the app by its package digest. Declaring the same package twice
//! changes nothing.

use crate::api::{DeployRequest, DeployResponse};
use crate::api_client::{ApiClient, DEFAULT_TIMEOUT};
use crate::app_source::{self, AppSource};
use crate::home;
use anyhow::Context;
use bytes::Bytes;
use http::{Method, StatusCode};
use skiff_runtime::package::oci::Descriptor;
use skiff_runtime::package::{self, Store};
use std::path::Path;
use std::time::Duration;

/// A package ready to upload.
pub struct Prepared {
    /// The local store holding it.
    pub store: Store,
    /// Its manifest's descriptor.
    pub descriptor: Descriptor,
}

/// Packs the app at `target` (a path; built first when `build`), or finds
/// package `target` (a reference) in the local store, pulling it if
/// needed. Blocking: call outside an async runtime.
///
/// # Errors
///
/// An invalid manifest, a failed build, an unknown reference.
pub fn prepare(target: &str, build: bool) -> anyhow::Result<Prepared> {
    let store = Store::open(&home::store_dir())?;
    let descriptor = if app_source::is_path(target) {
        let mut source = AppSource::open(Path::new(target))?;
        if build {
            source.build()?;
        }
        source.resolve()?;
        package::pack(&source.manifest, &source.base_dir, &store)?.descriptor
    } else {
        app_source::local_package(&store, target)?
    };
    Ok(Prepared { store, descriptor })
}

/// How a new version of an app replaces the one running, when the
/// manifest's `[app] canary` is not what is wanted.
#[derive(Debug, Clone, Default)]
pub struct RolloutChoice {
    /// Canary steps, percent (`[10]` sends 10% of requests to the new
    /// version, then all); `[100]`: a rolling update.
    pub canary: Option<Vec<u32>>,
    /// How long each canary step lasts.
    pub canary_interval: Option<Duration>,
}

/// Uploads what the control plane lacks of `prepared` and declares it,
/// replacing a running version as `rollout` says.
///
/// # Errors
///
/// An unreachable control plane, a refused blob or a refused package,
/// with the control plane's reason.
pub async fn upload_and_declare(
    client: &ApiClient,
    prepared: &Prepared,
    rollout: &RolloutChoice,
) -> anyhow::Result<DeployResponse> {
    let store = &prepared.store;
    let digest = &prepared.descriptor.digest;
    let image = store.manifest(digest)?;
    let blobs = std::iter::once(digest)
        .chain(std::iter::once(&image.config.digest))
        .chain(image.layers.iter().map(|l| &l.digest));
    for blob in blobs {
        let path = format!("/v1/blobs/{blob}");
        match client
            .send(Method::HEAD, &path, None, DEFAULT_TIMEOUT)
            .await
        {
            Ok(_) => continue,
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {}
            Err(e) => return Err(e.into()),
        }
        let bytes = store
            .read(blob)
            .with_context(|| format!("cannot upload {blob}"))?;
        // As long as the control plane waits for it: a slow link is slow.
        let timeout = Duration::from_secs(600)
            + Duration::from_secs(bytes.len() as u64 / crate::control::MIN_UPLOAD_RATE);
        client
            .send(
                Method::PUT,
                &path,
                Some((Bytes::from(bytes), "application/octet-stream")),
                timeout,
            )
            .await
            .with_context(|| format!("cannot upload {blob}"))?;
    }
    let declared: DeployResponse = client
        .post(
            "/v1/apps",
            &DeployRequest {
                package: digest.to_string(),
                canary: rollout.canary.clone(),
                canary_interval_ms: rollout.canary_interval.map(|d| d.as_millis() as u64),
            },
        )
        .await?;
    Ok(declared)
}

//! Pushing packages to and pulling them from OCI distribution registries,
//! through `oci-client`. Loopback registries are spoken to over plain HTTP,
//! every other one over HTTPS. Every pulled blob is verified against its
//! digest before it enters the store; blobs already present are skipped, so
//! an interrupted transfer is resumed by running it again.

use crate::credentials;
use anyhow::{Context, anyhow, bail};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use skiff_runtime::package::oci::{
    Descriptor, ImageManifest, MANIFEST_MEDIA_TYPE, WASM_CONFIG_MEDIA_TYPE, WASM_MEDIA_TYPE,
};
use skiff_runtime::package::{Digest, Store};
use std::io::IsTerminal;

/// A connection to the registry of one reference.
pub struct Registry {
    client: Client,
    reference: Reference,
    auth: RegistryAuth,
    /// Show progress bars (on a terminal only).
    progress: bool,
}

/// A progress bar over the bytes of one transfer; hidden off a terminal.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(enabled: bool, verb: &str, total: u64) -> Progress {
        if !enabled {
            return Progress(None);
        }
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_message(verb.to_string());
        Progress(Some(bar))
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish();
        }
    }
}

/// Collects a pulled blob while advancing the progress bar.
struct ProgressSink<'a> {
    bytes: Vec<u8>,
    progress: &'a Progress,
}

impl tokio::io::AsyncWrite for ProgressSink<'_> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.bytes.extend_from_slice(buf);
        self.progress.advance(buf.len() as u64);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Whether `reference` names a registry (`host[:port]/repo[:tag]`) rather
/// than a local tag.
pub fn is_remote(reference: &str) -> bool {
    reference
        .split_once('/')
        .is_some_and(|(host, _)| host.contains('.') || host.contains(':') || host == "localhost")
}

impl Registry {
    /// Prepares to talk to the registry `reference` lives in.
    ///
    /// # Errors
    ///
    /// An unparsable reference or unreadable credentials.
    pub fn for_reference(reference: &str) -> anyhow::Result<Registry> {
        Registry::with_credentials(reference, None)
    }

    /// As [`Registry::for_reference`], with `credentials` instead of the
    /// saved ones.
    ///
    /// # Errors
    ///
    /// An unparsable reference or unreadable saved credentials.
    pub fn with_credentials(
        reference: &str,
        credentials: Option<&credentials::Credentials>,
    ) -> anyhow::Result<Registry> {
        install_crypto_provider();
        let reference: Reference = reference
            .parse()
            .map_err(|e| anyhow!("invalid reference {reference:?}: {e}"))?;
        let registry = reference.resolve_registry().to_string();
        let host = registry
            .rsplit_once(':')
            .map_or(registry.as_str(), |(h, _)| h);
        let loopback = host == "localhost"
            || host == "[::1]"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let config = ClientConfig {
            protocol: if loopback {
                ClientProtocol::HttpsExcept(vec![registry.clone()])
            } else {
                ClientProtocol::Https
            },
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..ClientConfig::default()
        };
        let saved = match credentials {
            Some(c) => Some(c.clone()),
            None => credentials::for_registry(&registry)?,
        };
        let auth = match saved {
            Some(c) => RegistryAuth::Basic(c.username, c.password),
            None => RegistryAuth::Anonymous,
        };
        Ok(Registry {
            client: Client::new(config),
            reference,
            auth,
            progress: std::io::stderr().is_terminal(),
        })
    }

    /// Checks that the registry accepts the credentials: a tag listing
    /// answered with anything but 401/403 counts as accepted.
    ///
    /// # Errors
    ///
    /// Refused credentials or an unreachable registry.
    pub async fn check_credentials(&self) -> anyhow::Result<()> {
        self.authenticate(RegistryOperation::Pull).await?;
        match self
            .client
            .list_tags(&self.reference, &self.auth, None, None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e @ OciDistributionError::AuthenticationFailure(_))
            | Err(e @ OciDistributionError::UnauthorizedError { .. }) => Err(self.explain(e)),
            Err(OciDistributionError::RequestError(e)) if e.is_connect() || e.is_timeout() => {
                Err(self.explain(OciDistributionError::RequestError(e)))
            }
            Err(OciDistributionError::ServerError {
                code: 401 | 403, ..
            }) => Err(anyhow!(
                "registry {} refused the credentials",
                self.reference.resolve_registry()
            )),
            Err(_) => Ok(()),
        }
    }

    /// Checks the credentials by authenticating for `operation`.
    ///
    /// # Errors
    ///
    /// A refused login or an unreachable registry.
    pub async fn authenticate(&self, operation: RegistryOperation) -> anyhow::Result<()> {
        self.client
            .auth(&self.reference, &self.auth, operation)
            .await
            .map_err(|e| self.explain(e))?;
        Ok(())
    }

    /// Uploads the package `descriptor` names from `store`: missing blobs
    /// first, then the manifest under this reference's tag.
    ///
    /// # Errors
    ///
    /// A blob missing or corrupt in the store, or a registry error.
    pub async fn push(&self, store: &Store, descriptor: &Descriptor) -> anyhow::Result<Digest> {
        self.authenticate(RegistryOperation::Push).await?;
        let manifest_bytes = store.read(&descriptor.digest)?;
        let image: ImageManifest = store.manifest(&descriptor.digest)?;
        let blobs: Vec<&Descriptor> = std::iter::once(&image.config)
            .chain(&image.layers)
            .collect();
        let progress = Progress::new(self.progress, "pushing", blobs.iter().map(|b| b.size).sum());
        for blob in blobs {
            let digest = blob.digest.as_str();
            let exists = self
                .client
                .blob_exists(&self.reference, digest)
                .await
                .map_err(|e| self.explain(e))?;
            if !exists {
                let bytes = store.read(&blob.digest)?;
                self.client
                    .push_blob(&self.reference, bytes, digest)
                    .await
                    .map_err(|e| self.explain(e))?;
            }
            progress.advance(blob.size);
        }
        progress.finish();
        let content_type = MANIFEST_MEDIA_TYPE.parse().expect("a valid header value");
        self.client
            .push_manifest_raw(&self.reference, manifest_bytes, content_type)
            .await
            .map_err(|e| self.explain(e))?;
        Ok(descriptor.digest.clone())
    }

    /// Downloads the package at this reference into `store` and tags it
    /// with the reference; returns its manifest's descriptor.
    ///
    /// # Errors
    ///
    /// A missing tag, refused credentials, an unreachable registry, or a
    /// blob whose content does not match its digest (the store keeps none
    /// of a mismatched blob).
    pub async fn pull(&self, store: &Store) -> anyhow::Result<Descriptor> {
        let (bytes, image) = self.pull_manifest().await?;
        let blobs: Vec<&Descriptor> = std::iter::once(&image.config)
            .chain(&image.layers)
            .collect();
        let progress = Progress::new(self.progress, "pulling", blobs.iter().map(|b| b.size).sum());
        for blob in blobs {
            self.pull_blob(store, blob, &progress).await?;
        }
        progress.finish();
        store.put(&bytes)?;
        let descriptor = Descriptor::of(MANIFEST_MEDIA_TYPE, &bytes);
        store.tag(&self.reference.whole(), &descriptor)?;
        Ok(descriptor)
    }

    /// Downloads a single-component artifact in the CNCF Wasm OCI layout
    /// (config `application/vnd.wasm.config.v0+json`, one `application/wasm`
    /// layer) into `store`; returns the component layer's digest.
    ///
    /// # Errors
    ///
    /// As [`Registry::pull`], or an artifact of another shape.
    pub async fn pull_component(&self, store: &Store) -> anyhow::Result<Digest> {
        let (_, image) = self.pull_manifest().await?;
        let wasm: Vec<&Descriptor> = image
            .layers
            .iter()
            .filter(|l| l.media_type == WASM_MEDIA_TYPE)
            .collect();
        if image.config.media_type != WASM_CONFIG_MEDIA_TYPE || wasm.len() != 1 {
            bail!(
                "{} is not a Wasm component artifact (config {:?}, {} application/wasm layers)",
                self.reference,
                image.config.media_type,
                wasm.len()
            );
        }
        let progress = Progress::new(self.progress, "pulling", wasm[0].size);
        self.pull_blob(store, wasm[0], &progress).await?;
        progress.finish();
        Ok(wasm[0].digest.clone())
    }

    async fn pull_manifest(&self) -> anyhow::Result<(Vec<u8>, ImageManifest)> {
        let (bytes, digest) = self
            .client
            .pull_manifest_raw(&self.reference, &self.auth, &[MANIFEST_MEDIA_TYPE])
            .await
            .map_err(|e| self.explain(e))?;
        let actual = Digest::of(&bytes);
        let expected = self.reference.digest().unwrap_or(digest.as_str());
        if !expected.is_empty() && actual.as_str() != expected {
            bail!(
                "the manifest of {} does not match its digest {expected} (got {actual}); refusing it",
                self.reference
            );
        }
        let image = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not an OCI image manifest", self.reference))?;
        Ok((bytes.to_vec(), image))
    }

    async fn pull_blob(
        &self,
        store: &Store,
        blob: &Descriptor,
        progress: &Progress,
    ) -> anyhow::Result<()> {
        if store.read(&blob.digest).is_ok() {
            progress.advance(blob.size);
            return Ok(());
        }
        let mut sink = ProgressSink {
            // Sized from the descriptor, but capped so that a lying one
            // cannot make us reserve gigabytes up front.
            bytes: Vec::with_capacity(blob.size.min(64 << 20) as usize),
            progress,
        };
        self.client
            .pull_blob(&self.reference, blob.digest.as_str(), &mut sink)
            .await
            .map_err(|e| self.explain(e))?;
        store
            .put_verified(&blob.digest, &sink.bytes)
            .with_context(|| format!("refusing a blob of {}", self.reference))?;
        Ok(())
    }

    /// Turns a client error into a message that says what to do.
    fn explain(&self, error: OciDistributionError) -> anyhow::Error {
        let registry = self.reference.resolve_registry();
        match &error {
            OciDistributionError::AuthenticationFailure(_)
            | OciDistributionError::UnauthorizedError { .. } => anyhow!(
                "registry {registry} refused access to {}: {error}; log in with `skiff login {registry}` or set SKIFF_REGISTRY_USERNAME/SKIFF_REGISTRY_PASSWORD",
                self.reference.repository()
            ),
            OciDistributionError::ImageManifestNotFoundError(_) => {
                anyhow!("{} not found in registry {registry}", self.reference)
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    anyhow!("{} not found in registry {registry}", self.reference)
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    anyhow!(
                        "registry {registry} refused access to {}: {envelope}; log in with `skiff login {registry}`",
                        self.reference.repository()
                    )
                } else {
                    anyhow!("registry {registry}: {envelope}")
                }
            }
            OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout() => {
                anyhow!("cannot reach registry {registry}: {e}")
            }
            OciDistributionError::RequestError(e)
                if e.status()
                    .is_some_and(|s| s.as_u16() == 401 || s.as_u16() == 403) =>
            {
                anyhow!(
                    "registry {registry} refused access to {} ({e}); log in with `skiff login {registry}` or set SKIFF_REGISTRY_USERNAME/SKIFF_REGISTRY_PASSWORD",
                    self.reference.repository()
                )
            }
            _ => anyhow!("registry {registry}: {error}"),
        }
    }
}

/// rustls needs one process-wide crypto provider; Skiff uses ring.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

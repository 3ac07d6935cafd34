//! Pushing packages to and pulling them from OCI distribution registries.
//! `oci-client` authenticates and pushes; pulls are read by this module as
//! streams, so a hostile registry cannot exhaust memory or disk: a
//! manifest or config is refused past 4 MiB, a blob past the size its
//! descriptor declares (or [`MAX_BLOB_SIZE`]), and every blob is written to
//! disk as it arrives and enters the store only once its size and digest
//! match. Loopback registries are spoken to over plain HTTP, every other
//! one over HTTPS. Blobs already present are skipped, so an interrupted
//! transfer is resumed by running it again.

use crate::credentials;
use anyhow::{Context, anyhow, bail};
use futures::TryStreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use skiff_runtime::package::blob::{BlobSize, MAX_BLOB_SIZE, MAX_MANIFEST_SIZE};
use skiff_runtime::package::oci::{
    Descriptor, ImageManifest, MANIFEST_MEDIA_TYPE, WASM_CONFIG_MEDIA_TYPE, WASM_MEDIA_TYPE,
};
use skiff_runtime::package::{Digest, Store};
use std::io::IsTerminal;
use std::time::Duration;

/// Largest image manifest taken from a registry.
const MAX_MANIFEST: u64 = MAX_MANIFEST_SIZE;
/// Largest package config (the locked app manifest) taken from a registry.
const MAX_CONFIG: u64 = 4 << 20;
/// How long a pull may go without receiving data.
const IDLE: Duration = Duration::from_secs(60);
/// Most layers a pulled package may have: one per component and per file
/// mount, so a few dozen in practice.
const MAX_LAYERS: usize = 256;
/// Most bytes one pull may declare in all.
const MAX_PULL_TOTAL: u64 = 8 << 30;

/// A connection to the registry of one reference.
pub struct Registry {
    client: Client,
    /// Reads pulled manifests and blobs as bounded streams.
    http: reqwest::Client,
    /// `http` for loopback registries, else `https`.
    scheme: &'static str,
    reference: Reference,
    auth: RegistryAuth,
    /// Show progress bars (on a terminal only).
    progress: bool,
}

/// How pulls authenticate to the registry of their reference.
enum PullAuth {
    Anonymous,
    Bearer(String),
    Basic(String, String),
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
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(IDLE)
            .https_only(!loopback)
            .build()
            .context("cannot set up an HTTP client")?;
        Ok(Registry {
            client: Client::new(config),
            http,
            scheme: if loopback { "http" } else { "https" },
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
        let auth = self.pull_authorization().await?;
        let (bytes, image) = self.pull_manifest(&auth).await?;
        // Checked before anything is fetched, so a manifest of thousands of
        // huge layers cannot fill the disk.
        if image.layers.len() > MAX_LAYERS {
            anyhow::bail!(
                "{} has {} layers, more than the {MAX_LAYERS} a package may have; is this a Skiff package?",
                self.reference.whole(),
                image.layers.len()
            );
        }
        let total = std::iter::once(&image.config)
            .chain(&image.layers)
            .try_fold(0u64, |sum, blob| sum.checked_add(blob.size))
            .filter(|total| *total <= MAX_PULL_TOTAL)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{} declares more than {} in all; refusing to pull it",
                    self.reference.whole(),
                    bytesize::ByteSize(MAX_PULL_TOTAL)
                )
            })?;
        let progress = Progress::new(self.progress, "pulling", total);
        self.pull_blob(store, &auth, &image.config, MAX_CONFIG, &progress)
            .await?;
        for layer in &image.layers {
            self.pull_blob(store, &auth, layer, MAX_BLOB_SIZE, &progress)
                .await?;
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
        let auth = self.pull_authorization().await?;
        let (_, image) = self.pull_manifest(&auth).await?;
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
        self.pull_blob(store, &auth, wasm[0], MAX_BLOB_SIZE, &progress)
            .await?;
        progress.finish();
        Ok(wasm[0].digest.clone())
    }

    /// What pulls authenticate with: the registry's bearer token when it
    /// uses one, else this reference's basic credentials, if any.
    async fn pull_authorization(&self) -> anyhow::Result<PullAuth> {
        let token = self
            .client
            .auth(&self.reference, &self.auth, RegistryOperation::Pull)
            .await
            .map_err(|e| self.explain(e))?;
        Ok(match (token, &self.auth) {
            (Some(token), _) => PullAuth::Bearer(token),
            (None, RegistryAuth::Basic(username, password)) => {
                PullAuth::Basic(username.clone(), password.clone())
            }
            (None, _) => PullAuth::Anonymous,
        })
    }

    /// `GET /v2/<repository>/<path>` on this reference's registry; an
    /// answer other than 2xx becomes an error naming `what` was asked for.
    async fn get(
        &self,
        auth: &PullAuth,
        path: &str,
        accept: Option<&str>,
        what: &str,
    ) -> anyhow::Result<reqwest::Response> {
        let registry = self.reference.resolve_registry();
        let url = format!(
            "{}://{registry}/v2/{}/{path}",
            self.scheme,
            self.reference.repository()
        );
        let mut request = self.http.get(&url);
        if let Some(accept) = accept {
            request = request.header(http::header::ACCEPT, accept);
        }
        request = match auth {
            PullAuth::Anonymous => request,
            PullAuth::Bearer(token) => request.bearer_auth(token),
            PullAuth::Basic(username, password) => request.basic_auth(username, Some(password)),
        };
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = read_limited(response, 4 << 10)
            .await
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .unwrap_or_default();
        match status.as_u16() {
            401 | 403 => bail!(
                "registry {registry} refused access to {} ({status}); log in with `skiff login {registry}` or set SKIFF_REGISTRY={registry} with SKIFF_REGISTRY_USERNAME/SKIFF_REGISTRY_PASSWORD",
                self.reference.repository()
            ),
            404 if what == "the manifest" => {
                bail!("{} not found in registry {registry}", self.reference)
            }
            _ => bail!(
                "registry {registry} answered {status} for {what} of {}: {body}",
                self.reference
            ),
        }
    }

    /// The image manifest at this reference, at most [`MAX_MANIFEST`]
    /// bytes and matching its digest.
    async fn pull_manifest(&self, auth: &PullAuth) -> anyhow::Result<(Vec<u8>, ImageManifest)> {
        let target = self
            .reference
            .digest()
            .or(self.reference.tag())
            .unwrap_or("latest");
        let response = self
            .get(
                auth,
                &format!("manifests/{target}"),
                Some(MANIFEST_MEDIA_TYPE),
                "the manifest",
            )
            .await?;
        let announced = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if response.content_length().is_some_and(|n| n > MAX_MANIFEST) {
            bail!(
                "the manifest of {} is larger than {MAX_MANIFEST} bytes; refusing it",
                self.reference
            );
        }
        let bytes = read_limited(response, MAX_MANIFEST)
            .await
            .map_err(|e| anyhow!("the manifest of {}: {e}", self.reference))?;
        let actual = Digest::of(&bytes);
        if let Some(expected) = self.reference.digest().map(str::to_string).or(announced)
            && actual.as_str() != expected
        {
            bail!(
                "the manifest of {} does not match its digest {expected} (got {actual}); refusing it",
                self.reference
            );
        }
        let image = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not an OCI image manifest", self.reference))?;
        Ok((bytes, image))
    }

    /// Streams `blob` into `store`, refusing it past its declared size (or
    /// past `limit`, whatever the descriptor says) and unless it matches
    /// its digest; the store gets all of it or nothing.
    async fn pull_blob(
        &self,
        store: &Store,
        auth: &PullAuth,
        blob: &Descriptor,
        limit: u64,
        progress: &Progress,
    ) -> anyhow::Result<()> {
        if store.verify(&blob.digest).is_ok() {
            progress.advance(blob.size);
            return Ok(());
        }
        let registry = self.reference.resolve_registry();
        if blob.size > limit {
            bail!(
                "{}: blob {} declares {} bytes, over the limit of {limit}; refusing it",
                self.reference,
                blob.digest,
                blob.size
            );
        }
        let response = self
            .get(
                auth,
                &format!("blobs/{}", blob.digest),
                None,
                &format!("blob {}", blob.digest),
            )
            .await?;
        if let Some(length) = response.content_length()
            && length != blob.size
        {
            bail!(
                "registry {registry} sends {length} bytes for blob {} of {}, whose descriptor declares {}; refusing it",
                blob.digest,
                self.reference,
                blob.size
            );
        }
        let writer = store.writer(&blob.digest, BlobSize::Exactly(blob.size))?;
        let stream = response
            .bytes_stream()
            .inspect_ok(|chunk| progress.advance(chunk.len() as u64));
        writer
            .receive(stream, IDLE)
            .await
            .with_context(|| format!("refusing a blob of {}", self.reference))?;
        Ok(())
    }

    /// Turns a transport error into a message that says what to do.
    fn unreachable(&self, error: reqwest::Error) -> anyhow::Error {
        let registry = self.reference.resolve_registry();
        let mut reason = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(inner) = source {
            reason = format!("{reason}: {inner}");
            source = inner.source();
        }
        if error.is_connect() || error.is_timeout() {
            anyhow!("cannot reach registry {registry}: {reason}")
        } else {
            anyhow!("registry {registry}: {reason}")
        }
    }

    /// Turns a client error into a message that says what to do.
    fn explain(&self, error: OciDistributionError) -> anyhow::Error {
        let registry = self.reference.resolve_registry();
        match &error {
            OciDistributionError::AuthenticationFailure(_)
            | OciDistributionError::UnauthorizedError { .. } => anyhow!(
                "registry {registry} refused access to {}: {error}; log in with `skiff login {registry}` or set SKIFF_REGISTRY={registry} with SKIFF_REGISTRY_USERNAME/SKIFF_REGISTRY_PASSWORD",
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
                    "registry {registry} refused access to {} ({e}); log in with `skiff login {registry}` or set SKIFF_REGISTRY={registry} with SKIFF_REGISTRY_USERNAME/SKIFF_REGISTRY_PASSWORD",
                    self.reference.repository()
                )
            }
            _ => anyhow!("registry {registry}: {error}"),
        }
    }
}

/// The body of `response`, refused past `limit` bytes or after [`IDLE`]
/// without data.
async fn read_limited(mut response: reqwest::Response, limit: u64) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    loop {
        let chunk = tokio::time::timeout(IDLE, response.chunk())
            .await
            .map_err(|_| anyhow!("no data for {IDLE:?}"))??;
        let Some(chunk) = chunk else {
            return Ok(bytes);
        };
        if (bytes.len() + chunk.len()) as u64 > limit {
            bail!("larger than {limit} bytes; refusing it");
        }
        bytes.extend_from_slice(&chunk);
    }
}

/// rustls needs one process-wide crypto provider; Skiff uses ring.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

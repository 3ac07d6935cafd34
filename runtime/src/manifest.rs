//! The app manifest, `skiff.toml`: its schema, parsing with errors that name
//! file, line and field, and the checks that span several components.

pub mod rollout;
mod units;
pub use rollout::{Bound, RolloutBounds};
pub use units::{ByteSize, DurationSpec};

use crate::capability::outbound_http::OutboundHost;
use crate::mesh::CallerPattern;
use crate::route::Route;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The Wasm stack an instance gets unless `limits.stack` says otherwise.
pub const DEFAULT_STACK: usize = 512 << 10;

/// The longest `request_timeout`.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

/// The file name `skiff run DIR` looks for.
pub const MANIFEST_FILE: &str = "skiff.toml";

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read at all.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The manifest path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax error, unknown field, or a value of the wrong form.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        /// The manifest path.
        path: PathBuf,
        /// 1-based line of the offending text.
        line: usize,
        /// 1-based column of the offending text.
        column: usize,
        /// What was wrong, naming the field.
        message: String,
    },
    /// The file parsed but its contents contradict each other.
    #[error("{path}: {message}")]
    Invalid {
        /// The manifest path.
        path: PathBuf,
        /// What was wrong, naming the component and key.
        message: String,
    },
}

/// A parsed `skiff.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// `[app]`: the app's identity.
    pub app: AppInfo,
    /// `[component.<name>]` tables, one per component, by name.
    #[serde(default)]
    pub component: BTreeMap<ComponentName, ComponentSpec>,
}

/// `[app]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppInfo {
    /// `name = "hello"`: lower-case letters, digits and `-`.
    pub name: ComponentName,
    /// `version = "0.1.0"`; default `"0.0.0"`.
    #[serde(default = "default_version")]
    pub version: String,
    /// `description = "..."`; optional.
    #[serde(default)]
    pub description: Option<String>,
    /// `canary = [10, 50, 100]`: in a cluster, a new version of the app
    /// gets these shares of requests (percent) in turn, one
    /// `canary_interval` each, before it replaces the old one; errors
    /// roll it back. Empty (the default): a rolling update.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canary: Vec<u32>,
    /// `canary_interval = "1m"`: how long each canary step lasts. Default
    /// [`rollout::DEFAULT_CANARY_INTERVAL`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_interval: Option<DurationSpec>,
    /// `domains = ["shop.example.com"]`: host names ingress serves the app
    /// at, whatever the path; over HTTPS too once the cluster holds a
    /// certificate for them (`skiff cert add`, or ACME). No two apps may
    /// claim one domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<crate::domain::Domain>,
    /// `https_redirect = true`: plain-HTTP requests for the app's domains
    /// are redirected (308) to HTTPS, on nodes serving HTTPS with a
    /// certificate for the domain.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub https_redirect: bool,
}

fn default_version() -> String {
    "0.0.0".to_string()
}

/// `[component.<name>]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentSpec {
    /// `source = "target/wasm32-wasip2/release/hello.wasm"`: the component's
    /// bytes, relative to the manifest's directory.
    pub source: PathBuf,
    /// `build = "cargo build --target wasm32-wasip2 --release"`: run by
    /// `skiff run --build` through `sh -c`, in `workdir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    /// `workdir = "."`: where `build` runs, relative to the manifest's
    /// directory; default the manifest's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<PathBuf>,
    /// `route = "/api/..."`: exact (`/x`), prefix (`/x/...`) or everything
    /// (`/...`). A component without a route is not reachable from outside.
    #[serde(default)]
    pub route: Option<Route>,
    /// `env = { GREETING = "hi" }`: the only environment variables the
    /// component sees.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `files = [{ source = "public", destination = "/www" }]`: host
    /// directories mounted read-only into the guest.
    #[serde(default)]
    pub files: Vec<FileMount>,
    /// `allowed_outbound_hosts = ["https://api.example.com",
    /// "tcp://db.internal:5432", "*://10.0.0.0/24:6379"]`: the hosts the
    /// component may call over HTTP (`http`, `https`, `*` entries) and
    /// connect to over TCP (`tcp` entries, and `*` entries writing a port);
    /// everything else is denied.
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<OutboundHost>,
    /// `allow_callers = ["shop/*", "billing/api"]`: the workloads that may
    /// call this component over the mesh (`app/component`, `app/*` or
    /// `*`); none may unless listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_callers: Vec<CallerPattern>,
    /// `[component.<name>.limits]`
    #[serde(default)]
    pub limits: Limits,
    /// `[component.<name>.dependencies]`, e.g.
    /// `"acme:lib/greet" = "../lib/greeter.wasm"` (or an `oci://` reference):
    /// imports satisfied by another component's exports, composed into one
    /// component before the app is run or packed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dependencies: BTreeMap<String, String>,
    /// `[component.<name>.scale]`: how many replicas a cluster runs.
    #[serde(default)]
    pub scale: Scale,
    /// `[component.<name>.placement]`: where a cluster may run them.
    #[serde(default)]
    pub placement: Placement,
    /// `health = "/healthz"`: a path a node requests (`GET`) from a new
    /// replica before it takes traffic; it is ready once that answers 2xx.
    /// Without it, a replica is ready once an instance of it is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// `[component.<name>.rollout]`: how a new version replaces the old.
    #[serde(default)]
    pub rollout: RolloutBounds,
    /// `request_timeout = "5s"`: in a cluster, how long a caller (ingress
    /// or another component) waits for the answer's head, every try on
    /// every node included; past it the caller gets 504. Default: no
    /// limit but `limits.timeout` where the request runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<DurationSpec>,
}

/// `[component.<name>.scale]`: a fixed count (`replicas = 3`), or bounds
/// the cluster's autoscaler keeps the count within as traffic comes and
/// goes (`min`, `max`, `target_concurrency`, `scale_down_delay`); not both.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(try_from = "ScaleKeys")]
pub struct Scale {
    /// `replicas = 3`: replicas the cluster keeps running whatever the
    /// traffic. Default 1 when no autoscaling key is given; `skiff run`
    /// ignores it (it serves one copy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// `min = 0`: fewest replicas while autoscaled; 0 lets an idle
    /// component run none, its next request held until one is ready.
    /// Default 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    /// `max = 10`: most replicas while autoscaled. Default
    /// [`DEFAULT_MAX_REPLICAS`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// `target_concurrency = 50`: requests in flight (running or queued)
    /// per replica the autoscaler aims for. Default 70% of
    /// `limits.max_concurrency` (see [`Scale::target_concurrency`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_concurrency: Option<u32>,
    /// `scale_down_delay = "30s"`: how long demand must stay low before
    /// replicas are removed. Default [`DEFAULT_SCALE_DOWN_DELAY`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_down_delay: Option<DurationSpec>,
}

/// The keys of `[component.<name>.scale]` as written; checked together
/// into a [`Scale`], so a contradiction is reported at the table's line.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ScaleKeys {
    replicas: Option<u32>,
    min: Option<u32>,
    max: Option<u32>,
    target_concurrency: Option<u32>,
    scale_down_delay: Option<DurationSpec>,
}

impl TryFrom<ScaleKeys> for Scale {
    type Error = String;

    fn try_from(keys: ScaleKeys) -> Result<Scale, String> {
        let scale = Scale {
            replicas: keys.replicas,
            min: keys.min,
            max: keys.max,
            target_concurrency: keys.target_concurrency,
            scale_down_delay: keys.scale_down_delay,
        };
        scale.validate()?;
        Ok(scale)
    }
}

/// The most replicas an autoscaled component gets when its manifest sets
/// no `max`.
pub const DEFAULT_MAX_REPLICAS: u32 = 10;

/// The longest `scale_down_delay`.
pub const MAX_SCALE_DOWN_DELAY: Duration = Duration::from_secs(3600);

/// The most replicas of one component a manifest (or `skiff scale`) may
/// ask for.
pub const MAX_REPLICAS: u32 = 10_000;

/// How long demand must stay low before an autoscaled component loses
/// replicas, when its manifest sets no `scale_down_delay`: long enough
/// that a pause between bursts keeps the replicas the next burst needs.
pub const DEFAULT_SCALE_DOWN_DELAY: Duration = Duration::from_secs(30);

/// How many replicas a component runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Replicas {
    /// Exactly this many.
    Fixed(u32),
    /// As many as its traffic needs, within these bounds.
    Auto {
        /// Fewest; 0 allowed.
        min: u32,
        /// Most.
        max: u32,
    },
}

impl Replicas {
    /// The bounds: a fixed count is its own minimum and maximum.
    pub fn bounds(self) -> (u32, u32) {
        match self {
            Replicas::Fixed(n) => (n, n),
            Replicas::Auto { min, max } => (min, max),
        }
    }
}

impl fmt::Display for Replicas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Replicas::Fixed(1) => write!(f, "1 replica"),
            Replicas::Fixed(n) => write!(f, "{n} replicas"),
            Replicas::Auto { min, max } => {
                write!(f, "autoscaled between {min} and {max} replicas")
            }
        }
    }
}

impl Scale {
    /// Whether any autoscaling key is set.
    pub fn autoscaled(&self) -> bool {
        self.min.is_some()
            || self.max.is_some()
            || self.target_concurrency.is_some()
            || self.scale_down_delay.is_some()
    }

    /// The replicas declared: fixed, or the autoscaler's bounds.
    pub fn replicas(&self) -> Replicas {
        if self.autoscaled() {
            let min = self.min.unwrap_or(1);
            Replicas::Auto {
                min,
                max: self.max.unwrap_or(DEFAULT_MAX_REPLICAS.max(min)),
            }
        } else {
            Replicas::Fixed(self.replicas.unwrap_or(1))
        }
    }

    /// The concurrency per replica the autoscaler aims for: as declared,
    /// or 70% of what one replica admits (`max_concurrency`), so replicas
    /// are added while the running ones still have room, before requests
    /// queue (the headroom covers the moments until the new ones serve).
    pub fn target_concurrency(&self, limits: &Limits) -> u32 {
        self.target_concurrency.unwrap_or_else(|| {
            (limits.max_concurrency.saturating_mul(7))
                .div_ceil(10)
                .max(1)
        })
    }

    /// How long demand must stay low before replicas are removed.
    pub fn scale_down_delay(&self) -> Duration {
        self.scale_down_delay
            .map_or(DEFAULT_SCALE_DOWN_DELAY, |d| d.as_duration())
    }

    /// Checks the keys together.
    fn validate(&self) -> Result<(), String> {
        if self.replicas.is_some() && self.autoscaled() {
            return Err("scale.replicas fixes the count, and min, max, target_concurrency and scale_down_delay autoscale it: give one or the other".to_string());
        }
        if let (Some(min), Some(max)) = (self.min, self.max)
            && min > max
        {
            return Err(format!("scale.min ({min}) is above scale.max ({max})"));
        }
        for (key, value) in [
            ("replicas", self.replicas),
            ("min", self.min),
            ("max", self.max),
        ] {
            if let Some(n) = value.filter(|n| *n > MAX_REPLICAS) {
                return Err(format!(
                    "scale.{key} = {n} is over the limit of {MAX_REPLICAS} replicas per component"
                ));
            }
        }
        if let (Some(min), None) = (self.min, self.max)
            && min > DEFAULT_MAX_REPLICAS
        {
            return Err(format!(
                "scale.min ({min}) is above the default max ({DEFAULT_MAX_REPLICAS}): set scale.max too"
            ));
        }
        if self.max == Some(0) {
            return Err(
                "scale.max must be at least 1 (min = 0 lets an idle component run no replica)"
                    .to_string(),
            );
        }
        if self
            .scale_down_delay
            .is_some_and(|d| d.as_duration() < Duration::from_secs(1))
        {
            return Err("scale.scale_down_delay must be at least \"1s\": shorter, replicas would come and go with every pause between requests".to_string());
        }
        if self
            .scale_down_delay
            .is_some_and(|d| d.as_duration() > MAX_SCALE_DOWN_DELAY)
        {
            return Err("scale.scale_down_delay must be at most \"1h\"; for replicas that stay, raise scale.min".to_string());
        }
        if self.target_concurrency == Some(0) {
            return Err(
                "scale.target_concurrency must be at least 1 (requests in flight per replica)"
                    .to_string(),
            );
        }
        Ok(())
    }
}

/// `[component.<name>.placement]`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Placement {
    /// `labels = { zone = "eu-1" }`: a node must carry every one of these
    /// labels to run a replica.
    pub labels: BTreeMap<String, String>,
    /// `strategy = "spread"` (default: replicas on the least loaded nodes)
    /// or `"binpack"` (fill nodes before using more).
    pub strategy: PlacementStrategy,
    /// `memory = "256MiB"`: what one replica reserves on its node, as a
    /// Kubernetes memory request does. Default: what a few instances of
    /// the component are expected to use (see [`crate::reservation`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
}

/// How a component's replicas are placed over nodes.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PlacementStrategy {
    /// Prefer the least loaded node.
    #[default]
    Spread,
    /// Prefer the most loaded node that still fits.
    Binpack,
}

/// One read-only directory mount.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileMount {
    /// Host directory, relative to the manifest's directory.
    pub source: PathBuf,
    /// Absolute path where the guest sees it, e.g. `"/www"`.
    pub destination: String,
}

/// `[component.<name>.limits]`: what one instance of the component may use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// `memory = "128MiB"`: linear memory cap per instance, all of its
    /// linear memories together; growth past it fails inside the guest.
    /// Default 128 MiB.
    pub memory: ByteSize,
    /// `timeout = "30s"`: wall-clock budget for one request, including
    /// streaming the response body. Default 30 s.
    pub timeout: DurationSpec,
    /// `max_concurrency = 100`: instances of this component running at once
    /// on one node. Default 100. Every replica of a node draws from the
    /// node's shared instance slots, and one replica never takes the last
    /// quarter of them: past that, its requests wait for a slot.
    pub max_concurrency: u32,
    /// `max_queued = 100`: requests waiting for a free instance slot before
    /// further ones get 503. Default 100.
    pub max_queued: u32,
    /// `max_request_body = "16MiB"`: larger request bodies get 413.
    /// Default 16 MiB.
    pub max_request_body: ByteSize,
    /// `max_response_body = "128MiB"`: a response growing past this is cut
    /// off (or refused with 500 when its length is declared up front).
    /// Default 128 MiB.
    pub max_response_body: ByteSize,
    /// `max_outbound_requests = 32`: outbound HTTP requests one instance
    /// may make. Default 32.
    pub max_outbound_requests: u32,
    /// `stack = "512KiB"`: the Wasm call stack of one instance; deeper
    /// recursion traps. Rounded up to a power of two between 64 KiB and
    /// the node's maximum (8 MiB), so `"600KiB"` gets 1 MiB. Default 512 KiB.
    pub stack: ByteSize,
    /// `max_resources = 1000`: host resources (streams, fields, requests...)
    /// one instance may hold at once. Default 1,000.
    pub max_resources: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: ByteSize::mib(128),
            timeout: DurationSpec::secs(30),
            max_concurrency: 100,
            max_queued: 100,
            max_request_body: ByteSize::mib(16),
            max_response_body: ByteSize::mib(128),
            max_outbound_requests: 32,
            stack: ByteSize::kib(512),
            max_resources: 1_000,
        }
    }
}

/// A name of an app or component: `[a-z0-9][a-z0-9-]*`, at most 63 bytes, so
/// it can appear in DNS names (`<component>.<app>.skiff.internal`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ComponentName(String);

impl ComponentName {
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ComponentName {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        let valid_chars = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let valid_start = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !valid_chars || !valid_start || name.len() > 63 {
            return Err(format!(
                "invalid name {name:?}: use lower-case letters, digits and '-', starting with a letter or digit, at most 63 characters"
            ));
        }
        Ok(ComponentName(name))
    }
}

impl From<ComponentName> for String {
    fn from(name: ComponentName) -> String {
        name.0
    }
}

impl fmt::Display for ComponentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Manifest {
    /// Reads and validates the manifest at `path`.
    ///
    /// # Errors
    ///
    /// [`ManifestError`] naming the file, and the line and field where the
    /// problem is one of syntax or form.
    pub fn from_file(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Manifest::parse(&text, path)
    }

    /// Parses and validates manifest `text`; `path` is only used in errors.
    ///
    /// # Errors
    ///
    /// As [`Manifest::from_file`].
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = toml::from_str(text).map_err(|err| {
            let (line, column) = err
                .span()
                .map(|span| line_and_column(text, span.start))
                .unwrap_or((1, 1));
            ManifestError::Syntax {
                path: path.to_path_buf(),
                line,
                column,
                message: err.message().trim_end().to_string(),
            }
        })?;
        manifest
            .validate()
            .map_err(|message| ManifestError::Invalid {
                path: path.to_path_buf(),
                message,
            })?;
        Ok(manifest)
    }

    /// The manifest for a bare `.wasm` file: one component named after the
    /// file, serving every path, with default limits and no capabilities.
    pub fn for_single_component(wasm: &Path) -> Manifest {
        let stem = wasm
            .file_stem()
            .map(|s| s.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let cleaned: String = stem
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let cleaned = cleaned
            .trim_matches('-')
            .chars()
            .take(63)
            .collect::<String>();
        let name = ComponentName::try_from(cleaned)
            .unwrap_or_else(|_| ComponentName("component".to_string()));
        let spec = ComponentSpec {
            source: wasm.to_path_buf(),
            build: None,
            workdir: None,
            route: Some(Route::everything()),
            env: BTreeMap::new(),
            files: Vec::new(),
            allowed_outbound_hosts: Vec::new(),
            allow_callers: Vec::new(),
            limits: Limits::default(),
            dependencies: BTreeMap::new(),
            scale: Scale::default(),
            placement: Placement::default(),
            health: None,
            rollout: RolloutBounds::default(),
            request_timeout: None,
        };
        Manifest {
            app: AppInfo {
                name: name.clone(),
                version: default_version(),
                description: None,
                canary: Vec::new(),
                canary_interval: None,
                domains: Vec::new(),
                https_redirect: false,
            },
            component: BTreeMap::from([(name, spec)]),
        }
    }

    /// Checks that need the whole manifest: at least one component, no two
    /// components on one route, sane limits and mounts.
    ///
    /// # Errors
    ///
    /// A message naming the components and keys at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.component.is_empty() {
            return Err(
                "no components: add a [component.<name>] table with a `source`".to_string(),
            );
        }
        rollout::canary_steps(&self.app.canary).map_err(|e| format!("[app] {e}"))?;
        rollout::canary_interval(self.app.canary_interval).map_err(|e| format!("[app] {e}"))?;
        let mut domains = std::collections::BTreeSet::new();
        if let Some(twice) = self.app.domains.iter().find(|d| !domains.insert(*d)) {
            return Err(format!("[app] domains lists \"{twice}\" twice"));
        }
        if self.app.https_redirect && self.app.domains.is_empty() {
            return Err(
                "[app] https_redirect applies to the app's domains, and it has none: add `domains = [\"...\"]`"
                    .to_string(),
            );
        }
        let mut routes: BTreeMap<&Route, &ComponentName> = BTreeMap::new();
        for (name, spec) in &self.component {
            if spec.request_timeout.is_some_and(|t| {
                t.as_duration() < Duration::from_millis(10) || t.as_duration() > MAX_REQUEST_TIMEOUT
            }) {
                return Err(format!(
                    "component \"{name}\": request_timeout must be from \"10ms\" to \"1h\""
                ));
            }
            if let Some(health) = &spec.health
                && (!health.starts_with('/') || health.parse::<http::uri::PathAndQuery>().is_err())
            {
                return Err(format!(
                    "component \"{name}\": health = {health:?} is not a path: give one such as \"/healthz\""
                ));
            }
            if let Some(route) = &spec.route
                && let Some(other) = routes.insert(route, name)
            {
                return Err(format!(
                    "components \"{other}\" and \"{name}\" both claim route \"{route}\""
                ));
            }
            if spec.source.as_os_str().is_empty() {
                return Err(format!(
                    "component \"{name}\": source is empty; give the path of its .wasm file"
                ));
            }
            let limits = &spec.limits;
            if limits.max_concurrency == 0 {
                return Err(format!(
                    "component \"{name}\": limits.max_concurrency must be at least 1"
                ));
            }
            if limits.timeout.as_duration().is_zero() {
                return Err(format!(
                    "component \"{name}\": limits.timeout must be above 0"
                ));
            }
            if limits.memory.bytes() < 64 * 1024 {
                return Err(format!(
                    "component \"{name}\": limits.memory must be at least \"64KiB\" (one Wasm page)"
                ));
            }
            if limits.stack.bytes() < 64 * 1024 {
                return Err(format!(
                    "component \"{name}\": limits.stack must be at least \"64KiB\""
                ));
            }
            let target = spec.scale.target_concurrency(limits);
            let most = limits.max_concurrency.saturating_add(limits.max_queued);
            if target > most {
                return Err(format!(
                    "component \"{name}\": scale.target_concurrency ({target}) is above what one replica takes at once (limits.max_concurrency {} + limits.max_queued {} = {most}), so demand could never reach it: lower it, or raise the limits",
                    limits.max_concurrency, limits.max_queued
                ));
            }
            for mount in &spec.files {
                if !mount.destination.starts_with('/') {
                    return Err(format!(
                        "component \"{name}\": files destination {:?} must be an absolute guest path such as \"/data\"",
                        mount.destination
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Converts a byte offset in `text` to a 1-based (line, column).
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests;

//! Every app's routes and endpoints, as last heard from the control plane:
//! which app and component a request is for (by `Host`, then by the route
//! that matches its path best), and where the component's replicas run.

use super::replicas::Pick;
use crate::api::{AppRouting, Endpoint};
use skiff_runtime::mesh::{CallerPolicy, WorkloadId};
use skiff_runtime::route::Route;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Every app's routes and endpoints, as last heard from the control plane.
#[derive(Default)]
pub(crate) struct Routing {
    /// Sorted by name. Shared with the routing this one was made from, so
    /// a change to one app rebuilds only that app.
    apps: Vec<Arc<AppRoutes>>,
    /// Each app domain (`[app] domains`), to the app's index in `apps`.
    domains: HashMap<String, usize>,
}

pub(crate) struct AppRoutes {
    pub(crate) name: String,
    /// Whether plain-HTTP requests for its domains go to HTTPS.
    pub(crate) https_redirect: bool,
    routes: Vec<(Route, String)>,
    /// Every component of the app, sorted.
    components: Vec<String>,
    endpoints: HashMap<String, Vec<Endpoint>>,
    /// Per component, who may call it; `None` when the control plane did
    /// not say (then only the callee's node checks).
    callers: Option<HashMap<String, CallerPolicy>>,
    /// Components that may run no replica while idle: their requests are
    /// held, not refused, while none runs.
    scale_from_zero: Vec<String>,
    /// Per component, how long one request may run there.
    timeouts: HashMap<String, Duration>,
    /// Per component with a `request_timeout`, that timeout.
    request_timeouts: HashMap<String, Duration>,
    /// Per component split between versions, the version that gets a
    /// share of its requests, and the share (percent).
    split: HashMap<String, (String, u32)>,
    next: AtomicUsize,
    /// Counts requests of split components, to deal out the shares.
    dealt: AtomicUsize,
    /// Keys the hash that turns the count into a share: random, so no
    /// client can tell which of its requests go to which version.
    dealer: std::hash::RandomState,
}

impl AppRoutes {
    fn new(app: &AppRouting) -> AppRoutes {
        AppRoutes {
            name: app.name.clone(),
            https_redirect: app.https_redirect,
            routes: app
                .routes
                .iter()
                .filter_map(|(route, component)| {
                    Some((Route::try_from(route.clone()).ok()?, component.clone()))
                })
                .collect(),
            components: {
                let mut components = app.components.clone();
                components.sort();
                components
            },
            endpoints: app.endpoints.clone().into_iter().collect(),
            callers: app.callers.as_ref().map(|callers| {
                callers
                    .iter()
                    .map(|(c, patterns)| (c.clone(), CallerPolicy::new(patterns.clone())))
                    .collect()
            }),
            scale_from_zero: app.scale_from_zero.clone(),
            timeouts: app
                .timeouts_ms
                .iter()
                .map(|(c, ms)| (c.clone(), Duration::from_millis(*ms)))
                .collect(),
            split: app.split.clone().into_iter().collect(),
            request_timeouts: app
                .request_timeouts_ms
                .iter()
                .map(|(c, ms)| (c.clone(), Duration::from_millis(*ms)))
                .collect(),
            next: AtomicUsize::new(0),
            dealt: AtomicUsize::new(0),
            dealer: std::hash::RandomState::new(),
        }
    }

    /// Which versions of `component` the next request may go to: all of
    /// them, unless its requests are split (a canary). Each request goes
    /// to the version with a share of p% with probability p, decided by a
    /// keyed hash of a counter: no client can predict, or steer, which of
    /// its requests a canary gets.
    pub(crate) fn version_pick(&self, component: &str) -> Pick<'_> {
        use std::hash::BuildHasher;
        let Some((package, percent)) = self.split.get(component) else {
            return Pick::Any;
        };
        let n = self.dealt.fetch_add(1, Ordering::Relaxed);
        if self.dealer.hash_one(n) % 100 < u64::from(*percent) {
            Pick::Only(package)
        } else {
            Pick::Except(package)
        }
    }

    /// How long a node forwarding a request for `component` waits for the
    /// answer's head: twice its `limits.timeout` (the request may wait
    /// that long for an instance there, then run that long) and a second
    /// more; a minute when the control plane did not say. A node that
    /// froze with the request is then given up on (504), not waited for
    /// until the client leaves.
    pub(crate) fn answer_deadline(&self, component: &str) -> Duration {
        self.timeouts
            .get(component)
            .map_or(Duration::from_secs(60), |timeout| {
                timeout.saturating_mul(2) + Duration::from_secs(1)
            })
    }

    /// How long a caller waits for `component`'s answer, if it has a
    /// `request_timeout`.
    pub(crate) fn request_timeout(&self, component: &str) -> Option<Duration> {
        self.request_timeouts.get(component).copied()
    }

    /// Whether `component` may run no replica while idle, so a request
    /// for it is held until one runs.
    pub(crate) fn scales_from_zero(&self, component: &str) -> bool {
        self.scale_from_zero.iter().any(|c| c == component)
    }

    /// The component whose route serves `path` best.
    pub(crate) fn route_for(&self, path: &str) -> Option<&str> {
        self.routes
            .iter()
            .filter(|(route, _)| route.matches(path))
            .max_by_key(|(route, _)| route.specificity())
            .map(|(_, component)| component.as_str())
    }

    /// Whether any component of the app has a route.
    pub(crate) fn has_routes(&self) -> bool {
        !self.routes.is_empty()
    }

    /// Whether `component` has a route, so ingress may reach it.
    pub(crate) fn is_routed(&self, component: &str) -> bool {
        self.routes.iter().any(|(_, c)| c == component)
    }

    /// Whether the app has a component named `component`.
    pub(crate) fn has_component(&self, component: &str) -> bool {
        self.components
            .binary_search_by(|c| c.as_str().cmp(component))
            .is_ok()
    }

    /// Where `component`'s replicas run, as last heard.
    pub(crate) fn endpoints(&self, component: &str) -> &[Endpoint] {
        self.endpoints.get(component).map_or(&[], Vec::as_slice)
    }

    /// A new seed for choosing among endpoints: a counter, so successive
    /// requests spread.
    pub(crate) fn next_seed(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether `component` surely refuses mesh calls from `caller`: its
    /// `allow_callers`, as last heard, does not list it.
    pub(crate) fn refuses(&self, component: &str, caller: &WorkloadId) -> bool {
        self.callers.as_ref().is_some_and(|callers| {
            callers
                .get(component)
                .is_none_or(|policy| !policy.allows(caller))
        })
    }

    /// Whether `node` runs a replica of `component`, as last heard.
    pub(crate) fn runs_on(&self, component: &str, node: &str) -> bool {
        self.endpoints
            .get(component)
            .is_some_and(|eps| eps.iter().any(|e| e.node == node))
    }
}

impl Routing {
    /// This routing with `changed` apps (new or updated) and without the
    /// `removed` ones; `whole` replaces every app instead.
    pub(crate) fn changed(
        &self,
        whole: bool,
        changed: &[AppRouting],
        removed: &[String],
    ) -> Routing {
        let replaced: std::collections::HashSet<&str> = changed
            .iter()
            .map(|a| a.name.as_str())
            .chain(removed.iter().map(String::as_str))
            .collect();
        let kept = self
            .apps
            .iter()
            .filter(|a| !whole && !replaced.contains(a.name.as_str()))
            .cloned();
        let mut apps: Vec<Arc<AppRoutes>> = kept
            .chain(changed.iter().map(|a| Arc::new(AppRoutes::new(a))))
            .collect();
        apps.sort_by(|a, b| a.name.cmp(&b.name));
        // The control plane lets no two apps claim a domain; were it to,
        // the first by name keeps it.
        let mut domains = HashMap::new();
        let named_domains = changed.iter().map(|a| (a.name.as_str(), &a.domains));
        let kept_domains = self.domains.iter().filter_map(|(domain, i)| {
            let app = &self.apps[*i];
            (!whole && !replaced.contains(app.name.as_str())).then_some((app.name.as_str(), domain))
        });
        let index: HashMap<&str, usize> = apps
            .iter()
            .enumerate()
            .map(|(i, a)| (a.name.as_str(), i))
            .collect();
        for (app, domain) in named_domains
            .flat_map(|(app, ds)| ds.iter().map(move |d| (app, d)))
            .chain(kept_domains)
        {
            let i = index[app];
            domains
                .entry(domain.clone())
                .and_modify(|held: &mut usize| *held = (*held).min(i))
                .or_insert(i);
        }
        Routing { apps, domains }
    }

    /// The app named `name` (app names are lower case; host names are
    /// compared case-insensitively).
    pub(crate) fn named(&self, name: &str) -> Option<&AppRoutes> {
        let name = name.to_ascii_lowercase();
        let i = self
            .apps
            .binary_search_by(|a| a.name.as_str().cmp(&name))
            .ok()?;
        Some(&self.apps[i])
    }

    /// The app named `name`, shared: for a request that outlives this
    /// routing (one held until a replica runs).
    pub(crate) fn app(&self, name: &str) -> Option<Arc<AppRoutes>> {
        let i = self
            .apps
            .binary_search_by(|a| a.name.as_str().cmp(name))
            .ok()?;
        Some(self.apps[i].clone())
    }

    /// The app a `Host` header names: one of its `[app] domains`, else
    /// by its first label (`Host: shop.example.com` or just `Host: shop`;
    /// host names are case-insensitive, app names lower case).
    pub(crate) fn named_by_host(&self, host: Option<&str>) -> Option<&AppRoutes> {
        let host = host_name(host?);
        if let Some(i) = self.domains.get(host.as_str()) {
            return Some(&self.apps[*i]);
        }
        self.named(
            host.split_once('.')
                .map_or(host.as_str(), |(first, _)| first),
        )
    }

    /// The app whose `[app] domains` lists `host` (a host name).
    pub(crate) fn by_domain(&self, host: &str) -> Option<&AppRoutes> {
        self.domains.get(host).map(|i| &*self.apps[*i])
    }

    /// The app and component for a request.
    pub(crate) fn pick(&self, host: Option<&str>, path: &str) -> Option<(&AppRoutes, &str)> {
        let named = self.named_by_host(host);
        let candidates: Vec<&AppRoutes> = match named {
            Some(app) => vec![app],
            None => self.apps.iter().map(|a| &**a).collect(),
        };
        let mut best: Option<((bool, usize, usize), &AppRoutes, &str)> = None;
        for app in candidates {
            for (route, component) in &app.routes {
                if !route.matches(path) {
                    continue;
                }
                let rank = route.specificity();
                if best.as_ref().is_none_or(|(r, _, _)| rank > *r) {
                    best = Some((rank, app, component));
                }
            }
        }
        best.map(|(_, app, component)| (app, component))
    }
}

/// The host name of a `Host` header or authority (`shop.example.com:8443`,
/// `[::1]:80`), in lower case, without port or a trailing dot.
pub(crate) fn host_name(host: &str) -> String {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

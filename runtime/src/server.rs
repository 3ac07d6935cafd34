//! The HTTP/1.1 front door of `skiff run`: accepts connections with hyper,
//! routes each request to its component (and its guests' mesh calls to the
//! app's other components), and shuts down gracefully, finishing
//! in-flight requests.

use crate::app::LoadedApp;
use crate::capability::logging::LogSink;
use crate::invoke::{ResponseBody, invoke, plain};
use crate::mesh::{Inbound, LocalMesh, MeshRouter};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// How long in-flight requests may take to finish after shutdown begins.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client may take to send a request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address is taken.
    #[error(
        "cannot listen on {addr}: the address is already in use; stop the other server or pick another with --listen"
    )]
    AddrInUse {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// Any other bind failure.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A bound listener serving one app.
pub struct Server {
    listener: TcpListener,
    app: Arc<LoadedApp>,
    log_sink: Arc<dyn LogSink>,
}

impl Server {
    /// Binds `addr` for `app`.
    ///
    /// # Errors
    ///
    /// [`ServeError`] when the address cannot be bound.
    pub async fn bind(
        addr: SocketAddr,
        app: Arc<LoadedApp>,
        log_sink: Arc<dyn LogSink>,
    ) -> Result<Server, ServeError> {
        let listener = TcpListener::bind(addr).await.map_err(|source| {
            if source.kind() == std::io::ErrorKind::AddrInUse {
                ServeError::AddrInUse { addr }
            } else {
                ServeError::Bind { addr, source }
            }
        })?;
        Ok(Server {
            listener,
            app,
            log_sink,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    /// The app being served.
    pub fn app(&self) -> Arc<LoadedApp> {
        self.app.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting and waits up
    /// to [`DRAIN_TIMEOUT`] for open connections to finish their requests.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let local = self.local_addr();
        let app = self.app.clone();
        let log_sink = self.log_sink.clone();
        // Mesh names resolve to this app's own components.
        let mesh: Arc<dyn MeshRouter> = LocalMesh::new(app.clone(), log_sink.clone());
        accept_until(self.listener, shutdown, DRAIN_TIMEOUT, move |accepted| {
            let app = app.clone();
            let log_sink = log_sink.clone();
            let mesh = mesh.clone();
            let service = hyper::service::service_fn(move |request| {
                let app = app.clone();
                let log_sink = log_sink.clone();
                let mesh = mesh.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        dispatch(&app, request, &log_sink, &mesh, local).await,
                    )
                }
            });
            tokio::spawn(serve_http1(
                accepted.watcher,
                TokioIo::new(accepted.stream),
                service,
            ));
        })
        .await;
    }
}

/// A connection taken by [`accept_until`].
pub struct Accepted {
    /// The TCP stream, with Nagle's algorithm off.
    pub stream: TcpStream,
    /// The peer's address.
    pub peer: SocketAddr,
    /// Keeps graceful shutdown waiting while the connection is served.
    pub watcher: Watcher,
}

/// Accepts connections on `listener` until `shutdown` completes, handing
/// each to `serve`; then stops accepting and waits up to `drain` for the
/// connections being watched to finish their requests.
pub async fn accept_until(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
    mut serve: impl FnMut(Accepted),
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off
                    // briefly rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        serve(Accepted {
            stream,
            peer,
            watcher: graceful.watcher(),
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within {drain:?}");
    }
}

/// Serves HTTP/1.1 on `io` with `service`, with keep-alive and a limit on
/// reading request heads (a client trickling its head, slowloris, is cut
/// off), watched by `watcher` for graceful shutdown.
pub async fn serve_http1<I, S, B>(watcher: Watcher, io: I, service: S)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = http1::Builder::new()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(io, service);
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!("connection ended with error: {e}");
    }
}

async fn dispatch(
    app: &LoadedApp,
    mut request: hyper::Request<Incoming>,
    log_sink: &Arc<dyn LogSink>,
    mesh: &Arc<dyn MeshRouter>,
    local: SocketAddr,
) -> hyper::Response<ResponseBody> {
    let Some(component) = app.route(request.uri().path()) else {
        return plain(
            http::StatusCode::NOT_FOUND,
            format!("no route for {}\n", request.uri().path()),
        );
    };
    // HTTP/1.0 clients may omit Host; the guest still needs an authority.
    if request.uri().authority().is_none()
        && !request.headers().contains_key(http::header::HOST)
        && let Ok(host) = http::HeaderValue::from_str(&local.to_string())
    {
        request.headers_mut().insert(http::header::HOST, host);
    }
    let mut answer = invoke(
        component,
        request,
        log_sink,
        Inbound::ingress(Some(mesh.clone())),
    )
    .await;
    // The platform's mark is for nodes forwarding to each other only.
    answer.headers_mut().remove(crate::invoke::REFUSED_HEADER);
    answer
}

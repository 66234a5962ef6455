//! The admin server, on its own port and its own thread's runtime so a
//! busy data plane never starves a Prometheus scrape or a kubelet probe:
//! `/metrics`, `/ready` (200 once every listener is bound and a config
//! is loaded, and with xDS the initial configuration came or its
//! `initial_fetch_timeout` passed), `/live`, `/config_dump` (the running config as JSON in
//! the config file's shape, so a saved dump is a config file) and
//! `POST /shutdown` (from loopback only); `GET /tap`, a live stream of
//! request records ([`crate::tap`]); `/debug/route` (route explain),
//! `/log-level`, and the live page at `/` with its `/stats.json`, each in
//! its own module below.

mod debug_route;
mod log_level;
mod page;
mod stats;

use crate::metrics::Metrics;
use crate::route::Snapshot;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the admin endpoints read and control.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub ready: Arc<AtomicBool>,
    /// Cancelled by `POST /shutdown` to start a graceful shutdown.
    pub shutdown: CancellationToken,
    /// The xDS client, whose resources `/config_dump` lists.
    pub xds: Option<Arc<crate::xds::Xds>>,
    /// Access logs and taps; `/tap` opens taps on it.
    pub observe: Arc<crate::observe::Observers>,
    /// The listeners' addresses as bound at startup, by name (the admin
    /// page shows these rather than a configured port 0).
    pub listening: std::sync::OnceLock<std::collections::HashMap<String, SocketAddr>>,
}

/// Serve admin requests until `stop` fires.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move {
                    if req.uri().path() == "/tap" {
                        return Ok::<_, Infallible>(crate::tap::serve(&state.observe, peer, &req));
                    }
                    Ok(route(&state, peer, req)
                        .await
                        .map(http_body_util::Either::Left))
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

const TEXT: &str = "text/plain; charset=utf-8";

async fn route(
    state: &AdminState,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => page::page(peer),
        (&Method::GET, "/stats.json") => page::stats(state, peer),
        (&Method::GET, "/debug/route") => debug_route::get(state, req.uri().query()),
        (_, "/log-level") => log_level::handle(peer, req).await,
        (&Method::GET, "/metrics") => {
            for cluster in state.snapshot.load().clusters() {
                let balancer = cluster.balancer();
                let ejected = balancer.ejected_now();
                state
                    .metrics
                    .endpoint_states(&cluster.name, balancer.len() - ejected, ejected);
            }
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                state.metrics.render(),
            )
        }
        (&Method::GET, "/ready") => {
            use crate::xds::Readiness;
            let xds = state
                .xds
                .as_ref()
                .map_or(Readiness::Complete, |x| x.readiness());
            match (state.ready.load(Ordering::Acquire), xds) {
                (false, _) => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n"),
                (true, Readiness::Waiting) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    "not ready: waiting for the initial xDS configuration\n",
                ),
                (true, Readiness::Complete) => reply(StatusCode::OK, TEXT, "ready\n"),
                (true, Readiness::TimedOut) => reply(
                    StatusCode::OK,
                    TEXT,
                    "ready (the initial xDS configuration is incomplete after initial_fetch_timeout: serving what is known)\n",
                ),
            }
        }
        (&Method::GET, "/live") => reply(StatusCode::OK, TEXT, "live\n"),
        (&Method::GET, "/config_dump") => {
            let snapshot = state.snapshot.load();
            let dump = match &state.xds {
                Some(xds) => xds.dump_json(),
                None => snapshot.config.dump_json(),
            };
            match dump {
                Ok(json) => reply(StatusCode::OK, "application/json", json),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    format!("cannot render config: {e}\n"),
                ),
            }
        }
        (&Method::POST, "/shutdown") => {
            if peer.ip().is_loopback() {
                tracing::info!(%peer, "shutdown requested through the admin server");
                state.shutdown.cancel();
                reply(StatusCode::OK, TEXT, "shutting down\n")
            } else {
                reply(
                    StatusCode::FORBIDDEN,
                    TEXT,
                    "shutdown is accepted from loopback only\n",
                )
            }
        }
        (_, "/metrics" | "/ready" | "/live" | "/config_dump" | "/shutdown")
        | (_, "/" | "/stats.json" | "/debug/route") => {
            reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n")
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found; try / /metrics /ready /live /config_dump /tap /debug/route /log-level or POST /shutdown\n",
        ),
    }
}

//! What the layer tests share: config from YAML (clusters, routes), a
//! request and a response in the stack's types, a `tower-test` mock with
//! the stack's error type, a connection context with no sockets, bodies
//! fed from a channel, and a real hyper `Incoming` for the layers that
//! only take hyper's body type.

use crate::http::body::{ProxyBody, UpstreamBody};
use crate::http::client_body::ClientBody;
use crate::http::error::ProxyError;
use crate::http::h2_stream::H2Recv;
use crate::http::stream_end::Tracked;
use crate::http::vhost::{Action, Route};
use crate::http::{ConnContext, Inputs};
use crate::metrics::{Metrics, TlsStatus};
use crate::orig_dst::OrigDst;
use crate::pool::{PoolSettings, PooledBody, Pools};
use crate::route::{ClusterState, Snapshot};
use crate::stack::{Req, Rsp};
use crate::Direction;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;
use strait_config::Config;
use tokio::sync::{mpsc, oneshot};
use tower::ServiceExt;
use tower_test::mock;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A `tower-test` mock speaking the stack's types.
pub type Mock = tower::util::MapErr<mock::Mock<Req, Rsp>, fn(BoxError) -> ProxyError>;
pub type Handle = mock::Handle<Req, Rsp>;

/// The inner service of a layer under test, and its handle.
pub fn mock() -> (Mock, Handle) {
    let (service, handle) = mock::pair();
    (
        service.map_err(proxy_error as fn(BoxError) -> ProxyError),
        handle,
    )
}

/// A mock's error back to the `ProxyError` the test sent through it.
fn proxy_error(e: BoxError) -> ProxyError {
    match e.downcast::<ProxyError>() {
        Ok(e) => *e,
        Err(_) => ProxyError::Internal("the mock failed with a foreign error"),
    }
}

/// Whether no request has reached the mock (whether or not it still lives).
pub fn nothing_sent(handle: &mut Handle) -> bool {
    !matches!(handle.poll_request(), Poll::Ready(Some(_)))
}

pub fn config(yaml: &str) -> Config {
    Config::from_yaml(yaml).unwrap_or_else(|e| panic!("config: {e}\n{yaml}"))
}

/// One cluster `web` of round-robin endpoints `127.0.0.1:1..=n`, with
/// `extra` (indented YAML lines) added to its definition.
pub fn web_cluster(n: u16, extra: &str) -> String {
    let endpoints: Vec<String> = (1..=n)
        .map(|p| format!("{{address: '127.0.0.1:{p}'}}"))
        .collect();
    format!(
        "clusters:\n  - name: web\n    load_balancer: {{policy: round_robin}}\n{extra}    endpoints: [{}]\n",
        endpoints.join(", ")
    )
}

/// `yaml`'s clusters, fresh from a registry.
pub fn cluster(yaml: &str, name: &str) -> Arc<ClusterState> {
    let snapshot = Snapshot::new(config(yaml));
    let found = snapshot.clusters().iter().find(|c| &*c.name == name);
    found
        .cloned()
        .unwrap_or_else(|| panic!("no cluster {name}"))
}

/// The route of `cluster_yaml` plus one virtual host for every domain
/// whose only route is `route` (indented YAML of its fields, after the
/// name), and the cluster that route forwards to (if it does).
pub fn route(cluster_yaml: &str, route: &str) -> (Arc<Route>, Option<Arc<ClusterState>>) {
    let yaml = format!(
        "{cluster_yaml}virtual_hosts:\n  - name: web\n    domains: ['*']\n    routes:\n      - name: r\n{route}"
    );
    let snapshot = Snapshot::new(config(&yaml));
    let probe = Request::get("http://web/").body(()).expect("request");
    let route = snapshot.vhosts.find("web", &probe).expect("route").clone();
    let cluster = match &route.action {
        Action::Forward(split) => split.pick().map(|t| t.cluster.clone()),
        _ => None,
    };
    (route, cluster)
}

/// A `GET http://web/` with no body.
pub fn get() -> Req {
    request(Method::GET, UpstreamBody::full(None))
}

pub fn request(method: Method, body: UpstreamBody) -> Req {
    let mut http = Request::new(body);
    *http.method_mut() = method;
    *http.uri_mut() = "http://web/".parse().expect("uri");
    let mut req = Req::new(http);
    // As on a route that retries: the layers note where each try goes.
    req.retrying = true;
    req
}

/// A response with `status` and no body.
pub fn status(status: u16) -> Rsp {
    let mut response = Response::new(ProxyBody::empty());
    *response.status_mut() = StatusCode::from_u16(status).expect("status");
    response
}

/// A response whose body is the upstream stream `body`.
pub fn streamed(status: u16, body: Incoming) -> Rsp {
    let mut response = Response::new(ProxyBody::Stream(Box::new(Tracked::new(
        PooledBody::unpooled(body),
    ))));
    *response.status_mut() = StatusCode::from_u16(status).expect("status");
    response
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub fn refused(port: u16) -> ProxyError {
    ProxyError::ConnectRefused(addr(port))
}

/// A request handed back by a try that never reached the upstream.
pub fn unsent(error: ProxyError, request: Req) -> ProxyError {
    ProxyError::Unsent {
        error: Box::new(error),
        request: Box::new(request),
    }
}

/// A connection of `direction` routed by `yaml`, with no socket behind it.
pub fn conn(yaml: &str, direction: Direction) -> Arc<ConnContext> {
    let metrics = Metrics::new();
    let settings = PoolSettings {
        idle_timeout: Duration::from_secs(90),
        max_idle_per_endpoint: 8,
        tcp_keepalive: Duration::from_secs(60),
    };
    let inputs = Arc::new(Inputs {
        direction,
        snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::new(config(yaml)))),
        pools: Pools::new(direction, settings, metrics.clone(), None),
        tracer: crate::trace::Tracer::new(&metrics.registry),
        observe: crate::observe::Observers::new(&Default::default(), &metrics)
            .expect("no access log to open"),
        metrics,
        tls: None,
    });
    let orig_dst = OrigDst {
        addr: addr(8080),
        redirected: true,
    };
    ConnContext::new(
        inputs,
        addr(40000),
        orig_dst,
        TlsStatus::NoIdentity("plaintext"),
    )
}

/// A stream body fed frame by frame from a channel; `Err` frames break it.
pub struct ChannelBody {
    rx: mpsc::UnboundedReceiver<Result<Frame<Bytes>, Broken>>,
    size: Option<u64>,
}

/// The error of a broken [`ChannelBody`].
#[derive(Debug, PartialEq)]
pub struct Broken;

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("broken body")
    }
}

impl std::error::Error for Broken {}

pub type BodyTx = mpsc::UnboundedSender<Result<Frame<Bytes>, Broken>>;

/// A body of unknown length, and where its frames come from.
pub fn channel() -> (BodyTx, ChannelBody) {
    channel_sized(None)
}

/// A body declaring `size` bytes (its size hint's upper bound).
pub fn channel_sized(size: Option<u64>) -> (BodyTx, ChannelBody) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, ChannelBody { rx, size })
}

pub fn data(bytes: &'static str) -> Result<Frame<Bytes>, Broken> {
    Ok(Frame::data(Bytes::from_static(bytes.as_bytes())))
}

pub fn trailers(name: &'static str, value: &'static str) -> Result<Frame<Bytes>, Broken> {
    let mut map = HeaderMap::new();
    map.insert(name, value.parse().expect("header value"));
    Ok(Frame::trailers(map))
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Broken;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Broken>>> {
        self.rx.poll_recv(cx)
    }

    fn size_hint(&self) -> SizeHint {
        match self.size {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// A hyper `Incoming` body (the type of the upstream's HTTP/1 stream),
/// fed from the returned channel through an in-memory HTTP/2 connection;
/// `size` is sent as its content-length.
pub async fn incoming(size: Option<u64>) -> (BodyTx, Incoming) {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let (found_tx, found_rx) = oneshot::channel();
    let found_tx = Arc::new(Mutex::new(Some(found_tx)));
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let found = found_tx.lock().expect("lock").take();
        async move {
            if let Some(found) = found {
                let _ = found.send(req.into_body());
            }
            // Never answer: the test reads the request body, not this.
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(Response::new(http_body_util::Empty::<Bytes>::new()))
        }
    });
    tokio::spawn(
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(server_io), service),
    );
    let tx = send_over_http2(client_io, size).await;
    (tx, found_rx.await.expect("the request reached the server"))
}

/// A client's request body as strait's HTTP/2 server hands it to the
/// stack (h2's stream), fed from the returned channel through an
/// in-memory HTTP/2 connection; `size` is sent as its content-length.
pub async fn client_body(size: Option<u64>) -> (BodyTx, ClientBody) {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let (found_tx, found_rx) = oneshot::channel();
    tokio::spawn(async move {
        let Ok(mut connection) = h2::server::handshake(server_io).await else {
            return;
        };
        let mut found_tx = Some(found_tx);
        // Never answered: the test reads the request body, not this.
        let mut unanswered = Vec::new();
        while let Some(Ok((request, respond))) = connection.accept().await {
            if let Some(found) = found_tx.take() {
                let _ = found.send(ClientBody::Http2(H2Recv::new(request.into_body(), size)));
            }
            unanswered.push(respond);
        }
    });
    let tx = send_over_http2(client_io, size).await;
    (tx, found_rx.await.expect("the request reached the server"))
}

/// POST a body fed from the returned channel with hyper's HTTP/2 client
/// on `io`.
async fn send_over_http2(io: tokio::io::DuplexStream, size: Option<u64>) -> BodyTx {
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("in-memory HTTP/2 handshake");
    tokio::spawn(connection);
    let (tx, body) = channel_sized(size);
    let mut request = Request::post("http://web/").body(body).expect("request");
    if let Some(size) = size {
        request
            .headers_mut()
            .insert(http::header::CONTENT_LENGTH, size.into());
    }
    tokio::spawn(async move {
        let _ = sender.send_request(request).await;
    });
    tx
}

/// Read a body to its end: its data, and its trailers if any.
pub async fn collect<B>(body: B) -> Result<(Bytes, Option<HeaderMap>), B::Error>
where
    B: Body<Data = Bytes>,
{
    use http_body_util::BodyExt;
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok((collected.to_bytes(), trailers))
}

/// A waker that remembers being woken.
#[derive(Default)]
pub struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Flag {
    pub fn new() -> Arc<Flag> {
        Arc::new(Flag::default())
    }

    /// Whether it was woken since the last call.
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::SeqCst)
    }
}

/// Poll `future` once with `flag` as its waker.
pub fn poll_with<F: Future + Unpin>(future: &mut F, flag: &Arc<Flag>) -> Poll<F::Output> {
    let waker = Waker::from(flag.clone());
    Pin::new(future).poll(&mut Context::from_waker(&waker))
}

/// What polling a body for a frame gives.
pub type Polled<B> = Poll<Option<Result<Frame<<B as Body>::Data>, <B as Body>::Error>>>;

/// Poll a body for one frame with `flag` as its waker.
pub fn poll_frame<B: Body + Unpin>(body: &mut B, flag: &Arc<Flag>) -> Polled<B> {
    let waker = Waker::from(flag.clone());
    Pin::new(body).poll_frame(&mut Context::from_waker(&waker))
}

/// Let the other tasks run a few rounds (without moving the paused clock).
pub async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

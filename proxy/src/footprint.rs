//! Layout guards for what an idle connection holds: the connection task's
//! future is allocated once per connection and kept for its whole life,
//! so its size is memory per connection (see "Memory per idle connection"
//! in BENCHMARKS.md). These are compile-time layout checks of the test
//! build (debug futures are larger than release ones), not timings: they
//! fail when a change makes every connection carry more state, e.g. an
//! unboxed TLS or opaque branch joining the HTTP path's future.

use crate::connection;
use crate::detect::Protocol;
use crate::http::server;
use crate::io::CountedIo;
use crate::stack::tests::support;
use crate::Direction;
use std::mem::size_of_val;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const ROUTES: &str = "
listeners:
  outbound: {address: 127.0.0.1, port: 0, default_cluster: web}
clusters:
  - name: web
    endpoints: [{address: '127.0.0.1:1'}]
";

/// The connection task's future (what `listen.rs` spawns wraps it), in
/// the test build: 4,296 bytes with only mTLS and opaque boxed, 2,824
/// with HTTP/2 boxed too, 1,280 with HTTP/1 boxed as well, 1,568 once the
/// HTTP/2 flood guard's report and its limits joined the settings.
const MAX_CONNECTION_FUTURE: usize = 1792;
/// The HTTP server's future, with each protocol's state boxed behind it.
const MAX_HTTP_SERVE_FUTURE: usize = 1024;
/// An HTTP/1 connection's boxed state (hyper's connection boxed again
/// inside it, and released while parked).
const MAX_HTTP1_FUTURE: usize = 2048;
/// An HTTP/2 connection's state: h2's handshake, then its connection, in
/// one place (their buffers are on the heap behind them), the drain and
/// idle waiters, keep-alive: 1,664 bytes in the test build; 3,616 as an
/// `async fn`, which kept the handshake and the connection both.
/// (hyper's HTTP/2 server in its place took 2,592 bytes a connection in
/// the release build, by massif.)
const MAX_HTTP2_FUTURE: usize = 2048;
/// A mesh connection's boxed branch: 4,880 bytes with rustls' state inline
/// in each layer over it, 1,064 with that state boxed once after the
/// handshake and the opaque branch boxed.
const MAX_MESH_FUTURE: usize = 1280;
/// The per-connection context every request of a connection shares: 256.
const MAX_CONN_CONTEXT: usize = 320;

async fn stream() -> TcpStream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    TcpStream::connect(addr).await.expect("connect")
}

#[tokio::test]
async fn an_idle_connection_holds_a_small_task() {
    let ctx = support::conn(ROUTES, Direction::Outbound);
    let peer = support::addr(40000);
    let connection = connection::serve(
        stream().await,
        peer,
        ctx.inputs.clone(),
        CancellationToken::new(),
    );
    let io = CountedIo::uncounted(stream().await, bytes::Bytes::new());
    let idle = (Arc::new(AtomicU64::new(0)), Duration::from_secs(60));
    let http = server::serve(
        io,
        Protocol::Http1,
        ctx.clone(),
        CancellationToken::new(),
        idle,
    );
    // An HTTP/1 connection's own box (the stack behind it is 64 bytes).
    let service = hyper::service::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(
            http_body_util::Empty::<bytes::Bytes>::new(),
        ))
    });
    let http1 = crate::http::park::serve(
        hyper::server::conn::http1::Builder::new(),
        CountedIo::uncounted(stream().await, bytes::Bytes::new()),
        service,
        Duration::from_secs(30),
        CancellationToken::new(),
        (Arc::new(AtomicU64::new(0)), Duration::from_secs(60)),
    );
    let limits = ctx.inputs.snapshot.load().config.proxy.http.clone();
    let http2 = crate::http::h2_server::serve(
        CountedIo::uncounted(stream().await, bytes::Bytes::new()),
        &limits,
        |_req| {
            std::future::ready(Ok(http::Response::new(
                crate::http::body::ProxyBody::empty(),
            )))
        },
        CancellationToken::new(),
        (Arc::new(AtomicU64::new(0)), Duration::from_secs(60)),
    );
    let sizes = [
        (
            "HTTP/2 h2_server::serve future",
            size_of_val(&http2),
            MAX_HTTP2_FUTURE,
        ),
        (
            "HTTP/1 park::serve future",
            size_of_val(&http1),
            MAX_HTTP1_FUTURE,
        ),
        (
            "connection::serve future",
            size_of_val(&connection),
            MAX_CONNECTION_FUTURE,
        ),
        (
            "http::server::serve future",
            size_of_val(&http),
            MAX_HTTP_SERVE_FUTURE,
        ),
        ("ConnContext", size_of_val(&*ctx), MAX_CONN_CONTEXT),
        (
            "connection::serve_mesh future",
            connection::mesh_future_size(&ctx.inputs, stream().await, peer),
            MAX_MESH_FUTURE,
        ),
    ];
    for (what, size, max) in sizes {
        eprintln!("{what}: {size} bytes (bound {max})");
    }
    for (what, size, max) in sizes {
        assert!(
            size <= max,
            "{what} is {size} bytes, over its bound of {max}"
        );
    }
}

/// A response moves through every layer's future on its way out (tens of
/// copies per request), so its body is boxed to keep it small: 152 bytes.
const MAX_RESPONSE: usize = 160;

#[test]
fn a_response_moves_cheaply() {
    let size = std::mem::size_of::<crate::stack::Result>();
    assert!(
        size <= MAX_RESPONSE,
        "a stack result is {size} bytes, over {MAX_RESPONSE}: box what grew"
    );
}

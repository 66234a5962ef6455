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

/// The connection task's future (what `listen.rs` spawns wraps it) in
/// the test build; release builds measured 1.3 KiB before boxing.
const MAX_CONNECTION_FUTURE: usize = 4 * 1024;
/// The HTTP server's future for a plaintext connection.
const MAX_HTTP_SERVE_FUTURE: usize = 4 * 1024;
/// The per-connection context every request of a connection shares.
const MAX_CONN_CONTEXT: usize = 512;

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
    let sizes = [
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
    ];
    let stack = crate::outbound::stack(ctx.clone());
    eprintln!("outbound stack {}", size_of_val(&stack));
    eprintln!(
        "http1 builder {}",
        std::mem::size_of::<hyper::server::conn::http1::Builder>()
    );
    eprintln!("sleep {}", std::mem::size_of::<tokio::time::Sleep>());
    eprintln!(
        "counted tcp {}",
        std::mem::size_of::<CountedIo<TcpStream>>()
    );
    eprintln!(
        "cancelled {}",
        size_of_val(&CancellationToken::new().cancelled())
    );
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

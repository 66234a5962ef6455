//! The accept loop of one listener: accept, apply socket options, enforce
//! the connection limit (over the limit a connection is closed at once and
//! counted, rather than left waiting in the backlog), back off when the
//! process runs out of file descriptors, and hand each connection to
//! [`crate::connection::serve`] on a task tracked twice: by the proxy, so
//! shutdown can wait for it, and by its listener, so a listener removed
//! by a reload knows when it has drained. Which listeners run is
//! [`crate::listeners`]' business.

use crate::http::Inputs;
use crate::{connection, socket};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, warn};

/// What an accept loop needs besides its listener.
#[derive(Clone)]
pub struct AcceptContext {
    /// The listener's name, for logs.
    pub name: Arc<str>,
    pub inputs: Arc<Inputs>,
    /// Permits for open connections, shared by every listener.
    pub limit: Arc<Semaphore>,
    /// Every connection of the proxy.
    pub tracker: TaskTracker,
    /// This listener's connections.
    pub conns: TaskTracker,
    /// Fires when this listener stops accepting.
    pub stop_accepting: CancellationToken,
    /// Fires when this listener's open connections should wind down.
    pub drain: CancellationToken,
    /// Fires when this listener's connections still open are to be closed
    /// outright (the drain took too long).
    pub close: CancellationToken,
}

/// Errors that mean "out of resources": wait, they usually pass.
fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

/// Accept until `stop_accepting` fires, then hand the socket back: the
/// caller drops it (closing the port) or gives it to another listener.
pub async fn accept_loop(listener: TcpListener, ctx: AcceptContext) -> TcpListener {
    let direction = ctx.inputs.direction.as_str();
    let name = &*ctx.name;
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = ctx.stop_accepting.cancelled() => return listener,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = Duration::from_millis(5);
                accepted
            }
            Err(e) if is_resource_exhaustion(&e) => {
                error!(listener = name, direction, error = %e, ?backoff, "cannot accept: out of file descriptors or memory; raise the nofile limit or proxy.max_connections");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            Err(e) => {
                // ECONNABORTED and friends: the client gave up before accept.
                debug!(listener = name, direction, error = %e, "accept failed");
                continue;
            }
        };
        let Ok(permit) = ctx.limit.clone().try_acquire_owned() else {
            warn!(listener = name, direction, %peer, "connection refused: proxy.max_connections reached");
            ctx.inputs
                .metrics
                .connections_refused_total
                .with_label_values(&[direction, "connection_limit"])
                .inc();
            continue;
        };
        let keepalive = ctx.inputs.snapshot.load().config.proxy.tcp_keepalive;
        if let Err(e) = socket::configure_stream(&stream, keepalive) {
            debug!(%peer, error = %e, "socket options not applied");
        }
        let inputs = ctx.inputs.clone();
        let drain = ctx.drain.clone();
        let close = ctx.close.clone();
        ctx.tracker.spawn(ctx.conns.track_future(async move {
            tokio::select! {
                _ = connection::serve(stream, peer, inputs, drain) => {}
                _ = close.cancelled() => debug!(%peer, "connection closed: its listener's drain time is over"),
            }
            drop(permit);
        }));
    }
}

//! The accept loop of one listener: accept, apply socket options, enforce
//! the connection limit (over the limit a connection is closed at once and
//! counted, rather than left waiting in the backlog), back off when the
//! process runs out of file descriptors, and hand each connection to
//! [`crate::connection::serve`] on a tracked task so shutdown can wait
//! for it.

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
    pub inputs: Arc<Inputs>,
    /// Permits for open connections, shared by both listeners.
    pub limit: Arc<Semaphore>,
    pub tracker: TaskTracker,
    /// Fires when the proxy stops accepting.
    pub stop_accepting: CancellationToken,
    /// Fires when open connections should wind down.
    pub drain: CancellationToken,
}

/// Errors that mean "out of resources": wait, they usually pass.
fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

/// Accept until `stop_accepting` fires; the listener closes on return.
pub async fn accept_loop(listener: TcpListener, ctx: AcceptContext) {
    let direction = ctx.inputs.direction.as_str();
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = ctx.stop_accepting.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = Duration::from_millis(5);
                accepted
            }
            Err(e) if is_resource_exhaustion(&e) => {
                error!(direction, error = %e, ?backoff, "cannot accept: out of file descriptors or memory; raise the nofile limit or proxy.max_connections");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            Err(e) => {
                // ECONNABORTED and friends: the client gave up before accept.
                debug!(direction, error = %e, "accept failed");
                continue;
            }
        };
        let Ok(permit) = ctx.limit.clone().try_acquire_owned() else {
            warn!(direction, %peer, "connection refused: proxy.max_connections reached");
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
        ctx.tracker.spawn(async move {
            connection::serve(stream, peer, inputs, drain).await;
            drop(permit);
        });
    }
}

//! Opaque TCP forwarding: connect to the target, replay the bytes read
//! during detection, then copy both ways until both sides are done. A
//! half-close is passed on (EOF from one side shuts down writing to the
//! other) so request/response protocols that signal "done" with a FIN work.

use crate::http::{Inputs, Target};
use crate::io::CountedIo;
use crate::metrics::TcpMetrics;
use crate::socket;
use bytes::Bytes;
use std::time::Duration;
use tokio::net::TcpStream;
use tracing::{debug, warn};

/// Forward `client` (whose first bytes are `prefix`) to `target`.
pub async fn forward(
    client: TcpStream,
    prefix: Bytes,
    client_metrics: &TcpMetrics,
    target: &Target,
    inputs: &Inputs,
    connect_timeout: Duration,
    keepalive: Duration,
) {
    let upstream = match socket::connect(target.addr, connect_timeout, keepalive).await {
        Ok(upstream) => upstream,
        Err(e) => {
            warn!(target_addr = %target.addr, error = %e, "opaque connection not forwarded: upstream connect failed");
            return;
        }
    };
    let upstream_metrics = inputs
        .metrics
        .tcp_connection(inputs.direction, "dst", target.addr);
    let mut client = CountedIo::new(
        client,
        prefix,
        client_metrics.read_bytes.clone(),
        client_metrics.write_bytes.clone(),
    );
    let mut upstream = CountedIo::new(
        upstream,
        Bytes::new(),
        upstream_metrics.read_bytes.clone(),
        upstream_metrics.write_bytes.clone(),
    );
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((sent, received)) => {
            debug!(target_addr = %target.addr, sent, received, "opaque connection closed")
        }
        Err(e) => {
            debug!(target_addr = %target.addr, error = %e, "opaque connection ended with an error")
        }
    }
}

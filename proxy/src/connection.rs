//! One accepted connection, from its original destination to the handler
//! that serves it: opaque ports skip detection, HTTP goes to hyper, TLS and
//! everything else is forwarded as opaque bytes. Runs inside a tracing span
//! carrying direction, peer and original destination.

use crate::detect::{self, Detected, Protocol};
use crate::http::{self, ConnContext, Inputs};
use crate::io::CountedIo;
use crate::{inbound, orig_dst, outbound, tcp, Direction};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

/// Serve one accepted connection to completion.
pub async fn serve(
    mut stream: TcpStream,
    client: SocketAddr,
    inputs: Arc<Inputs>,
    drain: CancellationToken,
) {
    let orig_dst = match orig_dst::lookup(&stream) {
        Ok(orig_dst) => orig_dst,
        Err(e) => {
            debug!(peer = %client, error = %e, "connection closed before it could be served");
            return;
        }
    };
    let span = tracing::info_span!(
        "conn",
        direction = inputs.direction.as_str(),
        peer = %client,
        orig_dst = %orig_dst.addr,
    );
    async move {
        let snapshot = inputs.snapshot.load_full();
        let settings = &snapshot.config.proxy;
        let tcp_metrics = inputs
            .metrics
            .tcp_connection(inputs.direction, "src", orig_dst.addr);
        let (protocol, prefix) = if settings.opaque_ports.contains(&orig_dst.addr.port()) {
            (Protocol::Opaque, Bytes::new())
        } else {
            match detect::detect(&mut stream, settings.detect_timeout).await {
                Ok(Detected::Protocol(protocol, prefix)) => {
                    tcp_metrics.read_bytes.inc_by(prefix.len() as u64);
                    (protocol, prefix)
                }
                Ok(Detected::Closed) => return,
                Err(e) => {
                    debug!(error = %e, "connection failed during protocol detection");
                    return;
                }
            }
        };
        debug!(protocol = protocol.as_str(), "detected");
        match protocol {
            Protocol::Http1 | Protocol::Http2 => {
                let io = CountedIo::new(
                    stream,
                    prefix,
                    tcp_metrics.read_bytes.clone(),
                    tcp_metrics.write_bytes.clone(),
                );
                let ctx = ConnContext::new(inputs.clone(), client, orig_dst);
                http::server::serve(io, protocol, ctx, drain).await;
            }
            Protocol::Tls | Protocol::Opaque => {
                let target = match inputs.direction {
                    Direction::Outbound => outbound::resolve_tcp(&snapshot, orig_dst),
                    Direction::Inbound => inbound::resolve_tcp(&snapshot, orig_dst),
                };
                let target = match target {
                    Ok(target) => target,
                    Err(e) => {
                        warn!(error = %e, "opaque connection refused");
                        return;
                    }
                };
                let (connect_timeout, _) = match &target.cluster {
                    Some(c) => (c.connect_timeout, c.response_timeout),
                    None => (settings.connect_timeout, settings.response_timeout),
                };
                tcp::forward(
                    stream,
                    prefix,
                    &tcp_metrics,
                    &target,
                    &inputs,
                    connect_timeout,
                    settings.tcp_keepalive,
                )
                .await;
            }
        }
    }
    .instrument(span)
    .await
}

//! One accepted connection, from its original destination to the handler
//! that serves it: opaque ports skip detection; HTTP goes to hyper; on the
//! inbound side a mesh ClientHello is terminated with mTLS (HTTP/2 or
//! opaque inside), other TLS and everything else is forwarded as opaque
//! bytes after the inbound policy allows it; outbound TLS is routed by
//! its server name (SNI) when routes match on one. Runs inside a tracing span
//! carrying direction, peer and original destination.

use crate::detect::{self, Detected, Protocol};
use crate::http::{self, ConnContext, Inputs};
use crate::io::CountedIo;
use crate::metrics::TlsStatus;
use crate::orig_dst::OrigDst;
use crate::route::Snapshot;
use crate::{authz, inbound, orig_dst, outbound, sni, tcp, tls, Direction};
use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

/// Serve one accepted connection to completion.
///
/// Its future is the connection task's whole state for the connection's
/// life, so the branches after detection (mTLS, opaque forwarding, and
/// each HTTP version in `http::server`) are boxed: the task is sized for
/// detection (~1.3 KiB, see `footprint.rs`) and each connection holds only
/// the branch it runs.
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
        let declared = declared_protocol(&snapshot, inputs.direction, orig_dst.addr.port());
        let listener_opaque = match inputs.direction {
            Direction::Outbound => snapshot.config.outbound.protocol,
            Direction::Inbound => snapshot.config.inbound.protocol,
        } == strait_config::Protocol::Opaque;
        let (protocol, prefix) =
            if settings.opaque_ports.contains(&orig_dst.addr.port()) || listener_opaque {
                (Protocol::Opaque, Bytes::new())
            } else {
                match detect::detect(&mut stream, settings.detect_timeout).await {
                    Ok(Detected::Protocol(protocol, prefix)) => (protocol, prefix),
                    Ok(Detected::Closed) => return,
                    Err(e) => {
                        debug!(error = %e, "connection failed during protocol detection");
                        return;
                    }
                }
            };
        // A port whose protocol is declared never falls back to opaque:
        // what it is sent goes to that protocol's server, which refuses it.
        let protocol = match (protocol, declared) {
            (Protocol::Opaque, Some(declared @ (Protocol::Http1 | Protocol::Http2))) => declared,
            (detected, _) => detected,
        };
        debug!(protocol = protocol.as_str(), "detected");
        let conn = Accepted {
            inputs: &inputs,
            snapshot: &snapshot,
            client,
            orig_dst,
        };
        match protocol {
            Protocol::Http1 | Protocol::Http2 => {
                let status = TlsStatus::NoIdentity("plaintext");
                let tcp =
                    inputs
                        .metrics
                        .tcp_connection(inputs.direction, "src", orig_dst.addr, &status);
                tcp.read_bytes.inc_by(prefix.len() as u64);
                let activity = Arc::new(AtomicU64::new(0));
                let io = tcp.counted(stream, prefix).with_activity(activity.clone());
                let ctx = ConnContext::new(inputs.clone(), client, orig_dst, status);
                let idle = (activity, settings.idle_timeout);
                http::server::serve(io, protocol, ctx, drain, idle).await;
            }
            Protocol::BadPreface => {
                debug!("invalid HTTP/2 connection preface: GOAWAY(PROTOCOL_ERROR)");
                inputs
                    .metrics
                    .http2_connection_error(inputs.direction, "protocol_error", "proxy");
                let _ = stream.write_all(detect::GOAWAY_PROTOCOL_ERROR).await;
                let _ = stream.shutdown().await;
            }
            Protocol::Tls if inputs.direction == Direction::Inbound && inputs.tls.is_some() => {
                let prefix =
                    match read_client_hello(&mut stream, prefix, settings.detect_timeout).await {
                        Some(prefix) => prefix,
                        None => return,
                    };
                if tls::is_mesh_client_hello(&prefix) {
                    Box::pin(conn.serve_mesh(stream, prefix, drain)).await;
                } else {
                    Box::pin(conn.forward_opaque(stream, prefix, "passthrough", None)).await;
                }
            }
            Protocol::Tls
                if inputs.direction == Direction::Outbound && snapshot.routes_server_names() =>
            {
                let timeout = settings.detect_timeout;
                let Some(hello) = Box::pin(sni::read(&mut stream, prefix, timeout)).await else {
                    debug!("client closed before its TLS ClientHello was whole");
                    return;
                };
                debug!(
                    server_name = hello.server_name.as_deref(),
                    "TLS server name"
                );
                let name = hello.server_name.as_deref();
                Box::pin(conn.forward_opaque(stream, hello.bytes, "passthrough", name)).await
            }
            Protocol::Tls => {
                Box::pin(conn.forward_opaque(stream, prefix, "passthrough", None)).await
            }
            Protocol::Opaque => {
                Box::pin(conn.forward_opaque(stream, prefix, "plaintext", None)).await
            }
        }
    }
    .instrument(span)
    .await
}

/// The HTTP version the config declares for a connection, if any: the
/// listener's `protocol`, else that of the cluster its destination port
/// routes to (or the listener's default cluster). `auto` and `opaque`
/// declare nothing here (an opaque cluster may still sit behind mesh TLS,
/// which detection must see).
fn declared_protocol(snapshot: &Snapshot, direction: Direction, port: u16) -> Option<Protocol> {
    let config = &snapshot.config;
    let (listener, route) = match direction {
        Direction::Outbound => (
            config.outbound.protocol,
            snapshot
                .port_cluster(port)
                .or(snapshot.outbound_default.as_ref()),
        ),
        Direction::Inbound => (config.inbound.protocol, snapshot.inbound_default.as_ref()),
    };
    let protocol = match listener {
        strait_config::Protocol::Auto => route?.cluster.settings().protocol,
        declared => declared,
    };
    match protocol {
        strait_config::Protocol::Http1 => Some(Protocol::Http1),
        strait_config::Protocol::Http2 => Some(Protocol::Http2),
        strait_config::Protocol::Auto | strait_config::Protocol::Opaque => None,
    }
}

/// Read until the first TLS record (the ClientHello) is whole, so it can
/// be inspected; `None` when the client closes or stalls.
async fn read_client_hello(
    stream: &mut TcpStream,
    prefix: Bytes,
    timeout: std::time::Duration,
) -> Option<Bytes> {
    let mut buf = BytesMut::from(&prefix[..]);
    let read = async {
        loop {
            let missing = tls::client_hello_missing(&buf);
            if missing == 0 {
                return Some(());
            }
            buf.reserve(missing);
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Some(())) => Some(buf.freeze()),
        _ => {
            debug!("client did not complete its TLS ClientHello");
            None
        }
    }
}

/// An accepted connection's context, for the handlers below.
struct Accepted<'a> {
    inputs: &'a Arc<Inputs>,
    snapshot: &'a Snapshot,
    client: SocketAddr,
    orig_dst: OrigDst,
}

impl Accepted<'_> {
    /// Inbound policy for a non-HTTP connection.
    fn authorize_tcp(&self, identity: Option<&str>) -> bool {
        if self.inputs.direction != Direction::Inbound {
            return true;
        }
        let port = self.orig_dst.addr.port();
        let decision = authz::check(&self.snapshot.config.policy, port, identity);
        self.inputs
            .metrics
            .authz_counter(decision.is_ok(), port, identity)
            .inc();
        match decision {
            Ok(()) => true,
            Err(denied) => {
                warn!(reason = %denied.0, "connection refused by inbound policy");
                false
            }
        }
    }

    /// Where a non-HTTP connection goes (`server_name`: its TLS SNI).
    fn tcp_target(&self, server_name: Option<&str>) -> Option<http::Target> {
        let target = match self.inputs.direction {
            Direction::Outbound => outbound::resolve_tcp(self.snapshot, self.orig_dst, server_name),
            Direction::Inbound => inbound::resolve_tcp(self.snapshot, self.orig_dst),
        };
        match target {
            Ok(target) => Some(target),
            Err(e) => {
                warn!(error = %e, "opaque connection refused");
                None
            }
        }
    }

    fn connect_timeout(&self, target: &http::Target) -> std::time::Duration {
        match &target.cluster {
            Some(c) => c.settings().connect_timeout,
            None => self.snapshot.config.proxy.connect_timeout,
        }
    }

    /// Plaintext (or non-mesh TLS, `server_name` its SNI) forwarded as bytes.
    async fn forward_opaque(
        &self,
        stream: TcpStream,
        prefix: Bytes,
        reason: &'static str,
        server_name: Option<&str>,
    ) {
        let status = TlsStatus::NoIdentity(reason);
        let metrics = self.inputs.metrics.tcp_connection(
            self.inputs.direction,
            "src",
            self.orig_dst.addr,
            &status,
        );
        metrics.read_bytes.inc_by(prefix.len() as u64);
        if !self.authorize_tcp(None) {
            return;
        }
        let Some(target) = self.tcp_target(server_name) else {
            return;
        };
        let keepalive = self.snapshot.config.proxy.tcp_keepalive;
        let connect_timeout = self.connect_timeout(&target);
        if target.mesh_identity().is_some() {
            let client = metrics.counted(stream, prefix);
            tcp::forward_copied(client, &target, self.inputs, connect_timeout, keepalive).await;
        } else {
            tcp::forward(
                stream,
                prefix,
                &metrics,
                &target,
                self.inputs,
                connect_timeout,
                keepalive,
            )
            .await;
        }
    }

    /// Terminate mesh mTLS, then serve HTTP/2 or opaque TCP inside it.
    async fn serve_mesh(&self, stream: TcpStream, prefix: Bytes, drain: CancellationToken) {
        let Some(tls) = self.inputs.tls.as_ref() else {
            return;
        };
        // Boxed: the handshake's state is freed once it is done.
        let (stream, client_id, opaque) =
            match Box::pin(tls::accept(tls, CountedIo::uncounted(stream, prefix))).await {
                Ok(accepted) => accepted,
                Err(reason) => {
                    warn!(%reason, "mTLS handshake with a mesh client failed");
                    return;
                }
            };
        debug!(client_id = %client_id, opaque, "mesh connection established");
        let status = TlsStatus::Mesh {
            client_id: Some(client_id.clone()),
            server_id: tls.current().map(|l| Arc::from(l.name.as_str())),
        };
        let metrics = self.inputs.metrics.tcp_connection(
            self.inputs.direction,
            "src",
            self.orig_dst.addr,
            &status,
        );
        // Boxed once here: rustls' connection state (~1.3 KiB) would
        // otherwise sit inline in every future layered over it below,
        // several copies per idle mesh connection.
        let io = metrics.counted(Box::new(stream), Bytes::new());
        if opaque {
            if !self.authorize_tcp(Some(&client_id)) {
                return;
            }
            let Some(target) = self.tcp_target(None) else {
                return;
            };
            let connect_timeout = self.connect_timeout(&target);
            let keepalive = self.snapshot.config.proxy.tcp_keepalive;
            // Boxed like the HTTP server's state: the branch not taken costs nothing.
            Box::pin(tcp::forward_copied(
                io,
                &target,
                self.inputs,
                connect_timeout,
                keepalive,
            ))
            .await;
        } else {
            let activity = Arc::new(AtomicU64::new(0));
            let io = io.with_activity(activity.clone());
            let ctx = ConnContext::new(self.inputs.clone(), self.client, self.orig_dst, status);
            let idle = (activity, self.snapshot.config.proxy.idle_timeout);
            http::server::serve(io, Protocol::Http2, ctx, drain, idle).await;
        }
    }
}

/// The size of the mesh branch's future (its box, held for the mesh
/// connection's life), for `footprint.rs`.
#[cfg(test)]
pub(crate) fn mesh_future_size(
    inputs: &Arc<Inputs>,
    stream: TcpStream,
    client: SocketAddr,
) -> usize {
    let snapshot = inputs.snapshot.load_full();
    let orig_dst = OrigDst {
        addr: client,
        redirected: false,
    };
    let conn = Accepted {
        inputs,
        snapshot: &snapshot,
        client,
        orig_dst,
    };
    let future = conn.serve_mesh(stream, Bytes::new(), CancellationToken::new());
    std::mem::size_of_val(&future)
}

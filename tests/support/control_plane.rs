//! A real ADS control plane for tests: a tonic server on 127.0.0.1 built
//! on envoy-types' generated service trait, serving state-of-the-world and
//! delta responses from a snapshot the test edits, and recording every request
//! (ACKs, NACKs and their error_detail) so tests can assert on the
//! protocol. `tests/xds.rs` and `tests/xds_tls.rs` include it.
#![allow(dead_code)]

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use futures_util::Stream;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Every resource by type URL, then name; one version for all.
#[derive(Clone, Default)]
pub struct Snapshot {
    pub version: u64,
    pub resources: BTreeMap<&'static str, BTreeMap<String, Any>>,
}

/// A request as recorded, whichever the protocol variant.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub type_url: String,
    /// State of the world: the request's version_info. Delta: the
    /// snapshot version of the response this ACKs (empty otherwise).
    pub version: String,
    pub nonce: String,
    pub error: Option<String>,
    /// resource_names, or delta's resource_names_subscribe.
    pub names: Vec<String>,
    /// Delta's initial_resource_versions.
    pub initial: BTreeMap<String, String>,
    pub node_id: Option<String>,
}

struct Shared {
    snapshot: watch::Sender<Snapshot>,
    requests: Mutex<Vec<Seen>>,
    streams: Mutex<usize>,
    /// TLS handshakes that failed (`start_tls`).
    handshake_errors: Mutex<Vec<String>>,
    /// Delta: which snapshot version each nonce carried.
    nonces: Mutex<BTreeMap<String, u64>>,
}

/// The control plane; `kill` and `restart` stop and start its server on
/// the same port, keeping its snapshot and what it recorded.
pub struct ControlPlane {
    pub addr: SocketAddr,
    /// Serve over TLS with this acceptor (`start_tls`).
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    kill: CancellationToken,
    server: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Clone)]
struct Service {
    shared: Arc<Shared>,
    kill: CancellationToken,
}

impl ControlPlane {
    pub async fn start() -> ControlPlane {
        ControlPlane::start_with(None).await
    }

    /// Serve gRPC over TLS only.
    pub async fn start_tls(config: Arc<rustls::ServerConfig>) -> ControlPlane {
        ControlPlane::start_with(Some(tokio_rustls::TlsAcceptor::from(config))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> ControlPlane {
        let shared = Arc::new(Shared {
            snapshot: watch::Sender::new(Snapshot::default()),
            requests: Mutex::new(Vec::new()),
            streams: Mutex::new(0),
            handshake_errors: Mutex::new(Vec::new()),
            nonces: Mutex::new(BTreeMap::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind control plane");
        let addr = listener.local_addr().expect("addr");
        let mut cp = ControlPlane {
            addr,
            tls,
            shared,
            kill: CancellationToken::new(),
            server: None,
        };
        cp.serve(listener);
        cp
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let service = Service {
            shared: self.shared.clone(),
            kill: self.kill.clone(),
        };
        let server = tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(service));
        self.server = Some(match self.tls.clone() {
            None => {
                let incoming = futures_util::stream::unfold(listener, |listener| async move {
                    let accepted = listener.accept().await.map(|(s, _)| s);
                    Some((accepted, listener))
                });
                tokio::spawn(async move {
                    let _ = server.serve_with_incoming(incoming).await;
                })
            }
            Some(acceptor) => {
                // A failed handshake is recorded and skipped, not served.
                let shared = self.shared.clone();
                let incoming = futures_util::stream::unfold(listener, move |listener| {
                    let (acceptor, shared) = (acceptor.clone(), shared.clone());
                    async move {
                        loop {
                            let tcp = match listener.accept().await {
                                Ok((s, _)) => s,
                                Err(e) => return Some((Err(e), listener)),
                            };
                            match acceptor.accept(tcp).await {
                                Ok(tls) => return Some((Ok(TlsIo(tls)), listener)),
                                Err(e) => shared
                                    .handshake_errors
                                    .lock()
                                    .expect("lock")
                                    .push(e.to_string()),
                            }
                        }
                    }
                });
                tokio::spawn(async move {
                    let _ = server.serve_with_incoming(incoming).await;
                })
            }
        });
    }

    /// Stop serving: the listener closes and every open stream ends.
    pub fn kill(&mut self) {
        self.kill.cancel();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }

    /// Serve again on the same address.
    pub async fn restart(&mut self) {
        self.kill = CancellationToken::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot bind {} again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// Change the snapshot; every stream sends what changed under a new version.
    pub fn update(&self, edit: impl FnOnce(&mut Snapshot)) -> u64 {
        let mut version = 0;
        self.shared.snapshot.send_modify(|s| {
            edit(s);
            s.version += 1;
            version = s.version;
        });
        version
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.shared.requests.lock().expect("lock").clone()
    }

    pub fn handshake_errors(&self) -> Vec<String> {
        self.shared.handshake_errors.lock().expect("lock").clone()
    }

    pub fn streams(&self) -> usize {
        *self.shared.streams.lock().expect("lock")
    }

    /// Wait until a request matching `pred` arrives, or panic at the deadline.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(r) = self.requests().into_iter().find(|r| pred(r)) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within 15s; requests: {:#?}",
                self.requests()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait for the ACK of `version` of `type_url`.
    pub async fn acked(&self, type_url: &str, version: u64) {
        let v = version.to_string();
        self.wait_for(&format!("ACK of {type_url} version {v}"), |r| {
            r.type_url == type_url && r.version == v && r.error.is_none() && !r.nonce.is_empty()
        })
        .await;
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
    }
}

type Responses = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaResponses = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

/// Per stream and type: the names asked for, and what was last sent.
#[derive(Default)]
struct Sub {
    names: Vec<String>,
    sent: Option<(u64, Vec<String>)>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Service {
    type StreamAggregatedResourcesStream = Responses;
    type DeltaAggregatedResourcesStream = DeltaResponses;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Responses>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel::<Result<DiscoveryResponse, Status>>();
        let shared = self.shared.clone();
        let kill = self.kill.clone();
        *shared.streams.lock().expect("lock") += 1;
        tokio::spawn(async move {
            let mut snapshots = shared.snapshot.subscribe();
            let mut subs: BTreeMap<String, Sub> = BTreeMap::new();
            let mut nonce = 0u64;
            loop {
                tokio::select! {
                    _ = kill.cancelled() => return,
                    message = inbound.message() => match message {
                        Ok(Some(r)) => {
                            shared.requests.lock().expect("lock").push(Seen {
                                type_url: r.type_url.clone(),
                                version: r.version_info.clone(),
                                nonce: r.response_nonce.clone(),
                                error: r.error_detail.as_ref().map(|e| e.message.clone()),
                                names: r.resource_names.clone(),
                                initial: BTreeMap::new(),
                                node_id: r.node.as_ref().map(|n| n.id.clone()),
                            });
                            subs.entry(r.type_url.clone()).or_default().names = r.resource_names;
                        }
                        _ => return,
                    },
                    changed = snapshots.changed() => if changed.is_err() { return },
                }
                let snapshot = snapshots.borrow_and_update().clone();
                for (type_url, sub) in subs.iter_mut() {
                    let wildcard = type_url == CLUSTER || type_url == LISTENER;
                    let all = snapshot
                        .resources
                        .get(type_url.as_str())
                        .cloned()
                        .unwrap_or_default();
                    let chosen: Vec<(String, Any)> = all
                        .into_iter()
                        .filter(|(name, _)| wildcard || sub.names.contains(name))
                        .collect();
                    let key = (snapshot.version, sub.names.clone());
                    if sub.sent.as_ref() == Some(&key) {
                        continue;
                    }
                    // Nothing to say yet about named resources we do not have.
                    if !wildcard && chosen.is_empty() && sub.sent.is_none() {
                        continue;
                    }
                    sub.sent = Some(key);
                    nonce += 1;
                    let response = DiscoveryResponse {
                        version_info: snapshot.version.to_string(),
                        resources: chosen.into_iter().map(|(_, any)| any).collect(),
                        type_url: type_url.clone(),
                        nonce: nonce.to_string(),
                        ..Default::default()
                    };
                    if tx.send(Ok(response)).is_err() {
                        return;
                    }
                }
            }
        });
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaResponses>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel::<Result<DeltaDiscoveryResponse, Status>>();
        let shared = self.shared.clone();
        let kill = self.kill.clone();
        *shared.streams.lock().expect("lock") += 1;
        tokio::spawn(async move {
            let mut snapshots = shared.snapshot.subscribe();
            let mut subs: BTreeMap<String, DeltaSub> = BTreeMap::new();
            let mut nonce = 0u64;
            loop {
                tokio::select! {
                    _ = kill.cancelled() => return,
                    message = inbound.message() => match message {
                        Ok(Some(r)) => {
                            let acked = shared.nonces.lock().expect("lock").get(&r.response_nonce).copied();
                            shared.requests.lock().expect("lock").push(Seen {
                                type_url: r.type_url.clone(),
                                version: match (&r.error_detail, acked) {
                                    (None, Some(v)) => v.to_string(),
                                    _ => String::new(),
                                },
                                nonce: r.response_nonce.clone(),
                                error: r.error_detail.as_ref().map(|e| e.message.clone()),
                                names: r.resource_names_subscribe.clone(),
                                initial: r.initial_resource_versions.clone().into_iter().collect(),
                                node_id: r.node.as_ref().map(|n| n.id.clone()),
                            });
                            let sub = subs.entry(r.type_url.clone()).or_default();
                            for n in r.resource_names_subscribe {
                                if n == "*" { sub.wildcard = true } else { sub.names.insert(n); }
                            }
                            for n in r.resource_names_unsubscribe {
                                if n == "*" { sub.wildcard = false }
                                sub.names.remove(&n);
                                sub.known.remove(&n);
                            }
                            sub.known.extend(r.initial_resource_versions);
                        }
                        _ => return,
                    },
                    changed = snapshots.changed() => if changed.is_err() { return },
                }
                let snapshot = snapshots.borrow_and_update().clone();
                for (type_url, sub) in subs.iter_mut() {
                    let all = snapshot
                        .resources
                        .get(type_url.as_str())
                        .cloned()
                        .unwrap_or_default();
                    let desired: BTreeMap<String, (String, Any)> = all
                        .into_iter()
                        .filter(|(name, _)| sub.wildcard || sub.names.contains(name))
                        .map(|(name, any)| (name, (fnv(&any.value), any)))
                        .collect();
                    let changed: Vec<Resource> = desired
                        .iter()
                        .filter(|(name, (v, _))| sub.known.get(*name) != Some(v))
                        .map(|(name, (v, any))| Resource {
                            name: name.clone(),
                            version: v.clone(),
                            resource: Some(any.clone()),
                            ..Default::default()
                        })
                        .collect();
                    let removed: Vec<String> = sub
                        .known
                        .keys()
                        .filter(|n| !desired.contains_key(*n))
                        .cloned()
                        .collect();
                    if changed.is_empty() && removed.is_empty() {
                        continue;
                    }
                    sub.known = desired.into_iter().map(|(n, (v, _))| (n, v)).collect();
                    nonce += 1;
                    shared
                        .nonces
                        .lock()
                        .expect("lock")
                        .insert(format!("d{nonce}"), snapshot.version);
                    let response = DeltaDiscoveryResponse {
                        system_version_info: snapshot.version.to_string(),
                        resources: changed,
                        type_url: type_url.clone(),
                        removed_resources: removed,
                        nonce: format!("d{nonce}"),
                        ..Default::default()
                    };
                    if tx.send(Ok(response)).is_err() {
                        return;
                    }
                }
            }
        });
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        Ok(Response::new(Box::pin(stream)))
    }
}

/// A TLS connection tonic can serve (it needs `Connected`).
struct TlsIo(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Delta, per stream and type: what is subscribed and what the client holds.
#[derive(Default)]
struct DeltaSub {
    wildcard: bool,
    names: std::collections::BTreeSet<String>,
    known: BTreeMap<String, String>,
}

/// A resource's version: its bytes' FNV-1a hash, so unchanged resources
/// are not sent again.
fn fnv(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

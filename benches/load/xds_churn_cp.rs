//! A standalone ADS control plane (state of the world) for the xDS load
//! A/B (`xds-ab.sh`): two gRPC servers on 127.0.0.1 serving the same
//! config, a listener whose routes send every request to the EDS cluster
//! `load` (one endpoint: the benchmark's upstream) beside an EDS cluster
//! `churn` of 10,000 endpoints that no route uses. The `still` server
//! never changes it; the `churn` server sends a new version every
//! `--interval-ms`: `--change` endpoints of `churn` replaced and the
//! weight of `load`'s endpoint toggled between 1 and 2 (unless
//! `--toggle-load false`), so both balancers are rebuilt on every update. Like go-control-plane, a stream gets the
//! next version only once it has answered the last one (no pile-up when
//! the proxy is slower than the interval: versions in between are skipped).
//!
//! Prints `addrs still=HOST:PORT churn=HOST:PORT` first, then one line per
//! answered churn update: `ack UNIX_MS LATENCY_MS` (response sent to ACK
//! received) or `nack UNIX_MS ERROR`.
//!
//! Build: `cargo build --release -p strait-proxy --example xds-churn-cp`.
//! Run: `xds-churn-cp --upstream 127.0.0.1:19400 [--endpoints 10000]
//! [--change 100] [--interval-ms 100] [--toggle-load true]`.

#[path = "../../tests/support/control_plane.rs"]
#[allow(unused)]
mod control_plane;
#[path = "../../tests/support/xds_resources.rs"]
mod xds_resources;

use control_plane::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use futures_util::Stream;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};
use xds_resources::{any, eds_cluster, lb_endpoint, listener, router, routes, to};

struct Args {
    upstream: SocketAddr,
    endpoints: u32,
    change: u32,
    interval: Duration,
    /// Toggle `load`'s endpoint weight on each update (rebuilding the balancer that serves).
    toggle_load: bool,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        upstream: "127.0.0.1:19400".parse().map_err(|e| format!("{e}"))?,
        endpoints: 10_000,
        change: 100,
        interval: Duration::from_millis(100),
        toggle_load: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--upstream" => a.upstream = value.parse().map_err(|e| bad(&e))?,
            "--endpoints" => a.endpoints = value.parse().map_err(|e| bad(&e))?,
            "--change" => a.change = value.parse().map_err(|e| bad(&e))?,
            "--toggle-load" => a.toggle_load = value.parse().map_err(|e| bad(&e))?,
            "--interval-ms" => {
                a.interval = Duration::from_millis(value.parse().map_err(|e| bad(&e))?)
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.endpoints == 0 || a.endpoints > 65_536 || a.change > a.endpoints {
        return Err("--endpoints 1..=65536, --change at most --endpoints".into());
    }
    Ok(a)
}

/// Every resource by type URL: (version, [(name, resource)]).
type Resources = BTreeMap<&'static str, (u64, Vec<(String, Any)>)>;

/// The `churn` cluster's endpoints: endpoint i is 10.(100 + flip[i]).x.y:8080.
struct Churn {
    flip: Vec<u8>,
    next: usize,
    load_weight: u32,
}

impl Churn {
    fn assignments(&self, upstream: SocketAddr) -> Vec<(String, Any)> {
        let endpoints = self
            .flip
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let [_, _, hi, lo] = (i as u32).to_be_bytes();
                lb_endpoint(SocketAddr::from((Ipv4Addr::new(10, 100 + f, hi, lo), 8080)))
            })
            .collect();
        let mut load = lb_endpoint(upstream);
        load.load_balancing_weight = Some(UInt32Value {
            value: self.load_weight,
        });
        let cla = |name: &str, lb_endpoints| ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints,
                ..Default::default()
            }],
            ..Default::default()
        };
        vec![
            ("churn".into(), any(ENDPOINT, &cla("churn", endpoints))),
            ("load".into(), any(ENDPOINT, &cla("load", vec![load]))),
        ]
    }

    /// The next `n` endpoints (round the set) replaced; `load`'s weight
    /// toggled between 1 and 2 if `toggle`.
    fn step(&mut self, n: u32, toggle: bool) {
        for _ in 0..n {
            self.flip[self.next] ^= 1;
            self.next = (self.next + 1) % self.flip.len();
        }
        if toggle {
            self.load_weight = 3 - self.load_weight;
        }
    }
}

fn initial(upstream: SocketAddr, churn: &Churn) -> Resources {
    let mut r = Resources::new();
    r.insert(
        LISTENER,
        (
            1,
            vec![(
                "outbound".into(),
                listener("outbound", "load-routes", vec![router()]),
            )],
        ),
    );
    r.insert(
        ROUTE,
        (
            1,
            vec![(
                "load-routes".into(),
                routes("load-routes", &[("*", to("load"))]),
            )],
        ),
    );
    r.insert(
        CLUSTER,
        (
            1,
            vec![
                ("churn".into(), eds_cluster("churn")),
                ("load".into(), eds_cluster("load")),
            ],
        ),
    );
    r.insert(ENDPOINT, (1, churn.assignments(upstream)));
    r
}

#[derive(Clone)]
struct Plane {
    resources: watch::Receiver<Resources>,
    /// Whether this plane's updates are logged (`ack`/`nack` lines).
    report: bool,
}

/// One type's state on one stream.
#[derive(Default)]
struct Sub {
    names: Option<Vec<String>>,
    /// The version last sent, and the nonce and time of a response not yet answered.
    sent: Option<u64>,
    in_flight: Option<(String, Instant)>,
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

type Responses = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaResponses = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Plane {
    type StreamAggregatedResourcesStream = Responses;
    type DeltaAggregatedResourcesStream = DeltaResponses;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Responses>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut resources = self.resources.clone();
        let report = self.report;
        tokio::spawn(async move {
            let mut subs: BTreeMap<String, Sub> = BTreeMap::new();
            let mut nonce = 0u64;
            loop {
                tokio::select! {
                    message = inbound.message() => {
                        let Ok(Some(r)) = message else { return };
                        let sub = subs.entry(r.type_url.clone()).or_default();
                        if let Some((n, at)) = &sub.in_flight {
                            if *n == r.response_nonce {
                                if report && r.type_url == ENDPOINT {
                                    match &r.error_detail {
                                        None => println!("ack {} {:.2}", unix_ms(), at.elapsed().as_secs_f64() * 1e3),
                                        Some(e) => println!("nack {} {}", unix_ms(), e.message),
                                    }
                                }
                                sub.in_flight = None;
                            }
                        }
                        if sub.names.as_ref() != Some(&r.resource_names) {
                            sub.names = Some(r.resource_names);
                            sub.sent = None;
                        }
                    }
                    changed = resources.changed() => if changed.is_err() { return },
                }
                let current = resources.borrow_and_update().clone();
                for (type_url, sub) in subs.iter_mut() {
                    let Some((version, all)) = current.get(type_url.as_str()) else {
                        continue;
                    };
                    if sub.in_flight.is_some() || sub.sent == Some(*version) {
                        continue;
                    }
                    let names = sub.names.clone().unwrap_or_default();
                    let wildcard = type_url == CLUSTER || type_url == LISTENER;
                    nonce += 1;
                    let response = DiscoveryResponse {
                        version_info: version.to_string(),
                        resources: all
                            .iter()
                            .filter(|(n, _)| wildcard || names.contains(n))
                            .map(|(_, a)| a.clone())
                            .collect(),
                        type_url: type_url.clone(),
                        nonce: nonce.to_string(),
                        ..Default::default()
                    };
                    sub.sent = Some(*version);
                    sub.in_flight = Some((nonce.to_string(), Instant::now()));
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
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaResponses>, Status> {
        Err(Status::unimplemented(
            "this bench control plane serves state of the world only",
        ))
    }
}

async fn serve(plane: Plane) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // No Nagle: with it, the tail of a large response waits for the
    // proxy's delayed ACK (~40 ms), which is not what a control plane does.
    let incoming = futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener
            .accept()
            .await
            .and_then(|(s, _)| s.set_nodelay(true).map(|()| s));
        Some((accepted, listener))
    });
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(plane))
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            eprintln!("control plane stopped: {e}");
        }
    });
    Ok(addr)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("xds-churn-cp: {e}");
            std::process::exit(2);
        }
    };
    let mut churn = Churn {
        flip: vec![0; a.endpoints as usize],
        next: 0,
        load_weight: 1,
    };
    let start = initial(a.upstream, &churn);
    let (_still_tx, still_rx) = watch::channel(start.clone());
    let (churn_tx, churn_rx) = watch::channel(start);
    let still = serve(Plane {
        resources: still_rx,
        report: false,
    })
    .await;
    let moving = serve(Plane {
        resources: churn_rx,
        report: true,
    })
    .await;
    let (still, moving) = match (still, moving) {
        (Ok(s), Ok(m)) => (s, m),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("xds-churn-cp: cannot bind: {e}");
            std::process::exit(1);
        }
    };
    println!("addrs still={still} churn={moving}");
    let mut tick = tokio::time::interval(a.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        churn.step(a.change, a.toggle_load);
        let assignments = churn.assignments(a.upstream);
        churn_tx.send_modify(|r| {
            if let Some((version, all)) = r.get_mut(ENDPOINT) {
                *version += 1;
                *all = assignments;
            }
        });
    }
}

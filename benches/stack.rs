//! Criterion benchmark of one request through the outbound tower stack,
//! in process: a hyper client on one end of a loopback connection,
//! strait's HTTP server and stack on the other ([`http::server::serve`],
//! as an accepted connection gets it), and a hyper upstream on loopback.
//! What it measures is the proxy's whole per-request cost (hyper both
//! ways, every layer, the pool) without the accept loop and detection.
//! `http2_upstream` sends on to an HTTP/2 upstream, through strait's own
//! HTTP/2 client (`pool::h2`), the path of the mesh hop's outbound side.
//! Run with `cargo bench -p strait-proxy --bench stack`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use strait_config::Config;
use strait_proxy::detect::Protocol;
use strait_proxy::http::{server, ConnContext, Inputs};
use strait_proxy::metrics::{Metrics, TlsStatus};
use strait_proxy::orig_dst::OrigDst;
use strait_proxy::pool::{PoolSettings, Pools};
use strait_proxy::route::Snapshot;
use strait_proxy::Direction;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// An upstream answering every request with "ok", over HTTP/1.1 or, when
/// `http2`, prior-knowledge HTTP/2.
async fn upstream(http2: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(b"ok"),
                    )))
                });
                let io = TokioIo::new(stream);
                let _ = if http2 {
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await
                } else {
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await
                };
            });
        }
    });
    addr
}

/// A client connection to strait's outbound stack, configured by `yaml`
/// (`UPSTREAM` replaced by the upstream's address).
async fn connect(yaml: &str) -> http1::SendRequest<Empty<Bytes>> {
    let upstream = upstream(yaml.contains("protocol: http2")).await;
    let config = Config::from_yaml(&yaml.replace("UPSTREAM", &upstream.to_string()))
        .expect("bench config is valid");
    let metrics = Metrics::new();
    let settings = PoolSettings {
        idle_timeout: Duration::from_secs(60),
        max_idle_per_endpoint: 16,
        tcp_keepalive: Duration::from_secs(60),
    };
    let inputs = Arc::new(Inputs {
        direction: Direction::Outbound,
        snapshot: Arc::new(arc_swap::ArcSwap::from_pointee(Snapshot::new(config))),
        pools: Pools::new(Direction::Outbound, settings, metrics.clone(), None),
        tracer: strait_proxy::trace::Tracer::new(&metrics.registry),
        observe: strait_proxy::observe::Observers::new(&Default::default(), &metrics)
            .expect("no access log to open"),
        metrics,
        tls: None,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let proxy = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let Ok((stream, client)) = listener.accept().await else {
            return;
        };
        let orig_dst = OrigDst {
            addr: proxy,
            redirected: false,
        };
        let ctx = ConnContext::new(inputs, client, orig_dst, TlsStatus::NoIdentity("plaintext"));
        let idle = (Arc::new(AtomicU64::new(0)), Duration::from_secs(600));
        server::serve(stream, Protocol::Http1, ctx, CancellationToken::new(), idle).await;
    });
    let stream = TcpStream::connect(proxy).await.expect("connect");
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

const DEFAULT_CLUSTER: &str = "
listeners:
  outbound: {default_cluster: web}
clusters:
  - name: web
    protocol: http1
    endpoints: [{address: 'UPSTREAM'}]
";

const HTTP2_UPSTREAM: &str = "
listeners:
  outbound: {default_cluster: web}
clusters:
  - name: web
    protocol: http2
    endpoints: [{address: 'UPSTREAM'}]
";

const VHOST_WITH_RETRIES: &str = "
clusters:
  - name: web
    protocol: http1
    endpoints: [{address: 'UPSTREAM'}]
virtual_hosts:
  - name: web
    domains: ['web']
    routes:
      - name: api
        match: {path: {prefix: /}}
        cluster: web
        timeout: 5s
        retry: {attempts: 2, on: [gateway-error]}
";

fn request_through_stack(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("outbound_stack");
    for (name, yaml) in [
        ("default_cluster", DEFAULT_CLUSTER),
        ("vhost_timeout_retry", VHOST_WITH_RETRIES),
        ("http2_upstream", HTTP2_UPSTREAM),
    ] {
        let mut sender = rt.block_on(connect(yaml));
        group.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let req = hyper::Request::get("/")
                        .header("host", "web")
                        .body(Empty::<Bytes>::new())
                        .expect("request");
                    let response = sender.send_request(req).await.expect("response");
                    assert_eq!(response.status(), 200);
                    response.into_body().collect().await.expect("body");
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, request_through_stack);
criterion_main!(benches);

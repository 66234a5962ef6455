//! Criterion micro-benchmarks of the per-request hot path: protocol
//! detection, route matching on 1,000 routes, balancer picks over 1,000
//! endpoints, metrics recording, header rewriting, and HTTP/2 reads
//! through the control-frame flood guard (against bare reads). Run with
//! `cargo bench -p strait-proxy --bench hot_path`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderValue, Request};
use std::net::SocketAddr;
use std::sync::Arc;
use strait_config::Config;
use strait_proxy::balance::WeightedRoundRobin;
use strait_proxy::detect::{classify, H2_PREFACE};
use strait_proxy::http::headers::{prepare_request, strip_hop_by_hop};
use strait_proxy::metrics::{Metrics, RequestKey, TlsStatus};
use strait_proxy::pool::HttpVersion;
use strait_proxy::route::Snapshot;
use strait_proxy::Direction;

fn detection(c: &mut Criterion) {
    let h1 = b"GET /api/v1/users?id=42 HTTP/1.1\r\nHost: users.default.svc\r\n\r\n";
    let tls = [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
    let mut group = c.benchmark_group("detect");
    group.bench_function("http1", |b| b.iter(|| classify(black_box(h1))));
    group.bench_function("h2_preface", |b| b.iter(|| classify(black_box(H2_PREFACE))));
    group.bench_function("tls", |b| b.iter(|| classify(black_box(&tls))));
    group.bench_function("opaque", |b| {
        b.iter(|| classify(black_box(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")))
    });
    group.finish();
}

fn thousand_routes() -> Snapshot {
    let mut yaml = String::from("clusters:\n");
    for i in 0..1000 {
        yaml.push_str(&format!(
            "  - name: svc{i}\n    endpoints: [{{address: '10.0.{}.{}:8080'}}]\n",
            i / 250,
            i % 250 + 1
        ));
    }
    yaml.push_str("routes:\n");
    for i in 0..1000 {
        yaml.push_str(&format!(
            "  - authority: svc{i}.default.svc.cluster.local\n    cluster: svc{i}\n"
        ));
    }
    Snapshot::new(Config::from_yaml(&yaml).expect("bench config is valid"))
}

fn routing(c: &mut Criterion) {
    let snapshot = thousand_routes();
    let mut group = c.benchmark_group("route_1000");
    group.bench_function("hit", |b| {
        b.iter(|| {
            snapshot
                .by_authority(black_box("svc777.default.svc.cluster.local:8080"))
                .is_some()
        })
    });
    group.bench_function("hit_mixed_case", |b| {
        b.iter(|| {
            snapshot
                .by_authority(black_box("SVC777.default.svc.cluster.local"))
                .is_some()
        })
    });
    group.bench_function("miss", |b| {
        b.iter(|| {
            snapshot
                .by_authority(black_box("unknown.example.com"))
                .is_none()
        })
    });
    group.finish();
}

fn balancing(c: &mut Criterion) {
    let endpoints: Vec<(SocketAddr, u32)> = (0..1000u32)
        .map(|i| {
            (
                SocketAddr::from(([10, 1, (i / 250) as u8, (i % 250) as u8], 8080)),
                1 + i % 5,
            )
        })
        .collect();
    let rr = WeightedRoundRobin::new(endpoints.iter().copied());
    c.bench_function("balance_1000/weighted_round_robin", |b| {
        b.iter(|| black_box(rr.pick()))
    });
}

fn metrics(c: &mut Criterion) {
    let metrics = Metrics::new();
    let authority: Arc<str> = "web.default.svc".into();
    let target: SocketAddr = "10.0.0.7:8080".parse().expect("addr");
    let tls = TlsStatus::NoIdentity("not_meshed");
    let key = RequestKey {
        direction: Direction::Outbound,
        authority: authority.clone(),
        target,
        tls,
        route: Arc::from(""),
        cluster: Arc::from("web"),
    };
    let handles = metrics.requests(key.clone());
    let mut group = c.benchmark_group("metrics");
    group.bench_function("record_request", |b| {
        b.iter(|| {
            handles.total.inc();
            handles.latency_ms.observe(black_box(3.2));
            handles.response(black_box(200), false);
        })
    });
    group.bench_function("resolve_handles", |b| {
        b.iter(|| metrics.requests(black_box(key.clone())))
    });
    group.finish();
}

fn headers(c: &mut Criterion) {
    let fallback: SocketAddr = "10.0.0.7:8080".parse().expect("addr");
    let template = Request::get("/api/v1/users?id=42")
        .header("host", "users.default.svc")
        .header("user-agent", "curl/8.0")
        .header("accept", "*/*")
        .header("connection", "keep-alive")
        .header("x-request-id", "4bf92f3577b34da6a3ce929d0e0e4736")
        .body(())
        .expect("request");
    let mut group = c.benchmark_group("headers");
    group.bench_function("strip_hop_by_hop", |b| {
        b.iter_batched(
            || template.headers().clone(),
            |mut h| strip_hop_by_hop(&mut h, false),
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("prepare_h1_to_h1", |b| {
        b.iter_batched(
            || clone_request(&template),
            |mut r| prepare_request(&mut r, HttpVersion::Http1, false, fallback),
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("prepare_h1_to_h2", |b| {
        b.iter_batched(
            || clone_request(&template),
            |mut r| prepare_request(&mut r, HttpVersion::Http2, false, fallback),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn clone_request(r: &Request<()>) -> Request<()> {
    let mut out = Request::new(());
    *out.uri_mut() = r.uri().clone();
    *out.headers_mut() = r.headers().clone();
    out.headers_mut()
        .insert("x-clone", HeaderValue::from_static("1"));
    out
}

/// An endless HTTP/2 client byte stream: the preface once, then `frames`
/// over and over, always ready (no I/O: only the copy is measured).
struct Replay {
    preface: bool,
    frames: Vec<u8>,
    at: usize,
}

impl tokio::io::AsyncRead for Replay {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if std::mem::take(&mut self.preface) {
            buf.put_slice(H2_PREFACE);
            return std::task::Poll::Ready(Ok(()));
        }
        let n = buf.remaining().min(self.frames.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.frames[at..at + n]);
        self.at = (at + n) % self.frames.len();
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Replay {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

fn h2_frame(kind: u8, flags: u8, stream: u32, len: usize) -> Vec<u8> {
    let mut f = (len as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.resize(9 + len, b'x');
    f
}

/// One 16 KiB read, bare and through [`FloodGuard`], of bulk DATA frames
/// (16 KiB each) and of small gRPC-like exchanges (HEADERS, DATA and a
/// WINDOW_UPDATE of ~150 bytes in all), so ~100 frame headers per read.
fn flood_guard(c: &mut Criterion) {
    use strait_proxy::http::flood::{FloodGuard, Limits};
    use tokio::io::AsyncRead;
    let bulk = h2_frame(0x0, 0, 1, 16 * 1024);
    let small: Vec<u8> = (0..100u32)
        .flat_map(|i| {
            let stream = 1 + 2 * i;
            let mut f = h2_frame(0x1, 0x4, stream, 40);
            f.extend(h2_frame(0x0, 0x1, stream, 80));
            f.extend(h2_frame(0x8, 0, 0, 4));
            f
        })
        .collect();
    let limits = Limits::from_settings(&Config::from_yaml("").expect("defaults").proxy.http);
    let mut group = c.benchmark_group("h2_read_16k");
    let mut scratch = vec![0u8; 16 * 1024];
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for (name, frames) in [("bulk", &bulk), ("small_frames", &small)] {
        let replay = || Replay {
            preface: true,
            frames: frames.clone(),
            at: 0,
        };
        let mut bare = replay();
        group.bench_function(format!("{name}/bare"), |b| {
            b.iter(|| {
                let mut buf = tokio::io::ReadBuf::new(&mut scratch);
                let _ = std::pin::Pin::new(&mut bare).poll_read(&mut cx, &mut buf);
                black_box(buf.filled().len())
            })
        });
        let mut guarded = FloodGuard::new(replay(), limits, |_| {});
        group.bench_function(format!("{name}/flood_guard"), |b| {
            b.iter(|| {
                let mut buf = tokio::io::ReadBuf::new(&mut scratch);
                let _ = std::pin::Pin::new(&mut guarded).poll_read(&mut cx, &mut buf);
                black_box(buf.filled().len())
            })
        });
    }
    group.finish();
}

/// What every request pays for trace propagation: reading its trace
/// headers and, when it has no context (the common case at the edge), a
/// fresh `traceparent` and `x-request-id` generated and inserted.
fn trace_context(c: &mut Criterion) {
    use strait_proxy::trace::context::{self, Incoming};
    let fresh = Request::get("http://users.default.svc/api/v1/users?id=42")
        .header("host", "users.default.svc")
        .header("user-agent", "curl/8.0")
        .header("accept", "*/*")
        .body(())
        .expect("request");
    let mut continued = clone_request(&fresh);
    continued.headers_mut().insert(
        context::TRACEPARENT,
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
    );
    let mut group = c.benchmark_group("trace_context");
    group.bench_function("fresh", |b| {
        b.iter_batched(
            || fresh.headers().clone(),
            |mut headers| {
                let incoming = Incoming::read(&headers);
                if !incoming.has_request_id {
                    if let Some(id) =
                        context::new_request_id(0x1234_5678_9abc_def0_1234_5678_9abc_def0)
                    {
                        headers.insert(context::REQUEST_ID, id);
                    }
                }
                let (trace_id, span_id) = ([7u8; 16], [9u8; 8]);
                if let Some(value) = context::new_traceparent(&trace_id, &span_id, false) {
                    headers.insert(context::TRACEPARENT, value);
                }
                headers
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("read_continued", |b| {
        b.iter(|| Incoming::read(black_box(continued.headers())).parent())
    });
    group.finish();
}

criterion_group!(
    benches,
    trace_context,
    detection,
    routing,
    balancing,
    metrics,
    headers,
    flood_guard
);
criterion_main!(benches);

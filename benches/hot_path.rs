//! Criterion micro-benchmarks of the per-request hot path: protocol
//! detection, route matching on 1,000 routes, balancer picks over 1,000
//! endpoints, metrics recording, and header rewriting. Run with
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

criterion_group!(benches, detection, routing, balancing, metrics, headers);
criterion_main!(benches);

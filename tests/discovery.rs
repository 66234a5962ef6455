//! DNS endpoint discovery through the real proxy, against a real DNS
//! server the test runs on 127.0.0.1 (a minimal responder: A records with
//! a 1 s TTL). Requests follow the name to its address; when the record
//! changes they move to the new address without one failing; when the
//! server stops answering, the last good address keeps serving. A name
//! that does not exist is reported once, not once per retry.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::dns::{dns_server, Answer};
use support::upstream::{Behaviour, Upstream};
use support::{Proxy, EPHEMERAL_LISTENERS};
use tokio::net::{TcpStream, UdpSocket};

async fn get(proxy: &Proxy) -> StatusCode {
    let stream = TcpStream::connect(proxy.outbound).await.expect("connect");
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", "svc")
        .body(Full::<Bytes>::default())
        .expect("req");
    let response = sender.send_request(req).await.expect("response");
    let status = response.status();
    let _ = response.into_body().collect().await;
    status
}

#[tokio::test]
async fn endpoints_follow_dns_and_survive_its_outage() {
    let answer: Answer = Arc::new(Mutex::new(Some(Ipv4Addr::new(127, 0, 0, 1))));
    let dns = dns_server(answer.clone()).await;
    let a = Upstream::start().await;
    let port = a.addr.port();
    let b = Upstream::start_at(&format!("127.0.0.2:{port}"), Behaviour::default()).await;
    let proxy = Proxy::start(&format!(
        "{}dns: {{servers: ['{dns}'], min_refresh: 200ms, max_refresh: 1s}}\nclusters:\n  - name: svc\n    load_balancer: {{policy: round_robin}}\n    endpoints: [{{address: 'svc.strait.test:{port}'}}]\n",
        EPHEMERAL_LISTENERS.replace(
            "outbound: {address: 127.0.0.1, port: 0}",
            "outbound: {address: 127.0.0.1, port: 0, default_cluster: svc}"
        )
    ));
    // Resolved: requests reach the first address.
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&proxy).await != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "name never resolved:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.requests.load(Ordering::SeqCst) >= 1);

    // The record changes: traffic moves, no request fails on the way.
    *answer.lock().expect("answer") = Some(Ipv4Addr::new(127, 0, 0, 2));
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.requests.load(Ordering::SeqCst) == 0 {
        assert_eq!(get(&proxy).await, StatusCode::OK);
        assert!(
            Instant::now() < deadline,
            "never moved to the new address:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The DNS server goes silent: the last good address keeps serving.
    *answer.lock().expect("answer") = None;
    let before = b.requests.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !proxy
        .log()
        .contains("cannot resolve svc.strait.test (A and AAAA)")
    {
        assert_eq!(get(&proxy).await, StatusCode::OK);
        assert!(
            Instant::now() < deadline,
            "the failed lookup was never reported:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..5 {
        assert_eq!(get(&proxy).await, StatusCode::OK);
    }
    assert!(b.requests.load(Ordering::SeqCst) > before);
}

/// Answer every query with NXDOMAIN, counting them.
async fn nxdomain_server(queries: Arc<AtomicUsize>) -> std::net::SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
    let addr = socket.local_addr().expect("dns addr");
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            if n < 12 {
                continue;
            }
            queries.fetch_add(1, Ordering::SeqCst);
            let mut reply = buf[..n].to_vec();
            // Response, recursion desired+available, rcode 3 (NXDOMAIN);
            // the question stays, no answers.
            reply[2] = 0x81;
            reply[3] = 0x83;
            reply[6..12].fill(0);
            let _ = socket.send_to(&reply, peer).await;
        }
    });
    addr
}

#[tokio::test]
async fn an_unresolvable_name_is_reported_once_with_both_families_and_the_retry() {
    let queries = Arc::new(AtomicUsize::new(0));
    let dns = nxdomain_server(queries.clone()).await;
    let proxy = Proxy::start(&format!(
        "{EPHEMERAL_LISTENERS}dns: {{servers: ['{dns}'], min_refresh: 100ms, max_refresh: 200ms}}\nclusters:\n  - name: svc\n    endpoints: [{{address: 'nowhere.strait.test:80'}}]\n"
    ));
    // Many failed lookups (each asks for A and AAAA)...
    let deadline = Instant::now() + Duration::from_secs(15);
    while queries.load(Ordering::SeqCst) < 12 {
        assert!(
            Instant::now() < deadline,
            "too few lookups:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and one warning, naming the host, both families and the retry.
    let log = proxy.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("nowhere.strait.test"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0]
            .contains("cannot resolve nowhere.strait.test (A and AAAA): no such name (NXDOMAIN)")
            && warnings[0].contains("retrying in 100ms"),
        "{}",
        warnings[0]
    );
}

//! HTTP/2 control-frame floods against the real `strait` binary: raw
//! PING, SETTINGS, empty-DATA and WINDOW_UPDATE frames written by hand over h2c and over
//! the mesh's mTLS inbound, the GOAWAY `ENHANCE_YOUR_CALM` they get, the
//! `http2_connection_errors_total` reasons an operator watches, and the
//! clients that must not notice (`proxy/src/http/flood.rs`). Part of
//! issue #10.

mod support;

use http::StatusCode;
use std::time::{Duration, Instant};
use support::edge::*;
use support::upstream::Upstream;
use support::{metric_sum, Proxy, EPHEMERAL_LISTENERS};
use tokio::io::AsyncWriteExt;

const WINDOW_UPDATE: u8 = 0x8;

/// The frames of one flood of `n` frames of its kind.
fn flood_of(reason: &str, n: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    match reason {
        "ping_flood" => {
            (0..n).for_each(|i| bytes.extend(frame(PING, 0, 0, &(i as u64).to_be_bytes())))
        }
        "settings_flood" => (0..n).for_each(|_| bytes.extend(frame(SETTINGS, 0, 0, &[]))),
        // Windows opened for data the proxy never sent.
        "window_update_flood" => {
            (0..n).for_each(|_| bytes.extend(frame(WINDOW_UPDATE, 0, 0, &1024u32.to_be_bytes())))
        }
        _ => {
            bytes.extend(frame(HEADERS, END_HEADERS, 1, POST_WEB));
            (0..n).for_each(|_| bytes.extend(frame(DATA, 0, 1, &[])));
        }
    }
    bytes
}

#[tokio::test]
async fn control_frame_floods_get_goaway_and_are_counted_while_others_are_served() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&config(
        upstream.addr,
        "http2_max_ping_frames: 20, http2_max_settings_frames: 20, http2_max_empty_data_frames: 20",
    ));
    // A well-behaved client, connected before the floods.
    let mut good = h2_client(proxy.outbound).await;
    assert_eq!(h2_get(&mut good).await, StatusCode::OK);

    let reasons = [
        "ping_flood",
        "settings_flood",
        "empty_data_flood",
        "window_update_flood",
    ];
    for (i, reason) in reasons.iter().enumerate() {
        let mut flood = raw_h2(proxy.outbound).await;
        // The proxy may close before it has read everything.
        let _ = flood.write_all(&flood_of(reason, 200)).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        let code = goaway_code(&mut flood, deadline).await;
        assert_eq!(code, Some(ENHANCE_YOUR_CALM), "{reason}: {}", proxy.log());
        // Then the connection is closed.
        while next_frame(&mut flood, deadline).await.is_some() {}
        assert!(Instant::now() < deadline, "{reason}: not closed within 5 s");
        let label = format!("reason=\"{reason}\"");
        let metrics = wait_for_metric(
            &proxy,
            "http2_connection_errors_total",
            &["direction=\"outbound\"", &label, "sender=\"proxy\""],
            1.0,
        )
        .await;
        assert_eq!(
            metric_sum(&metrics, "http2_connection_errors_total", &[]),
            (i + 1) as f64,
            "one count per flooding connection:\n{metrics}"
        );
        // The other client was never disturbed.
        assert_eq!(h2_get(&mut good).await, StatusCode::OK, "after {reason}");
    }
    // The inbound side is guarded the same way (plaintext here; the mesh's
    // mTLS inbound serves its HTTP/2 through the same server).
    let mut flood = raw_h2(proxy.inbound).await;
    let _ = flood.write_all(&flood_of("ping_flood", 200)).await;
    let code = goaway_code(&mut flood, Instant::now() + Duration::from_secs(5)).await;
    assert_eq!(code, Some(ENHANCE_YOUR_CALM), "inbound: {}", proxy.log());
    wait_for_metric(
        &proxy,
        "http2_connection_errors_total",
        &["direction=\"inbound\"", "reason=\"ping_flood\""],
        1.0,
    )
    .await;
    // Logged (the log writer may lag the metric).
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.log_lines(&["HTTP/2 PING flood", "ENHANCE_YOUR_CALM"]) == 0 {
        assert!(
            Instant::now() < deadline,
            "the flood is not logged:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // New clients are served too.
    let mut fresh = h2_client(proxy.outbound).await;
    assert_eq!(h2_get(&mut fresh).await, StatusCode::OK);
}

#[tokio::test]
async fn a_client_at_the_flood_limits_is_never_cut_off() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&config(
        upstream.addr,
        "http2_max_ping_frames: 20, http2_max_settings_frames: 20, http2_max_empty_data_frames: 20",
    ));
    // Every limit reached, none passed (the preface's SETTINGS is one).
    let mut client = raw_h2(proxy.outbound).await;
    let mut bytes = flood_of("ping_flood", 20);
    bytes.extend(flood_of("settings_flood", 19));
    bytes.extend(flood_of("empty_data_flood", 20));
    // 5 + 2 × 1 stream before the proxy sent any DATA.
    bytes.extend(flood_of("window_update_flood", 7));
    bytes.extend(frame(DATA, END_STREAM, 1, b"done"));
    bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, GET_WEB));
    client.write_all(&bytes).await.expect("write");
    // Every PING answered, and both requests too; no GOAWAY.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut pongs, mut answered) = (0, Vec::new());
    while pongs < 20 || answered.len() < 2 {
        let Some((kind, flags, _, stream)) = next_frame_on(&mut client, deadline).await else {
            panic!(
                "closed or stalled after {pongs} PONGs and answers on {answered:?}:\n{}",
                proxy.log()
            );
        };
        assert_ne!(kind, GOAWAY, "{}", proxy.log());
        pongs += usize::from(kind == PING && flags & 0x1 != 0);
        if kind == HEADERS {
            answered.push(stream);
        }
    }
    answered.sort_unstable();
    assert_eq!(answered, [1, 3]);
    let metrics = proxy.metrics();
    assert_eq!(
        metric_sum(&metrics, "http2_connection_errors_total", &[]),
        0.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_ping_flood_over_the_mtls_inbound_gets_goaway_and_is_counted() {
    let pki = support::pki::Pki::new("flood-ca");
    let yaml = format!(
        "{}{EPHEMERAL_LISTENERS}proxy:\n  http: {{http2_max_ping_frames: 20}}\n",
        pki.identity_yaml("spiffe://flood.test/ns/a/sa/server", "server")
    );
    let proxy = Proxy::start(&yaml);
    let client = pki.identity_yaml("spiffe://flood.test/ns/a/sa/client", "client");
    let mut tls = mesh_client(&client, proxy.inbound).await;
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    bytes.extend(flood_of("ping_flood", 200));
    // The proxy may close before it has read everything.
    let _ = tls.write_all(&bytes).await;
    let _ = tls.flush().await;
    let code = goaway_code(&mut tls, Instant::now() + Duration::from_secs(5)).await;
    assert_eq!(code, Some(ENHANCE_YOUR_CALM), "{}", proxy.log());
    wait_for_metric(
        &proxy,
        "http2_connection_errors_total",
        &[
            "direction=\"inbound\"",
            "reason=\"ping_flood\"",
            "sender=\"proxy\"",
        ],
        1.0,
    )
    .await;
}

//! The ADS stream: connect (over TLS with `xds.tls`), send the opening requests (with the versions
//! and names already known, so a reconnect resubscribes where it left
//! off), answer every response with its ACK or NACK, and reconnect with
//! jittered exponential backoff when the stream ends. While disconnected
//! nothing is applied, so the last accepted config keeps serving.

use super::Xds;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use strait_config::XdsMode;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::codegen::tokio_stream::Stream;
use tonic::transport::Endpoint;
use tonic::Streaming;
use tracing::{info, warn};

/// First retry after this long; doubled per failed attempt up to
/// `MAX_BACKOFF`, each delay jittered down by up to half so a restarted
/// control plane is not hit by every proxy at once.
const BASE_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A large EDS response (10,000 endpoints) is a few MB; tonic's 4 MB
/// default would end the stream on it.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

pub async fn run(xds: Arc<Xds>, stop: CancellationToken) {
    let mut attempt: u32 = 0;
    let mut first = true;
    loop {
        if !first {
            xds.metrics.xds.stream_restarts_total.inc();
        }
        first = false;
        let mut answered = false;
        let ended = tokio::select! {
            _ = stop.cancelled() => return,
            ended = session(&xds, &mut answered) => ended,
        };
        xds.metrics.xds.connected.set(0);
        // A stream that carried a response was healthy: start over.
        if answered {
            attempt = 0;
        }
        let delay = backoff(attempt);
        attempt = attempt.saturating_add(1);
        warn!(address = %xds.bootstrap.address, error = %ended, retry_in = ?delay, "xds: stream to the control plane ended; the last accepted config keeps serving");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// An error with its causes: tonic's own says only "transport error".
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn backoff(attempt: u32) -> Duration {
    let full = BASE_BACKOFF
        .saturating_mul(1u32 << attempt.min(16))
        .min(MAX_BACKOFF);
    full.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// One stream, until it fails. Returns why it ended; `answered` says
/// whether any response arrived on it.
async fn session(xds: &Xds, answered: &mut bool) -> String {
    let address = &xds.bootstrap.address;
    let endpoint = match Endpoint::from_shared(format!("http://{address}")) {
        Ok(e) => e
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10)),
        Err(e) => return format!("'{address}' is not a usable address: {e}"),
    };
    let connected = match &xds.bootstrap.tls {
        None => endpoint.connect().await,
        Some(tls) => match super::tls_channel::Connector::new(tls, address) {
            Ok(connector) => endpoint.connect_with_connector(connector).await,
            Err(e) => return e,
        },
    };
    let channel = match connected {
        Ok(c) => c,
        Err(e) => {
            return format!(
                "cannot connect to {address}: {} (is the control plane up and the address right?)",
                causes(&e)
            )
        }
    };
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
    match xds.bootstrap.mode {
        XdsMode::Sotw => {
            let (tx, rx) = mpsc::unbounded_channel();
            for request in xds.sotw_initial() {
                // The receiver is ours and alive until the stream is dropped.
                let _ = tx.send(request);
            }
            match client.stream_aggregated_resources(Requests(rx)).await {
                Ok(r) => {
                    pump(xds, tx, r.into_inner(), answered, |resp| {
                        xds.sotw_handle(resp)
                    })
                    .await
                }
                Err(status) => format!("the control plane refused the stream: {status}"),
            }
        }
        XdsMode::Delta => {
            let (tx, rx) = mpsc::unbounded_channel();
            for request in xds.delta_initial() {
                let _ = tx.send(request);
            }
            match client.delta_aggregated_resources(Requests(rx)).await {
                Ok(r) => {
                    pump(xds, tx, r.into_inner(), answered, |resp| {
                        xds.delta_handle(resp)
                    })
                    .await
                }
                Err(status) => format!("the control plane refused the stream: {status}"),
            }
        }
    }
}

/// Answer responses until the stream ends, and let warming clusters go
/// live when their wait runs out.
async fn pump<Req, Resp>(
    xds: &Xds,
    tx: mpsc::UnboundedSender<Req>,
    mut responses: Streaming<Resp>,
    answered: &mut bool,
    handle: impl Fn(Resp) -> Vec<Req>,
) -> String {
    xds.metrics.xds.connected.set(1);
    info!(address = %xds.bootstrap.address, node = %xds.bootstrap.node.id, mode = ?xds.bootstrap.mode, "xds: stream open");
    loop {
        let deadline = xds.next_warm_deadline();
        let warm_timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            message = responses.message() => match message {
                Ok(Some(response)) => {
                    *answered = true;
                    for request in handle(response) {
                        if tx.send(request).is_err() {
                            return "the request stream closed".into();
                        }
                    }
                }
                Ok(None) => return "the control plane closed the stream".into(),
                Err(status) => return format!("stream error: {status}"),
            },
            _ = warm_timer => xds.expire_warming(),
        }
    }
}

/// The request half of a stream.
struct Requests<T>(mpsc::UnboundedReceiver<T>);

impl<T> Stream for Requests<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

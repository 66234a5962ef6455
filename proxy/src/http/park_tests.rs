//! Parking, on a connection over an in-memory pipe with the clock paused:
//! a parked connection serves its next request as if nothing happened,
//! a request in flight is never parked, bytes read before the park are
//! not lost, and the idle timeout and drain still close it.

use super::*;
use crate::io::CountedIo;
use http_body_util::Full;
use std::convert::Infallible;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

struct Conn {
    client: DuplexStream,
    shared: Arc<Shared>,
    drain: CancellationToken,
    served: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

/// A connection served by `park::serve` whose requests are answered "ok"
/// after `delay`.
fn connect(delay: Duration, idle_timeout: Duration) -> Conn {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let activity = Arc::new(AtomicU64::new(0));
    let io = CountedIo::uncounted(server, Bytes::new()).with_activity(activity.clone());
    let service = hyper::service::service_fn(move |_req: Request<Incoming>| async move {
        tokio::time::sleep(delay).await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let shared = Arc::new(Shared::default());
    let drain = CancellationToken::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let served = tokio::spawn(serve_shared(
        shared.clone(),
        builder,
        io,
        service,
        HEADER_TIMEOUT,
        drain.clone(),
        (activity, idle_timeout),
    ));
    Conn {
        client,
        shared,
        drain,
        served,
    }
}

impl Conn {
    /// Read one response (its body is "ok"); returns its head.
    async fn response(&mut self) -> String {
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\nok") {
            let mut buf = [0u8; 1024];
            let n = self.client.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "connection closed after {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(got).expect("UTF-8 head")
    }

    async fn get(&mut self) -> String {
        self.client
            .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .expect("write");
        self.response().await
    }

    fn parked(&self) -> u64 {
        self.shared.parked.load(Ordering::Relaxed)
    }

    /// The client sees the connection closed.
    async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(self.client.read(&mut buf).await, Ok(0) | Err(_))
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_parks_and_serves_its_next_request() {
    let mut conn = connect(Duration::ZERO, IDLE_TIMEOUT);
    let first = conn.get().await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert_eq!(conn.parked(), 0, "a connection just used is not parked");
    tokio::time::sleep(PARK_AFTER * 3).await;
    assert_eq!(conn.parked(), 1, "idle for 3 x PARK_AFTER");
    let second = conn.get().await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(
        !second.to_ascii_lowercase().contains("connection: close"),
        "{second}"
    );
    tokio::time::sleep(PARK_AFTER * 3).await;
    assert_eq!(conn.parked(), 2, "parks again once idle again");
    assert!(conn.get().await.starts_with("HTTP/1.1 200"));
}

#[tokio::test(start_paused = true)]
async fn a_request_in_flight_is_never_parked() {
    // A long poll: nothing moves for 20 x PARK_AFTER before the response.
    let mut conn = connect(PARK_AFTER * 20, IDLE_TIMEOUT);
    let response = conn.get().await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        !response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );
    assert_eq!(conn.parked(), 0);
    assert!(
        conn.get().await.starts_with("HTTP/1.1 200"),
        "still keep-alive"
    );
}

#[tokio::test(start_paused = true)]
async fn a_head_split_across_a_park_is_replayed() {
    let mut conn = connect(Duration::ZERO, IDLE_TIMEOUT);
    conn.get().await;
    conn.client
        .write_all(b"GET / HTTP/1.1\r\nho")
        .await
        .expect("write");
    tokio::time::sleep(PARK_AFTER * 3).await;
    assert_eq!(conn.parked(), 1, "parked with half a head read");
    conn.client
        .write_all(b"st: a\r\n\r\n")
        .await
        .expect("write");
    let response = conn.response().await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[tokio::test(start_paused = true)]
async fn a_head_that_stalls_across_parks_is_closed_at_the_header_timeout() {
    let mut conn = connect(Duration::ZERO, IDLE_TIMEOUT);
    conn.get().await;
    conn.client
        .write_all(b"GET / HTTP/1.1\r\n")
        .await
        .expect("write");
    // One header line per 2 x PARK_AFTER: bytes keep moving, the head never ends.
    let started = tokio::time::Instant::now();
    while !conn.served.is_finished() {
        assert!(started.elapsed() < HEADER_TIMEOUT * 2, "still open");
        tokio::time::sleep(PARK_AFTER * 2).await;
        let _ = conn.client.write_all(b"x-slow: 1\r\n").await;
    }
    assert!(started.elapsed() >= HEADER_TIMEOUT, "closed early");
}

/// Half a request head, a pause long enough to park, then the rest.
async fn stall_across_a_park(conn: &mut Conn) {
    let client = &mut conn.client;
    client
        .write_all(b"GET / HTTP/1.1\r\nho")
        .await
        .expect("write");
    tokio::time::sleep(PARK_AFTER * 3).await;
    client.write_all(b"st: a\r\n\r\n").await.expect("write");
}

#[tokio::test(start_paused = true)]
async fn a_head_stall_that_ended_does_not_count_against_a_later_one() {
    let mut conn = connect(Duration::ZERO, IDLE_TIMEOUT);
    conn.get().await;
    stall_across_a_park(&mut conn).await;
    assert!(conn.response().await.starts_with("HTTP/1.1 200"));
    // Busy for longer than the header timeout, never idle long enough to park.
    let parked = conn.parked();
    let busy_until = tokio::time::Instant::now() + HEADER_TIMEOUT * 2;
    while tokio::time::Instant::now() < busy_until {
        assert!(conn.get().await.starts_with("HTTP/1.1 200"));
        tokio::time::sleep(PARK_AFTER / 2).await;
    }
    assert_eq!(conn.parked(), parked, "never parked while busy");
    // A second, short stall is served, not taken for the first one going on.
    stall_across_a_park(&mut conn).await;
    let response = conn.response().await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[tokio::test(start_paused = true)]
async fn a_parked_connection_closes_at_the_idle_timeout() {
    let mut conn = connect(Duration::ZERO, Duration::from_secs(10));
    conn.get().await;
    let started = tokio::time::Instant::now();
    assert!(conn.closed().await);
    assert_eq!(conn.parked(), 1);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(12),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn drain_closes_a_parked_connection() {
    let mut conn = connect(Duration::ZERO, IDLE_TIMEOUT);
    conn.get().await;
    tokio::time::sleep(PARK_AFTER * 3).await;
    assert_eq!(conn.parked(), 1);
    conn.drain.cancel();
    assert!(conn.closed().await);
    let served = conn.served.await.expect("serve task");
    assert!(served.is_ok(), "{served:?}");
}

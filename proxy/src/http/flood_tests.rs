use super::*;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ping() -> Vec<u8> {
    frame(PING, 0, 0, &[7; 8])
}

fn limits(ping: u32, settings: u32, empty_data: u32) -> Limits {
    Limits {
        window: Duration::from_secs(10),
        max: [ping, settings, empty_data],
        window_updates_per_data: 10,
    }
}

fn window_update(stream: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &1024u32.to_be_bytes())
}

fn heads(frames: &mut Frames, bytes: &[u8]) -> Vec<(u8, u32, u32)> {
    let mut seen = Vec::new();
    frames.walk(bytes, |h| {
        seen.push((h.kind, h.len, h.stream));
        None::<()>
    });
    seen
}

#[test]
fn frame_headers_are_found_however_the_bytes_are_split() {
    let mut stream = PREFACE.to_vec();
    stream.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
    stream.extend(frame(HEADERS, 0x4, 1, &[0x82, 0x86, 0x84, 0x41, 0]));
    stream.extend(frame(DATA, 0, 1, &[b'x'; 3000]));
    stream.extend(frame(DATA, END_STREAM, 1, &[]));
    stream.extend(ping());
    let expected = vec![
        (SETTINGS, 6, 0),
        (HEADERS, 5, 1),
        (DATA, 3000, 1),
        (DATA, 0, 1),
        (PING, 8, 0),
    ];
    let mut whole = Frames::new(PREFACE_LEN);
    assert_eq!(heads(&mut whole, &stream), expected);
    assert!(whole.between_frames());
    for chunk in [1, 2, 5, 9, 10, 17, 100] {
        let mut frames = Frames::new(PREFACE_LEN);
        let seen: Vec<_> = stream
            .chunks(chunk)
            .flat_map(|c| heads(&mut frames, c))
            .collect();
        assert_eq!(seen, expected, "in chunks of {chunk}");
    }
    let mut half = Frames::new(0);
    heads(&mut half, &ping()[..12]);
    assert!(!half.between_frames());
}

#[tokio::test(start_paused = true)]
async fn a_limit_counts_per_window_and_ignores_acks() {
    let limits = limits(3, 2, 1);
    let mut window = Window {
        started: Instant::now(),
        counts: [0; 3],
    };
    let head = |kind, flags, len| FrameHead {
        len,
        kind,
        flags,
        stream: 0,
    };
    for _ in 0..3 {
        assert_eq!(window.count(head(PING, 0, 8), &limits), None);
    }
    // Acknowledgements, DATA with a payload or ending its stream, others: not counted.
    for _ in 0..100 {
        assert_eq!(window.count(head(PING, ACK, 8), &limits), None);
        assert_eq!(window.count(head(SETTINGS, ACK, 0), &limits), None);
        assert_eq!(window.count(head(DATA, 0, 10), &limits), None);
        assert_eq!(window.count(head(DATA, END_STREAM, 0), &limits), None);
        assert_eq!(window.count(head(HEADERS, 0, 0), &limits), None);
    }
    assert_eq!(window.count(head(PING, 0, 8), &limits), Some(Flood::Ping));
    tokio::time::advance(Duration::from_secs(10)).await;
    // A new window: the count starts over.
    for _ in 0..3 {
        assert_eq!(window.count(head(PING, 0, 8), &limits), None);
    }
    assert_eq!(window.count(head(SETTINGS, 0, 0), &limits), None);
    assert_eq!(window.count(head(SETTINGS, 0, 0), &limits), None);
    assert_eq!(
        window.count(head(SETTINGS, 0, 0), &limits),
        Some(Flood::Settings)
    );
    assert_eq!(window.count(head(DATA, 0, 0), &limits), None);
    assert_eq!(
        window.count(head(DATA, 0, 0), &limits),
        Some(Flood::EmptyData)
    );
}

/// Read from the guard until its I/O fails, as h2 would.
async fn drive<I: AsyncRead + AsyncWrite + Unpin, R: OnFlood>(
    guard: &mut FloodGuard<I, R>,
) -> (Vec<u8>, io::Error) {
    let mut passed = Vec::new();
    let mut buf = [0u8; 1024];
    for _ in 0..10_000 {
        match guard.read(&mut buf).await {
            Ok(0) => return (passed, io::Error::other("eof")),
            Ok(n) => passed.extend_from_slice(&buf[..n]),
            Err(e) => return (passed, e),
        }
    }
    panic!("the guard never failed");
}

#[tokio::test]
async fn a_flood_gets_goaway_enhance_your_calm_and_the_connection_fails() {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let report = {
        let seen = seen.clone();
        move |flood| seen.lock().unwrap_or_else(|p| p.into_inner()).push(flood)
    };
    let mut guard = FloodGuard::new(server, limits(3, 100, 100), report);
    let mut sent = PREFACE.to_vec();
    sent.extend(frame(HEADERS, 0x5, 5, &[0x82]));
    for _ in 0..3 {
        sent.extend(ping());
    }
    client
        .write_all(&sent)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Under the limit: every byte passes untouched.
    let mut passed = vec![0u8; sent.len()];
    guard
        .read_exact(&mut passed)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(passed, sent);
    client
        .write_all(&ping())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    client.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    let (more, err) = drive(&mut guard).await;
    assert!(more.is_empty(), "the read that went over is not passed on");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    assert!(err.to_string().contains("PING flood"), "{err}");
    assert_eq!(
        *seen.lock().unwrap_or_else(|p| p.into_inner()),
        [Flood::Ping]
    );
    // The client reads the GOAWAY (last stream 5, ENHANCE_YOUR_CALM), then EOF.
    let mut got = Vec::new();
    client
        .read_to_end(&mut got)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut goaway = 5u32.to_be_bytes().to_vec();
    goaway.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    assert_eq!(got, frame(0x7, 0, 0, &goaway));
    // Writes fail too, once refused.
    assert!(guard.write_all(&ping()).await.is_err());
}

#[tokio::test]
async fn no_goaway_inside_a_half_written_frame() {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let mut guard = FloodGuard::new(server, limits(1, 100, 100), |_| {});
    // h2 wrote half a frame when the flood arrives.
    guard
        .write_all(&ping()[..10])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut sent = PREFACE.to_vec();
    sent.extend(ping());
    sent.extend(ping());
    client
        .write_all(&sent)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (_, err) = drive(&mut guard).await;
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    drop(guard);
    let mut got = Vec::new();
    client
        .read_to_end(&mut got)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, ping()[..10]);
}

#[tokio::test]
async fn window_updates_are_allowed_only_for_data_sent() {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let report = {
        let seen = seen.clone();
        move |flood| seen.lock().unwrap_or_else(|p| p.into_inner()).push(flood)
    };
    let mut guard = FloodGuard::new(server, limits(100, 100, 100), report);
    // Two streams and one DATA frame sent: 5 + 2 × (2 + 10 × 1) = 29 allowed.
    let mut sent = PREFACE.to_vec();
    sent.extend(frame(HEADERS, 0x5, 1, &[0x82]));
    sent.extend(frame(HEADERS, 0x5, 3, &[0x82]));
    client
        .write_all(&sent)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut passed = vec![0u8; sent.len()];
    guard
        .read_exact(&mut passed)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    guard
        .write_all(&frame(DATA, 0, 1, b"hello"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let updates: Vec<u8> = (0..29).flat_map(|_| window_update(1)).collect();
    client
        .write_all(&updates)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut passed = vec![0u8; updates.len()];
    guard
        .read_exact(&mut passed)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(seen.lock().unwrap_or_else(|p| p.into_inner()).is_empty());
    // One more is a flood.
    client
        .write_all(&window_update(0))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    client.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    let (_, err) = drive(&mut guard).await;
    assert!(err.to_string().contains("WINDOW_UPDATE flood"), "{err}");
    assert_eq!(
        *seen.lock().unwrap_or_else(|p| p.into_inner()),
        [Flood::WindowUpdate]
    );
}

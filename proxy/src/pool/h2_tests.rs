//! The HTTP/2 client against the `h2` crate's server: a body larger than
//! the server's window and trailers (on loopback), and the keep-alive PING
//! that closes a connection whose peer went silent while a request waited
//! and leaves an idle one alone (paused clock, over an in-memory pipe:
//! the paused clock's auto-advance does not wait for socket readiness).

use super::*;
use http::HeaderMap;
use http_body_util::BodyExt;
use tokio::net::{TcpListener, TcpStream};

/// A connected client, and the server's side of the same connection
/// (its HTTP/2 handshake done).
async fn pair() -> (H2Sender, h2::server::Connection<TcpStream, Bytes>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accept = async {
        let (tcp, _) = listener.accept().await.expect("accept");
        h2::server::handshake(tcp).await.expect("server handshake")
    };
    let connect = async {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        handshake(tcp, addr, ()).await.expect("client handshake")
    };
    tokio::join!(connect, accept)
}

/// The same over an in-memory pipe, for tests on a paused clock.
async fn piped() -> (
    H2Sender,
    h2::server::Connection<tokio::io::DuplexStream, Bytes>,
) {
    let (client, server) = tokio::io::duplex(1 << 20);
    let addr = SocketAddr::from(([127, 0, 0, 1], 1));
    let accept = async {
        h2::server::handshake(server)
            .await
            .expect("server handshake")
    };
    let connect = async { handshake(client, addr, ()).await.expect("client handshake") };
    tokio::join!(connect, accept)
}

fn post(body: Bytes) -> Request<UpstreamBody> {
    Request::post("http://web/echo")
        .body(UpstreamBody::full(Some(body)))
        .expect("request")
}

#[tokio::test]
async fn a_body_past_the_servers_window_arrives_whole_and_trailers_come_back() {
    let (sender, mut server) = pair().await;
    tokio::spawn(async move {
        while let Some(Ok((request, mut respond))) = server.accept().await {
            tokio::spawn(async move {
                let mut body = request.into_body();
                let mut received = 0;
                while let Some(Ok(data)) = body.data().await {
                    received += data.len();
                    let _ = body.flow_control().release_capacity(data.len());
                }
                let response = Response::new(());
                let mut stream = respond.send_response(response, false).expect("respond");
                stream
                    .send_data(Bytes::from(received.to_string()), false)
                    .expect("data");
                let mut trailers = HeaderMap::new();
                trailers.insert("x-received", received.into());
                stream.send_trailers(trailers).expect("trailers");
            });
        }
    });
    // Sixteen times the server's 64 KiB initial window.
    let body = Bytes::from(vec![b'x'; 1 << 20]);
    let response = sender
        .send(post(body))
        .await
        .map_err(|(e, _)| e)
        .expect("response");
    let collected = response.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["x-received"], "1048576");
    assert_eq!(collected.to_bytes(), "1048576");
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_closed_by_the_keep_alive_ping_while_a_request_waits() {
    let (sender, mut server) = piped().await;
    let waiting = tokio::spawn({
        let sender = sender.clone();
        async move { sender.clone().send(post(Bytes::from_static(b"hi"))).await }
    });
    // The server takes the request, then stops reading: no PONG.
    let (_request, _respond) = server.accept().await.expect("a request").expect("stream");
    let started = Instant::now();
    let bound = 2 * (KEEP_ALIVE_INTERVAL + KEEP_ALIVE_TIMEOUT);
    let result = tokio::time::timeout(bound, waiting)
        .await
        .expect("the connection outlived its unanswered PING")
        .expect("task");
    assert!(
        result.is_err(),
        "the request should fail with its connection"
    );
    let waited = started.elapsed();
    assert!(
        waited >= KEEP_ALIVE_INTERVAL && waited <= KEEP_ALIVE_INTERVAL + KEEP_ALIVE_TIMEOUT,
        "closed after {waited:?}"
    );
    tokio::task::yield_now().await;
    assert!(sender.is_closed());
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_not_pinged() {
    let (sender, _server) = piped().await;
    // The server never reads again: a PING would go unanswered and end
    // the connection, so an idle connection must send none.
    tokio::time::sleep(4 * (KEEP_ALIVE_INTERVAL + KEEP_ALIVE_TIMEOUT)).await;
    assert!(!sender.is_closed());
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_answers_pings_keeps_a_slow_request_alive() {
    let (sender, mut server) = piped().await;
    let slow = 3 * (KEEP_ALIVE_INTERVAL + KEEP_ALIVE_TIMEOUT);
    tokio::spawn(async move {
        // Still reading (so PINGs get their PONG), answering late.
        while let Some(Ok((_request, mut respond))) = server.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(slow).await;
                let _ = respond.send_response(Response::new(()), true);
            });
        }
    });
    let response = tokio::time::timeout(
        2 * slow,
        sender.clone().send(post(Bytes::from_static(b"hi"))),
    )
    .await
    .expect("bounded")
    .map_err(|(e, _)| e)
    .expect("the slow answer arrives on the live connection");
    assert_eq!(response.status(), 200);
    assert!(!sender.is_closed());
}

#[tokio::test]
async fn after_goaway_a_request_comes_back_unsent_and_the_connection_is_closed() {
    let (sender, mut server) = pair().await;
    let first = tokio::spawn({
        let sender = sender.clone();
        async move { sender.clone().send(post(Bytes::from_static(b"one"))).await }
    });
    let (_request, mut respond) = server.accept().await.expect("a request").expect("stream");
    respond
        .send_response(Response::new(()), true)
        .expect("respond");
    // The upstream drains: GOAWAY, then it finishes the connection.
    server.graceful_shutdown();
    let drained = tokio::spawn(async move { while server.accept().await.is_some() {} });
    let response = first
        .await
        .expect("task")
        .map_err(|(e, _)| e)
        .expect("first");
    assert_eq!(response.status(), 200);
    drained.await.expect("server");
    match sender.clone().send(post(Bytes::from_static(b"two"))).await {
        Err((_, Some(unsent))) => assert_eq!(unsent.uri(), "http://web/echo"),
        Err((e, None)) => panic!("the request was consumed: {e}"),
        Ok(_) => panic!("a drained connection took a request"),
    }
    assert!(sender.is_closed());
}

/// A request body from a real HTTP/1 client that never ends: hyper's
/// `Incoming` of a chunked request whose first chunk is `hello` and whose
/// last chunk never comes. The client's socket is returned to keep it open.
async fn endless_body() -> (UpstreamBody, TcpStream) {
    use tokio::io::AsyncWriteExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (body_tx, body_rx) = oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let body_tx = std::sync::Mutex::new(Some(body_tx));
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            if let Some(tx) = body_tx.lock().ok().and_then(|mut t| t.take()) {
                let _ = tx.send(req.into_body());
            }
            // Never answers: the body is the test's.
            std::future::pending::<
                Result<Response<http_body_util::Empty<Bytes>>, std::convert::Infallible>,
            >()
        });
        let io = hyper_util::rt::TokioIo::new(tcp);
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await;
    });
    let mut client = TcpStream::connect(addr).await.expect("connect");
    client
        .write_all(
            b"POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .expect("write");
    let body = body_rx.await.expect("the request's body");
    (
        UpstreamBody::stream(crate::http::client_body::ClientBody::Http1(body)),
        client,
    )
}

#[tokio::test]
async fn a_request_abandoned_before_its_response_resets_its_body_stream() {
    let (sender, mut server) = pair().await;
    let (got_hello_tx, got_hello) = oneshot::channel();
    let (outcome_tx, outcome) = oneshot::channel();
    tokio::spawn(async move {
        let (request, _respond) = server.accept().await.expect("request").expect("stream");
        tokio::spawn(async move { while server.accept().await.is_some() {} });
        let mut body = request.into_body();
        let hello = body.data().await.expect("data").expect("hello");
        let _ = body.flow_control().release_capacity(hello.len());
        let _ = got_hello_tx.send(hello);
        // What the upstream sees next: the rest of the body, or a reset.
        let _ = outcome_tx.send(body.data().await.map(|r| r.map_err(|e| e.reason())));
    });
    let (body, _client) = endless_body().await;
    let request = Request::post("http://web/upload")
        .body(body)
        .expect("request");
    let send = sender.clone().send(request);
    tokio::select! {
        _ = send => panic!("the upstream never answers"),
        hello = got_hello => assert_eq!(hello.expect("hello"), "hello"),
    }
    // The request's future is gone (a timeout, the client left): the
    // upstream sees the stream cancelled, not a body that never ends.
    let seen = tokio::time::timeout(Duration::from_secs(10), outcome)
        .await
        .expect("the body stream was left open")
        .expect("outcome");
    assert!(matches!(seen, Some(Err(Some(Reason::CANCEL)))), "{seen:?}");
}

//! A real upstream for tests: hyper's auto server (HTTP/1.1 and h2c) on
//! 127.0.0.1:0 that answers by path, so each test can ask for the
//! behaviour it needs.
//!
//! - `/headers`: the request's version and headers as text
//! - `/slow?ms=N`: answers after N ms (and signals `started` on arrival)
//! - `/hang`: never answers
//! - `/trailers`: a streamed body followed by a trailer `x-checksum`
//! - `/echo`: streams the request body back
//! - `/early`: answers before the request body is read, then reads it
//! - anything else: `hello from upstream`

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

type Body = BoxBody<Bytes, hyper::Error>;

/// A running upstream and what it has seen.
pub struct Upstream {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    /// Notified when a `/slow` or `/hang` request arrives.
    pub started: Arc<Notify>,
    /// `/hang` requests whose handling was abandoned (the proxy gave up).
    pub cancelled: Arc<AtomicUsize>,
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

/// How an upstream misbehaves on every request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Behaviour {
    /// Answer every request only after this long.
    pub delay: Duration,
    /// Answer every request with this status instead of by path.
    pub status: Option<u16>,
    /// (n, k): of every n requests, the first k get 503.
    pub fail_pattern: Option<(usize, usize)>,
}

async fn answer(
    req: Request<Incoming>,
    started: Arc<Notify>,
    behaviour: Behaviour,
    seen: usize,
    cancelled: Arc<AtomicUsize>,
) -> Result<Response<Body>, Infallible> {
    if let Some((n, k)) = behaviour.fail_pattern {
        if seen % n < k {
            let mut response = Response::new(full("failing on purpose"));
            *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
            return Ok(response);
        }
    }
    if !behaviour.delay.is_zero() {
        tokio::time::sleep(behaviour.delay).await;
    }
    if let Some(status) = behaviour.status {
        let mut response = Response::new(full("failing on purpose"));
        *response.status_mut() =
            hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        return Ok(response);
    }
    let path = req.uri().path().to_string();
    let response = match path.as_str() {
        "/headers" => {
            let mut text = format!("version: {:?}\nuri: {}\n", req.version(), req.uri());
            for (name, value) in req.headers() {
                text.push_str(&format!("{}: {}\n", name, value.to_str().unwrap_or("?")));
            }
            Response::new(full(text))
        }
        "/slow" => {
            started.notify_one();
            let ms: u64 = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(500);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full("slow"))
        }
        "/hang" => {
            /// Counts the request as cancelled when its handler is dropped.
            struct OnDrop(Arc<AtomicUsize>);
            impl Drop for OnDrop {
                fn drop(&mut self) {
                    self.0.fetch_add(1, Ordering::SeqCst);
                }
            }
            let _guard = OnDrop(cancelled);
            started.notify_one();
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Response::new(full("late"))
        }
        "/trailers" => {
            let frames = vec![
                Ok::<_, hyper::Error>(Frame::data(Bytes::from_static(b"part one, "))),
                Ok(Frame::data(Bytes::from_static(b"part two"))),
                Ok(Frame::trailers({
                    let mut t = http::HeaderMap::new();
                    t.insert("x-checksum", http::HeaderValue::from_static("abc123"));
                    t
                })),
            ];
            let stream = futures_util::stream::iter(frames);
            Response::new(StreamBody::new(stream).boxed())
        }
        "/echo" => Response::new(req.into_body().boxed()),
        // Answers at once and reads the request body afterwards (as a
        // server that decides on the headers alone does).
        "/early" => {
            let body = req.into_body();
            tokio::spawn(async move {
                let _ = body.collect().await;
            });
            Response::new(full("early"))
        }
        // gRPC-shaped: one empty message, then the status in the trailers;
        // of every ten requests the first three are UNAVAILABLE.
        "/grpc-flaky" => {
            let status = if seen % 10 < 3 { "14" } else { "0" };
            let frames = vec![
                Ok::<_, hyper::Error>(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
                Ok(Frame::trailers({
                    let mut t = http::HeaderMap::new();
                    t.insert("grpc-status", http::HeaderValue::from_static(status));
                    t
                })),
            ];
            let mut response =
                Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            response
        }
        _ => Response::new(full("hello from upstream")),
    };
    Ok(response)
}

impl Upstream {
    /// Start serving on 127.0.0.1:0 on the current tokio runtime.
    pub async fn start() -> Upstream {
        Upstream::start_with(Behaviour::default()).await
    }

    /// Start an upstream that delays or fails every request.
    pub async fn start_with(behaviour: Behaviour) -> Upstream {
        Upstream::start_at("127.0.0.1:0", behaviour).await
    }

    /// Start an upstream on a given address.
    pub async fn start_at(addr: &str, behaviour: Behaviour) -> Upstream {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(Notify::new());
        let cancelled = Arc::new(AtomicUsize::new(0));
        let cancelled_count = cancelled.clone();
        let (req_count, conn_count, notify) =
            (requests.clone(), connections.clone(), started.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                conn_count.fetch_add(1, Ordering::SeqCst);
                let req_count = req_count.clone();
                let notify = notify.clone();
                let cancelled = cancelled_count.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let seen = req_count.fetch_add(1, Ordering::SeqCst);
                        answer(req, notify.clone(), behaviour, seen, cancelled.clone())
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            requests,
            connections,
            started,
            cancelled,
        }
    }
}

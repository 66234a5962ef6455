//! gRPC through the proxy with real tonic on both ends (messages and the
//! service are written by hand, without codegen): a unary call, a unary
//! call whose error status and trailing metadata must arrive intact, and a
//! bidirectional stream whose every message and final status cross.

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use support::{metric_sum, Proxy, EPHEMERAL_LISTENERS};
use tonic::codegen::Service;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status, Streaming};

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type ReplyStream = Pin<Box<dyn futures_util::Stream<Item = Result<EchoReply, Status>> + Send>>;

struct Unary;

impl tonic::server::UnaryService<EchoRequest> for Unary {
    type Response = EchoReply;
    type Future = BoxFuture<Result<Response<EchoReply>, Status>>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        Box::pin(async move {
            let message = request.into_inner().message;
            if message == "fail" {
                let mut status = Status::new(Code::FailedPrecondition, "asked to fail");
                status
                    .metadata_mut()
                    .insert("x-detail", MetadataValue::from_static("trailer-borne"));
                return Err(status);
            }
            Ok(Response::new(EchoReply {
                message: format!("echo: {message}"),
            }))
        })
    }
}

struct Bidi;

impl tonic::server::StreamingService<EchoRequest> for Bidi {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<Result<Response<ReplyStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<EchoRequest>>) -> Self::Future {
        use futures_util::StreamExt;
        Box::pin(async move {
            let replies = request.into_inner().map(|item| {
                item.map(|req| EchoReply {
                    message: req.message.to_uppercase(),
                })
            });
            Ok(Response::new(Box::pin(replies) as ReplyStream))
        })
    }
}

/// The `echo.Echo` service: routes by path as generated code would.
#[derive(Clone)]
struct EchoService;

impl<B> Service<http::Request<B>> for EchoService
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<EchoReply, EchoRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec);
            Ok(match req.uri().path() {
                "/echo.Echo/Unary" => grpc.unary(Unary, req).await,
                "/echo.Echo/Bidi" => grpc.streaming(Bidi, req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

async fn start_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    });
    tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(EchoService, incoming));
    addr
}

fn grpc_client(
    channel: tonic::transport::Channel,
) -> tonic::client::Grpc<tonic::transport::Channel> {
    tonic::client::Grpc::new(channel)
}

#[tokio::test]
async fn unary_and_bidi_streaming_through_the_proxy() {
    let server = start_server().await;
    let proxy = Proxy::start(&format!(
        "{}clusters:\n  - name: grpc\n    protocol: http2\n    endpoints: [{{address: '{server}'}}]\n",
        EPHEMERAL_LISTENERS.replace(
            "outbound: {address: 127.0.0.1, port: 0}",
            "outbound: {address: 127.0.0.1, port: 0, default_cluster: grpc}"
        )
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.outbound))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect through the proxy");
    let mut client = grpc_client(channel);

    // Unary, success.
    client.ready().await.expect("ready");
    let reply: Response<EchoReply> = client
        .unary(
            Request::new(EchoRequest {
                message: "hi".into(),
            }),
            http::uri::PathAndQuery::from_static("/echo.Echo/Unary"),
            tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default(),
        )
        .await
        .expect("unary call");
    assert_eq!(reply.into_inner().message, "echo: hi");

    // Unary, failure: code, message and metadata come back through the proxy.
    client.ready().await.expect("ready");
    let status = client
        .unary::<EchoRequest, EchoReply, _>(
            Request::new(EchoRequest {
                message: "fail".into(),
            }),
            http::uri::PathAndQuery::from_static("/echo.Echo/Unary"),
            tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default(),
        )
        .await
        .expect_err("the server fails this call");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.message(), "asked to fail");
    assert_eq!(
        status
            .metadata()
            .get("x-detail")
            .and_then(|v| v.to_str().ok()),
        Some("trailer-borne")
    );

    // Bidirectional streaming: N in, N out, then an OK status in trailers.
    const N: usize = 25;
    let outbound = futures_util::stream::iter((0..N).map(|i| EchoRequest {
        message: format!("message {i}"),
    }));
    client.ready().await.expect("ready");
    let response: Response<Streaming<EchoReply>> = client
        .streaming(
            Request::new(outbound),
            http::uri::PathAndQuery::from_static("/echo.Echo/Bidi"),
            tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default(),
        )
        .await
        .expect("bidi call");
    let mut stream = response.into_inner();
    let mut received = Vec::new();
    while let Some(reply) = stream.message().await.expect("stream ends with OK") {
        received.push(reply.message);
    }
    assert_eq!(received.len(), N);
    assert_eq!(received[N - 1], format!("MESSAGE {}", N - 1));
    let trailers = stream.trailers().await.expect("trailers");
    assert!(trailers.is_some(), "the final status arrives as trailers");

    let m = proxy.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "request_total",
            &["direction=\"outbound\"", "authority=\"grpc\""]
        ),
        3.0,
        "{m}"
    );
    // Classified by grpc-status when each stream ended: the failed call
    // answered HTTP 200 with FAILED_PRECONDITION in its trailers.
    let responses = |class: &str| {
        metric_sum(
            &m,
            "response_total",
            &[
                "direction=\"outbound\"",
                "status_code=\"200\"",
                &format!("classification=\"{class}\""),
            ],
        )
    };
    assert_eq!(responses("success"), 2.0, "{m}");
    assert_eq!(responses("failure"), 1.0, "{m}");
}

//! Failures the proxy answers itself, each with the status an operator
//! expects (502 for a broken upstream, 504 for a slow one, 404 for no
//! route), a `strait-proxy-error` header naming the cause, and a message
//! saying what to check. Each knows whether the request may already have
//! reached the upstream (and so whether replaying it is safe).

use crate::pool::{PoolError, UpstreamError};
use crate::socket::ConnectError;
use http::{HeaderValue, Response, StatusCode};
use std::net::SocketAddr;
use std::time::Duration;

/// The header naming why the proxy answered instead of the upstream.
pub const PROXY_ERROR_HEADER: http::HeaderName =
    http::HeaderName::from_static("strait-proxy-error");
/// On a 403: why the inbound policy refused the request.
pub const DENY_REASON_HEADER: http::HeaderName =
    http::HeaderName::from_static("strait-deny-reason");

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route for authority '{authority}', and the connection was not redirected by iptables, so there is no original destination to forward to (add a route, a default_cluster, or send through the iptables redirect)")]
    NoRoute { authority: String },
    #[error("cluster '{cluster}' is opaque (protocol: opaque) and cannot take HTTP requests; set its protocol to auto, http1 or http2")]
    OpaqueCluster { cluster: String },
    #[error("cluster '{cluster}' has no endpoints")]
    NoEndpoints { cluster: String },
    #[error("connection refused by upstream {0}: is the service listening on that port?")]
    ConnectRefused(SocketAddr),
    #[error("no answer from upstream {addr} within the {after:?} connect timeout: is the host up and reachable (NetworkPolicy, firewall)?")]
    ConnectTimeout { addr: SocketAddr, after: Duration },
    #[error("cannot connect to upstream {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP handshake with upstream {addr} failed ({source}): does it speak the cluster's protocol?")]
    Handshake {
        addr: SocketAddr,
        source: UpstreamError,
    },
    #[error("upstream {addr} sent no response headers within the {after:?} response timeout")]
    ResponseTimeout { addr: SocketAddr, after: Duration },
    #[error("mTLS to upstream {addr} failed: {reason} (check the cluster's tls.identity and both trust bundles)")]
    TlsHandshake { addr: SocketAddr, reason: String },
    #[error("cluster '{cluster}' is overloaded: {limit} reached; failing fast rather than queueing (raise circuit_breaker.{limit} if the load is expected)")]
    Overloaded {
        cluster: String,
        limit: &'static str,
    },
    #[error("the request body could not be read from the client (malformed chunked encoding, or the client went away)")]
    RequestBody,
    #[error("rate limited: the route's request rate is over its limit")]
    RateLimited,
    #[error("fault injected by the route's configuration")]
    FaultAbort { status: StatusCode },
    #[error("forbidden by inbound policy: {reason}")]
    Forbidden { reason: String },
    #[error("upstream {addr} reset the response stream before it ended")]
    UpstreamReset { addr: SocketAddr },
    #[error("upstream {addr} failed the request: {source}{}", http2_hint(*plain_http2))]
    Upstream {
        addr: SocketAddr,
        source: UpstreamError,
        /// Sent as plain HTTP/2 (not the mesh hop): say what to check.
        plain_http2: bool,
    },
    #[error(transparent)]
    BadRequest(#[from] BadRequest),
    /// A try that never reached the upstream, with its request handed
    /// back so the balancer can send it elsewhere (never leaves the stack).
    #[error("{error}")]
    Unsent {
        error: Box<ProxyError>,
        request: Box<crate::stack::Req>,
    },
    #[error("internal error in the proxy: {0}")]
    Internal(&'static str),
}

/// A request refused before routing: the client's fault, never the
/// upstream's (4xx, never retried, never counted against an endpoint).
#[derive(Debug, thiserror::Error)]
pub enum BadRequest {
    #[error("an HTTP/1.1 request must carry a Host header")]
    MissingHost,
    #[error("the request carries more than one Host header")]
    DuplicateHost,
    #[error("the Host header is not a valid host[:port]")]
    InvalidHost,
    #[error("the request names two authorities: '{uri}' in its target and '{host}' in Host")]
    AuthorityMismatch { uri: String, host: String },
    #[error("the request target is {len} bytes; proxy.http.max_uri_bytes allows {max}")]
    UriTooLong { len: usize, max: usize },
    #[error("the request has {count} header fields; proxy.http.max_request_headers allows {max}")]
    TooManyHeaders { count: usize, max: usize },
    #[error("the request body is {len} bytes; proxy.http.max_request_body_bytes allows {max}")]
    BodyTooLarge { len: u64, max: u64 },
    #[error("the request body went over the {max} bytes proxy.http.max_request_body_bytes allows")]
    StreamedBodyTooLarge { max: u64 },
    #[error("CONNECT over HTTP/2 (a tunnel in a stream) is not supported; use HTTP/1.1 CONNECT")]
    ConnectOverHttp2,
}

impl BadRequest {
    pub fn status(&self) -> StatusCode {
        match self {
            BadRequest::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            BadRequest::TooManyHeaders { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            BadRequest::BodyTooLarge { .. } | BadRequest::StreamedBodyTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            BadRequest::ConnectOverHttp2 => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            BadRequest::MissingHost => "missing-host",
            BadRequest::DuplicateHost => "duplicate-host",
            BadRequest::InvalidHost => "invalid-host",
            BadRequest::AuthorityMismatch { .. } => "authority-mismatch",
            BadRequest::UriTooLong { .. } => "uri-too-long",
            BadRequest::TooManyHeaders { .. } => "too-many-headers",
            BadRequest::BodyTooLarge { .. } | BadRequest::StreamedBodyTooLarge { .. } => {
                "body-too-large"
            }
            BadRequest::ConnectOverHttp2 => "connect-over-http2",
        }
    }
}

/// A plain HTTP/2 request that fails is, more often than not, an
/// upstream that speaks only HTTP/1: a `protocol: auto` cluster forwards
/// an HTTP/2 client as HTTP/2, and the HTTP/1 server's reply to the
/// preface breaks the connection (seen as an http2, I/O or cancel error).
fn http2_hint(plain_http2: bool) -> &'static str {
    if plain_http2 {
        " (it was sent as HTTP/2: if the upstream speaks only HTTP/1, set the cluster's `protocol: http1`; with `protocol: auto` an HTTP/2 client's requests go upstream as HTTP/2)"
    } else {
        ""
    }
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ProxyError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::RequestBody => StatusCode::BAD_REQUEST,
            ProxyError::BadRequest(bad) => bad.status(),
            ProxyError::Unsent { error, .. } => error.status(),
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::FaultAbort { status } => *status,
            ProxyError::NoEndpoints { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectTimeout { .. } | ProxyError::ResponseTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::OpaqueCluster { .. }
            | ProxyError::ConnectRefused(_)
            | ProxyError::Connect { .. }
            | ProxyError::Handshake { .. }
            | ProxyError::TlsHandshake { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The `strait-proxy-error` value and metric label: short, stable.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::NoRoute { .. } => "no-route",
            ProxyError::OpaqueCluster { .. } => "opaque-cluster",
            ProxyError::NoEndpoints { .. } => "no-endpoints",
            ProxyError::ConnectRefused(_) => "connect-refused",
            ProxyError::ConnectTimeout { .. } => "connect-timeout",
            ProxyError::Connect { .. } => "connect-failed",
            ProxyError::Handshake { .. } => "upstream-handshake",
            ProxyError::TlsHandshake { .. } => "tls-handshake",
            ProxyError::UpstreamReset { .. } => "upstream-reset",
            ProxyError::Forbidden { .. } => "forbidden",
            ProxyError::RateLimited => "rate-limited",
            ProxyError::RequestBody => "request-body",
            ProxyError::Overloaded { .. } => "overloaded",
            ProxyError::FaultAbort { .. } => "fault-injected",
            ProxyError::ResponseTimeout { .. } => "response-timeout",
            ProxyError::Upstream { .. } => "upstream-error",
            ProxyError::BadRequest(bad) => bad.reason(),
            ProxyError::Unsent { error, .. } => error.reason(),
            ProxyError::Internal(_) => "internal",
        }
    }

    /// Whether `response_total` classifies it as a failure: the proxy's
    /// policy answering (rate limit, a fault's 4xx) and the client's own
    /// mistakes are not.
    pub fn is_failure(&self) -> bool {
        match self {
            ProxyError::RateLimited | ProxyError::RequestBody | ProxyError::BadRequest(_) => false,
            ProxyError::FaultAbort { status } => status.is_server_error(),
            _ => true,
        }
    }

    /// No connection to the upstream could be had at all.
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            ProxyError::ConnectRefused(_)
                | ProxyError::ConnectTimeout { .. }
                | ProxyError::Connect { .. }
                | ProxyError::Handshake { .. }
                | ProxyError::TlsHandshake { .. }
        ) || matches!(self, ProxyError::Unsent { error, .. } if error.is_connect_failure())
    }

    /// The upstream address the error is about, when it names one.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            ProxyError::ConnectRefused(addr)
            | ProxyError::ConnectTimeout { addr, .. }
            | ProxyError::Connect { addr, .. }
            | ProxyError::Handshake { addr, .. }
            | ProxyError::ResponseTimeout { addr, .. }
            | ProxyError::TlsHandshake { addr, .. }
            | ProxyError::UpstreamReset { addr }
            | ProxyError::Upstream { addr, .. } => Some(*addr),
            ProxyError::Unsent { error, .. } => error.addr(),
            _ => None,
        }
    }

    /// A request/response exchange with upstream `addr` that failed: the
    /// upstream's fault, unless what broke was the request body the client
    /// was streaming (a malformed chunk, a reset): that is a 400 to the
    /// client, never counted against the endpoint.
    /// `plain_http2` is whether the upstream was spoken to in plaintext
    /// HTTP/2 (for the operator's hint).
    pub fn exchange(addr: SocketAddr, source: UpstreamError, plain_http2: bool) -> ProxyError {
        use std::error::Error;
        // hyper reports a failure of the body it was sending as a user
        // error whose cause is that body's own error; the HTTP/2 client
        // says so itself.
        let client_body = match &source {
            UpstreamError::Http1(e) => e.is_user() && e.source().is_some_and(is_client_body_error),
            UpstreamError::Http2(_) => false,
            UpstreamError::RequestBody => true,
        };
        if client_body {
            ProxyError::RequestBody
        } else {
            ProxyError::Upstream {
                addr,
                source,
                plain_http2,
            }
        }
    }

    /// The response the client gets.
    pub fn to_response<B>(&self, body: impl FnOnce(String) -> B) -> Response<B> {
        let mut response = Response::new(body(format!("{self}\n")));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(PROXY_ERROR_HEADER, HeaderValue::from_static(self.reason()));
        if let ProxyError::Forbidden { reason } = self {
            if let Ok(reason) = HeaderValue::from_str(reason) {
                headers.insert(DENY_REASON_HEADER, reason);
            }
        }
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        // A malformed request leaves the connection's framing in doubt:
        // an HTTP/1 client is told to start afresh.
        if matches!(self, ProxyError::BadRequest(_) | ProxyError::RequestBody) {
            headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Whether a request body's error is the client's own: reading the
/// client's stream failed (a malformed chunk, a reset), as opposed to a
/// cap the proxy tripped.
pub fn is_client_body_error(cause: &(dyn std::error::Error + 'static)) -> bool {
    cause
        .downcast_ref::<super::client_body::ClientBodyError>()
        .is_some()
}

impl From<PoolError> for ProxyError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Connect(ConnectError::Refused(addr)) => ProxyError::ConnectRefused(addr),
            PoolError::Connect(ConnectError::TimedOut { addr, after }) => {
                ProxyError::ConnectTimeout { addr, after }
            }
            PoolError::Connect(ConnectError::Other { addr, source }) => {
                ProxyError::Connect { addr, source }
            }
            PoolError::Handshake { addr, source } => ProxyError::Handshake { addr, source },
            PoolError::Tls { addr, reason } => ProxyError::TlsHandshake { addr, reason },
            PoolError::TooManyConnections => ProxyError::Overloaded {
                cluster: String::new(),
                limit: "max_connections",
            },
        }
    }
}

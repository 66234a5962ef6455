//! Headers the mesh adds on the way to an endpoint, one layer per
//! direction. Outbound: an HTTP/1 request carried over the mesh's HTTP/2
//! names its version (`strait-orig-proto`) so the far side restores it.
//! Inbound: the client's address goes in `x-forwarded-for`, and its mesh
//! identity (proven by mTLS) in `strait-client-id`, which is stripped from
//! every request that did not prove one; an HTTP/1 request that crossed
//! the mesh as HTTP/2 goes on to the app as HTTP/1 again.

use super::{Req, Rsp};
use crate::http::error::ProxyError;
use crate::http::{ConnContext, Target, CLIENT_ID_HEADER, ORIG_PROTO_HEADER};
use http::{HeaderValue, Version};
use std::sync::Arc;
use std::task::{Context, Poll};
use strait_config::Protocol;
use tower::Service;

/// Outbound: mark HTTP/1 requests that cross the mesh as HTTP/2.
#[derive(Clone)]
pub struct MeshOrigProto<S> {
    inner: S,
    meshed: bool,
}

impl MeshOrigProto<()> {
    /// The layer for requests to `target`.
    pub fn layer<S>(target: &Target) -> impl FnOnce(S) -> MeshOrigProto<S> {
        let meshed = target.mesh_identity().is_some();
        move |inner| MeshOrigProto { inner, meshed }
    }
}

impl<S> Service<Req> for MeshOrigProto<S>
where
    S: Service<Req, Response = Rsp, Error = ProxyError>,
{
    type Response = Rsp;
    type Error = ProxyError;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        if self.meshed && req.http.version() < Version::HTTP_2 {
            req.http
                .headers_mut()
                .insert(ORIG_PROTO_HEADER, HeaderValue::from_static("HTTP/1.1"));
        }
        self.inner.call(req)
    }
}

/// Inbound: the client's address and identity for the app.
#[derive(Clone)]
pub struct ClientIdentity<S> {
    inner: S,
    conn: Arc<ConnContext>,
    /// The target's cluster protocol is `auto` (or there is no cluster).
    protocol_auto: bool,
}

impl ClientIdentity<()> {
    /// The layer for requests to `target`.
    pub fn layer<S>(
        conn: Arc<ConnContext>,
        target: &Target,
    ) -> impl FnOnce(S) -> ClientIdentity<S> {
        let protocol_auto = target
            .cluster
            .as_ref()
            .is_none_or(|c| c.settings().protocol == Protocol::Auto);
        move |inner| ClientIdentity {
            inner,
            conn,
            protocol_auto,
        }
    }
}

impl<S> Service<Req> for ClientIdentity<S>
where
    S: Service<Req, Response = Rsp, Error = ProxyError>,
{
    type Response = Rsp;
    type Error = ProxyError;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        // Formatted once per connection (the stack is made per request).
        let client = self.conn.client_headers();
        let headers = req.http.headers_mut();
        let carried_h1 = headers
            .remove(ORIG_PROTO_HEADER)
            .is_some_and(|p| p.as_bytes().starts_with(b"HTTP/1"));
        crate::http::headers::append_forwarded_for(headers, &client.ip);
        match &client.identity {
            Some(id) => drop(headers.insert(CLIENT_ID_HEADER, id.clone())),
            None => drop(headers.remove(CLIENT_ID_HEADER)),
        }
        let proven = self.conn.client_identity().is_some();
        if carried_h1 && proven && self.protocol_auto {
            *req.http.version_mut() = Version::HTTP_11;
        }
        self.inner.call(req)
    }
}

//! Observe: one [`Record`] per request, built when its response stream
//! ends and handed to the sinks that are on ([`crate::observe`]: the
//! direction's access log, open taps).
//!
//! Off (no access log for the direction, no tap open) a request costs one
//! atomic load and nothing else. With a tap open but no access log, a
//! request no tap's filter could match is not captured either (a few
//! comparisons, no allocation). A captured request copies its request
//! line and a few headers, has the layers below count for it
//! ([`super::ReqState::tally`]: retries, body bytes, connect time), and
//! has its response stream watched ([`crate::http::stream_end::watch`]).

use super::{Finish, Req, ReqState, Result, Rsp, Then};
use crate::http::error::ProxyError;
use crate::http::stream_end::{watch, StreamWatch};
use crate::http::{headers, ConnContext};
use crate::metrics::TlsStatus;
use crate::observe::Record;
use http::HeaderMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;
use tower::Service;

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    conn: Arc<ConnContext>,
}

pub fn layer<S>(conn: Arc<ConnContext>) -> impl tower::Layer<S, Service = Observe<S>> + Clone {
    tower::layer::layer_fn(move |inner| Observe {
        inner,
        conn: conn.clone(),
    })
}

impl<S> Service<Req> for Observe<S>
where
    S: Service<Req, Response = Rsp, Error = ProxyError>,
{
    type Response = Rsp;
    type Error = ProxyError;
    type Future = Then<S::Future, Capture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let observers = &self.conn.inputs.observe;
        let direction = self.conn.direction();
        let capture = if observers.wants(direction)
            && observers.wants_request(
                direction,
                req.http.method(),
                headers::authority(&req.http),
                req.http.uri().path(),
            ) {
            req.state.tally.switch_on();
            Some(Box::new(Pending::capture(&req, &self.conn)))
        } else {
            None
        };
        Then::new(self.inner.call(req), Capture(capture))
    }
}

/// The request's side of a record, while its response is on the way.
pub struct Capture(Option<Box<Pending>>);

struct Pending {
    conn: Arc<ConnContext>,
    state: Arc<ReqState>,
    record: Record,
}

impl Pending {
    fn capture(req: &Req, conn: &Arc<ConnContext>) -> Pending {
        let http = &req.http;
        let text = |name: &str| header_text(http.headers(), name);
        let record = Record {
            direction: conn.direction(),
            start: SystemTime::now(),
            method: http.method().clone(),
            authority: headers::authority(http).unwrap_or("").to_string(),
            path: http
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
            protocol: http.version(),
            status: 0,
            duration: Default::default(),
            request_bytes: 0,
            response_bytes: 0,
            route: Arc::from(""),
            cluster: Arc::from(""),
            endpoint: None,
            upstream_connect: None,
            retries: 0,
            client_identity: conn.client_identity().map(Arc::from),
            server_identity: None,
            peer: conn.client,
            trace_id: trace_id(http.headers()),
            request_id: text("x-request-id"),
            user_agent: text("user-agent"),
            referer: text("referer"),
            error: None,
            stream_broken: false,
        };
        Pending {
            conn: conn.clone(),
            state: req.state.clone(),
            record,
        }
    }

    /// Fill in what the layers below learnt, and hand the record over.
    fn emit(self: Box<Self>, response_bytes: u64, broken: bool) {
        let Pending {
            conn,
            state,
            mut record,
        } = *self;
        // Noted by the endpoint layer, or by a retrying route's layers.
        let (cluster, endpoint) = state.upstream();
        if let Some(cluster) = cluster {
            record.cluster = cluster.name.clone();
        }
        record.endpoint = endpoint;
        if let (Some(metrics), Some(_)) = (state.metrics.get(), endpoint) {
            if let TlsStatus::Mesh { server_id, .. } = &metrics.key().tls {
                record.server_identity = server_id.clone();
            }
        }
        if let Some(route) = state.route.get() {
            record.route = route.clone();
        }
        record.duration = state.started.elapsed();
        record.request_bytes = state.tally.request_bytes();
        record.response_bytes = response_bytes;
        record.upstream_connect = state.tally.connect();
        record.retries = state.tally.retries();
        record.stream_broken = broken;
        conn.inputs.observe.emit(record);
    }
}

impl StreamWatch for Pending {
    fn ended(self: Box<Self>, bytes: u64, broken: bool) {
        self.emit(bytes, broken);
    }
}

/// A request whose client went away before its response headers came:
/// its future is dropped with `finish` unrun, and it is still recorded.
impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut pending) = self.0.take() {
            pending.record.error = Some("request cancelled before the response");
            pending.emit(0, true);
        }
    }
}

impl Finish for Capture {
    fn finish(mut self, result: Result) -> Result {
        let Some(mut pending) = self.0.take() else {
            return result;
        };
        match result {
            Ok(mut response) => {
                pending.record.status = response.status().as_u16();
                watch(&mut response, pending);
                Ok(response)
            }
            Err(e) => {
                // The rescue layer answers with this status and reason.
                pending.record.status = e.status().as_u16();
                pending.record.error = Some(e.reason());
                let bytes = 0;
                pending.emit(bytes, false);
                Err(e)
            }
        }
    }
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The trace id from W3C `traceparent`, B3 single (`b3`) or multi
/// (`x-b3-traceid`), in that order; malformed values are ignored.
fn trace_id(headers: &HeaderMap) -> Option<String> {
    let valid = |id: &str| {
        matches!(id.len(), 16 | 32)
            && id.bytes().all(|b| b.is_ascii_hexdigit())
            && id.bytes().any(|b| b != b'0')
    };
    let get = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let from_traceparent = get("traceparent").and_then(|tp| {
        let mut parts = tp.trim().split('-');
        let (_version, id) = (parts.next()?, parts.next()?);
        (id.len() == 32 && valid(id)).then_some(id)
    });
    let from_b3 = || get("b3").and_then(|b3| b3.trim().split('-').next().filter(|id| valid(id)));
    let from_multi = || get("x-b3-traceid").map(str::trim).filter(|id| valid(id));
    from_traceparent
        .or_else(from_b3)
        .or_else(from_multi)
        .map(|id| id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::trace_id;
    use http::HeaderMap;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().expect("header value"));
        }
        map
    }

    #[test]
    fn trace_id_from_each_format() {
        let w3c = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id(&headers(&[("traceparent", w3c)])).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            trace_id(&headers(&[(
                "b3",
                "80F198EE56343BA864FE8B2A57D3EFF7-e457b5a2e4d86bd1-1"
            )]))
            .as_deref(),
            Some("80f198ee56343ba864fe8b2a57d3eff7")
        );
        assert_eq!(
            trace_id(&headers(&[("x-b3-traceid", "463ac35c9f6413ad")])).as_deref(),
            Some("463ac35c9f6413ad")
        );
        // traceparent wins over B3.
        assert_eq!(
            trace_id(&headers(&[
                ("traceparent", w3c),
                ("x-b3-traceid", "463ac35c9f6413ad")
            ]))
            .as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }

    #[test]
    fn malformed_trace_ids_are_ignored() {
        assert_eq!(trace_id(&headers(&[])), None);
        let zero = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        assert_eq!(trace_id(&headers(&[("traceparent", zero)])), None);
        assert_eq!(trace_id(&headers(&[("traceparent", "garbage")])), None);
        assert_eq!(trace_id(&headers(&[("b3", "0")])), None);
        assert_eq!(trace_id(&headers(&[("x-b3-traceid", "xyz")])), None);
    }
}

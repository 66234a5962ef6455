//! Trace propagation and the proxy's own span, per request. Every request
//! keeps its trace headers ([`crate::trace::context`]); one without a
//! trace context gets a `traceparent`, and one without an `x-request-id`
//! gets one. When spans are exported ([`crate::trace::Tracer`]) and the
//! request is sampled (its parent's flag, or `sample_rate` for a trace
//! that starts here), the proxy's span becomes a child of the caller's:
//! the span ids sent on are rewritten to name it, and it is recorded from
//! here to the end of the response stream. An unsampled request costs a
//! header read and nothing else.
//!
//! Sits just inside [`super::admit`], so the request's authority is
//! settled and a refused request has no span.

use super::{Finish, Req, ReqState, Result, Rsp, Then};
use crate::http::error::ProxyError;
use crate::http::stream_end::{watch, StreamWatch};
use crate::http::ConnContext;
use crate::metrics::TlsStatus;
use crate::trace::context::{self, Incoming, SpanId, TraceId};
use crate::trace::SpanRecord;
use crate::Direction;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};
use tower::Service;

#[derive(Clone)]
pub struct Trace<S> {
    inner: S,
    conn: Arc<ConnContext>,
}

pub fn layer<S>(conn: Arc<ConnContext>) -> impl tower::Layer<S, Service = Trace<S>> + Clone {
    tower::layer::layer_fn(move |inner| Trace {
        inner,
        conn: conn.clone(),
    })
}

impl<S> Service<Req> for Trace<S>
where
    S: Service<Req, Response = Rsp, Error = ProxyError>,
{
    type Response = Rsp;
    type Error = ProxyError;
    type Future = Then<S::Future, Span>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let span = propagate(&self.conn, &mut req);
        Then::new(self.inner.call(req), Span(span))
    }
}

/// Keep, start or continue the request's trace; the span to record, if
/// this request is sampled and spans are exported.
fn propagate(conn: &Arc<ConnContext>, req: &mut Req) -> Option<Box<Draft>> {
    let headers = req.http.headers_mut();
    let incoming = Incoming::read_marking_ids(headers);
    if !incoming.has_request_id {
        if let Some(id) = context::new_request_id(fastrand::u128(..)) {
            headers.insert(context::REQUEST_ID, id);
        }
    }
    let exporting = conn.inputs.tracer.exporting();
    let parent = incoming.parent();
    let sampled = match parent.and_then(|p| p.sampled).or(incoming.decision_only) {
        Some(decided) => decided,
        None => exporting.as_ref().is_some_and(|e| e.sample_root()),
    };
    let recording = sampled && exporting.is_some();
    let (trace_id, span_id) = match &parent {
        Some(parent) if recording => {
            let span_id = random_id();
            context::rewrite(headers, &incoming, parent, &span_id);
            (parent.trace_id, span_id)
        }
        // Not ours to record: the caller's span ids go on untouched.
        Some(_) => return None,
        None => {
            let (trace_id, span_id) = (random_id(), random_id());
            if let Some(value) = context::new_traceparent(&trace_id, &span_id, sampled) {
                headers.insert(context::TRACEPARENT, value);
            }
            (trace_id, span_id)
        }
    };
    if !recording {
        return None;
    }
    Some(Box::new(Draft {
        conn: conn.clone(),
        state: req.state.clone(),
        trace_id,
        span_id,
        parent_span_id: parent.map(|p| p.span_id),
        started: Instant::now(),
        start_unix_nano: unix_nanos(SystemTime::now()),
        method: req.http.method().clone(),
        path: req.http.uri().path().to_string(),
        authority: crate::http::headers::authority(&req.http).map(str::to_string),
        status: 0,
        error: None,
    }))
}

/// A random id, never all zeros (which both formats reserve for "none"):
/// drawn as one integer, the width of the id.
fn random_id<const N: usize>() -> [u8; N] {
    let mut id = [0u8; N];
    id.copy_from_slice(&fastrand::u128(..).to_le_bytes()[..N]);
    if id == [0u8; N] {
        // One draw in 2^64 or more: any fixed non-zero id will do.
        id[0] = 1;
    }
    id
}

fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The span being recorded, if any, for the way up. Dropped before the
/// answer came (the client went away), it still ends its span.
pub struct Span(Option<Box<Draft>>);

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(mut draft) = self.0.take() {
            draft.error = Some("request cancelled before the response");
            draft.end(false);
        }
    }
}

impl Finish for Span {
    fn finish(mut self, mut result: Result) -> Result {
        let Some(mut draft) = self.0.take() else {
            return result;
        };
        match &mut result {
            Ok(response) => {
                draft.status = response.status().as_u16();
                watch(response, draft);
            }
            Err(e) => {
                draft.status = e.status().as_u16();
                draft.error = Some(e.reason());
                draft.end(false);
            }
        }
        result
    }
}

/// What is known of a sampled request's span before it ends.
struct Draft {
    conn: Arc<ConnContext>,
    state: Arc<ReqState>,
    trace_id: TraceId,
    span_id: SpanId,
    parent_span_id: Option<SpanId>,
    started: Instant,
    start_unix_nano: u64,
    method: http::Method,
    path: String,
    authority: Option<String>,
    status: u16,
    error: Option<&'static str>,
}

impl StreamWatch for Draft {
    fn ended(self: Box<Self>, _bytes: u64, broken: bool) {
        self.end(broken);
    }
}

impl Draft {
    fn end(self, broken: bool) {
        let elapsed = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        // The endpoint layer labels the request with its first try's
        // target; on a route that retries, the latest try is noted too.
        let first = self.state.metrics.get().map(|m| m.key());
        let (latest_cluster, latest_endpoint) = self.state.upstream();
        let cluster = latest_cluster.map(|c| c.name.clone()).or_else(|| {
            first
                .filter(|k| !k.cluster.is_empty())
                .map(|k| k.cluster.clone())
        });
        let endpoint = latest_endpoint.or(first.map(|k| k.target));
        let direction = self.conn.direction();
        let peer_identity = match direction {
            Direction::Inbound => self.conn.client_identity().map(Arc::from),
            // The identity the endpoint proved.
            Direction::Outbound => first.and_then(|k| match &k.tls {
                TlsStatus::Mesh { server_id, .. } => server_id.clone(),
                TlsStatus::NoIdentity(_) => None,
            }),
        };
        let record = SpanRecord {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_span_id: self.parent_span_id,
            direction,
            start_unix_nano: self.start_unix_nano,
            end_unix_nano: self.start_unix_nano.saturating_add(elapsed),
            method: self.method,
            route: self.state.route.get().filter(|r| !r.is_empty()).cloned(),
            status: self.status,
            path: self.path,
            authority: self.authority,
            client: self.conn.client,
            cluster,
            endpoint,
            retries: self.state.tally.retries(),
            peer_identity,
            error: self
                .error
                .or(broken.then_some("response stream did not complete")),
        };
        self.conn.inputs.tracer.submit(record);
    }
}

//! Distributed tracing: which trace a request belongs to ([`context`]),
//! whether this proxy records a span for it ([`Tracer`]), and the export
//! of recorded spans to an OTLP collector ([`export`]). The stack layer
//! that ties them to requests is [`crate::stack::trace`].
//!
//! The [`Tracer`] is shared by every listener. With no `tracing:` section
//! it exports nothing, and the only per-request cost is reading and
//! propagating headers. It follows config reloads: a changed section
//! starts a new exporter, and the old one sends what it holds and ends.

pub mod context;
pub mod export;

use arc_swap::ArcSwapOption;
use context::{SpanId, TraceId};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use strait_config::Tracing;
use tokio::sync::mpsc;

/// One span, as recorded on the request path: plain data, turned into
/// OTLP on the exporter's task.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    /// Outbound spans are CLIENT spans, inbound ones SERVER spans.
    pub direction: crate::Direction,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub method: http::Method,
    /// `http.route`: the L7 route's name, when one matched.
    pub route: Option<Arc<str>>,
    /// The response status; 0 when none came (the request was cancelled).
    pub status: u16,
    pub path: String,
    /// The request's authority (`server.address`, `server.port`).
    pub authority: Option<String>,
    pub client: SocketAddr,
    /// The latest try's cluster and endpoint.
    pub cluster: Option<Arc<str>>,
    pub endpoint: Option<SocketAddr>,
    pub retries: u32,
    /// The mTLS identity of the peer: the client's on inbound, the
    /// endpoint's on outbound.
    pub peer_identity: Option<Arc<str>>,
    /// Why the request failed, when the proxy failed it or the stream broke.
    pub error: Option<&'static str>,
}

/// `trace_spans_exported_total` and `trace_spans_dropped_total`.
#[derive(Clone)]
pub struct TraceMetrics {
    pub exported: IntCounter,
    /// Dropped because the queue to the exporter was full.
    pub dropped_queue_full: IntCounter,
    /// Dropped because the collector refused, failed or timed out.
    pub dropped_export_failed: IntCounter,
}

impl TraceMetrics {
    fn new(registry: &Registry) -> TraceMetrics {
        let exported = IntCounter::new(
            "trace_spans_exported_total",
            "Spans the OTLP collector accepted.",
        )
        .unwrap_or_else(|e| panic!("trace_spans_exported_total is malformed: {e}"));
        let dropped = IntCounterVec::new(
            Opts::new(
                "trace_spans_dropped_total",
                "Spans not exported, by reason (queue_full, export_failed).",
            ),
            &["reason"],
        )
        .unwrap_or_else(|e| panic!("trace_spans_dropped_total is malformed: {e}"));
        for metric in [
            Box::new(exported.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(dropped.clone()),
        ] {
            registry
                .register(metric)
                .unwrap_or_else(|e| panic!("a trace metric registered twice: {e}"));
        }
        TraceMetrics {
            exported,
            dropped_queue_full: dropped.with_label_values(&["queue_full"]),
            dropped_export_failed: dropped.with_label_values(&["export_failed"]),
        }
    }
}

/// Decides which requests get a span and hands finished spans to the
/// exporter.
pub struct Tracer {
    active: ArcSwapOption<Exporting>,
    /// Whether `active` holds an exporter: with export off (the common
    /// case) a request reads this flag, not the swap.
    on: AtomicBool,
    metrics: TraceMetrics,
}

/// The running exporter and the settings it was started with.
pub struct Exporting {
    config: Tracing,
    queue: mpsc::Sender<SpanRecord>,
}

impl Exporting {
    /// Whether a trace that starts here is sampled.
    pub fn sample_root(&self) -> bool {
        let rate = self.config.sample_rate;
        rate >= 1.0 || (rate > 0.0 && fastrand::f64() < rate)
    }
}

impl Tracer {
    /// A tracer that exports nothing until [`Tracer::apply`] gives it a
    /// collector; its counters go in `registry`.
    pub fn new(registry: &Registry) -> Arc<Tracer> {
        Arc::new(Tracer {
            active: ArcSwapOption::empty(),
            on: AtomicBool::new(false),
            metrics: TraceMetrics::new(registry),
        })
    }

    /// Follow the config's `tracing:` section: start, restart or stop the
    /// exporter. Call within the tokio runtime the exporter should run on.
    pub fn apply(&self, config: Option<&Tracing>) {
        let current = self.active.load();
        if current.as_ref().map(|a| &a.config) == config {
            return;
        }
        let next = config.map(|config| {
            Arc::new(Exporting {
                config: config.clone(),
                queue: export::spawn(config, self.metrics.clone()),
            })
        });
        match config {
            Some(c) => {
                tracing::info!(collector = %c.otlp_address, sample_rate = c.sample_rate, "exporting spans over OTLP")
            }
            None if current.is_some() => tracing::info!("span export turned off"),
            None => {}
        }
        // The old exporter's queue closes once the last holder lets go;
        // it sends what it has and ends.
        self.on.store(next.is_some(), Ordering::Release);
        self.active.store(next);
    }

    /// The running exporter, if spans are being exported: an atomic
    /// load, no allocation.
    pub fn exporting(&self) -> arc_swap::Guard<Option<Arc<Exporting>>> {
        if !self.on.load(Ordering::Acquire) {
            return arc_swap::Guard::from_inner(None);
        }
        self.active.load()
    }

    /// Queue a finished span for export without waiting: when the queue
    /// is full the span is dropped and counted.
    pub fn submit(&self, span: SpanRecord) {
        let active = self.active.load();
        let Some(active) = active.as_ref() else {
            return;
        };
        if active.queue.try_send(span).is_err() {
            self.metrics.dropped_queue_full.inc();
        }
    }
}

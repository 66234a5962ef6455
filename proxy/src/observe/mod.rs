//! Per-request records and the sinks that take them: each direction's
//! access log ([`access_log`]) and the live taps opened on the admin port
//! ([`crate::tap`]). [`crate::stack::observe`] builds a [`Record`] at the
//! end of each response stream and hands it to [`Observers::emit`].
//!
//! What is on is one atomic bit mask ([`Observers::wants`]): with no
//! access log and no tap, the data path pays one relaxed load per request.
//! Sinks never block traffic: each has a bounded queue, and a record that
//! finds it full is dropped and counted.

pub mod access_log;
pub mod filter;
pub mod format;

use crate::metrics::Metrics;
use crate::Direction;
use access_log::AccessLogWriter;
use arc_swap::ArcSwap;
use filter::Filter;
use prometheus::{IntCounter, IntCounterVec, IntGauge};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use strait_config::AccessLogs;
use tokio::sync::mpsc;

/// One request and its response, metadata only.
#[derive(Debug, Clone)]
pub struct Record {
    pub direction: Direction,
    /// Wall-clock time the request arrived.
    pub start: SystemTime,
    pub method: http::Method,
    pub authority: String,
    /// Path and query, after normalisation.
    pub path: String,
    pub protocol: http::Version,
    pub status: u16,
    /// From the request's arrival to the end of the response stream.
    pub duration: Duration,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub route: Arc<str>,
    pub cluster: Arc<str>,
    pub endpoint: Option<SocketAddr>,
    /// Time to open a new upstream connection for the last try; `None`
    /// when a pooled connection was reused (or no try was made).
    pub upstream_connect: Option<Duration>,
    pub retries: u32,
    /// The client's mesh identity, proven over mTLS (inbound).
    pub client_identity: Option<Arc<str>>,
    /// The identity the upstream had to prove (outbound, meshed).
    pub server_identity: Option<Arc<str>>,
    pub peer: SocketAddr,
    pub trace_id: Option<String>,
    pub request_id: Option<String>,
    pub user_agent: Option<String>,
    pub referer: Option<String>,
    /// Why the proxy answered itself, when it did.
    pub error: Option<&'static str>,
    /// The response stream failed or was abandoned before its end.
    pub stream_broken: bool,
}

/// What the layers below the observe and trace layers count for them,
/// per request (retries always; the rest only while observed).
#[derive(Debug, Default)]
pub struct Tally {
    on: AtomicBool,
    retries: AtomicU32,
    request_bytes: AtomicU64,
    /// Microseconds plus one; zero is "no new connection".
    connect_micros: AtomicU64,
}

impl Tally {
    pub fn switch_on(&self) {
        self.on.store(true, Ordering::Relaxed);
    }

    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    pub fn note_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// A try sent `bytes` of the request body (every try sends all of it,
    /// so the largest is the body's size).
    pub fn note_request_bytes(&self, bytes: u64) {
        if self.is_on() {
            self.request_bytes.fetch_max(bytes, Ordering::Relaxed);
        }
    }

    /// The latest try opened a new connection in `took` (`None`: reused one).
    pub fn note_connect(&self, took: Option<Duration>) {
        let micros = took.map_or(0, |d| (d.as_micros() as u64).saturating_add(1));
        self.connect_micros.store(micros, Ordering::Relaxed);
    }

    pub fn retries(&self) -> u32 {
        self.retries.load(Ordering::Relaxed)
    }

    pub fn request_bytes(&self) -> u64 {
        self.request_bytes.load(Ordering::Relaxed)
    }

    pub fn connect(&self) -> Option<Duration> {
        match self.connect_micros.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_micros(n - 1)),
        }
    }
}

/// Bits of [`Observers::wants`].
const LOG_OUTBOUND: u8 = 1;
const LOG_INBOUND: u8 = 2;
const TAP_OUTBOUND: u8 = 4;
const TAP_INBOUND: u8 = 8;

fn log_bit(direction: Direction) -> u8 {
    match direction {
        Direction::Outbound => LOG_OUTBOUND,
        Direction::Inbound => LOG_INBOUND,
    }
}

fn tap_bit(direction: Direction) -> u8 {
    match direction {
        Direction::Outbound => TAP_OUTBOUND,
        Direction::Inbound => TAP_INBOUND,
    }
}

/// One open tap, as the data path sees it.
pub struct TapSink {
    pub filter: Filter,
    tx: mpsc::Sender<Arc<Record>>,
    /// Records still to send; the reader stops at its limit anyway, this
    /// stops the data path from queueing past it.
    remaining: AtomicU64,
}

/// Every sink, shared by both directions and the admin server.
pub struct Observers {
    wants: AtomicU8,
    /// The access logs, by direction; replaced whole on reload.
    logs: ArcSwap<Logs>,
    /// Open taps, read on the data path without a lock...
    taps: ArcSwap<Vec<Arc<TapSink>>>,
    /// ...while taps and logs change under this one.
    change_lock: Mutex<()>,
    written: IntCounterVec,
    dropped: IntCounterVec,
    tap_dropped: IntCounter,
    tap_open: IntGauge,
}

/// The access logs of one config, writers started.
#[derive(Default)]
pub struct Logs {
    config: AccessLogs,
    writers: [Option<Arc<AccessLogWriter>>; 2],
}

fn index(direction: Direction) -> usize {
    match direction {
        Direction::Outbound => 0,
        Direction::Inbound => 1,
    }
}

impl Observers {
    /// Start the access logs `config` turns on. Fails when a log file
    /// cannot be opened.
    pub fn new(config: &AccessLogs, metrics: &Metrics) -> anyhow::Result<Arc<Observers>> {
        let families = &metrics.observe;
        let written = families.access_log_written_total.clone();
        let dropped = families.access_log_dropped_total.clone();
        let tap_dropped = families.tap_dropped_total.clone();
        let tap_open = families.tap_open.clone();
        let observers = Observers {
            wants: AtomicU8::new(0),
            logs: ArcSwap::from_pointee(Logs::default()),
            taps: ArcSwap::from_pointee(Vec::new()),
            change_lock: Mutex::new(()),
            written,
            dropped,
            tap_dropped,
            tap_open,
        };
        let logs = observers.prepare_logs(config)?;
        observers.install_logs(logs);
        Ok(Arc::new(observers))
    }

    /// The access logs of a new config, ready to install: a direction
    /// whose settings did not change keeps its writer, a changed one gets
    /// a new writer (the old one finishes its queue and stops). Fails,
    /// changing nothing, when a log file cannot be opened.
    pub fn prepare_logs(&self, config: &AccessLogs) -> anyhow::Result<Logs> {
        let current = self.logs.load();
        let start = |direction: Direction| -> anyhow::Result<Option<Arc<AccessLogWriter>>> {
            let (new, old) = match direction {
                Direction::Outbound => (&config.outbound, &current.config.outbound),
                Direction::Inbound => (&config.inbound, &current.config.inbound),
            };
            if new == old {
                return Ok(current.writers[index(direction)].clone());
            }
            let Some(log) = new else { return Ok(None) };
            let label = [direction.as_str()];
            let writer = AccessLogWriter::start(
                direction,
                log,
                self.written.with_label_values(&label),
                self.dropped.with_label_values(&label),
            )?;
            Ok(Some(Arc::new(writer)))
        };
        Ok(Logs {
            config: config.clone(),
            writers: [start(Direction::Outbound)?, start(Direction::Inbound)?],
        })
    }

    /// Switch to `logs` (from [`Observers::prepare_logs`]).
    pub fn install_logs(&self, logs: Logs) {
        let _lock = self.change_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.logs.store(Arc::new(logs));
        self.update_wants();
    }

    /// Whether a request in `direction` may be recorded: the data path's
    /// one check, an atomic load.
    #[inline]
    pub fn wants(&self, direction: Direction) -> bool {
        self.wants.load(Ordering::Relaxed) & (log_bit(direction) | tap_bit(direction)) != 0
    }

    /// Whether a request with these request-side facts must be captured:
    /// its direction's log is on, or an open tap's filter could match it
    /// once its status is known. Allocates nothing.
    pub fn wants_request(
        &self,
        direction: Direction,
        method: &http::Method,
        authority: Option<&str>,
        path: &str,
    ) -> bool {
        let wants = self.wants.load(Ordering::Relaxed);
        if wants & log_bit(direction) != 0 {
            return true;
        }
        wants & tap_bit(direction) != 0
            && self.taps.load().iter().any(|tap| {
                tap.filter
                    .matches_request(direction, method, authority, path)
            })
    }

    /// Hand `record` to every sink that wants it. Never blocks.
    pub fn emit(&self, record: Record) {
        let direction = record.direction;
        let record = Arc::new(record);
        if let Some(log) = &self.logs.load().writers[index(direction)] {
            log.send(record.clone());
        }
        if self.wants.load(Ordering::Relaxed) & tap_bit(direction) == 0 {
            return;
        }
        for tap in self.taps.load().iter() {
            if tap.remaining.load(Ordering::Relaxed) == 0 || !tap.filter.matches(&record) {
                continue;
            }
            match tap.tx.try_send(record.clone()) {
                Ok(()) => {
                    tap.remaining.fetch_sub(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Full(_)) => self.tap_dropped.inc(),
                // The reader is gone; its guard removes the tap.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }

    /// Open a tap: records matching `filter` arrive on the receiver, at
    /// most `limit` of them, `queue` at a time. The tap closes when the
    /// returned guard drops.
    pub fn open_tap(
        self: &Arc<Self>,
        filter: Filter,
        limit: u64,
        queue: usize,
    ) -> (TapGuard, mpsc::Receiver<Arc<Record>>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let sink = Arc::new(TapSink {
            filter,
            tx,
            remaining: AtomicU64::new(limit),
        });
        self.change_taps(|taps| taps.push(sink.clone()));
        let guard = TapGuard {
            observers: self.clone(),
            sink,
        };
        (guard, rx)
    }

    /// Taps open now.
    pub fn open_taps(&self) -> usize {
        self.taps.load().len()
    }

    fn change_taps(&self, change: impl FnOnce(&mut Vec<Arc<TapSink>>)) {
        let _lock = self.change_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut taps = Vec::clone(&self.taps.load());
        change(&mut taps);
        self.tap_open.set(taps.len() as i64);
        self.taps.store(Arc::new(taps));
        self.update_wants();
    }

    /// Recompute [`Observers::wants`]; called under `change_lock`.
    fn update_wants(&self) {
        let logs = self.logs.load();
        let mut wants = logs.writers[0].as_ref().map_or(0, |_| LOG_OUTBOUND)
            | logs.writers[1].as_ref().map_or(0, |_| LOG_INBOUND);
        for tap in self.taps.load().iter() {
            wants |= match tap.filter.direction {
                Some(direction) => tap_bit(direction),
                None => TAP_OUTBOUND | TAP_INBOUND,
            };
        }
        self.wants.store(wants, Ordering::Relaxed);
    }
}

/// Keeps a tap open; dropping it (the reader finished or went away)
/// removes the tap from the data path.
pub struct TapGuard {
    observers: Arc<Observers>,
    sink: Arc<TapSink>,
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        let sink = &self.sink;
        self.observers
            .change_taps(|taps| taps.retain(|t| !Arc::ptr_eq(t, sink)));
    }
}

#[cfg(test)]
mod tests;

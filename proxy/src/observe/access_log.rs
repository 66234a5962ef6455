//! One direction's access log: a bounded queue of records and a thread
//! that formats and writes them (to stdout or appended to a file). The
//! data path only ever `try_send`s: when the writer is behind and the
//! queue is full, the line is dropped and counted in
//! `access_log_dropped_total`; written lines count in
//! `access_log_written_total`. The writer flushes whenever the queue runs
//! empty, so a quiet proxy's log is never stale.
//!
//! A reload that changes a direction's settings starts a new writer; the
//! old one writes what it has queued and stops.

use super::{format, Record};
use crate::Direction;
use anyhow::Context;
use prometheus::IntCounter;
use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use strait_config::{AccessLog, AccessLogFormat, AccessLogPath};

pub struct AccessLogWriter {
    tx: SyncSender<Arc<Record>>,
    dropped: IntCounter,
}

impl AccessLogWriter {
    /// Open the log's destination and start its writer thread.
    pub fn start(
        direction: Direction,
        config: &AccessLog,
        written: IntCounter,
        dropped: IntCounter,
    ) -> anyhow::Result<AccessLogWriter> {
        let out: Box<dyn Write + Send> = match &config.path {
            AccessLogPath::Stdout => Box::new(std::io::stdout()),
            AccessLogPath::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| {
                        format!(
                            "cannot open access_log.{}.path {}",
                            direction.as_str(),
                            path.display()
                        )
                    })?,
            ),
        };
        let (tx, rx) = sync_channel(config.buffer_lines);
        let format = config.format;
        std::thread::Builder::new()
            .name(format!("strait-access-log-{}", direction.as_str()))
            .spawn(move || write_lines(rx, out, format, written))
            .context("cannot start the access log writer thread")?;
        Ok(AccessLogWriter { tx, dropped })
    }

    /// Queue `record`, or drop and count it when the queue is full.
    pub fn send(&self, record: Arc<Record>) {
        match self.tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped.inc(),
            // The writer stopped on a write error (already logged).
            Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

/// The writer thread: format what is queued into one buffer, write it
/// whole, and flush when the queue is empty. Ends when the proxy drops
/// the sender, or on a write error (logged once; lines then count as
/// dropped).
fn write_lines(
    rx: Receiver<Arc<Record>>,
    mut out: Box<dyn Write + Send>,
    format: AccessLogFormat,
    written: IntCounter,
) {
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Ok(first) = rx.recv() {
        let mut lines = 0;
        let mut next = Some(first);
        // At most a bounded batch between writes, so a busy queue still
        // reaches the file steadily.
        while let Some(record) = next.take() {
            let line = match format {
                AccessLogFormat::Json => format::json(&record),
                AccessLogFormat::Combined => format::combined(&record),
            };
            batch.extend_from_slice(line.as_bytes());
            lines += 1;
            if batch.len() < 64 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        if let Err(e) = out.write_all(&batch).and_then(|()| out.flush()) {
            tracing::error!(error = %e, "cannot write the access log; it is off until restart");
            return;
        }
        written.inc_by(lines);
        batch.clear();
    }
}

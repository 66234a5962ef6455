//! Rate-limited logging of per-request failures. A misbehaving peer can
//! make every request fail; logging each one at WARN lets it fill a node's
//! disk through the proxy's log. Here each (reason, target) pair logs at
//! most one line per interval, and that line carries how many like it were
//! suppressed since the last one. Only the log is limited: the metrics
//! (`http_proxy_errors_total`) still count every failure.
//!
//! The table of pairs is bounded ([`MAX_KEYS`]): when it is full, pairs
//! whose interval is over are forgotten, and a new target that still finds
//! no room shares one entry per reason. Depends on nothing but `tracing`.

use crate::http::error::ProxyError;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// How often one (reason, target) pair may log a request failure.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Most (reason, target) pairs tracked at once.
pub const MAX_KEYS: usize = 1024;

/// A failure reason and the target it happened on; `None` when the table
/// was full (every such target shares the reason's entry).
type Key = (&'static str, Option<SocketAddr>);

struct Window {
    opened: Instant,
    suppressed: u64,
}

/// Whether to log a failure now.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Log it, saying how many like it were suppressed since the last line.
    Log { suppressed: u64 },
    /// Already logged within the interval: counted, not logged.
    Suppress,
}

/// One line per (reason, target) per interval.
pub struct LogLimit {
    interval: Duration,
    windows: Mutex<HashMap<Key, Window>>,
}

impl LogLimit {
    pub fn new(interval: Duration) -> LogLimit {
        LogLimit {
            interval,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Decide for one failure of `reason` on `target`.
    pub fn check(&self, reason: &'static str, target: SocketAddr) -> Decision {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = (reason, Some(target));
        if !windows.contains_key(&key) && windows.len() >= MAX_KEYS {
            let interval = self.interval;
            windows.retain(|_, w| now.duration_since(w.opened) < interval);
            if windows.len() >= MAX_KEYS {
                key = (reason, None);
            }
        }
        match windows.get_mut(&key) {
            Some(w) if now.duration_since(w.opened) < self.interval => {
                w.suppressed += 1;
                Decision::Suppress
            }
            Some(w) => {
                let suppressed = std::mem::take(&mut w.suppressed);
                w.opened = now;
                Decision::Log { suppressed }
            }
            None => {
                windows.insert(
                    key,
                    Window {
                        opened: now,
                        suppressed: 0,
                    },
                );
                Decision::Log { suppressed: 0 }
            }
        }
    }
}

static REQUEST_FAILURES: LazyLock<LogLimit> = LazyLock::new(|| LogLimit::new(INTERVAL));

/// Log a request the proxy failed (to `target`), at most once per
/// [`INTERVAL`] for its reason and target.
pub fn request_failed(target: SocketAddr, err: &ProxyError) {
    match REQUEST_FAILURES.check(err.reason(), target) {
        Decision::Suppress => {}
        Decision::Log { suppressed: 0 } => {
            tracing::warn!(target_addr = %target, reason = err.reason(), error = %err, "request failed in the proxy")
        }
        Decision::Log { suppressed } => {
            tracing::warn!(target_addr = %target, reason = err.reason(), error = %err, suppressed, "request failed in the proxy ({suppressed} more like it were not logged since the last line)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[tokio::test(start_paused = true)]
    async fn one_line_per_reason_and_target_per_interval() {
        let limit = LogLimit::new(Duration::from_secs(10));
        assert_eq!(
            limit.check("connect-refused", addr(1)),
            Decision::Log { suppressed: 0 }
        );
        for _ in 0..99 {
            assert_eq!(limit.check("connect-refused", addr(1)), Decision::Suppress);
        }
        // Other targets and other reasons have their own windows.
        assert_eq!(
            limit.check("connect-refused", addr(2)),
            Decision::Log { suppressed: 0 }
        );
        assert_eq!(
            limit.check("response-timeout", addr(1)),
            Decision::Log { suppressed: 0 }
        );
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert_eq!(limit.check("connect-refused", addr(1)), Decision::Suppress);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            limit.check("connect-refused", addr(1)),
            Decision::Log { suppressed: 100 }
        );
        assert_eq!(limit.check("connect-refused", addr(1)), Decision::Suppress);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            limit.check("connect-refused", addr(1)),
            Decision::Log { suppressed: 1 }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_stays_bounded_under_many_targets() {
        let limit = LogLimit::new(Duration::from_secs(10));
        let mut logged = 0;
        for port in 0..(MAX_KEYS as u16 * 4) {
            if limit.check("connect-refused", addr(port)) != Decision::Suppress {
                logged += 1;
            }
        }
        // A full table: the overflow shares one entry, logged once.
        assert_eq!(logged, MAX_KEYS + 1);
        assert!(limit.windows.lock().map(|w| w.len()).unwrap_or(0) <= MAX_KEYS + 1);
        // Once the interval is over, old pairs make room for new ones.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            limit.check("connect-refused", addr(60_000)),
            Decision::Log { suppressed: 0 }
        );
        assert!(limit.windows.lock().map(|w| w.len()).unwrap_or(0) <= 2);
    }
}

//! The process's log filter, changeable while it runs (the admin port's
//! `/log-level`). The tracing subscriber is process-global, so its reload
//! handle is too: `main` installs it once when it sets up logging.

use std::sync::{Mutex, OnceLock};

type Apply = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

struct LogLevel {
    /// The filter as last set, in the caller's words.
    current: Mutex<String>,
    /// Parse a filter and swap it into the subscriber.
    apply: Apply,
}

static LOG_LEVEL: OnceLock<LogLevel> = OnceLock::new();

/// Why a filter was not applied.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("this process's logging cannot be changed at runtime")]
    NotInstalled,
    #[error("invalid log filter '{filter}': {reason}")]
    Invalid { filter: String, reason: String },
}

/// Make the running subscriber's filter changeable: `apply` parses a
/// filter and installs it (or says why not). A second call is ignored.
pub fn install(initial: &str, apply: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static) {
    let _ = LOG_LEVEL.set(LogLevel {
        current: Mutex::new(initial.to_string()),
        apply: Box::new(apply),
    });
}

/// The filter in force, None when logging is not reloadable.
pub fn current() -> Option<String> {
    let level = LOG_LEVEL.get()?;
    Some(
        level
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
    )
}

/// Replace the filter; an invalid one leaves the old filter in force.
pub fn set(filter: &str) -> Result<(), SetError> {
    let level = LOG_LEVEL.get().ok_or(SetError::NotInstalled)?;
    let filter = filter.trim();
    // Held across apply so concurrent PUTs leave `current` naming the
    // filter actually in force.
    let mut current = level.current.lock().unwrap_or_else(|p| p.into_inner());
    (level.apply)(filter).map_err(|reason| SetError::Invalid {
        filter: filter.to_string(),
        reason,
    })?;
    *current = filter.to_string();
    Ok(())
}

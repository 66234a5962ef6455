//! `access_log`: per-direction request logs, off unless configured.
//!
//! ```yaml
//! access_log:
//!   outbound: {format: json, path: stdout}
//!   inbound: {format: combined, path: /var/log/strait/inbound.log, buffer_lines: 8192}
//! ```
//!
//! `format` is `json` (one object per line, the default) or `combined`
//! (Apache's combined log format); `path` is `stdout` or a file, appended
//! to; `buffer_lines` bounds the lines waiting for the writer (past it
//! lines are dropped and counted, never waited for). The wire shape, the
//! model and the rules live together here so the section stays one module.

use crate::error::ConfigError;
use crate::validate::Rules;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Lines waiting for the writer when `buffer_lines` is not set.
pub const DEFAULT_BUFFER_LINES: usize = 4096;
const MAX_BUFFER_LINES: i64 = 1_000_000;

/// The file's `access_log:` section.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileAccessLogs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<FileAccessLog>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<FileAccessLog>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileAccessLog {
    pub format: Option<String>,
    pub path: Option<String>,
    pub buffer_lines: Option<i64>,
}

/// Each direction's access log; `None` is off.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AccessLogs {
    pub outbound: Option<AccessLog>,
    pub inbound: Option<AccessLog>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessLog {
    pub format: AccessLogFormat,
    pub path: AccessLogPath,
    pub buffer_lines: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    Json,
    Combined,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogPath {
    Stdout,
    File(PathBuf),
}

pub(crate) fn validate(
    rules: &Rules<'_>,
    file: Option<FileAccessLogs>,
) -> Result<AccessLogs, ConfigError> {
    let file = file.unwrap_or_default();
    Ok(AccessLogs {
        outbound: file
            .outbound
            .map(|l| one(rules, "access_log.outbound", l))
            .transpose()?,
        inbound: file
            .inbound
            .map(|l| one(rules, "access_log.inbound", l))
            .transpose()?,
    })
}

fn one(rules: &Rules<'_>, field: &str, file: FileAccessLog) -> Result<AccessLog, ConfigError> {
    let format = match file.format.as_deref().map(str::trim) {
        None | Some("json") => AccessLogFormat::Json,
        Some("combined") => AccessLogFormat::Combined,
        Some(other) => {
            return Err(ConfigError::Syntax {
                at: rules.at(&format!("{field}.format")),
                message: format!("'{other}' is not an access log format: json or combined"),
            })
        }
    };
    let path = match file.path.as_deref().map(str::trim) {
        None | Some("stdout") => AccessLogPath::Stdout,
        Some("") => {
            return Err(ConfigError::Empty {
                at: rules.at(&format!("{field}.path")),
            })
        }
        Some(path) => AccessLogPath::File(PathBuf::from(path)),
    };
    let buffer_lines = rules.range(
        &format!("{field}.buffer_lines"),
        file.buffer_lines,
        DEFAULT_BUFFER_LINES as i64,
        1,
        MAX_BUFFER_LINES,
        "1 to 1000000",
    )? as usize;
    Ok(AccessLog {
        format,
        path,
        buffer_lines,
    })
}

impl AccessLogs {
    /// This section in the file's shape; `None` when both directions are off.
    pub fn to_file(&self) -> Option<FileAccessLogs> {
        let one = |log: &AccessLog| FileAccessLog {
            format: Some(
                match log.format {
                    AccessLogFormat::Json => "json",
                    AccessLogFormat::Combined => "combined",
                }
                .into(),
            ),
            path: Some(match &log.path {
                AccessLogPath::Stdout => "stdout".into(),
                AccessLogPath::File(path) => path.display().to_string(),
            }),
            buffer_lines: Some(log.buffer_lines as i64),
        };
        if self.outbound.is_none() && self.inbound.is_none() {
            return None;
        }
        Some(FileAccessLogs {
            outbound: self.outbound.as_ref().map(one),
            inbound: self.inbound.as_ref().map(one),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::{AccessLogFormat, AccessLogPath, Config};
    use std::path::PathBuf;

    #[test]
    fn off_by_default() {
        let config = Config::from_yaml("").expect("empty config");
        assert_eq!(config.access_log, Default::default());
    }

    #[test]
    fn parses_both_directions() {
        let config = Config::from_yaml(
            "access_log:\n  outbound: {}\n  inbound:\n    format: combined\n    path: /tmp/in.log\n    buffer_lines: 10\n",
        )
        .expect("valid");
        let out = config.access_log.outbound.expect("outbound on");
        assert_eq!(out.format, AccessLogFormat::Json);
        assert_eq!(out.path, AccessLogPath::Stdout);
        assert_eq!(out.buffer_lines, super::DEFAULT_BUFFER_LINES);
        let inbound = config.access_log.inbound.expect("inbound on");
        assert_eq!(inbound.format, AccessLogFormat::Combined);
        assert_eq!(
            inbound.path,
            AccessLogPath::File(PathBuf::from("/tmp/in.log"))
        );
        assert_eq!(inbound.buffer_lines, 10);
    }

    #[test]
    fn errors_name_field_and_line() {
        let err = Config::from_yaml("log: {}\naccess_log:\n  inbound:\n    format: apache\n")
            .expect_err("bad format");
        let text = err.to_string();
        assert!(text.contains("access_log.inbound.format"), "{text}");
        assert!(text.contains("line 4"), "{text}");
        let err = Config::from_yaml("access_log:\n  outbound:\n    buffer_lines: 0\n")
            .expect_err("zero buffer");
        let text = err.to_string();
        assert!(text.contains("access_log.outbound.buffer_lines"), "{text}");
        assert!(text.contains("line 3"), "{text}");
        let err = Config::from_yaml("access_log:\n  sideways: {}\n").expect_err("unknown");
        assert!(err.to_string().contains("access_log"), "{err}");
    }

    #[test]
    fn dump_round_trips() {
        let config =
            Config::from_yaml("access_log:\n  outbound: {format: combined, path: /tmp/o.log}\n")
                .expect("valid");
        let json = config.dump_json().expect("dump");
        let again = Config::from_yaml(&String::from_utf8_lossy(&json)).expect("dump reloads");
        assert_eq!(again.access_log, config.access_log);
    }
}

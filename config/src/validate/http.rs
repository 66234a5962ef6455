//! `proxy.http`: what an HTTP client may send (request limits, HTTP/2
//! flood limits and keep-alive) and how its path is canonicalised, each
//! field checked against its range with its default from
//! [`super::defaults`].

use super::{defaults, Rules};
use crate::error::ConfigError;
use crate::file::FileHttp;
use crate::model::HttpSettings;
use std::time::Duration;

pub(super) fn settings(rules: &Rules<'_>, h: FileHttp) -> Result<HttpSettings, ConfigError> {
    let body = rules.range(
        "proxy.http.max_request_body_bytes",
        h.max_request_body_bytes,
        0,
        0,
        i64::MAX,
        "0 (no limit) or more",
    )?;
    Ok(HttpSettings {
        normalize_path: h.normalize_path.unwrap_or(true),
        merge_slashes: h.merge_slashes.unwrap_or(true),
        decode_unreserved: h.decode_unreserved.unwrap_or(true),
        // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
        max_request_headers_bytes: rules.range(
            "proxy.http.max_request_headers_bytes",
            h.max_request_headers_bytes,
            defaults::MAX_REQUEST_HEADERS_BYTES as i64,
            8192,
            16 * 1024 * 1024,
            "8192 to 16777216",
        )? as usize,
        max_request_headers: rules.range(
            "proxy.http.max_request_headers",
            h.max_request_headers,
            defaults::MAX_REQUEST_HEADERS as i64,
            1,
            10_000,
            "1 to 10000",
        )? as usize,
        max_uri_bytes: rules.range(
            "proxy.http.max_uri_bytes",
            h.max_uri_bytes,
            defaults::MAX_URI_BYTES as i64,
            16,
            65_534,
            "16 to 65534",
        )? as usize,
        max_request_body_bytes: (body > 0).then_some(body as u64),
        max_concurrent_streams: rules.range(
            "proxy.http.max_concurrent_streams",
            h.max_concurrent_streams,
            i64::from(defaults::MAX_CONCURRENT_STREAMS),
            1,
            1_000_000,
            "1 to 1000000",
        )? as u32,
        max_pending_accept_reset_streams: rules.range(
            "proxy.http.max_pending_accept_reset_streams",
            h.max_pending_accept_reset_streams,
            defaults::MAX_PENDING_ACCEPT_RESET_STREAMS as i64,
            1,
            100_000,
            "1 to 100000",
        )? as usize,
        max_local_error_reset_streams: rules.range(
            "proxy.http.max_local_error_reset_streams",
            h.max_local_error_reset_streams,
            defaults::MAX_LOCAL_ERROR_RESET_STREAMS as i64,
            1,
            100_000,
            "1 to 100000",
        )? as usize,
        http2_keep_alive_interval: h
            .http2_keep_alive_interval
            .as_ref()
            .map(|v| {
                rules.duration(
                    "proxy.http.http2_keep_alive_interval",
                    Some(v),
                    Duration::ZERO,
                )
            })
            .transpose()?,
        http2_keep_alive_timeout: rules.duration(
            "proxy.http.http2_keep_alive_timeout",
            h.http2_keep_alive_timeout.as_ref(),
            defaults::HTTP2_KEEP_ALIVE_TIMEOUT,
        )?,
        http2_flood_window: rules.duration(
            "proxy.http.http2_flood_window",
            h.http2_flood_window.as_ref(),
            defaults::HTTP2_FLOOD_WINDOW,
        )?,
        http2_max_ping_frames: flood_limit(
            rules,
            "proxy.http.http2_max_ping_frames",
            h.http2_max_ping_frames,
            defaults::HTTP2_MAX_PING_FRAMES,
        )?,
        http2_max_settings_frames: flood_limit(
            rules,
            "proxy.http.http2_max_settings_frames",
            h.http2_max_settings_frames,
            defaults::HTTP2_MAX_SETTINGS_FRAMES,
        )?,
        http2_max_empty_data_frames: flood_limit(
            rules,
            "proxy.http.http2_max_empty_data_frames",
            h.http2_max_empty_data_frames,
            defaults::HTTP2_MAX_EMPTY_DATA_FRAMES,
        )?,
        http2_max_window_updates_per_data_frame: rules.range(
            "proxy.http.http2_max_window_updates_per_data_frame",
            h.http2_max_window_updates_per_data_frame,
            i64::from(defaults::HTTP2_MAX_WINDOW_UPDATES_PER_DATA_FRAME),
            0,
            10_000,
            "0 (no limit) to 10000",
        )? as u32,
    })
}

/// An HTTP/2 frame count per flood window; 0 turns that limit off.
fn flood_limit(
    rules: &Rules<'_>,
    field: &str,
    value: Option<i64>,
    default: u32,
) -> Result<u32, ConfigError> {
    let n = rules.range(
        field,
        value,
        i64::from(default),
        0,
        10_000_000,
        "0 (no limit) to 10000000",
    )?;
    Ok(n as u32)
}

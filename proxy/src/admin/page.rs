//! `GET /`: the live admin page (HTML and a little JavaScript built into
//! the binary, no external assets) and `GET /stats.json`, which it polls.
//! Served to loopback only unless `STRAIT_ADMIN_PAGE_REMOTE=true`, since
//! the page shows every endpoint and request the proxy handles.

use super::{reply, AdminState, TEXT};
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use std::net::SocketAddr;
use std::sync::OnceLock;

const PAGE: &str = include_str!("page.html");

/// Whether non-loopback peers may load the page, read once.
fn remote_allowed() -> bool {
    static REMOTE: OnceLock<bool> = OnceLock::new();
    *REMOTE.get_or_init(|| {
        std::env::var("STRAIT_ADMIN_PAGE_REMOTE").is_ok_and(|v| v == "true" || v == "1")
    })
}

fn forbidden(peer: SocketAddr) -> Option<Response<Full<Bytes>>> {
    (!peer.ip().is_loopback() && !remote_allowed()).then(|| {
        reply(
            StatusCode::FORBIDDEN,
            TEXT,
            "the admin page is served to loopback only (set STRAIT_ADMIN_PAGE_REMOTE=true to allow others)\n",
        )
    })
}

pub fn page(peer: SocketAddr) -> Response<Full<Bytes>> {
    forbidden(peer).unwrap_or_else(|| reply(StatusCode::OK, "text/html; charset=utf-8", PAGE))
}

pub fn stats(state: &AdminState, peer: SocketAddr) -> Response<Full<Bytes>> {
    forbidden(peer).unwrap_or_else(|| {
        reply(
            StatusCode::OK,
            "application/json",
            super::stats::render(state),
        )
    })
}

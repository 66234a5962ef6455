//! `GET /log-level` (the filter in force) and `PUT /log-level` (a new
//! filter such as `info,strait_proxy=debug` as the body), from loopback
//! only, as Linkerd's proxy offers. An invalid filter is a 400 naming the
//! problem and the old filter stays.

use super::{reply, TEXT};
use crate::log_level::{self, SetError};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use std::net::SocketAddr;

/// A filter longer than this is refused unread.
const MAX_FILTER_BYTES: usize = 4096;

pub async fn handle(peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if !peer.ip().is_loopback() {
        return reply(
            StatusCode::FORBIDDEN,
            TEXT,
            "the log level is served to loopback only\n",
        );
    }
    match *req.method() {
        Method::GET => match log_level::current() {
            Some(level) => reply(StatusCode::OK, TEXT, format!("{level}\n")),
            None => reply(
                StatusCode::NOT_FOUND,
                TEXT,
                format!("{}\n", SetError::NotInstalled),
            ),
        },
        Method::PUT => {
            let body = match Limited::new(req.into_body(), MAX_FILTER_BYTES)
                .collect()
                .await
            {
                Ok(body) => body.to_bytes(),
                Err(e) => {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        TEXT,
                        format!("cannot read the filter (at most {MAX_FILTER_BYTES} bytes): {e}\n"),
                    )
                }
            };
            let Ok(filter) = std::str::from_utf8(&body) else {
                return reply(StatusCode::BAD_REQUEST, TEXT, "the filter is not UTF-8\n");
            };
            match log_level::set(filter) {
                Ok(()) => {
                    tracing::info!(%peer, filter = filter.trim(), "log level changed through the admin server");
                    reply(StatusCode::OK, TEXT, format!("{}\n", filter.trim()))
                }
                Err(e @ SetError::Invalid { .. }) => {
                    reply(StatusCode::BAD_REQUEST, TEXT, format!("{e}\n"))
                }
                Err(e @ SetError::NotInstalled) => {
                    reply(StatusCode::NOT_FOUND, TEXT, format!("{e}\n"))
                }
            }
        }
        _ => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "use GET or PUT on /log-level\n",
        ),
    }
}

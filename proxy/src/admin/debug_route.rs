//! `GET /debug/route?...`: route explain against the live snapshot and
//! the balancers' live endpoint state ([`crate::explain`]).

use super::{reply, AdminState, TEXT};
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

pub fn get(state: &AdminState, query: Option<&str>) -> Response<Full<Bytes>> {
    let query = match crate::explain::Query::from_query_string(query.unwrap_or("")) {
        Ok(query) => query,
        Err(e) => return reply(StatusCode::BAD_REQUEST, TEXT, format!("{e}\n")),
    };
    match crate::explain::explain(&state.snapshot.load(), &query) {
        Ok(answer) => reply(StatusCode::OK, "application/json", format!("{answer:#}\n")),
        Err(e) => reply(StatusCode::BAD_REQUEST, TEXT, format!("{e}\n")),
    }
}

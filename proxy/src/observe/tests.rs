use super::filter::TapQuery;
use super::*;

fn observers() -> (Arc<Observers>, Arc<Metrics>) {
    let metrics = Metrics::new();
    let observers = Observers::new(&AccessLogs::default(), &metrics).expect("no log to open");
    (observers, metrics)
}

fn record(direction: Direction, path: &str, status: u16) -> Record {
    Record {
        direction,
        start: SystemTime::now(),
        method: http::Method::GET,
        authority: "web.default:80".into(),
        path: path.into(),
        protocol: http::Version::HTTP_11,
        status,
        duration: Duration::from_millis(1),
        request_bytes: 0,
        response_bytes: 0,
        route: Arc::from(""),
        cluster: Arc::from(""),
        endpoint: None,
        upstream_connect: None,
        retries: 0,
        client_identity: None,
        server_identity: None,
        peer: "127.0.0.1:1".parse().expect("addr"),
        trace_id: None,
        request_id: None,
        user_agent: None,
        referer: None,
        error: None,
        stream_broken: false,
    }
}

fn filter(query: &str) -> Filter {
    TapQuery::parse(Some(query)).expect("valid query").filter
}

#[test]
fn nothing_is_wanted_until_a_tap_opens_and_after_it_closes() {
    let (observers, _) = observers();
    assert!(!observers.wants(Direction::Outbound));
    assert!(!observers.wants(Direction::Inbound));
    let (guard, _rx) = observers.open_tap(filter("direction=inbound"), 10, 4);
    assert!(!observers.wants(Direction::Outbound));
    assert!(observers.wants(Direction::Inbound));
    let (both, _rx2) = observers.open_tap(Filter::default(), 10, 4);
    assert!(observers.wants(Direction::Outbound));
    drop(both);
    assert!(!observers.wants(Direction::Outbound));
    assert_eq!(observers.open_taps(), 1);
    drop(guard);
    assert!(!observers.wants(Direction::Inbound));
    assert_eq!(observers.open_taps(), 0);
}

#[test]
fn request_side_prefilter_skips_requests_no_tap_could_match() {
    let (observers, _) = observers();
    let (_guard, _rx) = observers.open_tap(filter("path_prefix=/api&status=200"), 10, 4);
    let get = http::Method::GET;
    assert!(observers.wants_request(Direction::Outbound, &get, None, "/api/x"));
    assert!(!observers.wants_request(Direction::Outbound, &get, None, "/other"));
}

#[test]
fn a_tap_gets_matching_records_up_to_its_limit() {
    let (observers, _) = observers();
    let (_guard, mut rx) = observers.open_tap(filter("status=5xx"), 2, 16);
    for status in [200, 503, 404, 500, 502] {
        observers.emit(record(Direction::Outbound, "/", status));
    }
    let mut got = Vec::new();
    while let Ok(r) = rx.try_recv() {
        got.push(r.status);
    }
    assert_eq!(got, vec![503, 500]);
}

#[test]
fn a_full_tap_drops_and_counts_instead_of_waiting() {
    let (observers, metrics) = observers();
    let (_guard, mut rx) = observers.open_tap(Filter::default(), 100, 2);
    for _ in 0..5 {
        observers.emit(record(Direction::Inbound, "/", 200));
    }
    let mut got = 0;
    while rx.try_recv().is_ok() {
        got += 1;
    }
    assert_eq!(got, 2);
    let text = metrics.render();
    assert!(text.contains("tap_dropped_total 3"), "{text}");
}

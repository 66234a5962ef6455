//! [`crate::stack::replay`]: a request body that streams upstream as it
//! arrives, keeps what passed (up to `max`) and lets a retry send it again
//! and then read on where the last try stopped.

use super::support::{
    channel, channel_sized, collect, data, poll_frame, trailers, Broken, ChannelBody, Flag,
};
use crate::stack::replay::ReplayBody;
use bytes::Bytes;
use http_body::Body;
use http_body_util::{Full, StreamBody};
use std::task::Poll;

/// The data of the next frame, `None` at the end; panics if not ready.
fn next_data(body: &mut ReplayBody<ChannelBody>) -> Option<Bytes> {
    match poll_frame(body, &Flag::new()) {
        Poll::Ready(Some(Ok(frame))) => Some(frame.into_data().expect("a data frame")),
        Poll::Ready(None) => None,
        Poll::Ready(Some(Err(e))) => panic!("body error: {e}"),
        Poll::Pending => panic!("no frame ready"),
    }
}

fn bytes(s: &'static str) -> Option<Bytes> {
    Some(Bytes::from_static(s.as_bytes()))
}

#[test]
fn the_first_try_streams_the_client_body_as_it_arrives() {
    let (tx, source) = channel();
    let mut first = ReplayBody::new(source, 1024);
    let flag = Flag::new();
    assert!(
        poll_frame(&mut first, &flag).is_pending(),
        "nothing read ahead"
    );
    tx.send(data("ab")).expect("send");
    assert!(flag.take(), "a frame arriving wakes the try");
    assert_eq!(next_data(&mut first), bytes("ab"));
    assert!(!first.is_end_stream());
    drop(tx);
    assert_eq!(next_data(&mut first), None);
    assert!(first.is_end_stream());
}

#[test]
fn a_retry_replays_what_passed_then_reads_on_where_the_last_try_stopped() {
    let (tx, source) = channel();
    let mut first = ReplayBody::new(source, 1024);
    tx.send(data("ab")).expect("send");
    tx.send(data("cd")).expect("send");
    assert_eq!(next_data(&mut first), bytes("ab"));
    assert_eq!(next_data(&mut first), bytes("cd"));
    let mut second = first.replay();
    // hyper lets go of the first try: the stream goes back for the next.
    drop(first);
    tx.send(data("ef")).expect("send");
    assert_eq!(next_data(&mut second), bytes("ab"));
    assert_eq!(next_data(&mut second), bytes("cd"));
    assert_eq!(
        next_data(&mut second),
        bytes("ef"),
        "the rest comes from the client"
    );
    drop(tx);
    assert_eq!(next_data(&mut second), None);
    // And a third try replays all of it without the client.
    let third = second.replay();
    drop(second);
    let (all, trailers) = futures_util::FutureExt::now_or_never(collect(third))
        .expect("all in memory")
        .expect("no error");
    assert_eq!(all, Bytes::from_static(b"abcdef"));
    assert_eq!(trailers, None);
}

#[tokio::test]
async fn trailers_are_replayed_after_the_data() {
    let (tx, source) = channel();
    let mut first = ReplayBody::new(source, 1024);
    tx.send(data("hello")).expect("send");
    tx.send(trailers("grpc-timeout", "1S")).expect("send");
    drop(tx);
    let retry = first.replay();
    let (sent, sent_trailers) = collect(&mut first).await.expect("first try");
    assert!(first.is_end_stream());
    drop(first);
    let (replayed, replayed_trailers) = collect(retry).await.expect("retry");
    assert_eq!(sent, replayed);
    assert_eq!(replayed, Bytes::from_static(b"hello"));
    assert_eq!(sent_trailers, replayed_trailers);
    let trailers = replayed_trailers.expect("trailers replayed");
    assert_eq!(trailers["grpc-timeout"], "1S");
}

#[test]
fn past_max_nothing_can_be_replayed_but_the_stream_goes_on() {
    let (tx, source) = channel();
    let mut first = ReplayBody::new(source, 4);
    tx.send(data("abc")).expect("send");
    assert_eq!(next_data(&mut first), bytes("abc"));
    tx.send(data("de")).expect("send");
    assert_eq!(
        next_data(&mut first),
        bytes("de"),
        "the frame over max still goes upstream"
    );
    tx.send(data("f")).expect("send");
    assert_eq!(next_data(&mut first), bytes("f"));
    drop(tx);
    assert_eq!(next_data(&mut first), None);
    assert!(first.is_end_stream());
    assert!(
        !first.can_replay(),
        "capped: a retry could not send it whole"
    );
}

#[test]
fn exactly_max_bytes_can_still_be_replayed() {
    let (tx, source) = channel();
    let mut first = ReplayBody::new(source, 4);
    tx.send(data("ab")).expect("send");
    tx.send(data("cd")).expect("send");
    drop(tx);
    assert_eq!(next_data(&mut first), bytes("ab"));
    assert_eq!(next_data(&mut first), bytes("cd"));
    assert_eq!(next_data(&mut first), None);
    assert!(first.can_replay());
}

#[test]
fn a_body_of_unknown_length_replays_only_once_it_has_ended() {
    let (tx, source) = channel();
    let mut first = ReplayBody::new(source, 1024);
    assert!(!first.can_replay(), "more may come than max");
    tx.send(data("ab")).expect("send");
    assert_eq!(next_data(&mut first), bytes("ab"));
    assert!(!first.can_replay());
    drop(tx);
    assert_eq!(next_data(&mut first), None);
    assert!(first.can_replay());
}

#[test]
fn a_body_declaring_a_length_within_max_is_bounded_and_replays_at_once() {
    let (_tx, source) = channel_sized(Some(8));
    let first = ReplayBody::new(source, 8);
    assert!(first.can_replay(), "it cannot grow past max");
    let (_tx, source) = channel_sized(Some(9));
    let over = ReplayBody::new(source, 8);
    assert!(
        !over.can_replay(),
        "a declared length over max is not bounded"
    );
    // An empty body is complete from the start.
    let empty = ReplayBody::new(Full::new(Bytes::new()), 0);
    assert!(empty.can_replay());
    assert!(empty.is_end_stream());
}

#[test]
fn a_retry_waits_while_the_last_try_holds_the_stream_and_wakes_when_it_lets_go() {
    let (tx, source) = channel();
    let mut first = ReplayBody::new(source, 1024);
    tx.send(data("ab")).expect("send");
    assert_eq!(next_data(&mut first), bytes("ab"));
    let mut second = first.replay();
    assert_eq!(next_data(&mut second), bytes("ab"));
    let flag = Flag::new();
    assert!(
        poll_frame(&mut second, &flag).is_pending(),
        "the stream is the first try's"
    );
    tx.send(data("cd")).expect("send");
    assert!(!flag.take(), "the first try has not read it yet");
    // The first try reads on: what it reads is kept, and the retry woken.
    assert_eq!(next_data(&mut first), bytes("cd"));
    assert!(flag.take());
    assert_eq!(next_data(&mut second), bytes("cd"));
    assert!(poll_frame(&mut second, &flag).is_pending());
    drop(first);
    assert!(flag.take(), "letting go of the stream wakes the retry");
    tx.send(data("ef")).expect("send");
    assert_eq!(next_data(&mut second), bytes("ef"));
}

#[test]
fn a_broken_client_stream_cannot_be_replayed() {
    let (tx, source) = channel_sized(Some(4));
    let mut first = ReplayBody::new(source, 1024);
    assert!(first.can_replay());
    tx.send(data("ab")).expect("send");
    tx.send(Err(Broken)).expect("send");
    assert_eq!(next_data(&mut first), bytes("ab"));
    match poll_frame(&mut first, &Flag::new()) {
        Poll::Ready(Some(Err(Broken))) => {}
        _ => panic!("the client's error goes upstream as it is"),
    }
    assert!(!first.can_replay());
}

#[tokio::test]
async fn any_body_type_can_be_the_source() {
    let frames = futures_util::stream::iter(vec![
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(b"x"))),
        Ok(http_body::Frame::data(Bytes::from_static(b"y"))),
    ]);
    let mut first = ReplayBody::new(StreamBody::new(frames), 16);
    let retry = first.replay();
    assert_eq!(
        collect(&mut first).await.expect("first").0,
        Bytes::from_static(b"xy")
    );
    drop(first);
    assert_eq!(
        collect(retry).await.expect("retry").0,
        Bytes::from_static(b"xy")
    );
}

#[test]
fn the_size_hint_is_the_client_streams_while_nothing_is_replayed() {
    let (_tx, source) = channel_sized(Some(6));
    let first = ReplayBody::new(source, 1024);
    assert_eq!(first.size_hint().exact(), Some(6));
}

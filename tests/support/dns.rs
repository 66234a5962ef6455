//! A minimal DNS server for tests on 127.0.0.1: A queries for any name
//! get the current answer (TTL 1 s), other types an empty answer; while
//! the answer is `None` it says nothing, as a server that went silent.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;

/// What the DNS server answers: an address, or silence.
pub type Answer = Arc<Mutex<Option<Ipv4Addr>>>;

/// Answer A queries for any name with the current address (TTL 1 s) and
/// other types with no records; say nothing while the answer is None.
pub async fn dns_server(answer: Answer) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
    let addr = socket.local_addr().expect("dns addr");
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let query = &buf[..n];
            let Some(ip) = *answer.lock().expect("answer") else {
                continue;
            };
            // Question: after the 12-byte header, labels up to a zero byte, then type and class.
            let mut end = 12;
            while end < n && query[end] != 0 {
                end += 1 + query[end] as usize;
            }
            let qend = end + 5;
            if qend > n {
                continue;
            }
            let qtype = u16::from_be_bytes([query[end + 1], query[end + 2]]);
            let mut reply = Vec::with_capacity(qend + 16);
            reply.extend_from_slice(&query[..2]); // id
            reply.extend_from_slice(&[0x81, 0x80]); // response, recursion desired+available
            reply.extend_from_slice(&[0, 1]); // one question
            reply.extend_from_slice(&[0, u8::from(qtype == 1)]); // answers
            reply.extend_from_slice(&[0, 0, 0, 0]);
            reply.extend_from_slice(&query[12..qend]);
            if qtype == 1 {
                reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
                reply.extend_from_slice(&ip.octets());
            }
            let _ = socket.send_to(&reply, peer).await;
        }
    });
    addr
}

//! The original destination of a connection that iptables REDIRECTed to
//! the proxy, via SO_ORIGINAL_DST (IPv4) or IP6T_SO_ORIGINAL_DST (IPv6).

use socket2::SockRef;
use std::net::SocketAddr;
use tokio::net::TcpStream;

/// Where the client meant to go, and whether iptables sent it here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrigDst {
    pub addr: SocketAddr,
    /// False when the client connected to the listener itself: then there
    /// is no other destination, and forwarding "to it" would loop.
    pub redirected: bool,
}

/// Look up the original destination of an accepted connection. Without
/// NAT (or without conntrack loaded) the kernel reports the local address
/// or an error; both mean "not redirected".
pub fn lookup(stream: &TcpStream) -> std::io::Result<OrigDst> {
    let local = stream.local_addr()?;
    let sock = SockRef::from(stream);
    let original = match local {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    };
    let addr = original
        .ok()
        .and_then(|a| a.as_socket())
        .map(unmap)
        .unwrap_or(local);
    Ok(OrigDst {
        addr,
        redirected: addr != unmap(local),
    })
}

/// IPv4-mapped IPv6 addresses compare as their IPv4 form.
fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

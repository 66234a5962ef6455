//! Every socket option strait sets, in one place: listener binding
//! (reuseaddr, backlog), accepted connections and upstream connects
//! (TCP_NODELAY, keepalive), and the connect timeout.

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Bind a listening socket: SO_REUSEADDR so a restarted proxy rebinds at
/// once, non-blocking for tokio, and the configured backlog.
pub fn bind_listener(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // `[::]` should mean IPv6 only; an operator wanting both binds both.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// Convert a bound std listener for use on the current tokio runtime.
pub fn into_tokio(listener: std::net::TcpListener) -> io::Result<TcpListener> {
    TcpListener::from_std(listener)
}

/// Options for every TCP connection the proxy holds, accepted or opened:
/// no Nagle delay (request/response traffic), keepalive to notice dead
/// peers behind NAT or conntrack timeouts.
pub fn configure_stream(stream: &TcpStream, keepalive: Duration) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let sock = SockRef::from(stream);
    let ka = TcpKeepalive::new()
        .with_time(keepalive)
        .with_interval(keepalive);
    sock.set_tcp_keepalive(&ka)
}

/// Why an upstream connect failed, kept apart because each maps to a
/// different status and message.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection refused by {0}")]
    Refused(SocketAddr),
    #[error("no answer from {addr} within {after:?}")]
    TimedOut { addr: SocketAddr, after: Duration },
    #[error("cannot connect to {addr}: {source}")]
    Other { addr: SocketAddr, source: io::Error },
}

/// Open a TCP connection to `addr` within `timeout`, configured like every
/// other proxy stream.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    keepalive: Duration,
) -> Result<TcpStream, ConnectError> {
    let attempt = async {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_nodelay(true)?;
        socket.connect(addr).await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Err(ConnectError::TimedOut {
            addr,
            after: timeout,
        }),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            Err(ConnectError::Refused(addr))
        }
        Ok(Err(source)) => Err(ConnectError::Other { addr, source }),
        Ok(Ok(stream)) => {
            // Keepalive is advisory; a failure to set it is not worth a failed request.
            let _ = configure_stream(&stream, keepalive);
            Ok(stream)
        }
    }
}

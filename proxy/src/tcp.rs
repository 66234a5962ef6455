//! Opaque TCP forwarding: connect to the target, replay the bytes read
//! during detection, then move bytes both ways with splice(2) through a
//! kernel pipe per direction, so payload never enters user space. A
//! half-close is passed on (EOF from one side shuts down writing to the
//! other), so protocols that signal "done" with a FIN work.

use crate::http::{Inputs, Target};
use crate::metrics::{TcpMetrics, TlsStatus};
use crate::socket;
use crate::tls::{self, MeshProtocol};
use bytes::Bytes;
use nix::fcntl::{splice, OFlag, SpliceFFlags};
use prometheus::IntCounter;
use socket2::SockRef;
use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, Interest};
use tokio::net::TcpStream;
use tracing::{debug, warn};

/// Pipe capacity asked for, and bytes moved per splice call: larger than
/// the 64 KiB default, fewer syscalls per GiB (see BENCHMARKS.md). The
/// kernel caps it at /proc/sys/fs/pipe-max-size; a smaller pipe still works.
const SPLICE_CHUNK: usize = 512 * 1024;

/// Forward `client` (whose first bytes are `prefix`) to `target`.
pub async fn forward(
    client: TcpStream,
    prefix: Bytes,
    client_metrics: &TcpMetrics,
    target: &Target,
    inputs: &Inputs,
    connect_timeout: Duration,
    keepalive: Duration,
) {
    let upstream = match socket::connect(target.addr, connect_timeout, keepalive).await {
        Ok(upstream) => upstream,
        Err(e) => {
            warn!(target_addr = %target.addr, error = %e, "opaque connection not forwarded: upstream connect failed");
            return;
        }
    };
    let upstream_metrics = inputs.metrics.tcp_connection(
        inputs.direction,
        "dst",
        target.addr,
        &TlsStatus::NoIdentity("not_meshed"),
    );
    if let Err(e) = write_all(&upstream, &prefix).await {
        debug!(target_addr = %target.addr, error = %e, "upstream closed before the first bytes");
        return;
    }
    upstream_metrics.write_bytes.inc_by(prefix.len() as u64);
    let sent = splice_one_way(
        &client,
        &upstream,
        &client_metrics.read_bytes,
        &upstream_metrics.write_bytes,
    );
    let received = splice_one_way(
        &upstream,
        &client,
        &upstream_metrics.read_bytes,
        &client_metrics.write_bytes,
    );
    match tokio::try_join!(sent, received) {
        Ok((sent, received)) => {
            debug!(target_addr = %target.addr, sent = sent + prefix.len() as u64, received, "opaque connection closed")
        }
        Err(e) => {
            debug!(target_addr = %target.addr, error = %e, "opaque connection ended with an error")
        }
    }
}

/// Forward an already wrapped (and counted) client stream by copying:
/// used where TLS is on either side, so splice cannot see the bytes. A
/// meshed target is reached over mTLS with the opaque ALPN.
pub async fn forward_copied<C>(
    mut client: C,
    target: &Target,
    inputs: &Inputs,
    connect_timeout: Duration,
    keepalive: Duration,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let upstream = match socket::connect(target.addr, connect_timeout, keepalive).await {
        Ok(upstream) => upstream,
        Err(e) => {
            warn!(target_addr = %target.addr, error = %e, "opaque connection not forwarded: upstream connect failed");
            return;
        }
    };
    let result = match (target.mesh_identity(), inputs.tls.as_ref()) {
        (Some(identity), Some(identity_tls)) => {
            let stream = match tls::connect(
                identity_tls,
                identity,
                MeshProtocol::Opaque,
                target.addr,
                upstream,
            )
            .await
            {
                Ok(stream) => stream,
                Err(reason) => {
                    warn!(target_addr = %target.addr, %reason, "opaque connection not forwarded: mTLS to the upstream failed");
                    return;
                }
            };
            let status = TlsStatus::Mesh {
                client_id: None,
                server_id: Some(identity.clone()),
            };
            let metrics =
                inputs
                    .metrics
                    .tcp_connection(inputs.direction, "dst", target.addr, &status);
            let mut upstream = metrics.counted(stream, Bytes::new());
            tokio::io::copy_bidirectional(&mut client, &mut upstream).await
        }
        (Some(identity), None) => {
            warn!(target_addr = %target.addr, %identity, "opaque connection not forwarded: the cluster is meshed but this proxy has no identity");
            return;
        }
        (None, _) => {
            let status = TlsStatus::NoIdentity("not_meshed");
            let metrics =
                inputs
                    .metrics
                    .tcp_connection(inputs.direction, "dst", target.addr, &status);
            let mut upstream = metrics.counted(upstream, Bytes::new());
            tokio::io::copy_bidirectional(&mut client, &mut upstream).await
        }
    };
    match result {
        Ok((sent, received)) => {
            debug!(target_addr = %target.addr, sent, received, "opaque connection closed")
        }
        Err(e) => {
            debug!(target_addr = %target.addr, error = %e, "opaque connection ended with an error")
        }
    }
}

async fn write_all(to: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        to.writable().await?;
        match to.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Move bytes from `from` to `to` until `from` reaches EOF, then shut
/// down writing on `to`. Returns the bytes moved.
async fn splice_one_way(
    from: &TcpStream,
    to: &TcpStream,
    read_bytes: &IntCounter,
    write_bytes: &IntCounter,
) -> io::Result<u64> {
    let (pipe_out, pipe_in) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    let _ = nix::fcntl::fcntl(
        &pipe_in,
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(SPLICE_CHUNK as i32),
    );
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        let n = splice_when_ready(from, Interest::READABLE, || {
            splice(from, None, &pipe_in, None, SPLICE_CHUNK, flags)
        })
        .await?;
        if n == 0 {
            // EOF: pass the half-close on; the other direction carries on.
            let _ = SockRef::from(to).shutdown(Shutdown::Write);
            return Ok(total);
        }
        read_bytes.inc_by(n as u64);
        let mut left = n;
        while left > 0 {
            let m = drain_pipe(&pipe_out, to, left, flags).await?;
            left -= m;
            write_bytes.inc_by(m as u64);
        }
        total += n as u64;
    }
}

async fn drain_pipe(
    pipe: &OwnedFd,
    to: &TcpStream,
    len: usize,
    flags: SpliceFFlags,
) -> io::Result<usize> {
    let m = splice_when_ready(to, Interest::WRITABLE, || {
        splice(pipe, None, to, None, len, flags)
    })
    .await?;
    if m == 0 {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "peer stopped taking bytes",
        ));
    }
    Ok(m)
}

/// Run a splice once `stream` is ready for `interest`, retrying after
/// EAGAIN (which clears the readiness tokio tracks).
async fn splice_when_ready(
    stream: &TcpStream,
    interest: Interest,
    mut op: impl FnMut() -> nix::Result<usize>,
) -> io::Result<usize> {
    loop {
        stream.ready(interest).await?;
        match stream.try_io(interest, || op().map_err(io::Error::from)) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

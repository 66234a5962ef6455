//! `strait await` (as linkerd-await): wait until the proxy's admin `/ready`
//! answers 200, run a command, and with `--shutdown` ask the proxy to shut
//! down when it exits, so a Job's pod completes. Plain blocking HTTP/1.0
//! on std sockets: this runs before and after the app, never beside
//! traffic.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

/// How long one admin request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// How often `/ready` is asked while the proxy is not ready.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Why `strait await` could not run the command.
#[derive(Debug, thiserror::Error)]
pub enum AwaitError {
    #[error("the proxy at {admin} was not ready within {timeout} (last: {last})")]
    NotReady {
        admin: SocketAddr,
        timeout: humantime::FormattedDuration,
        last: String,
    },
    #[error("cannot run {command}: {error}")]
    Spawn {
        command: String,
        error: std::io::Error,
    },
}

/// Where to reach an admin server listening on `addr`: an unspecified IP
/// (0.0.0.0, ::) is reached on loopback.
pub fn dial_addr(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let loopback = match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        };
        SocketAddr::new(loopback, addr.port())
    } else {
        addr
    }
}

/// One request to the admin server: its status code, or why none came.
fn request(admin: SocketAddr, method: &str, path: &str) -> Result<u16, String> {
    let mut stream =
        TcpStream::connect_timeout(&admin, REQUEST_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
        .map_err(|e| format!("socket: {e}"))?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {admin}\r\nContent-Length: 0\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    // The status line fits in the first read's worth; the body is ignored.
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < head.len() {
        match stream.read(&mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) => return Err(format!("read: {e}")),
        }
        if head[..len].contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head[..len]);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP response: {:?}",
                line.lines().next().unwrap_or("")
            )
        })
}

/// Poll `/ready` until it answers 200 or `timeout` passes.
pub fn wait_ready(admin: SocketAddr, timeout: Duration) -> Result<(), AwaitError> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match request(admin, "GET", "/ready") {
            Ok(200) => return Ok(()),
            Ok(status) => format!("/ready answered {status}"),
            Err(e) => e,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(AwaitError::NotReady {
                admin,
                timeout: humantime::format_duration(timeout),
                last,
            });
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

/// Pass SIGTERM, SIGINT and SIGHUP on to `pid` from now on, so stopping
/// the pod stops the command and `--shutdown` still follows. A thread of
/// its own: the rest of `await` is blocking code.
fn forward_signals(pid: u32) {
    use nix::sys::signal::{kill, Signal};
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(pid) = i32::try_from(pid).map(nix::unistd::Pid::from_raw) else {
        return;
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("strait await: cannot forward signals to the command");
        return;
    };
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
                signal(SignalKind::hangup()),
            ) else {
                eprintln!("strait await: cannot forward signals to the command");
                return;
            };
            loop {
                let received = tokio::select! {
                    _ = term.recv() => Signal::SIGTERM,
                    _ = int.recv() => Signal::SIGINT,
                    _ = hup.recv() => Signal::SIGHUP,
                };
                let _ = kill(pid, received);
            }
        });
    });
}

/// Run `command` (program and arguments) to completion, forwarding the
/// signals that stop a container to it.
pub fn run(command: &[String]) -> Result<ExitStatus, AwaitError> {
    let (program, args) = command.split_first().ok_or_else(|| AwaitError::Spawn {
        command: String::new(),
        error: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command given"),
    })?;
    let spawn_error = |error| AwaitError::Spawn {
        command: program.clone(),
        error,
    };
    let mut child = Command::new(program)
        .args(args)
        .spawn()
        .map_err(spawn_error)?;
    forward_signals(child.id());
    child.wait().map_err(spawn_error)
}

/// Replace this process with `command`; returns only when it cannot.
pub fn exec(command: &[String]) -> AwaitError {
    use std::os::unix::process::CommandExt;
    let Some((program, args)) = command.split_first() else {
        return AwaitError::Spawn {
            command: String::new(),
            error: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command given"),
        };
    };
    let error = Command::new(program).args(args).exec();
    AwaitError::Spawn {
        command: program.clone(),
        error,
    }
}

/// Ask the proxy to shut down; Err says why it did not take the request.
pub fn shutdown(admin: SocketAddr) -> Result<(), String> {
    match request(admin, "POST", "/shutdown")? {
        200 => Ok(()),
        status => Err(format!("/shutdown answered {status}")),
    }
}

/// The exit code that reports `status`: the command's own, or 128 + the
/// signal that killed it, as shells report it.
pub fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => (128 + signal) as u8,
        (None, None) => 1,
    }
}

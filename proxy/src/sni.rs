//! The server name (SNI) an outbound TLS client asks for, so its
//! connection can be routed by it while the TLS itself passes through
//! untouched (strait does not terminate the application's TLS). rustls'
//! `Acceptor` parses the ClientHello from a copy of the bytes read; more
//! are read, bounded in size and time, while it is incomplete. Every byte
//! read is handed back for replay to the chosen upstream.

use bytes::{Bytes, BytesMut};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tracing::debug;

/// Most bytes read for one ClientHello. Real ones are a few KiB (a
/// post-quantum key share adds ~1.2 KiB); past this the connection is
/// routed as if it named no server.
pub const MAX_CLIENT_HELLO_BYTES: usize = 32 * 1024;

/// What reading the ClientHello gave.
#[derive(Debug)]
pub struct ClientHello {
    /// Every byte read from the client so far, to replay upstream.
    pub bytes: Bytes,
    /// The server name asked for, lowercase; `None` when the client sent
    /// none, or the hello did not parse or complete in time.
    pub server_name: Option<String>,
}

/// Read `stream` (whose first bytes, already read, are `prefix`) until
/// its ClientHello is complete, for at most `timeout`. `None` when the
/// client closes (or fails) first: there is nothing to forward.
pub async fn read(stream: &mut TcpStream, prefix: Bytes, timeout: Duration) -> Option<ClientHello> {
    let mut buf = BytesMut::from(&prefix[..]);
    let mut acceptor = rustls::server::Acceptor::default();
    let mut fed = 0;
    let deadline = tokio::time::Instant::now() + timeout;
    let server_name = loop {
        match parse(&mut acceptor, &buf[fed..]) {
            Parsed::Done(name) => break name,
            Parsed::NeedMore => fed = buf.len(),
        }
        if buf.len() >= MAX_CLIENT_HELLO_BYTES {
            debug!(
                bytes = buf.len(),
                "TLS ClientHello too long to read its server name"
            );
            break None;
        }
        buf.reserve(4096);
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(_)) => {}
            Err(_elapsed) => {
                debug!("client did not complete its TLS ClientHello in time");
                break None;
            }
        }
    };
    Some(ClientHello {
        bytes: buf.freeze(),
        server_name,
    })
}

enum Parsed {
    /// The hello is complete (or is not one): its server name, if any.
    Done(Option<String>),
    NeedMore,
}

/// Feed `new` bytes to `acceptor` and see whether the hello is whole.
fn parse(acceptor: &mut rustls::server::Acceptor, mut new: &[u8]) -> Parsed {
    loop {
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let name = accepted
                    .client_hello()
                    .server_name()
                    .map(str::to_ascii_lowercase);
                return Parsed::Done(name);
            }
            Ok(None) => {}
            Err(_) => return Parsed::Done(None),
        }
        if new.is_empty() {
            return Parsed::NeedMore;
        }
        match acceptor.read_tls(&mut new) {
            Ok(0) | Err(_) => return Parsed::Done(None),
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A real ClientHello from rustls' client for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(name.to_string()).expect("name");
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        let mut hello = Vec::new();
        client.write_tls(&mut hello).expect("hello");
        hello
    }

    fn name_of(bytes: &[u8], chunk: usize) -> Option<Option<String>> {
        let mut acceptor = rustls::server::Acceptor::default();
        for piece in bytes.chunks(chunk) {
            if let Parsed::Done(name) = parse(&mut acceptor, piece) {
                return Some(name);
            }
        }
        None
    }

    #[test]
    fn reads_the_server_name_whole_or_in_pieces() {
        let hello = client_hello("API.example.com");
        for chunk in [hello.len(), 100, 7, 1] {
            assert_eq!(
                name_of(&hello, chunk),
                Some(Some("api.example.com".into())),
                "fed {chunk} bytes at a time"
            );
        }
        // Incomplete: more is needed.
        assert!(name_of(&hello[..hello.len() - 1], 4096).is_none());
    }

    #[test]
    fn a_hello_without_a_name_or_not_a_hello_has_none() {
        // An IP address is never sent as SNI.
        assert_eq!(name_of(&client_hello("127.0.0.1"), 4096), Some(None));
        let garbage = [0x16, 3, 1, 0, 4, 0xff, 0, 0, 0];
        assert_eq!(name_of(&garbage, 4096), Some(None));
    }

    #[tokio::test]
    async fn reads_more_bytes_until_the_hello_is_whole() {
        let hello = client_hello("db.example.com");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let sent = hello.clone();
        let client = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut s = TcpStream::connect(addr).await.expect("connect");
            for piece in sent.chunks(50) {
                s.write_all(piece).await.expect("write");
                s.flush().await.expect("flush");
            }
            s
        });
        let (mut server, _) = listener.accept().await.expect("accept");
        let mut first = vec![0u8; 5];
        server.read_exact(&mut first).await.expect("first bytes");
        let read = read(&mut server, Bytes::from(first), Duration::from_secs(10))
            .await
            .expect("hello");
        assert_eq!(read.server_name.as_deref(), Some("db.example.com"));
        assert_eq!(&read.bytes[..], &hello[..], "every byte is kept for replay");
        drop(client.await);
    }
}

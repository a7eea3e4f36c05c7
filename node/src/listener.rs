//! The gRPC listeners' accept loop, with admission and TLS handshakes. Admission: at most `per_client` connections open
//! at once from one IP address. A connection past the bound is closed as soon as it is
//! accepted (the client sees the connection reset) and counted, so that one client
//! opening connections without end cannot exhaust the node's file descriptors or memory
//! for everyone else. (In-flight requests are bounded per connection by the server: see
//! `server::grpc_server`.)

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use dynamo_core::identity::Identity;

use futures::Stream;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::Connected;

/// Counts the open connections of each client address against a bound.
#[derive(Debug)]
pub struct Admission {
    per_client: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection: its slot is given back when this is dropped.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    /// At most `per_client` connections open at once from one address (at least one).
    pub fn new(per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            per_client: per_client.max(1),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more connection from `ip`, or `None` when it has its bound open.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Ticket> {
        let mut open = self.open.lock();
        let count = open.entry(ip).or_insert(0);
        if *count >= self.per_client {
            return None;
        }
        *count += 1;
        Some(Ticket {
            admission: self.clone(),
            ip,
        })
    }

    /// Connections open from `ip` now.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.open.lock().get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut open = self.admission.open.lock();
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// What the server knows of a connection: handed to every request on it (tonic puts it
/// in the request's extensions), where authorization reads it.
#[derive(Clone, Debug, Default)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// The identity the client's certificate names, verified in the TLS handshake.
    pub identity: Option<Identity>,
    /// Whether the connection is TLS.
    pub tls: bool,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An admitted connection, past its TLS handshake when the port has TLS; it holds its
/// [`Ticket`] until it is closed.
pub struct Admitted {
    io: Io,
    info: ConnInfo,
    _ticket: Ticket,
}

impl Connected for Admitted {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// TLS on a port: the configuration for each new connection (it may be replaced at any
/// time: see `crate::tls`), how long a handshake may take, and what to do with a
/// refused one.
#[derive(Clone)]
pub struct TlsAccept {
    pub config: Arc<dyn Fn() -> Arc<rustls::ServerConfig> + Send + Sync>,
    pub timeout: Duration,
    pub refused: Arc<HandshakeRefused>,
}

/// Told of each refused handshake: the client's address and why.
pub type HandshakeRefused = dyn Fn(SocketAddr, &str) + Send + Sync;

/// The connections `listener` accepts, with TCP_NODELAY, past `admission`, and past a
/// TLS handshake when `tls` is given (each handshake runs on its own task, so that a
/// slow client delays nobody else); `refused` is called for each connection closed at
/// once for being over its client's bound. An accept error (out of file descriptors, a
/// connection reset before it was accepted) is logged and the loop goes on after a
/// pause, as a server must. The accepting task ends when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    admission: Arc<Admission>,
    refused: impl Fn(IpAddr) + Send + 'static,
    tls: Option<TlsAccept>,
) -> impl Stream<Item = Result<Admitted, io::Error>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (io, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let Some(ticket) = admission.admit(peer.ip()) else {
                refused(peer.ip());
                drop(io);
                continue;
            };
            let _ = io.set_nodelay(true);
            let info = ConnInfo {
                remote: Some(peer),
                identity: None,
                tls: false,
            };
            match &tls {
                None => {
                    let admitted = Admitted {
                        io: Io::Plain(io),
                        info,
                        _ticket: ticket,
                    };
                    if tx.send(Ok(admitted)).await.is_err() {
                        return;
                    }
                }
                Some(tls) => {
                    let (tls, tx) = (tls.clone(), tx.clone());
                    tokio::spawn(async move {
                        match handshake(io, peer, &tls).await {
                            Ok((io, identity)) => {
                                let admitted = Admitted {
                                    io: Io::Tls(Box::new(io)),
                                    info: ConnInfo {
                                        identity,
                                        tls: true,
                                        ..info
                                    },
                                    _ticket: ticket,
                                };
                                let _ = tx.send(Ok(admitted)).await;
                            }
                            Err(why) => (tls.refused)(peer, &why),
                        }
                    });
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The server side of a TLS handshake, with the identity the client's certificate
/// names (already checked against the cluster by the verifier).
async fn handshake(
    io: TcpStream,
    peer: SocketAddr,
    tls: &TlsAccept,
) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, Option<Identity>), String> {
    let acceptor = tokio_rustls::TlsAcceptor::from((tls.config)());
    let stream = match tokio::time::timeout(tls.timeout, acceptor.accept(io)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(format!("TLS handshake from {peer} failed: {e}")),
        Err(_) => {
            return Err(format!(
                "TLS handshake from {peer} took longer than {:?}",
                tls.timeout
            ))
        }
    };
    let identity = match stream.get_ref().1.peer_certificates() {
        Some([leaf, ..]) => dynamo_proto::verify::identity_of(leaf)?,
        _ => None,
    };
    Ok((stream, identity))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;
    use tokio::io::AsyncReadExt as _;

    #[test]
    fn each_address_has_its_own_bound_and_a_closed_connection_frees_its_slot() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let admission = Admission::new(2);
        let first = admission.admit(a).expect("first");
        let _second = admission.admit(a).expect("second");
        assert!(admission.admit(a).is_none(), "a third from one address");
        let _other = admission
            .admit(b)
            .expect("another address has its own bound");
        drop(first);
        assert_eq!(admission.open_from(a), 1);
        let _again = admission.admit(a).expect("a slot was freed");
        assert!(admission.admit(a).is_none());
    }

    #[tokio::test]
    async fn a_connection_over_the_bound_is_closed_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let refusals = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = refusals.clone();
        let admission = Admission::new(2);
        let mut accepted = Box::pin(incoming(
            listener,
            admission.clone(),
            move |_| {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            },
            None,
        ));
        let _c1 = TcpStream::connect(addr).await.unwrap();
        let _c2 = TcpStream::connect(addr).await.unwrap();
        let s1 = accepted.next().await.unwrap().unwrap();
        let _s2 = accepted.next().await.unwrap().unwrap();
        let mut c3 = TcpStream::connect(addr).await.unwrap();
        // The third is accepted and closed by the loop while it waits for a fourth.
        let next = tokio::spawn(async move { accepted.next().await.map(|r| r.unwrap()) });
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), c3.read(&mut buf))
            .await
            .expect("the refused connection is closed, not left open");
        assert!(matches!(read, Ok(0) | Err(_)), "closed: {read:?}");
        assert_eq!(refusals.load(std::sync::atomic::Ordering::Relaxed), 1);
        // Closing an admitted connection frees its slot for the next one.
        drop(s1);
        let _c4 = TcpStream::connect(addr).await.unwrap();
        let _s4 = tokio::time::timeout(std::time::Duration::from_secs(5), next)
            .await
            .expect("a freed slot admits the next connection")
            .unwrap()
            .expect("admitted");
        assert_eq!(admission.open_from("127.0.0.1".parse().unwrap()), 2);
    }
}

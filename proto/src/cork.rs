//! Outgoing HTTP/2 connections with coalesced writes, for nodes and clients alike.
//!
//! hyper's HTTP/2 client writes a request's HEADERS frame as soon as the request is queued,
//! and its DATA frame only after the body has been granted send capacity by the
//! connection task: two `writev` calls, two TCP segments and two wake-ups of the receiver
//! for every small request (the same effect as hyperium/h2#711). [`Corked`] buffers what
//! the connection writes and, when asked to flush, first lets the other ready tasks run
//! once, so that the body's DATA joins the HEADERS; then it writes everything in one call.
//!
//! The cost is one trip through the scheduler per flush, a few microseconds.
//!
//! Use [`connector`] with `tonic::transport::Endpoint::connect_with_connector_lazy`; with
//! a [`ClientTls`], the connection is TLS under the cork, so that a flush is one TLS
//! record too.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::codegen::http::Uri;

use crate::tls::ClientTls;

/// A connector for tonic endpoints: TCP to the URI's host and port, with TCP_NODELAY (a
/// small request never waits out a delayed ACK), TLS when `tls` is given (the server
/// verified by the host name or IP address dialled), and corked writes.
pub fn connector(
    tls: Option<ClientTls>,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<Corked<Conn>>,
    Error = io::Error,
    Future = impl Future<Output = io::Result<TokioIo<Corked<Conn>>>> + Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |uri: Uri| {
        let tls = tls.clone();
        async move {
            let host = uri.host().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}"))
            })?;
            let port = uri.port_u16().unwrap_or(80);
            // A bracketed IPv6 literal connects without its brackets.
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let stream = TcpStream::connect((host, port)).await?;
            stream.set_nodelay(true)?;
            let conn = match tls {
                None => Conn::Plain(stream),
                Some(tls) => {
                    let name = ServerName::try_from(host.to_owned()).map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("{host} is not a name TLS can verify: {e}"),
                        )
                    })?;
                    let connector = tokio_rustls::TlsConnector::from(tls.config());
                    let stream = connector.connect(name, stream).await.map_err(|e| {
                        io::Error::new(e.kind(), format!("TLS handshake with {host}:{port}: {e}"))
                    })?;
                    Conn::Tls(Box::new(stream))
                }
            };
            Ok(TokioIo::new(Corked::new(conn)))
        }
    })
}

/// An outgoing connection, plain or TLS.
#[derive(Debug)]
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Conn {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, data),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Above this many buffered bytes a write first drains the buffer.
const MAX_BUFFER: usize = 256 << 10;

/// An I/O stream whose writes are buffered until a flush, and whose flushes wait one
/// scheduling round for more writes. Reads pass straight through.
#[derive(Debug)]
pub struct Corked<T> {
    inner: T,
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already written to `inner`.
    written: usize,
    /// Whether the flush in progress has already let other tasks run.
    yielded: bool,
}

impl<T> Corked<T> {
    /// Corks the writes of `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            written: 0,
            yielded: false,
        }
    }
}

impl<T: AsyncWrite + Unpin> Corked<T> {
    /// Writes the whole buffer to `inner`.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Corked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.buf.len() >= MAX_BUFFER {
            ready!(this.poll_drain(cx))?;
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.buf.len() >= MAX_BUFFER {
            ready!(this.poll_drain(cx))?;
        }
        let mut n = 0;
        for b in bufs {
            this.buf.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.written < this.buf.len() {
            if !this.yielded {
                // Let the tasks that are ready (a request body) add their frames first.
                this.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            ready!(this.poll_drain(cx))?;
        }
        this.yielded = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Corked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop_waker_ref() -> &'static std::task::Waker {
        std::task::Waker::noop()
    }

    /// Records each write it gets; accepts at most `chunk` bytes per write.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        chunk: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = data.len().min(self.chunk.max(1));
            self.get_mut().writes.push(data[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn recorder(chunk: usize) -> Corked<Recorder> {
        Corked::new(Recorder {
            chunk,
            ..Recorder::default()
        })
    }

    fn write(c: &mut Corked<Recorder>, data: &[u8]) {
        let mut cx = Context::from_waker(noop_waker_ref());
        let r = Pin::new(c).poll_write(&mut cx, data);
        assert!(matches!(r, Poll::Ready(Ok(n)) if n == data.len()));
    }

    fn flush(c: &mut Corked<Recorder>) -> Poll<io::Result<()>> {
        let mut cx = Context::from_waker(noop_waker_ref());
        Pin::new(c).poll_flush(&mut cx)
    }

    #[test]
    fn writes_before_and_during_a_flush_go_out_in_one_write() {
        let mut c = recorder(usize::MAX);
        write(&mut c, b"HEADERS");
        assert!(
            flush(&mut c).is_pending(),
            "the first flush lets others run"
        );
        assert!(c.inner.writes.is_empty());
        write(&mut c, b"DATA");
        assert!(matches!(flush(&mut c), Poll::Ready(Ok(()))));
        assert_eq!(c.inner.writes, [b"HEADERSDATA".to_vec()]);
        assert_eq!(c.inner.flushes, 1);

        // The next flush waits its turn again.
        write(&mut c, b"more");
        assert!(flush(&mut c).is_pending());
        assert!(matches!(flush(&mut c), Poll::Ready(Ok(()))));
        assert_eq!(c.inner.writes.len(), 2);
    }

    #[test]
    fn a_flush_with_nothing_buffered_passes_straight_through() {
        let mut c = recorder(usize::MAX);
        assert!(matches!(flush(&mut c), Poll::Ready(Ok(()))));
        assert_eq!(c.inner.flushes, 1);
        assert!(c.inner.writes.is_empty());
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut c = recorder(3);
        write(&mut c, b"abcdefgh");
        assert!(flush(&mut c).is_pending());
        assert!(matches!(flush(&mut c), Poll::Ready(Ok(()))));
        assert_eq!(c.inner.writes.concat(), b"abcdefgh");
        assert_eq!(c.inner.writes.len(), 3);
    }

    #[test]
    fn a_full_buffer_drains_before_taking_more() {
        let mut c = recorder(usize::MAX);
        let big = vec![7u8; MAX_BUFFER];
        write(&mut c, &big);
        assert!(c.inner.writes.is_empty());
        write(&mut c, b"x");
        assert_eq!(c.inner.writes.len(), 1, "the full buffer went out first");
        assert_eq!(c.buf, b"x");
    }

    #[tokio::test]
    async fn the_connector_reaches_a_listener_with_nodelay() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tower::ServiceExt;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let uri: Uri = format!("http://{addr}").parse().unwrap();
        let io = connector(None).oneshot(uri).await.unwrap();
        let mut stream = io.into_inner();
        assert!(stream.inner.tcp().nodelay().unwrap());
        stream.write_all(b"ping").await.unwrap();
        stream.flush().await.unwrap();
        let (mut accepted, _) = listener.accept().await.unwrap();
        let mut got = [0u8; 4];
        accepted.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");

        let no_host: Uri = "/just/a/path".parse().unwrap();
        let err = connector(None).oneshot(no_host).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn shutdown_sends_what_is_buffered() {
        let mut c = recorder(usize::MAX);
        write(&mut c, b"bye");
        let mut cx = Context::from_waker(noop_waker_ref());
        assert!(matches!(
            Pin::new(&mut c).poll_shutdown(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(c.inner.writes, [b"bye".to_vec()]);
    }
}

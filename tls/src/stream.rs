//! TLS streams as every Shoal connection has them: accepted or connected
//! over a read buffer, with room for more unsent ciphertext than rustls'
//! default. rustls asks its transport for at most 4 KiB, or the rest of one
//! record (16 KiB), per read; on a busy stream that is one system call,
//! and one acknowledgement from the kernel, per record. [`ReadAhead`] asks
//! the socket for up to [`READ_AHEAD_BYTES`] at once and hands it out in
//! the pieces asked for, once a read found more waiting than was asked for
//! (a connection of small requests and answers reads straight into rustls).
//! Its buffer exists only while it holds bytes, so an idle connection keeps
//! no memory for it.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

/// Bytes asked of the socket at once.
const READ_AHEAD_BYTES: usize = 64 * 1024;

/// Ciphertext a connection may hold unsent (rustls'
/// `set_buffer_limit`; its default is 64 KiB). A writer hands rustls
/// up to this much per call, and each call ends in one system call, so a
/// WebSocket flushing its 128 KiB write buffer sends it in one.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// Accept a TLS connection on `io` (the handshake included).
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    acceptor: &TlsAcceptor,
    io: S,
) -> io::Result<server::TlsStream<ReadAhead<S>>> {
    let mut stream = acceptor.accept(ReadAhead::new(io)).await?;
    stream
        .get_mut()
        .1
        .set_buffer_limit(Some(WRITE_BUFFER_BYTES));
    Ok(stream)
}

/// Open a TLS connection to `name` on `io` (the handshake included).
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    connector: &TlsConnector,
    name: ServerName<'static>,
    io: S,
) -> io::Result<client::TlsStream<ReadAhead<S>>> {
    let mut stream = connector.connect(name, ReadAhead::new(io)).await?;
    stream
        .get_mut()
        .1
        .set_buffer_limit(Some(WRITE_BUFFER_BYTES));
    Ok(stream)
}

/// A stream whose small reads are served from one larger read; writes pass
/// through.
pub struct ReadAhead<S> {
    inner: S,
    buffered: BytesMut,
    /// Whether the last read from the socket found more than was asked
    /// for. Until one does (a connection of small requests and answers),
    /// reads go straight to the caller, without a buffer or a copy.
    ahead: bool,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> Self {
        ReadAhead {
            inner,
            buffered: BytesMut::new(),
            ahead: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let asked = out.remaining();
        if this.buffered.is_empty() {
            if !this.ahead || asked >= READ_AHEAD_BYTES {
                let before = out.filled().len();
                ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
                // A read that took all it was asked for may have left more.
                this.ahead = out.filled().len() - before == asked && asked < READ_AHEAD_BYTES;
                return Poll::Ready(Ok(()));
            }
            this.buffered.reserve(READ_AHEAD_BYTES);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.buffered) {
                Poll::Ready(Ok(read)) => this.ahead = read > asked,
                Poll::Ready(Err(e)) => {
                    this.buffered = BytesMut::new();
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {
                    this.buffered = BytesMut::new();
                    return Poll::Pending;
                }
            }
        }
        // Nothing buffered after a read is the end of the stream: an empty
        // read tells the caller so.
        let n = this.buffered.len().min(asked);
        out.put_slice(&this.buffered[..n]);
        this.buffered.advance(n);
        if this.buffered.is_empty() {
            this.buffered = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_get_every_byte_in_order_and_the_end() {
        let (mut writer, reader) = tokio::io::duplex(1 << 20);
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        // All of it waits in the pipe before the first read, as on a busy
        // socket.
        for piece in sent.chunks(7_919) {
            writer.write_all(piece).await.expect("write");
        }
        writer.shutdown().await.expect("shutdown");
        let mut reader = ReadAhead::new(reader);
        let mut received = Vec::new();
        let mut most_buffered = 0;
        let mut piece = [0u8; 4096];
        loop {
            let n = reader.read(&mut piece).await.expect("read");
            if n == 0 {
                break;
            }
            received.extend_from_slice(&piece[..n]);
            most_buffered = most_buffered.max(reader.buffered.len());
        }
        assert!(
            most_buffered > piece.len(),
            "a busy stream never read ahead"
        );
        assert_eq!(received.len(), sent.len());
        assert!(received == sent, "the bytes came out changed or reordered");
    }

    #[tokio::test]
    async fn an_idle_stream_holds_no_buffer_and_a_large_read_bypasses_it() {
        let (mut writer, reader) = tokio::io::duplex(1 << 20);
        let mut reader = ReadAhead::new(reader);
        let mut piece = [0u8; 16];
        let idle = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            reader.read(&mut piece),
        )
        .await;
        assert!(idle.is_err(), "a read with nothing sent returned");
        assert_eq!(
            reader.buffered.capacity(),
            0,
            "an idle stream kept its buffer"
        );

        writer.write_all(&[9u8; 100]).await.expect("write");
        let mut large = vec![0u8; READ_AHEAD_BYTES];
        let n = reader.read(&mut large).await.expect("read");
        assert_eq!(n, 100);
        assert_eq!(
            reader.buffered.capacity(),
            0,
            "a large read went through the buffer"
        );

        writer.write_all(&[1, 2, 3, 4, 5]).await.expect("write");
        let n = reader.read(&mut piece[..2]).await.expect("read");
        assert_eq!(&piece[..n], &[1, 2]);
        let n = reader.read(&mut piece).await.expect("read");
        assert_eq!(&piece[..n], &[3, 4, 5]);
        assert_eq!(reader.buffered.capacity(), 0, "a drained buffer was kept");
    }
}

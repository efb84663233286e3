//! One echo round trip, and how a try can fail.
//!
//! Writing and reading run at the same time: an echo server sends back while it
//! reads, so a payload larger than the socket buffers would deadlock a client that
//! wrote everything before reading anything.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::net::describe;
use crate::payload::first_difference;

/// The kinds of failure the commands count separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// Nothing listens there (connect got RST).
    Refused,
    /// The connection was reset or the peer vanished mid-exchange.
    Reset,
    /// No answer within the time limit.
    Timeout,
    /// The connection closed before the whole echo came back.
    ShortRead,
    /// The echo came back different from what was sent.
    Mismatch,
    /// Anything else (no route, no free local port, ...).
    Other,
}

impl Failure {
    pub const ALL: [Failure; 6] = [
        Failure::Refused,
        Failure::Reset,
        Failure::Timeout,
        Failure::ShortRead,
        Failure::Mismatch,
        Failure::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::Reset => "reset",
            Failure::Timeout => "timeout",
            Failure::ShortRead => "short read",
            Failure::Mismatch => "mismatch",
            Failure::Other => "other",
        }
    }

    fn of(e: &io::Error) -> Failure {
        use io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused => Failure::Refused,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => Failure::Reset,
            K::TimedOut => Failure::Timeout,
            K::UnexpectedEof => Failure::ShortRead,
            _ => Failure::Other,
        }
    }
}

/// A failed try: its kind, and a message that says what failed and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TryError {
    pub kind: Failure,
    pub message: String,
}

impl TryError {
    pub fn new(kind: Failure, message: String) -> TryError {
        TryError { kind, message }
    }

    /// "connect 127.0.0.1:5001: connection refused".
    pub fn io(op: &str, peer: SocketAddr, e: &io::Error) -> TryError {
        TryError::new(Failure::of(e), format!("{op} {peer}: {}", describe(e)))
    }
}

impl fmt::Display for TryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TryError {}

/// Writes `sent` and reads the same number of bytes back into `buf` at the same
/// time, then checks them byte for byte.
pub async fn round_trip<R, W>(
    reader: &mut R,
    writer: &mut W,
    sent: &[u8],
    buf: &mut [u8],
    peer: SocketAddr,
) -> Result<(), TryError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let buf = &mut buf[..sent.len()];
    let write = async {
        writer
            .write_all(sent)
            .await
            .map_err(|e| TryError::io("write to", peer, &e))
    };
    let (wrote, read) = tokio::join!(write, read_full(reader, buf, peer));
    // What the read saw explains more (mismatch, short read) than a write error
    // that usually follows from the same cause.
    read?;
    wrote?;
    check_echo(sent, buf, peer)
}

/// Reads exactly `buf.len()` bytes; the connection closing first is a short read.
pub async fn read_full<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
    peer: SocketAddr,
) -> Result<(), TryError> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]).await {
            Ok(0) => {
                return Err(TryError::new(
                    Failure::ShortRead,
                    format!(
                        "short read from {peer}: got {got} of {} bytes, then the connection closed",
                        buf.len()
                    ),
                ))
            }
            Ok(n) => got += n,
            Err(e) => return Err(TryError::io("read from", peer, &e)),
        }
    }
    Ok(())
}

/// Compares an echo with what was sent.
pub fn check_echo(sent: &[u8], got: &[u8], peer: SocketAddr) -> Result<(), TryError> {
    match first_difference(sent, got) {
        None => Ok(()),
        Some(i) => Err(TryError::new(
            Failure::Mismatch,
            format!(
                "mismatch from {peer}: byte {i} of {} differs: sent {}, got {}",
                sent.len(),
                show_byte(sent.get(i)),
                show_byte(got.get(i)),
            ),
        )),
    }
}

fn show_byte(b: Option<&u8>) -> String {
    match b {
        Some(b) => format!("0x{b:02x} ({})", b.escape_ascii()),
        None => "nothing".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[tokio::test]
    async fn round_trip_over_a_duplex_echo() {
        let (client, mut server) = tokio::io::duplex(64);
        let echo = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(&mut server);
            tokio::io::copy(&mut r, &mut w).await
        });
        let (mut r, mut w) = tokio::io::split(client);
        // Larger than the duplex buffer: only works when reading while writing.
        let sent = crate::payload::pattern(10_000, 1);
        let mut buf = vec![0; sent.len()];
        round_trip(&mut r, &mut w, &sent, &mut buf, peer())
            .await
            .unwrap();
        drop((r, w));
        echo.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn short_read_and_mismatch_are_told_apart() {
        let mut buf = [0u8; 4];
        let e = read_full(&mut &b"ab"[..], &mut buf, peer())
            .await
            .unwrap_err();
        assert_eq!(e.kind, Failure::ShortRead);
        assert_eq!(
            e.message,
            "short read from 127.0.0.1:1: got 2 of 4 bytes, then the connection closed"
        );
        let e = check_echo(b"abcd", b"abXd", peer()).unwrap_err();
        assert_eq!(e.kind, Failure::Mismatch);
        assert_eq!(
            e.message,
            "mismatch from 127.0.0.1:1: byte 2 of 4 differs: sent 0x63 (c), got 0x58 (X)"
        );
    }
}

//! The identity probe: how a client asks an `ftest echo` backend which one it is.
//!
//! Wire format (documented in docs/ftest.md):
//! - The client sends [`PROBE`], the 11 bytes `\0FTEST-ID?\n`, as the very first
//!   bytes of a connection. It starts with a NUL byte, which no text protocol and no
//!   `ping`/`simulate` payload starts with, so a plain echo client never sends it by
//!   accident.
//! - An `ftest echo` backend answers with one line, `ftest-echo id=NAME\n`, and then
//!   echoes everything the client sends after the probe, byte for byte.
//! - A plain echo server (not ftest) sends the probe itself back. Both answers are one
//!   line ending in `\n`, so a client reads one line and knows which it got.
//! - Any other first bytes are echoed untouched. A backend that has received only a
//!   prefix of the probe waits up to [`PREFIX_WAIT`] for the rest before treating the
//!   bytes as plain data, so a client that sends a lone NUL and waits still gets it back.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

use crate::exchange::{Failure, TryError};

/// The first bytes a client sends to ask for the backend's identity.
pub const PROBE: &[u8] = b"\0FTEST-ID?\n";

/// What an `ftest echo` answer line starts with; the id follows, then `\n`.
pub const ANSWER_PREFIX: &str = "ftest-echo id=";

/// How long a backend holds a partial probe before echoing it as plain data.
pub const PREFIX_WAIT: Duration = Duration::from_millis(200);

/// Longest id a backend may have; keeps the answer line short and bounded.
pub const MAX_ID_LEN: usize = 128;

/// Who answered a probe.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// An `ftest echo` backend with this id.
    Backend(String),
    /// A plain echo server: it sent the probe back.
    PlainEcho,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Backend(id) => f.write_str(id),
            Identity::PlainEcho => f.write_str("(plain echo, no id)"),
        }
    }
}

/// The answer line a backend with `id` sends.
pub fn answer(id: &str) -> Vec<u8> {
    format!("{ANSWER_PREFIX}{id}\n").into_bytes()
}

/// Checks that `id` fits on the answer line: 1 to 128 printable ASCII characters, no
/// spaces (so the line stays one `key=value` token).
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!("id {id:?} must be 1 to {MAX_ID_LEN} characters"));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "id {id:?} may only hold printable ASCII characters without spaces"
        ));
    }
    Ok(())
}

/// Why a probe answer could not be read.
#[derive(Debug)]
pub enum AnswerError {
    Io(std::io::Error),
    /// The connection closed before a whole line came back; holds what came.
    Closed(Vec<u8>),
    /// A line came back that is neither answer.
    Unexpected(Vec<u8>),
}

impl AnswerError {
    /// As a failed try against `addr`.
    pub fn into_try_error(self, addr: SocketAddr) -> TryError {
        match self {
            AnswerError::Io(e) => TryError::io("read from", addr, &e),
            AnswerError::Closed(got) if got.is_empty() => TryError::new(
                Failure::ShortRead,
                format!("short read from {addr}: the connection closed before any answer"),
            ),
            AnswerError::Closed(got) => TryError::new(
                Failure::ShortRead,
                format!(
                    "short read from {addr}: the connection closed in the probe answer after {}",
                    show_bytes(&got)
                ),
            ),
            AnswerError::Unexpected(got) => TryError::new(
                Failure::Mismatch,
                format!(
                    "mismatch from {addr}: the identity probe came back as {}",
                    show_bytes(&got)
                ),
            ),
        }
    }
}

/// Reads the answer to a probe sent on this connection.
pub async fn read_answer<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Identity, AnswerError> {
    let longest = (ANSWER_PREFIX.len() + MAX_ID_LEN + 1).max(PROBE.len()) as u64;
    let mut line = Vec::with_capacity(64);
    let n = r
        .take(longest)
        .read_until(b'\n', &mut line)
        .await
        .map_err(AnswerError::Io)?;
    if n == 0 || line.last() != Some(&b'\n') {
        // A full-length line without '\n' is not an answer either.
        if line.len() as u64 >= longest {
            return Err(AnswerError::Unexpected(line));
        }
        return Err(AnswerError::Closed(line));
    }
    if line == PROBE {
        return Ok(Identity::PlainEcho);
    }
    let text = std::str::from_utf8(&line[..line.len() - 1]).ok();
    match text.and_then(|t| t.strip_prefix(ANSWER_PREFIX)) {
        Some(id) if check_id(id).is_ok() => Ok(Identity::Backend(id.to_string())),
        _ => Err(AnswerError::Unexpected(line)),
    }
}

/// Bytes for error messages: printable ASCII as is, the rest escaped, cut at 64.
pub fn show_bytes(b: &[u8]) -> String {
    let mut s: String = b
        .iter()
        .take(64)
        .flat_map(|c| c.escape_ascii())
        .map(char::from)
        .collect();
    if b.len() > 64 {
        s.push_str("...");
    }
    format!("\"{s}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<Identity, AnswerError> {
        let mut r = tokio::io::BufReader::new(bytes);
        read_answer(&mut r).await
    }

    #[tokio::test]
    async fn answers_parse() {
        assert_eq!(
            parse(b"ftest-echo id=b1\nrest").await.unwrap(),
            Identity::Backend("b1".into())
        );
        assert_eq!(parse(PROBE).await.unwrap(), Identity::PlainEcho);
        assert!(matches!(
            parse(b"HTTP/1.1 400\r\n").await,
            Err(AnswerError::Unexpected(_))
        ));
        assert!(matches!(
            parse(b"ftest-echo id=").await,
            Err(AnswerError::Closed(_))
        ));
        assert!(matches!(
            parse(&[b'x'; 300]).await,
            Err(AnswerError::Unexpected(_))
        ));
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("127.0.0.1:9001").is_ok());
        assert!(check_id("[::1]:9001").is_ok());
        assert!(check_id("").is_err());
        assert!(check_id("two words").is_err());
        assert!(check_id(&"x".repeat(129)).is_err());
    }

    #[test]
    fn probe_is_eleven_bytes_starting_with_nul() {
        assert_eq!(PROBE.len(), 11);
        assert_eq!(PROBE[0], 0);
        assert_eq!(show_bytes(PROBE), "\"\\x00FTEST-ID?\\n\"");
    }
}

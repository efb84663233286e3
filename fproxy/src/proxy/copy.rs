//! Copying bytes both ways between client and target.
//!
//! Each direction is its own loop over one buffer; a FIN read on one side becomes a
//! write shutdown on the other while the opposite direction keeps flowing (TCP
//! half-close). The connection ends when both directions have seen their FIN, when
//! either side errors, or when no byte has moved either way for the idle timeout.
//! A target error ([`End::TargetError`]) is passed on to the client as a reset by
//! the caller, so a reply cut short by the target never looks complete.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How a copy ended, and how many bytes moved each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    /// Client to target.
    pub sent: u64,
    /// Target to client.
    pub received: u64,
    pub end: End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides closed their write half.
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// The client's socket failed (usually a reset).
    ClientError,
    /// The target's socket failed.
    TargetError,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Idle => "idle_timeout",
            End::ClientError => "client_error",
            End::TargetError => "target_error",
        }
    }

    /// The side whose socket failed, if one did.
    pub fn side(self) -> Option<crate::error::Side> {
        match self {
            End::Closed | End::Idle => None,
            End::ClientError => Some(crate::error::Side::Client),
            End::TargetError => Some(crate::error::Side::Upstream),
        }
    }
}

/// Last moment a byte moved, as milliseconds since `start`. Shared by both directions
/// so the idle watchdog needs no timer reset per read.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    async fn idle_for(&self, idle: Duration) {
        loop {
            let due =
                self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

/// Copies until both directions are closed, an error, or idleness. `meters`, when
/// given, count bytes client-to-target and target-to-client as they move, so long
/// connections show up in metrics before they end.
pub async fn bidirectional(
    client: &mut TcpStream,
    target: &mut TcpStream,
    buffer_size: usize,
    idle: Duration,
    meters: Option<(&Counter, &Counter)>,
) -> Copied {
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let (mut cr, mut cw) = client.split();
    let (mut tr, mut tw) = target.split();
    let mut sent = 0u64;
    let mut received = 0u64;

    let (up_meter, down_meter) = meters.unzip();
    let up = one_way(
        &mut cr,
        &mut tw,
        buffer_size,
        &activity,
        &mut sent,
        up_meter,
    );
    let down = one_way(
        &mut tr,
        &mut cw,
        buffer_size,
        &activity,
        &mut received,
        down_meter,
    );
    let both = async {
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        // Whichever side fails first decides who is blamed.
        while !(up_done && down_done) {
            tokio::select! {
                r = &mut up, if !up_done => match r {
                    Ok(()) => up_done = true,
                    Err(Side::Read) => return End::ClientError,
                    Err(Side::Write) => return End::TargetError,
                },
                r = &mut down, if !down_done => match r {
                    Ok(()) => down_done = true,
                    Err(Side::Read) => return End::TargetError,
                    Err(Side::Write) => return End::ClientError,
                },
            }
        }
        End::Closed
    };
    let end = tokio::select! {
        end = both => end,
        _ = activity.idle_for(idle) => End::Idle,
    };
    Copied {
        sent,
        received,
        end,
    }
}

/// Which end of one direction failed.
enum Side {
    Read,
    Write,
}

async fn one_way<R, W>(
    reader: &mut R,
    writer: &mut W,
    buffer_size: usize,
    activity: &Activity,
    total: &mut u64,
    meter: Option<&Counter>,
) -> Result<(), Side>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Reserved, not zeroed: a connection that moves a few bytes touches a page or
    // two of it, not the whole buffer.
    let mut buf = Vec::with_capacity(buffer_size);
    loop {
        buf.clear();
        let n = reader.read_buf(&mut buf).await.map_err(|_| Side::Read)?;
        if n == 0 {
            // FIN from this side: pass it on, keep the other direction open.
            writer.shutdown().await.map_err(|_| Side::Write)?;
            return Ok(());
        }
        activity.touch();
        writer.write_all(&buf).await.map_err(|_| Side::Write)?;
        *total += n as u64;
        if let Some(m) = meter {
            m.inc_by(n as u64);
        }
    }
}

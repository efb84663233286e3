//! What proxy errors have in common: which side failed (pingora's `ErrorSource` in
//! spirit). Each protocol maps its own typed errors to an outcome (a reset, an HTTP
//! status, a gRPC code) in one place: `proxy::refusal` for TCP, `spec::http::refusal`
//! and `spec::grpc::status` for the spec service.

use std::io;

use nix::errno::Errno;

/// Which side a failure is blamed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: it broke off or failed while a connection was forwarded.
    Client,
    /// The upstream (a target): it refused, reset, timed out or could not be resolved.
    Upstream,
    /// This process or host ran out of something (file descriptors, socket
    /// buffers, memory, local ports). Says nothing about the targets: it counts
    /// toward no ejection and no health verdict.
    Local,
}

impl Side {
    /// Blames a failed connect to an upstream: resource exhaustion here is
    /// [`Side::Local`], the rest is the upstream's.
    pub fn of_connect(e: &io::Error) -> Side {
        match e.raw_os_error().map(Errno::from_raw) {
            Some(
                Errno::EMFILE
                | Errno::ENFILE
                | Errno::ENOBUFS
                | Errno::ENOMEM
                | Errno::EADDRNOTAVAIL,
            ) => Side::Local,
            _ => Side::Upstream,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_are_blamed_on_the_right_side() {
        for errno in [
            Errno::EMFILE,
            Errno::ENFILE,
            Errno::ENOBUFS,
            Errno::ENOMEM,
            Errno::EADDRNOTAVAIL,
        ] {
            let e = io::Error::from_raw_os_error(errno as i32);
            assert_eq!(Side::of_connect(&e), Side::Local, "{errno}");
        }
        for errno in [Errno::ECONNREFUSED, Errno::ECONNRESET, Errno::EHOSTUNREACH] {
            let e = io::Error::from_raw_os_error(errno as i32);
            assert_eq!(Side::of_connect(&e), Side::Upstream, "{errno}");
        }
        let timed_out = io::Error::new(io::ErrorKind::TimedOut, "timed out");
        assert_eq!(Side::of_connect(&timed_out), Side::Upstream);
    }
}

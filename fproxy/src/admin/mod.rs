//! The admin API: health, readiness, status, metrics and reloads, over HTTP on its
//! own (loopback by default) address.

pub mod status;

//! `ftest spec-load`: load a spec app (or anything serving the same routes).
//!
//! Two modes:
//! - `--http`: C workers fetch `GET /v1/download_config_specs/{key}.json` over
//!   kept-alive HTTP/1.1 connections as fast as answers come (closed loop) and report
//!   throughput and latency percentiles ([`http_load`]).
//! - `--grpc-streams N`: N `StreamConfigSpec` streams spread over C HTTP/2
//!   connections; once every stream has its first message, one update (published
//!   with `--publish URL`, or by anyone) is timed on its way to every stream
//!   ([`streams`]).

pub mod http_load;
pub mod streams;

use std::time::Duration;

use anyhow::bail;
use clap::ArgGroup;

use crate::net::{self, parse_millis, parse_seconds, TargetArgs};

pub use http_load::{HttpPlan, HttpReport};
pub use streams::{StreamsPlan, StreamsReport};

const EXAMPLES: &str = "\
Examples:
  # HTTP: 32 kept-alive connections for 10 s, then the same asking for gzip
  ftest spec-load 127.0.0.1:8000 --sdk-key secret-a --http -c 32 -d 10s
  ftest spec-load 127.0.0.1:8000 --sdk-key secret-a --http -c 32 -d 10s --gzip --json
  # gRPC: 10000 streams over 100 connections; publish a new version upstream
  # (ftest spec-upstream) and time it reaching every stream; watch fproxy's memory
  ftest spec-load 127.0.0.1:8001 --sdk-key secret-a --grpc-streams 10000 \\
      --connections 100 --publish http://127.0.0.1:9100/__publish --rss-pid $(pidof fproxy)

HTTP/2 caps the streams of one connection (fproxy: 200): keep N/C at or below it.
Exit status: 0 when every request succeeded (HTTP) or every stream opened and got
the update (gRPC), 1 otherwise.";

/// Default limit per HTTP request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Default limit per gRPC phase (opening every stream; the update reaching them).
const GRPC_TIMEOUT: Duration = Duration::from_secs(60);
/// Default HTTP run length.
const HTTP_DURATION: Duration = Duration::from_secs(10);
const MAX_CONCURRENCY: usize = 100_000;
const MAX_STREAMS: usize = 1_000_000;

#[derive(Debug, Clone, clap::Args)]
#[command(after_help = EXAMPLES)]
#[command(group(ArgGroup::new("mode").required(true).args(["http", "grpc_streams"])))]
pub struct Args {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The SDK key to ask for.
    #[arg(long, value_name = "K")]
    pub sdk_key: String,
    /// Load the HTTP endpoint GET /v1/download_config_specs/{K}.json.
    #[arg(long)]
    pub http: bool,
    /// Open N StreamConfigSpec streams and time one update reaching them all.
    #[arg(long, value_name = "N")]
    pub grpc_streams: Option<usize>,

    /// HTTP: workers, each with one kept-alive connection and one request in flight
    /// [default: 16].
    #[arg(short, long, value_name = "C", conflicts_with = "grpc_streams")]
    pub concurrency: Option<usize>,
    /// HTTP: run this long: 10s, 1m, 500ms; a bare number is seconds [default: 10s].
    #[arg(short, long, value_name = "D", value_parser = parse_seconds, conflicts_with = "grpc_streams", conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// HTTP: send this many requests in total instead.
    #[arg(short = 'n', long, value_name = "N", conflicts_with = "grpc_streams")]
    pub requests: Option<u64>,
    /// HTTP: send Accept-Encoding: gzip and expect gzip answers.
    #[arg(long, conflicts_with = "grpc_streams")]
    pub gzip: bool,

    /// gRPC: HTTP/2 connections the streams are spread over [default: 100, at most N].
    #[arg(long, value_name = "C", conflicts_with = "http")]
    pub connections: Option<usize>,
    /// gRPC: once every stream is open, POST to this URL (e.g. ftest spec-upstream's
    /// http://HOST:PORT/__publish) and time the update from then on. Without it, the
    /// command waits for an update published by anyone.
    #[arg(long, value_name = "URL", conflicts_with = "http")]
    pub publish: Option<String>,
    /// gRPC: report the resident memory (VmRSS, VmHWM) of this process (fproxy)
    /// before, with the streams open, and after the update. Linux only.
    #[arg(long, value_name = "PID", conflicts_with = "http")]
    pub rss_pid: Option<u32>,

    /// Limit per HTTP request [default: 5s], or per gRPC phase: opening every
    /// stream, then the update reaching all [default: 60s]. A bare number is ms.
    #[arg(short = 'W', long, value_name = "MS", value_parser = parse_millis)]
    pub timeout: Option<Duration>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `ftest spec-load`: run, print the report, fail when anything failed.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    let addr = args.target.resolve_one().await?;
    let target = args.target.addr.clone();
    if let Some(n) = args.grpc_streams {
        if !(1..=MAX_STREAMS).contains(&n) {
            bail!("--grpc-streams must be 1 to {MAX_STREAMS}");
        }
        let connections = args.connections.unwrap_or(100);
        if connections == 0 {
            bail!("--connections must be at least 1");
        }
        if let Some(url) = &args.publish {
            crate::http::parse_url(url).map_err(|e| anyhow::anyhow!("--publish: {e:#}"))?;
        }
        let plan = StreamsPlan {
            addr,
            target,
            sdk_key: args.sdk_key.clone(),
            streams: n,
            connections: connections.min(n),
            publish: args.publish.clone(),
            rss_pid: args.rss_pid,
            timeout: args.timeout.unwrap_or(GRPC_TIMEOUT),
        };
        let report = streams::run(&plan, !args.quiet, super::stop_signal()).await?;
        print(args.json, &report, |out| report.write_text(out))?;
        return report.verdict();
    }
    let concurrency = args.concurrency.unwrap_or(16);
    if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
        bail!("--concurrency must be 1 to {MAX_CONCURRENCY}");
    }
    let length = match (args.duration, args.requests) {
        (_, Some(0)) => bail!("--requests must be at least 1"),
        (_, Some(n)) => http_load::Length::Requests(n),
        (Some(d), None) if d.is_zero() => bail!("--duration must be longer than 0"),
        (Some(d), None) => http_load::Length::Duration(d),
        (None, None) => http_load::Length::Duration(HTTP_DURATION),
    };
    let plan = HttpPlan {
        addr,
        host: target.clone(),
        target,
        path: format!("/v1/download_config_specs/{}.json", args.sdk_key),
        sdk_key: args.sdk_key.clone(),
        concurrency,
        length,
        gzip: args.gzip,
        timeout: args.timeout.unwrap_or(HTTP_TIMEOUT),
    };
    let report = http_load::run(&plan, !args.quiet, super::stop_signal()).await?;
    print(args.json, &report, |out| report.write_text(out))?;
    report.verdict()
}

/// Writes a report as JSON or text on stdout.
fn print<R: serde::Serialize>(
    json: bool,
    report: &R,
    text: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = if json {
        serde_json::to_string_pretty(report)
            .map_err(std::io::Error::other)
            .and_then(|s| writeln!(out, "{s}"))
    } else {
        text(&mut out)
    };
    written.map_err(|e| anyhow::anyhow!("write output: {}", net::describe(&e)))
}

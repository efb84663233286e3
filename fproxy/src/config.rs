//! The declarative config: a list of apps, parsed from JSON and validated.
//!
//! Parsing happens in two steps so every error can name where it is: the text is
//! first read as a JSON value (syntax errors carry line and column), then each app is
//! deserialised on its own so an unknown key or bad type names the app it belongs to.
//! A [`Config`] that exists has passed validation: the daemon never sees a bad one.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Default values for every optional app field. Documented in `docs/config.md`.
pub mod defaults {
    use std::time::Duration;

    pub const STRATEGY: &str = "round_robin";
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
    pub const CONNECT_DEADLINE: Duration = Duration::from_secs(3);
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    pub const MAX_CONNECTIONS: usize = 10_000;
    pub const BUFFER_SIZE: usize = 64 * 1024;
}

/// Smallest and largest accepted copy buffer: below 1 KiB a copy is all syscalls,
/// above 16 MiB a few thousand connections would exhaust memory.
const BUFFER_SIZE_RANGE: std::ops::RangeInclusive<usize> = 1024..=16 * 1024 * 1024;

/// A validated config: what the daemon runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub apps: Vec<AppConfig>,
}

/// The kinds of app the daemon can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppKind {
    /// An L4 proxy: each connection is forwarded to one of the targets.
    Tcp,
}

impl fmt::Display for AppKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppKind::Tcp => f.write_str("tcp"),
        }
    }
}

/// One validated app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppConfig {
    pub name: String,
    pub kind: AppKind,
    /// Every address to listen on: `listen` entries then the `ports` shorthand.
    pub listen: Vec<SocketAddr>,
    pub targets: Vec<Target>,
    pub strategy: String,
    /// Limit for one connect attempt to one target address.
    pub connect_timeout: Duration,
    /// Limit for finding any target that accepts, across all attempts.
    pub connect_deadline: Duration,
    /// A proxied connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// How long connections of a removed app (or a removed target) may run on.
    pub drain_timeout: Duration,
    /// Concurrent connections above this are reset at once.
    pub max_connections: usize,
    /// Size of each of the two copy buffers of a connection.
    pub buffer_size: usize,
}

/// Where a connection can be forwarded to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// An IP literal: no resolution needed.
    Addr(SocketAddr),
    /// A DNS name, resolved when a connection needs it (cached for the record's TTL).
    Name { host: String, port: u16 },
}

impl Target {
    /// Parses `host:port`, `1.2.3.4:port` or `[::1]:port`.
    pub fn parse(s: &str) -> Result<Target, String> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Target::Addr(addr));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` has no port (expected host:port)"))?;
        let port = parse_port(port).map_err(|e| format!("`{s}`: {e}"))?;
        if host.starts_with('[') || host.contains(':') {
            return Err(format!(
                "`{s}` is not a valid address (IPv6 targets are written [addr]:port)"
            ));
        }
        if host.parse::<IpAddr>().is_ok() {
            return Err(format!("`{s}` is not a valid address"));
        }
        if !is_valid_hostname(host) {
            return Err(format!("`{s}`: `{host}` is not a valid host name"));
        }
        Ok(Target::Name {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Addr(a) => write!(f, "{a}"),
            Target::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

fn is_valid_hostname(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u64>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        Ok(p) => Err(format!("port {p} out of range 1-65535")),
        Err(_) => Err(format!("`{s}` is not a port number")),
    }
}

/// Why a config was refused. Every variant names what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("invalid JSON at line {line} column {column}: {reason}")]
    Syntax {
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("{0}")]
    Structure(String),
    #[error("app {app}: {field}: {reason}")]
    Field {
        app: String,
        field: String,
        reason: String,
    },
    #[error("duplicate app name {0:?}")]
    DuplicateName(String),
    #[error("{addr} is claimed by app {first:?} and app {second:?}")]
    AddressConflict {
        addr: SocketAddr,
        first: String,
        second: String,
    },
}

/// Turns JSON text into a validated [`Config`].
///
/// It knows which strategy names exist, so a typo in `strategy` is refused here,
/// before any daemon sees it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Validator {
    strategies: BTreeSet<String>,
}

impl Validator {
    pub fn new(strategies: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Validator {
            strategies: strategies.into_iter().map(Into::into).collect(),
        }
    }

    /// Reads and validates the file at `path`.
    pub fn load(&self, path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        self.parse(&text)
    }

    /// Parses and validates JSON text.
    pub fn parse(&self, text: &str) -> Result<Config, ConfigError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ConfigError::Syntax {
                line: e.line(),
                column: e.column(),
                reason: strip_position(&e.to_string()),
            })?;
        let serde_json::Value::Object(mut top) = value else {
            return Err(ConfigError::Structure(
                "the config must be a JSON object with an `apps` list".into(),
            ));
        };
        let apps = match (top.remove("apps"), top.remove("Apps")) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Structure(
                    "both `apps` and `Apps` are set; use one".into(),
                ))
            }
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => {
                return Err(ConfigError::Structure(
                    "missing `apps` (a list of apps)".into(),
                ))
            }
        };
        if let Some(key) = top.keys().next() {
            return Err(ConfigError::Structure(format!(
                "unknown top-level key `{key}` (expected `apps`)"
            )));
        }
        let serde_json::Value::Array(apps) = apps else {
            return Err(ConfigError::Structure("`apps` must be a list".into()));
        };

        let mut out = Vec::with_capacity(apps.len());
        for (i, raw) in apps.into_iter().enumerate() {
            // Name the app in errors even when the rest of it does not parse.
            let label = match raw.get("name").or_else(|| raw.get("Name")) {
                Some(serde_json::Value::String(n)) => format!("{n:?}"),
                _ => format!("apps[{i}]"),
            };
            let raw: RawApp = serde_path_to_error::deserialize(raw).map_err(|e| {
                let path = e.path().to_string();
                ConfigError::Field {
                    app: label.clone(),
                    field: if path == "." { "-".into() } else { path },
                    reason: e.into_inner().to_string(),
                }
            })?;
            out.push(self.validate_app(raw, &label)?);
        }
        check_unique(&out)?;
        Ok(Config { apps: out })
    }

    fn validate_app(&self, raw: RawApp, label: &str) -> Result<AppConfig, ConfigError> {
        let field = |field: &str, reason: String| ConfigError::Field {
            app: label.to_string(),
            field: field.to_string(),
            reason,
        };
        if raw.name.trim().is_empty() {
            return Err(field("name", "must not be empty".into()));
        }

        let mut listen = Vec::new();
        for (i, s) in raw.listen.iter().enumerate() {
            let addr = parse_listen(s).map_err(|e| field(&format!("listen[{i}]"), e))?;
            listen.push(addr);
        }
        for (i, p) in raw.ports.iter().enumerate() {
            let port = match *p {
                p @ 1..=65535 => p as u16,
                p => {
                    return Err(field(
                        &format!("ports[{i}]"),
                        format!("port {p} out of range 1-65535"),
                    ))
                }
            };
            listen.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
        }
        if listen.is_empty() {
            return Err(field("ports", "an app needs `ports` or `listen`".into()));
        }
        let mut seen = BTreeSet::new();
        for addr in &listen {
            if addr.port() != 0 && !seen.insert(*addr) {
                return Err(field("listen", format!("{addr} is listed twice")));
            }
        }

        if raw.targets.is_empty() {
            return Err(field("targets", "must list at least one target".into()));
        }
        let mut targets = Vec::with_capacity(raw.targets.len());
        for (i, t) in raw.targets.iter().enumerate() {
            targets.push(Target::parse(t).map_err(|e| field(&format!("targets[{i}]"), e))?);
        }

        let strategy = raw.strategy.unwrap_or_else(|| defaults::STRATEGY.into());
        let strategy = strategy.replace('-', "_");
        if !self.strategies.contains(&strategy) {
            let known: Vec<_> = self.strategies.iter().map(String::as_str).collect();
            return Err(field(
                "strategy",
                format!(
                    "unknown strategy {strategy:?} (known: {})",
                    known.join(", ")
                ),
            ));
        }

        let duration = |name: &str, v: Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(s) => match humantime::parse_duration(&s) {
                Ok(d) if d.is_zero() => Err(field(name, "must be greater than zero".into())),
                Ok(d) => Ok(d),
                Err(e) => Err(field(
                    name,
                    format!("{s:?} is not a duration like \"500ms\" or \"2s\": {e}"),
                )),
            },
        };
        let connect_timeout = duration(
            "connect_timeout",
            raw.connect_timeout,
            defaults::CONNECT_TIMEOUT,
        )?;
        let connect_deadline = duration(
            "connect_deadline",
            raw.connect_deadline,
            defaults::CONNECT_DEADLINE.max(connect_timeout),
        )?;
        if connect_deadline < connect_timeout {
            return Err(field(
                "connect_deadline",
                "must be at least connect_timeout".into(),
            ));
        }
        let idle_timeout = duration("idle_timeout", raw.idle_timeout, defaults::IDLE_TIMEOUT)?;
        let drain_timeout = duration("drain_timeout", raw.drain_timeout, defaults::DRAIN_TIMEOUT)?;

        let max_connections = raw.max_connections.unwrap_or(defaults::MAX_CONNECTIONS);
        if max_connections == 0 {
            return Err(field("max_connections", "must be at least 1".into()));
        }
        let buffer_size = raw.buffer_size.unwrap_or(defaults::BUFFER_SIZE);
        if !BUFFER_SIZE_RANGE.contains(&buffer_size) {
            return Err(field(
                "buffer_size",
                format!(
                    "{buffer_size} is outside {}-{} bytes",
                    BUFFER_SIZE_RANGE.start(),
                    BUFFER_SIZE_RANGE.end()
                ),
            ));
        }

        Ok(AppConfig {
            name: raw.name,
            kind: raw.kind.unwrap_or(AppKind::Tcp),
            listen,
            targets,
            strategy,
            connect_timeout,
            connect_deadline,
            idle_timeout,
            drain_timeout,
            max_connections,
            buffer_size,
        })
    }
}

/// A listen address: `ip:port` or `[ipv6]:port`. Port 0 asks the OS for a free port
/// (useful when embedding and in tests); the bound address is then reported by the daemon.
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("`{s}` is not ip:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.parse::<IpAddr>().is_err() {
        return Err(format!(
            "`{s}`: listen addresses must be IP literals like 0.0.0.0:80 or [::]:80"
        ));
    }
    match port.parse::<u64>() {
        Ok(p) if p > 65535 => Err(format!("`{s}`: port {p} out of range 0-65535")),
        _ => Err(format!("`{s}`: `{port}` is not a port number")),
    }
}

fn check_unique(apps: &[AppConfig]) -> Result<(), ConfigError> {
    let mut names = BTreeSet::new();
    for app in apps {
        if !names.insert(app.name.as_str()) {
            return Err(ConfigError::DuplicateName(app.name.clone()));
        }
    }
    // Two apps may not share a port when their addresses overlap: the same IP, or
    // either is the unspecified address of the same family.
    let mut by_port: HashMap<u16, Vec<(SocketAddr, &str)>> = HashMap::new();
    for app in apps {
        for addr in &app.listen {
            if addr.port() == 0 {
                continue;
            }
            let claims = by_port.entry(addr.port()).or_default();
            for (other, owner) in claims.iter() {
                if *owner != app.name && overlaps(other.ip(), addr.ip()) {
                    return Err(ConfigError::AddressConflict {
                        addr: *addr,
                        first: owner.to_string(),
                        second: app.name.clone(),
                    });
                }
            }
            claims.push((*addr, &app.name));
        }
    }
    Ok(())
}

fn overlaps(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a == b || a.is_unspecified() || b.is_unspecified())
}

/// serde_json appends " at line L column C"; we report those as fields instead.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// One app as written. PascalCase aliases keep the classic format loading unchanged.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    #[serde(alias = "Name")]
    name: String,
    #[serde(default, alias = "Kind")]
    kind: Option<AppKind>,
    #[serde(default, alias = "Ports")]
    ports: Vec<i64>,
    #[serde(default, alias = "Listen")]
    listen: Vec<String>,
    #[serde(alias = "Targets")]
    targets: Vec<String>,
    #[serde(default, alias = "Strategy")]
    strategy: Option<String>,
    #[serde(default)]
    connect_timeout: Option<String>,
    #[serde(default)]
    connect_deadline: Option<String>,
    #[serde(default)]
    idle_timeout: Option<String>,
    #[serde(default)]
    drain_timeout: Option<String>,
    #[serde(default)]
    max_connections: Option<usize>,
    #[serde(default)]
    buffer_size: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v() -> Validator {
        Validator::new(["round_robin"])
    }

    fn err(text: &str) -> String {
        v().parse(text).unwrap_err().to_string()
    }

    #[test]
    fn classic_format_loads_unchanged() {
        let c = v()
            .parse(r#"{"Apps":[{"Name":"five-thousand","Ports":[5001,5200],"Targets":["tcp-echo.fly.dev:5001"]}]}"#)
            .unwrap();
        let app = &c.apps[0];
        assert_eq!(app.name, "five-thousand");
        assert_eq!(
            app.listen,
            vec![
                "0.0.0.0:5001".parse::<SocketAddr>().unwrap(),
                "0.0.0.0:5200".parse().unwrap()
            ]
        );
        assert_eq!(
            app.targets,
            vec![Target::Name {
                host: "tcp-echo.fly.dev".into(),
                port: 5001
            }]
        );
        assert_eq!(app.strategy, "round_robin");
        assert_eq!(app.connect_timeout, defaults::CONNECT_TIMEOUT);
        assert_eq!(app.buffer_size, defaults::BUFFER_SIZE);
    }

    #[test]
    fn full_format_and_target_forms() {
        let c = v()
            .parse(
                r#"{"apps":[{"name":"a","kind":"tcp","listen":["127.0.0.1:7000","[::1]:7000"],
                "targets":["10.0.0.1:80","[::1]:81","Backend.local:82"],"strategy":"round-robin",
                "connect_timeout":"250ms","connect_deadline":"2s","idle_timeout":"1m",
                "drain_timeout":"5s","max_connections":10,"buffer_size":4096}]}"#,
            )
            .unwrap();
        let app = &c.apps[0];
        assert_eq!(app.listen.len(), 2);
        assert_eq!(app.targets[1], Target::Addr("[::1]:81".parse().unwrap()));
        assert_eq!(
            app.targets[2],
            Target::Name {
                host: "backend.local".into(),
                port: 82
            }
        );
        assert_eq!(app.connect_timeout, Duration::from_millis(250));
        assert_eq!(app.idle_timeout, Duration::from_secs(60));
        assert_eq!(app.max_connections, 10);
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let e = v().parse("{\n  \"apps\": [\n  }").unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Syntax {
                    line: 3,
                    column: 3,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn errors_name_app_and_field() {
        let cases = [
            (
                r#"{"apps":[{"name":"a","ports":[1],"targets":["x:1"]},{"name":"a","ports":[2],"targets":["x:1"]}]}"#,
                "duplicate app name \"a\"",
            ),
            (
                r#"{"apps":[{"name":"a","ports":[1],"targets":["x:1"]},{"name":"b","listen":["127.0.0.1:1"],"targets":["x:1"]}]}"#,
                "127.0.0.1:1 is claimed by app \"a\" and app \"b\"",
            ),
            (
                r#"{"apps":[{"name":"a","ports":[70000],"targets":["x:1"]}]}"#,
                "app \"a\": ports[0]: port 70000 out of range 1-65535",
            ),
            (
                r#"{"apps":[{"name":"a","ports":[1],"targets":[]}]}"#,
                "app \"a\": targets: must list at least one target",
            ),
            (
                r#"{"apps":[{"name":"a","ports":[1],"targets":["x:1","nope"]}]}"#,
                "app \"a\": targets[1]: `nope` has no port",
            ),
            (
                r#"{"apps":[{"name":"a","ports":[1],"targets":["x:1"],"strategy":"fastest"}]}"#,
                "app \"a\": strategy: unknown strategy \"fastest\" (known: round_robin)",
            ),
            (
                r#"{"apps":[{"name":"a","ports":[1],"targets":["x:1"],"colour":"blue"}]}"#,
                "app \"a\": colour: unknown field `colour`",
            ),
            (
                r#"{"apps":[{"name":"a","ports":[1],"targets":["x:1"],"idle_timeout":"soon"}]}"#,
                "app \"a\": idle_timeout: \"soon\" is not a duration",
            ),
            (r#"{"apps":[],"extra":1}"#, "unknown top-level key `extra`"),
            (
                r#"{"apps":[{"ports":[1],"targets":["x:1"]}]}"#,
                "app apps[0]: -: missing field `name`",
            ),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(
                got.starts_with(want),
                "for {text}\n got: {got}\nwant: {want}"
            );
        }
    }

    #[test]
    fn overlapping_wildcard_conflicts_but_other_family_does_not() {
        assert!(v()
            .parse(r#"{"apps":[{"name":"a","ports":[9],"targets":["x:1"]},{"name":"b","listen":["[::]:9"],"targets":["x:1"]}]}"#)
            .is_ok());
        assert!(err(r#"{"apps":[{"name":"a","ports":[9],"targets":["x:1"]},{"name":"b","listen":["10.1.1.1:9"],"targets":["x:1"]}]}"#)
            .contains("claimed by"));
    }
}

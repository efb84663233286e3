//! The declarative config: a list of apps, parsed from JSON and validated.
//!
//! Parsing happens in two steps so every error can name where it is: the text is
//! first read as a JSON value (syntax errors carry line and column), then each app is
//! deserialised on its own so an unknown key or bad type names the app it belongs to.
//! A [`Config`] that exists has passed validation: the daemon never sees a bad one.
//!
//! Fields shared by every app live here; each kind validates its own in [`tcp`] and
//! [`spec`].

pub mod read;
pub mod spec;
pub mod tcp;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub use spec::{Cache, RedisConfig, SpecConfig};
pub use tcp::{Target, TcpConfig};

/// Defaults shared by every kind.
pub mod defaults {
    use std::time::Duration;

    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    /// Where the admin API listens when `admin` is `{}`: loopback only, since it can
    /// reload the config and shows (masked) keys.
    pub const ADMIN_LISTEN: &str = "127.0.0.1:9901";
    pub use super::spec::defaults as spec;
    pub use super::tcp::defaults as tcp;
}

/// Ceilings every config must stay under, whatever the field. They sit far above any
/// real setting and exist so a typo or a hostile file cannot overflow arithmetic at
/// run time (`Instant + d`, semaphores, buffers) or blow up logs and metrics.
/// Documented in `docs/config.md` and `docs/security.md`.
pub mod limits {
    use std::time::Duration;

    /// Longest accepted duration, for every duration field: 365 days. `Instant + d`
    /// and `d * n` for small `n` cannot overflow below it.
    pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
    /// Longest app name; names are labels of every metric and field of every log line.
    pub const MAX_NAME_LEN: usize = 64;
    /// Most apps in one config.
    pub const MAX_APPS: usize = 1000;
    /// Most listen addresses of one app (`listen`, `ports`, `grpc_listen`, `grpc_ports`).
    pub const MAX_LISTEN: usize = 1000;
    /// Most targets of one app (strategies precompute per-target tables).
    pub const MAX_TARGETS: usize = 1000;
    /// Most characters of a user value echoed in an error message.
    pub const MAX_ECHO: usize = 64;
    /// Most characters of an error's reason (room for serde's list of expected
    /// fields, not for a huge value quoted back).
    pub const MAX_REASON: usize = 1024;
}

/// A validated config: what the daemon runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub apps: Vec<AppConfig>,
    /// The admin API; `None` (no `admin` key) runs none.
    pub admin: Option<AdminConfig>,
}

/// The admin HTTP API (`/live`, `/ready`, `/status`, `/metrics`, `/reload`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Port 0 lets the OS choose (tests); the daemon reports the bound address.
    pub listen: SocketAddr,
    /// Names (`host` or `host:port`, lowercase) the API answers to besides its
    /// IP addresses and `localhost`: refused otherwise, against DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// Connection limits (defaults in [`crate::server::admin`]).
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_connections: usize,
}

/// One validated app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppConfig {
    pub name: String,
    /// Addresses to listen on: `listen` entries then the `ports` shorthand. For a
    /// spec app these serve HTTP.
    pub listen: Vec<SocketAddr>,
    /// How long open connections may go on after their app (or, for TCP, their
    /// target) is removed, or the daemon is stopped.
    pub drain_timeout: Duration,
    pub kind: Kind,
}

/// What an app does, with the settings of that kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// An L4 proxy: each connection is forwarded to one of the targets.
    Tcp(TcpConfig),
    /// A Statsig-compatible config-spec cache served over HTTP and gRPC.
    Spec(SpecConfig),
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Tcp(_) => "tcp",
            Kind::Spec(_) => "spec",
        }
    }
}

impl AppConfig {
    /// Every address the app listens on, whatever the protocol.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        let mut all = self.listen.clone();
        if let Kind::Spec(s) = &self.kind {
            all.extend(&s.grpc_listen);
        }
        all
    }
}

pub(crate) fn parse_port(s: &str) -> Result<u16, String> {
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
    /// The top-level `admin` section; `field` is its path, e.g. `admin.listen`.
    #[error("{field}: {reason}")]
    Admin { field: String, reason: String },
}

/// Builds errors that name where a field is (an app, or the `admin` section), and
/// parses the bounded field types. The one place durations, numbers and list sizes
/// are checked, for apps and the admin section alike.
pub(crate) struct Fields<'a> {
    owner: Owner<'a>,
}

/// Whose fields a [`Fields`] parses, which decides the error variant.
#[derive(Clone, Copy)]
enum Owner<'a> {
    /// An app, by its label (quoted name or `apps[i]`): [`ConfigError::Field`].
    App(&'a str),
    /// The top-level `admin` section: [`ConfigError::Admin`], field `admin.<name>`.
    Admin,
}

impl Fields<'_> {
    pub(crate) fn err(&self, field: &str, reason: impl Into<String>) -> ConfigError {
        // Reasons quote what was written; a huge value must not make a huge
        // log line or `/status` answer.
        let reason = clip(&reason.into(), limits::MAX_REASON);
        match self.owner {
            Owner::App(label) => ConfigError::Field {
                app: label.to_string(),
                field: field.to_string(),
                reason,
            },
            Owner::Admin => ConfigError::Admin {
                field: if field.is_empty() {
                    "admin".to_string()
                } else {
                    format!("admin.{field}")
                },
                reason,
            },
        }
    }

    /// A duration written with a unit ("500ms", "2s"), above zero and at most
    /// [`limits::MAX_DURATION`]. Every duration field goes through here (or
    /// [`parse_duration`]), so a new field gets the bounds too.
    pub(crate) fn duration(
        &self,
        name: &str,
        v: Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => parse_duration(&s).map_err(|e| self.err(name, e)),
        }
    }

    /// A whole number within `range` (`default` when absent). Numbers feed
    /// semaphores, tables and counters at run time, so every one is bounded.
    pub(crate) fn number<T>(
        &self,
        name: &str,
        v: Option<T>,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: PartialOrd + std::fmt::Display + Copy,
    {
        let n = v.unwrap_or(default);
        if range.contains(&n) {
            Ok(n)
        } else {
            Err(self.err(
                name,
                format!("{n} is outside {}-{}", range.start(), range.end()),
            ))
        }
    }

    /// At most `max` entries in the list `name`.
    pub(crate) fn count(&self, name: &str, len: usize, max: usize) -> Result<(), ConfigError> {
        if len > max {
            return Err(self.err(name, format!("{len} entries, more than {max}")));
        }
        Ok(())
    }

    /// Explicit addresses plus the `ports` shorthand (all IPv4 addresses).
    pub(crate) fn addresses(
        &self,
        listen: &[String],
        ports: &[i64],
        listen_field: &str,
        ports_field: &str,
    ) -> Result<Vec<SocketAddr>, ConfigError> {
        self.count(listen_field, listen.len() + ports.len(), limits::MAX_LISTEN)?;
        let mut out = Vec::new();
        for (i, s) in listen.iter().enumerate() {
            out.push(parse_listen(s).map_err(|e| self.err(&format!("{listen_field}[{i}]"), e))?);
        }
        for (i, p) in ports.iter().enumerate() {
            let port = match *p {
                p @ 1..=65535 => p as u16,
                p => {
                    return Err(self.err(
                        &format!("{ports_field}[{i}]"),
                        format!("port {p} out of range 1-65535"),
                    ))
                }
            };
            out.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
        }
        Ok(out)
    }
}

/// A duration as written in config: a number with a unit ("500ms", "2s", "1h"),
/// greater than zero and at most [`limits::MAX_DURATION`]. The one place durations
/// are parsed, so the bounds hold for every field, present and future.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let shown = clip(s, limits::MAX_ECHO);
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be greater than zero".into()),
        Ok(d) if d > limits::MAX_DURATION => Err(format!(
            "{shown:?} is longer than the most allowed, {} days",
            limits::MAX_DURATION.as_secs() / 86_400
        )),
        Ok(d) => Ok(d),
        Err(e) => Err(format!(
            "{shown:?} is not a duration like \"500ms\" or \"2s\": {e}"
        )),
    }
}

/// `s` cut to at most `max` characters, marked with `…` when cut.
pub(crate) fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

/// Why `name` is not a valid app name, if it is not.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > limits::MAX_NAME_LEN {
        return Err(format!(
            "{} bytes, longer than {} (names label every metric and log line)",
            name.len(),
            limits::MAX_NAME_LEN
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "{c:?} is not allowed (use letters, digits, `_`, `.` and `-`)"
        ));
    }
    Ok(())
}

/// Turns JSON text into a validated [`Config`].
///
/// It knows which strategy names exist, so a typo in `strategy` is refused here,
/// before any daemon sees it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Validator {
    strategies: BTreeSet<String>,
}

impl Default for Validator {
    /// Knows the built-in strategies: what a fuzz target or a tool that checks a
    /// file outside any daemon needs (`Validator::default().parse(text)`).
    fn default() -> Self {
        Validator::new(crate::strategy::Registry::default().names())
    }
}

impl Validator {
    pub fn new(strategies: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Validator {
            strategies: strategies.into_iter().map(Into::into).collect(),
        }
    }

    /// Reads and validates the file at `path`.
    pub fn load(&self, path: &Path) -> Result<Config, ConfigError> {
        self.parse(&read_text(path)?)
    }

    /// Parses and validates JSON text. Never panics, whatever the text: every
    /// problem is a [`ConfigError`] (checked by a property test and meant for fuzzing).
    pub fn parse(&self, text: &str) -> Result<Config, ConfigError> {
        let serde_json::Value::Object(mut top) = json_value(text)? else {
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
        let admin = top.remove("admin").map(parse_admin).transpose()?;
        if let Some(key) = top.keys().next() {
            return Err(ConfigError::Structure(format!(
                "unknown top-level key `{}` (expected `apps` or `admin`)",
                clip(key, limits::MAX_ECHO)
            )));
        }
        let serde_json::Value::Array(apps) = apps else {
            return Err(ConfigError::Structure("`apps` must be a list".into()));
        };
        if apps.len() > limits::MAX_APPS {
            return Err(ConfigError::Structure(format!(
                "`apps` has {} entries, more than {}",
                apps.len(),
                limits::MAX_APPS
            )));
        }

        let mut out = Vec::with_capacity(apps.len());
        for (i, raw) in apps.into_iter().enumerate() {
            // Name the app in errors even when the rest of it does not parse.
            let label = match raw.get("name").or_else(|| raw.get("Name")) {
                Some(serde_json::Value::String(n)) => {
                    format!("{:?}", clip(n, limits::MAX_NAME_LEN))
                }
                _ => format!("apps[{i}]"),
            };
            let raw: RawApp = serde_path_to_error::deserialize(raw).map_err(|e| {
                // An unknown key is quoted in both path and reason: clip both.
                let path = clip(&e.path().to_string(), limits::MAX_ECHO);
                ConfigError::Field {
                    app: label.clone(),
                    field: if path == "." { "-".into() } else { path },
                    reason: clip(
                        &scrub_values(&e.into_inner().to_string()),
                        limits::MAX_REASON,
                    ),
                }
            })?;
            out.push(self.validate_app(raw, &label)?);
        }
        check_unique(&out)?;
        if let Some(admin) = &admin {
            check_admin_address(admin, &out)?;
        }
        check_loops(&out, admin.as_ref())?;
        Ok(Config { apps: out, admin })
    }

    fn validate_app(&self, mut raw: RawApp, label: &str) -> Result<AppConfig, ConfigError> {
        let f = Fields {
            owner: Owner::App(label),
        };
        check_name(&raw.name).map_err(|e| f.err("name", e))?;
        let listen = f.addresses(
            &std::mem::take(&mut raw.listen),
            &std::mem::take(&mut raw.ports),
            "listen",
            "ports",
        )?;
        let drain_timeout = f.duration(
            "drain_timeout",
            raw.drain_timeout.take(),
            defaults::DRAIN_TIMEOUT,
        )?;
        let kind = match raw.kind.as_deref().unwrap_or("tcp") {
            "tcp" => Kind::Tcp(TcpConfig::validate(&mut raw, &f, &self.strategies)?),
            "spec" => Kind::Spec(SpecConfig::validate(&mut raw, &f)?),
            other => {
                return Err(f.err("kind", format!("unknown kind {other:?} (known: tcp, spec)")))
            }
        };
        // Each kind took its own fields; whatever is left belongs to another kind.
        if let Some(field) = raw.leftover() {
            return Err(f.err(field, format!("does not apply to {} apps", kind.name())));
        }
        let app = AppConfig {
            name: raw.name,
            listen,
            drain_timeout,
            kind,
        };
        let addresses = app.addresses();
        if addresses.is_empty() {
            let hint = match app.kind {
                Kind::Tcp(_) => "an app needs `ports` or `listen`",
                Kind::Spec(_) => {
                    "a spec app needs `listen`/`ports` (HTTP) or `grpc_listen`/`grpc_ports`"
                }
            };
            return Err(f.err("ports", hint));
        }
        // Listeners are known by their configured address, so each may appear once,
        // port 0 included (use another loopback IP for a second ephemeral listener).
        let mut seen = BTreeSet::new();
        for addr in &addresses {
            if !seen.insert(*addr) {
                return Err(f.err("listen", format!("{addr} is listed twice")));
            }
        }
        Ok(app)
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

/// The text of the config file at `path`: a regular file of at most
/// [`read::MAX_SIZE`] bytes, read off this thread within [`read::READ_TIMEOUT`]
/// (see [`read`]).
pub(crate) fn read_text(path: &Path) -> Result<String, ConfigError> {
    read::Reader::default()
        .read_blocking(path)
        .map_err(|e| e.for_path(path))
}

/// JSON text as a value; syntax errors give line and column.
fn json_value(text: &str) -> Result<serde_json::Value, ConfigError> {
    serde_json::from_str(text).map_err(|e| ConfigError::Syntax {
        line: e.line(),
        column: e.column(),
        reason: strip_position(&e.to_string()),
    })
}

/// Reads only the `admin` section of a config file (`None` when it has none), so
/// `fproxy status` finds the admin API even while the rest of the file is invalid,
/// which is when the status is most wanted.
pub fn load_admin(path: &Path) -> Result<Option<AdminConfig>, ConfigError> {
    match json_value(&read_text(path)?)? {
        serde_json::Value::Object(mut top) => top.remove("admin").map(parse_admin).transpose(),
        _ => Ok(None),
    }
}

/// The `admin` section as written; every field optional so `{}` takes the defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    #[serde(default)]
    header_timeout: Option<String>,
    #[serde(default)]
    keepalive_timeout: Option<String>,
    #[serde(default)]
    max_connections: Option<usize>,
}

fn parse_admin(raw: serde_json::Value) -> Result<AdminConfig, ConfigError> {
    let f = Fields {
        owner: Owner::Admin,
    };
    if !raw.is_object() {
        return Err(f.err(
            "",
            format!(
                "must be an object like {{\"listen\": \"{}\"}}",
                defaults::ADMIN_LISTEN
            ),
        ));
    }
    let raw: RawAdmin = serde_path_to_error::deserialize(raw).map_err(|e| {
        let path = clip(&e.path().to_string(), limits::MAX_ECHO);
        let field = if path == "." { "" } else { &path };
        f.err(field, scrub_values(&e.into_inner().to_string()))
    })?;
    let listen = raw.listen.as_deref().unwrap_or(defaults::ADMIN_LISTEN);
    let listen = parse_listen(listen).map_err(|e| f.err("listen", e))?;
    f.count("allowed_hosts", raw.allowed_hosts.len(), limits::MAX_LISTEN)?;
    let allowed_hosts = raw
        .allowed_hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            crate::admin::host::parse_allowed(h)
                .map_err(|e| f.err(&format!("allowed_hosts[{i}]"), e))
        })
        .collect::<Result<_, _>>()?;
    // The same bounded parsers as app fields, so the admin section gets the same
    // ceilings (a huge duration would overflow `Instant + d` in the server layer).
    use crate::server::admin as admin_defaults;
    let header_timeout = f.duration(
        "header_timeout",
        raw.header_timeout,
        admin_defaults::HEADER_TIMEOUT,
    )?;
    let keepalive_timeout = f.duration(
        "keepalive_timeout",
        raw.keepalive_timeout,
        admin_defaults::KEEPALIVE_TIMEOUT,
    )?;
    let max_connections = f.number(
        "max_connections",
        raw.max_connections,
        admin_defaults::MAX_CONNECTIONS,
        1..=100_000,
    )?;
    Ok(AdminConfig {
        listen,
        allowed_hosts,
        header_timeout,
        keepalive_timeout,
        max_connections,
    })
}

/// The admin API may not share a port with an app (same rule as between apps).
fn check_admin_address(admin: &AdminConfig, apps: &[AppConfig]) -> Result<(), ConfigError> {
    let addr = admin.listen;
    if addr.port() == 0 {
        return Ok(());
    }
    for app in apps {
        if let Some(other) = app
            .addresses()
            .into_iter()
            .find(|a| crate::listener::overlaps(*a, addr))
        {
            return Err(ConfigError::Admin {
                field: "admin.listen".into(),
                reason: format!("{addr} is also claimed by app {:?} ({other})", app.name),
            });
        }
    }
    Ok(())
}

/// Refuses a target that is one of this daemon's own listeners: every connection
/// would come back in and connect again, until the app's limits are exhausted by
/// its own traffic. Only what the config alone proves is caught: a literal address
/// equal to a listen address; a loopback or unspecified IP on the port of a
/// wildcard (or loopback) listener of that family; `localhost` on such a port.
/// Loops through other hosts or names are the operator's (`docs/config.md`).
fn check_loops(apps: &[AppConfig], admin: Option<&AdminConfig>) -> Result<(), ConfigError> {
    // Every fixed listen address, with who owns it. Port 0 is chosen at bind
    // time and cannot be known here.
    let mut own: Vec<(SocketAddr, String)> = Vec::new();
    for app in apps {
        for addr in app.addresses() {
            own.push((addr, format!("app {:?}", app.name)));
        }
    }
    if let Some(admin) = admin {
        own.push((admin.listen, "the admin API".into()));
    }
    own.retain(|(a, _)| a.port() != 0);
    // 127.0.0.1 or ::1: where `localhost` and the unspecified address lead.
    let localhost = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4 == Ipv4Addr::LOCALHOST,
        IpAddr::V6(v6) => v6 == std::net::Ipv6Addr::LOCALHOST,
    };
    for app in apps {
        let Kind::Tcp(tcp) = &app.kind else { continue };
        for (i, target) in tcp.targets.iter().enumerate() {
            let hit = own.iter().find(|(listen, _)| match target {
                Target::Addr(t) => {
                    // IPv6 listeners are v6-only, so families never cross.
                    let same = t.port() == listen.port() && t.is_ipv4() == listen.is_ipv4();
                    let (t, l) = (t.ip(), listen.ip());
                    same && (t == l
                        || (l.is_unspecified() && (t.is_loopback() || t.is_unspecified()))
                        || (t.is_unspecified() && localhost(l)))
                }
                Target::Name { host, port } => {
                    *port == listen.port()
                        && is_localhost(host)
                        && (listen.ip().is_unspecified() || localhost(listen.ip()))
                }
            });
            if let Some((listen, owner)) = hit {
                let label = format!("{:?}", app.name);
                let f = Fields {
                    owner: Owner::App(&label),
                };
                return Err(f.err(
                    &format!("targets[{i}]"),
                    format!(
                        "{target} is this daemon's own listener ({owner} listens on {listen}): \
                         connections would loop back into fproxy"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Names every resolver answers with loopback (RFC 6761).
fn is_localhost(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    host == "localhost" || host.ends_with(".localhost")
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
        for addr in app.addresses() {
            if addr.port() == 0 {
                continue;
            }
            let claims = by_port.entry(addr.port()).or_default();
            for (other, owner) in claims.iter() {
                if *owner != app.name && crate::listener::overlaps(*other, addr) {
                    return Err(ConfigError::AddressConflict {
                        addr,
                        first: owner.to_string(),
                        second: app.name.clone(),
                    });
                }
            }
            claims.push((addr, &app.name));
        }
    }
    Ok(())
}

/// serde_json appends " at line L column C"; we report those as fields instead.
/// Masks the string values serde quotes in type errors (`invalid type: string
/// "secret-...", expected a sequence`): a mistyped field may hold an SDK key or a
/// Redis URL with its password, and this message is logged and served by `/status`.
fn scrub_values(msg: &str) -> String {
    const OPEN: &str = "string \"";
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find(OPEN) {
        let (head, tail) = rest.split_at(i + OPEN.len());
        out.push_str(head);
        match tail.find('"') {
            Some(end) => {
                out.push_str(&crate::spec::store::mask(&tail[..end]));
                rest = &tail[end..];
            }
            None => {
                out.push_str(&crate::spec::store::mask(tail));
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// One app as written, every kind's fields together so unknown keys are refused.
/// PascalCase aliases keep the classic format loading unchanged.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApp {
    #[serde(alias = "Name")]
    name: String,
    #[serde(default, alias = "Kind")]
    kind: Option<String>,
    #[serde(default, alias = "Ports")]
    ports: Vec<i64>,
    #[serde(default, alias = "Listen")]
    listen: Vec<String>,
    #[serde(default)]
    drain_timeout: Option<String>,
    // tcp
    #[serde(default, alias = "Targets")]
    pub(crate) targets: Vec<tcp::RawTarget>,
    #[serde(default)]
    pub(crate) health_check: Option<tcp::RawHealthCheck>,
    #[serde(default)]
    pub(crate) passive: Option<tcp::RawPassive>,
    #[serde(default)]
    pub(crate) new_targets_healthy: Option<bool>,
    #[serde(default)]
    pub(crate) dns: Option<tcp::RawDns>,
    #[serde(default, alias = "Strategy")]
    pub(crate) strategy: Option<String>,
    #[serde(default)]
    pub(crate) connect_timeout: Option<String>,
    #[serde(default)]
    pub(crate) connect_deadline: Option<String>,
    #[serde(default)]
    pub(crate) idle_timeout: Option<String>,
    #[serde(default)]
    pub(crate) max_connections: Option<usize>,
    #[serde(default)]
    pub(crate) buffer_size: Option<usize>,
    // spec
    #[serde(default)]
    pub(crate) grpc_listen: Vec<String>,
    #[serde(default)]
    pub(crate) grpc_ports: Vec<i64>,
    #[serde(default)]
    pub(crate) upstream: Option<String>,
    #[serde(default)]
    pub(crate) poll_interval: Option<String>,
    #[serde(default)]
    pub(crate) fetch_concurrency: Option<usize>,
    #[serde(default)]
    pub(crate) request_timeout: Option<String>,
    #[serde(default)]
    pub(crate) warm_keys: Vec<String>,
    #[serde(default)]
    pub(crate) max_sdk_keys: Option<usize>,
    #[serde(default)]
    pub(crate) stale_after: Option<String>,
    #[serde(default)]
    pub(crate) max_streams: Option<usize>,
    #[serde(default)]
    pub(crate) max_stream_age: Option<String>,
    #[serde(default)]
    pub(crate) heartbeat_interval: Option<String>,
    #[serde(default)]
    pub(crate) drop_unauthorized: Option<bool>,
    #[serde(default)]
    pub(crate) rejected_key_ttl: Option<String>,
    #[serde(default)]
    pub(crate) max_rejected_keys: Option<usize>,
    #[serde(default)]
    pub(crate) new_key_fetches_per_second: Option<u32>,
    #[serde(default)]
    pub(crate) max_spec_size: Option<usize>,
    #[serde(default)]
    pub(crate) cache: Option<spec::RawCache>,
    #[serde(default)]
    pub(crate) header_timeout: Option<String>,
    #[serde(default)]
    pub(crate) keepalive_timeout: Option<String>,
}

impl RawApp {
    /// The first kind-specific field still set after validation took its own.
    fn leftover(&self) -> Option<&'static str> {
        let set = [
            ("targets", !self.targets.is_empty()),
            ("strategy", self.strategy.is_some()),
            ("connect_timeout", self.connect_timeout.is_some()),
            ("connect_deadline", self.connect_deadline.is_some()),
            ("idle_timeout", self.idle_timeout.is_some()),
            ("max_connections", self.max_connections.is_some()),
            ("buffer_size", self.buffer_size.is_some()),
            ("health_check", self.health_check.is_some()),
            ("passive", self.passive.is_some()),
            ("new_targets_healthy", self.new_targets_healthy.is_some()),
            ("dns", self.dns.is_some()),
            ("grpc_listen", !self.grpc_listen.is_empty()),
            ("grpc_ports", !self.grpc_ports.is_empty()),
            ("upstream", self.upstream.is_some()),
            ("poll_interval", self.poll_interval.is_some()),
            ("fetch_concurrency", self.fetch_concurrency.is_some()),
            ("request_timeout", self.request_timeout.is_some()),
            ("warm_keys", !self.warm_keys.is_empty()),
            ("max_sdk_keys", self.max_sdk_keys.is_some()),
            ("stale_after", self.stale_after.is_some()),
            ("max_streams", self.max_streams.is_some()),
            ("max_stream_age", self.max_stream_age.is_some()),
            ("heartbeat_interval", self.heartbeat_interval.is_some()),
            ("drop_unauthorized", self.drop_unauthorized.is_some()),
            ("rejected_key_ttl", self.rejected_key_ttl.is_some()),
            ("max_rejected_keys", self.max_rejected_keys.is_some()),
            (
                "new_key_fetches_per_second",
                self.new_key_fetches_per_second.is_some(),
            ),
            ("max_spec_size", self.max_spec_size.is_some()),
            ("cache", self.cache.is_some()),
            ("header_timeout", self.header_timeout.is_some()),
            ("keepalive_timeout", self.keepalive_timeout.is_some()),
        ];
        set.into_iter()
            .find(|(_, is_set)| *is_set)
            .map(|(name, _)| name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v() -> Validator {
        Validator::new(["p2c", "round_robin"])
    }

    fn tcp(app: &AppConfig) -> &TcpConfig {
        match &app.kind {
            Kind::Tcp(t) => t,
            other => panic!("not tcp: {other:?}"),
        }
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
        assert_eq!(app.drain_timeout, defaults::DRAIN_TIMEOUT);
        assert_eq!(
            app.listen,
            vec![
                "0.0.0.0:5001".parse::<SocketAddr>().unwrap(),
                "0.0.0.0:5200".parse().unwrap()
            ]
        );
        let app = tcp(app);
        assert_eq!(
            app.targets,
            vec![Target::Name {
                host: "tcp-echo.fly.dev".into(),
                port: 5001
            }]
        );
        assert_eq!(app.strategy, "p2c");
        assert_eq!(app.connect_timeout, defaults::tcp::CONNECT_TIMEOUT);
        assert_eq!(app.buffer_size, defaults::tcp::BUFFER_SIZE);
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
        assert_eq!(app.drain_timeout, Duration::from_secs(5));
        let app = tcp(app);
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
    fn dns_settings_are_checked() {
        let v = Validator::new(["p2c"]);
        let cfg = |dns: &str| {
            format!(r#"{{"apps":[{{"name":"a","ports":[1],"targets":["db:1"],"dns":{dns}}}]}}"#)
        };
        let e = v.parse(&cfg(r#"{"family":"v5"}"#)).unwrap_err().to_string();
        assert!(e.contains("dns.family") && e.contains("prefer_ipv4"), "{e}");
        let e = v
            .parse(&cfg(r#"{"min_ttl":"1m","max_ttl":"1s"}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("dns.max_ttl"), "{e}");
        assert!(v.parse(&cfg(r#"{"family":"prefer-ipv6"}"#)).is_ok());
    }

    #[test]
    fn type_errors_do_not_repeat_secrets() {
        let key = "secret-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let v = Validator::new(["p2c"]);
        let json = format!(
            r#"{{"apps":[{{"name":"s","kind":"spec","listen":["127.0.0.1:0"],"upstream":"http://u","warm_keys":"{key}"}}]}}"#
        );
        let e = v.parse(&json).unwrap_err().to_string();
        assert!(
            e.contains("warm_keys") && e.contains("expected a sequence"),
            "{e}"
        );
        assert!(!e.contains(key), "{e}");
        let json = r#"{"apps":[{"name":"s","kind":"spec","listen":["127.0.0.1:0"],"upstream":"http://u","cache":"redis://:hunter2@h:1"}]}"#;
        let e = v.parse(json).unwrap_err().to_string();
        assert!(e.contains("cache") && e.contains("invalid type"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
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
                "app \"a\": strategy: unknown strategy \"fastest\" (known: p2c, round_robin)",
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
                r#"{"apps":[],"admin":{"listen":"127.0.0.1:9901","port":1}}"#,
                "admin.port: unknown field `port`, expected one of `listen`, `allowed_hosts`, `header_timeout`, `keepalive_timeout`, `max_connections`",
            ),
            (
                r#"{"apps":[],"admin":{"listen":"localhost:9901"}}"#,
                "admin.listen: `localhost:9901`: listen addresses must be IP literals",
            ),
            (
                r#"{"apps":[],"admin":{"listen":9901}}"#,
                "admin.listen: invalid type: integer `9901`, expected a string",
            ),
            (
                r#"{"apps":[],"admin":"127.0.0.1:9901"}"#,
                "admin: must be an object like {\"listen\": \"127.0.0.1:9901\"}",
            ),
            (
                r#"{"apps":[{"name":"a","ports":[9901],"targets":["x:1"]}],"admin":{}}"#,
                "admin.listen: 127.0.0.1:9901 is also claimed by app \"a\" (0.0.0.0:9901)",
            ),
            (
                r#"{"apps":[{"name":"s","kind":"spec","listen":["127.0.0.1:0"],"grpc_listen":["127.0.0.1:0"]}]}"#,
                "app \"s\": listen: 127.0.0.1:0 is listed twice",
            ),
            (
                r#"{"apps":[{"name":"a","ports":[1],"targets":["x:1"],"upstream":"http://u"}]}"#,
                "app \"a\": upstream: does not apply to tcp apps",
            ),
            (
                r#"{"apps":[{"name":"s","kind":"spec","ports":[1],"targets":["x:1"]}]}"#,
                "app \"s\": targets: does not apply to spec apps",
            ),
            (
                r#"{"apps":[{"name":"s","kind":"udp","ports":[1]}]}"#,
                "app \"s\": kind: unknown kind \"udp\"",
            ),
            (
                r#"{"apps":[{"name":"s","kind":"spec","upstream":"ftp://x","ports":[1]}]}"#,
                "app \"s\": upstream: \"ftp://x\" is not an http:// or https:// URL",
            ),
            (
                r#"{"apps":[{"name":"s","kind":"spec"}]}"#,
                "app \"s\": ports: a spec app needs",
            ),
            (
                r#"{"apps":[{"name":"s","kind":"spec","grpc_ports":[7],"warm_keys":["a/b"]}]}"#,
                "app \"s\": warm_keys[0]: an SDK key must be",
            ),
            (
                r#"{"apps":[{"name":"t","ports":[7],"targets":["x:1"]},{"name":"s","kind":"spec","grpc_ports":[7]}]}"#,
                "0.0.0.0:7 is claimed by app \"t\" and app \"s\"",
            ),
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
    fn spec_app_defaults_and_fields() {
        let c = v()
            .parse(r#"{"apps":[{"name":"s","kind":"spec","ports":[8000],"grpc_listen":["127.0.0.1:50051"],
                "upstream":"http://127.0.0.1:9/","poll_interval":"2s","warm_keys":["secret-abc"],
                "max_streams":5,"drop_unauthorized":true}]}"#)
            .unwrap();
        let Kind::Spec(s) = &c.apps[0].kind else {
            panic!("not spec")
        };
        assert_eq!(s.upstream, "http://127.0.0.1:9");
        assert_eq!(s.poll_interval, Duration::from_secs(2));
        assert_eq!(s.fetch_concurrency, defaults::spec::FETCH_CONCURRENCY);
        assert_eq!(s.heartbeat_interval, defaults::spec::HEARTBEAT);
        assert_eq!(s.warm_keys, ["secret-abc"]);
        assert_eq!(s.max_streams, 5);
        assert!(s.drop_unauthorized);
        assert_eq!(c.apps[0].addresses().len(), 2);
    }

    #[test]
    fn admin_is_optional_and_defaults_to_loopback() {
        let none = v().parse(r#"{"apps":[]}"#).unwrap();
        assert_eq!(none.admin, None);
        let default = v().parse(r#"{"apps":[],"admin":{}}"#).unwrap();
        assert_eq!(
            default.admin.map(|a| a.listen),
            Some("127.0.0.1:9901".parse().unwrap())
        );
        let set = v()
            .parse(r#"{"apps":[{"name":"a","listen":["127.0.0.1:0"],"targets":["x:1"]}],"admin":{"listen":"[::1]:0"}}"#)
            .unwrap();
        assert_eq!(
            set.admin.map(|a| a.listen),
            Some("[::1]:0".parse().unwrap())
        );
    }

    /// An app of `kind` with `path` (maybe nested, `a.b`) set to the JSON `value`.
    fn app_with(kind: &str, path: &str, value: serde_json::Value) -> String {
        let mut app = match kind {
            "tcp" => serde_json::json!({"name": "a", "ports": [1], "targets": ["x:1"]}),
            _ => serde_json::json!({"name": "a", "kind": "spec", "ports": [1],
                "cache": {"backend": "redis", "url": "redis://h:1"}}),
        };
        // dns.max_ttl must stay at least dns.min_ttl, connect_deadline at least
        // connect_timeout: set the partner out of the way.
        match path {
            "dns.max_ttl" => app["dns"] = serde_json::json!({"min_ttl": "1ms"}),
            "dns.min_ttl" => app["dns"] = serde_json::json!({"max_ttl": "365d"}),
            "connect_deadline" => app["connect_timeout"] = "1ms".into(),
            _ => {}
        }
        let mut at = &mut app;
        let parts: Vec<&str> = path.split('.').collect();
        for part in &parts[..parts.len() - 1] {
            if at.get(*part).is_none() {
                at[*part] = serde_json::json!({});
            }
            at = &mut at[*part];
        }
        at[parts[parts.len() - 1]] = value;
        serde_json::json!({"apps": [app]}).to_string()
    }

    // Every duration field is bounded: `tests/config_props.rs`
    // (`every_duration_is_bounded_with_an_error_naming_app_and_field`), over a field
    // list read from the config's Debug text so new fields cannot be left out.

    /// The admin section goes through the same bounded parsers as apps, with its
    /// own error variant and field paths (texts are part of the CLI's output).
    #[test]
    fn admin_fields_are_bounded_with_errors_naming_the_field() {
        let admin = |a: serde_json::Value| serde_json::json!({"apps": [], "admin": a}).to_string();
        let cases = [
            (
                serde_json::json!({"header_timeout": "366d"}),
                "admin.header_timeout: \"366d\" is longer than the most allowed, 365 days",
            ),
            (
                serde_json::json!({"keepalive_timeout": "0s"}),
                "admin.keepalive_timeout: must be greater than zero",
            ),
            (
                serde_json::json!({"max_connections": 0}),
                "admin.max_connections: 0 is outside 1-100000",
            ),
            (
                serde_json::json!({"max_connections": 100_001}),
                "admin.max_connections: 100001 is outside 1-100000",
            ),
            (
                serde_json::json!({"allowed_hosts": vec!["a"; 1001]}),
                "admin.allowed_hosts: 1001 entries, more than 1000",
            ),
            (
                serde_json::json!({"allowed_hosts": ["a/b"]}),
                "admin.allowed_hosts[0]: ",
            ),
        ];
        for (a, want) in cases {
            let e = v().parse(&admin(a.clone())).unwrap_err();
            assert!(matches!(e, ConfigError::Admin { .. }), "{a}: {e:?}");
            assert!(
                e.to_string().starts_with(want),
                "{a}\n got: {e}\nwant: {want}"
            );
        }
        let ok = v()
            .parse(&admin(
                serde_json::json!({"header_timeout": "365d", "max_connections": 100_000}),
            ))
            .unwrap()
            .admin
            .unwrap();
        assert_eq!(ok.header_timeout, limits::MAX_DURATION);
        assert_eq!(ok.max_connections, 100_000);
    }

    #[test]
    fn heartbeat_interval_must_stay_below_keepalive_timeout() {
        let spec = |extra: &str| {
            format!(r#"{{"apps":[{{"name":"a","kind":"spec","ports":[1]{extra}}}]}}"#)
        };
        for bad in [
            r#","heartbeat_interval":"60s""#,
            r#","heartbeat_interval":"30s","keepalive_timeout":"10s""#,
            r#","heartbeat_interval":"2s","keepalive_timeout":"1s""#,
        ] {
            let e = err(&spec(bad));
            assert!(
                e.starts_with("app \"a\": heartbeat_interval: ")
                    && e.contains("not below keepalive_timeout"),
                "{bad}: {e}"
            );
        }
        assert!(v().parse(&spec(r#","heartbeat_interval":"59s""#)).is_ok());
        // Unset, it follows a short keepalive_timeout: half of it.
        let c = v().parse(&spec(r#","keepalive_timeout":"10s""#)).unwrap();
        let Kind::Spec(s) = &c.apps[0].kind else {
            panic!("not a spec app")
        };
        assert_eq!(s.heartbeat_interval, Duration::from_secs(5));
        assert!(v()
            .parse(&spec(
                r#","heartbeat_interval":"1s","keepalive_timeout":"2s""#
            ))
            .is_ok());
    }

    #[test]
    fn numbers_that_size_run_time_structures_are_bounded() {
        let huge = serde_json::json!(u64::MAX);
        let cases = [
            ("tcp", "max_connections", huge.clone()),
            ("tcp", "max_connections", 1_000_001.into()),
            ("tcp", "health_check.rise", 1001.into()),
            ("tcp", "health_check.fall", u32::MAX.into()),
            ("tcp", "passive.consecutive_failures", 1001.into()),
            ("tcp", "passive.max_ejected_percent", 101.into()),
            ("tcp", "buffer_size", huge.clone()),
            ("spec", "fetch_concurrency", huge.clone()),
            ("spec", "fetch_concurrency", 10_001.into()),
            ("spec", "max_sdk_keys", 1_000_001.into()),
            ("spec", "max_streams", huge.clone()),
        ];
        for (kind, path, value) in cases {
            let e = err(&app_with(kind, path, value.clone()));
            assert!(
                e.starts_with(&format!("app \"a\": {path}: ")),
                "{path} = {value}: {e}"
            );
        }
        let many: Vec<String> = (0..=limits::MAX_TARGETS)
            .map(|i| format!("x:{}", i + 1))
            .collect();
        let e = err(&app_with("tcp", "targets", many.into()));
        assert!(
            e.starts_with("app \"a\": targets: 1001 entries, more than 1000"),
            "{e}"
        );
        let e = err(&app_with("tcp", "ports", vec![1; 1001].into()));
        assert!(e.starts_with("app \"a\": listen: 1001 entries"), "{e}");
        let apps: Vec<serde_json::Value> = (0..=limits::MAX_APPS)
            .map(|i| serde_json::json!({"name": format!("a{i}"), "listen": ["127.0.0.1:0"], "targets": ["x:1"]}))
            .collect();
        let e = err(&serde_json::json!({ "apps": apps }).to_string());
        assert!(e.contains("more than 1000"), "{e}");
        let e = err(&app_with(
            "tcp",
            "health_check.expect",
            "x".repeat(4097).into(),
        ));
        assert!(
            e.starts_with("app \"a\": health_check.expect: longer than 4096"),
            "{e}"
        );
    }

    #[test]
    fn target_port_zero_is_refused() {
        for t in ["127.0.0.1:0", "[::1]:0", "backend:0"] {
            let e = err(&app_with("tcp", "targets", serde_json::json!([t])));
            assert!(
                e.starts_with(&format!(
                    "app \"a\": targets[0]: `{t}`: port 0 out of range"
                )),
                "{t}: {e}"
            );
        }
        let weighted = serde_json::json!([{"address": "10.0.0.1:0", "weight": 2}]);
        assert!(err(&app_with("tcp", "targets", weighted)).contains("port 0"));
    }

    #[test]
    fn app_names_are_short_and_plain() {
        let huge = "n".repeat(1 << 20);
        let e = err(&app_with("tcp", "name", huge.clone().into()));
        assert!(
            e.contains("name: 1048576 bytes, longer than 64"),
            "{}",
            clip(&e, 200)
        );
        assert!(
            e.len() < 1200,
            "the error echoes the name: {} bytes",
            e.len()
        );
        // Also when the app fails for another reason first.
        let json = format!(r#"{{"apps":[{{"name":"{huge}","ports":"x"}}]}}"#);
        assert!(err(&json).len() < 300);
        for bad in ["a b", "a/b", "a\"b", "ä", "a\nb", "", "{x}"] {
            let e = err(&app_with("tcp", "name", bad.into()));
            assert!(e.contains(": name: "), "{bad:?}: {e}");
        }
        let longest = "a".repeat(64);
        for good in ["web", "A-b_c.9", longest.as_str()] {
            assert!(
                v().parse(&app_with("tcp", "name", good.into())).is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn huge_values_are_not_echoed_in_errors() {
        let huge = "9".repeat(1 << 20);
        for (kind, path) in [("tcp", "idle_timeout"), ("tcp", "targets")] {
            let value = if *path == *"targets" {
                serde_json::json!([huge.clone()])
            } else {
                huge.clone().into()
            };
            let e = err(&app_with(kind, path, value));
            assert!(e.len() < 1200, "{path}: {} bytes", e.len());
        }
        let e = err(&format!(r#"{{"apps":[],"{huge}":1}}"#));
        assert!(e.len() < 1200, "{} bytes", e.len());
        let e = err(&format!(r#"{{"apps":[{{"name":"a","{huge}":1}}]}}"#));
        assert!(e.len() < 1200, "{} bytes", e.len());
        let e = err(&format!(r#"{{"apps":[],"admin":{{"{huge}":1}}}}"#));
        assert!(e.len() < 1200, "{} bytes", e.len());
        let e = err(&format!(r#"{{"apps":[],"admin":{{"listen":"{huge}"}}}}"#));
        assert!(e.len() < 1200, "{} bytes", e.len());
    }

    #[test]
    fn targets_that_loop_back_into_the_daemon_are_refused() {
        let cfg = |apps: serde_json::Value, admin: Option<&str>| {
            let mut c = serde_json::json!({ "apps": apps });
            if let Some(a) = admin {
                c["admin"] = serde_json::json!({ "listen": a });
            }
            c.to_string()
        };
        let tcp = |name: &str, listen: &str, target: &str| serde_json::json!({"name": name, "listen": [listen], "targets": ["10.9.9.9:1", target]});
        let loops = [
            // Its own address, exactly.
            (
                vec![tcp("a", "127.0.0.1:7000", "127.0.0.1:7000")],
                None,
                "app \"a\" listens on 127.0.0.1:7000",
            ),
            (
                vec![tcp("a", "[::1]:7000", "[::1]:7000")],
                None,
                "[::1]:7000",
            ),
            // Loopback or unspecified on a wildcard listener's port.
            (
                vec![tcp("a", "0.0.0.0:7000", "127.0.0.1:7000")],
                None,
                "0.0.0.0:7000",
            ),
            (
                vec![tcp("a", "0.0.0.0:7000", "127.3.2.1:7000")],
                None,
                "0.0.0.0:7000",
            ),
            (
                vec![tcp("a", "0.0.0.0:7000", "0.0.0.0:7000")],
                None,
                "0.0.0.0:7000",
            ),
            (vec![tcp("a", "[::]:7000", "[::1]:7000")], None, "[::]:7000"),
            (
                vec![tcp("a", "127.0.0.1:7000", "0.0.0.0:7000")],
                None,
                "127.0.0.1:7000",
            ),
            // localhost on a local listener's port.
            (
                vec![tcp("a", "0.0.0.0:7000", "localhost:7000")],
                None,
                "0.0.0.0:7000",
            ),
            (
                vec![tcp("a", "127.0.0.1:7000", "LocalHost.:7000")],
                None,
                "127.0.0.1:7000",
            ),
            (
                vec![tcp("a", "[::1]:7000", "localhost:7000")],
                None,
                "[::1]:7000",
            ),
            // Another app's listener, a spec app's gRPC one, the admin API.
            (
                vec![
                    tcp("a", "127.0.0.1:7000", "127.0.0.1:7001"),
                    tcp("b", "127.0.0.1:7001", "x:1"),
                ],
                None,
                "app \"b\" listens on 127.0.0.1:7001",
            ),
            (
                vec![
                    tcp("a", "127.0.0.1:7000", "127.0.0.1:7002"),
                    serde_json::json!({"name": "s", "kind": "spec", "grpc_ports": [7002]}),
                ],
                None,
                "app \"s\" listens on 0.0.0.0:7002",
            ),
            (
                vec![tcp("a", "127.0.0.1:7000", "127.0.0.1:9901")],
                Some("127.0.0.1:9901"),
                "the admin API listens on 127.0.0.1:9901",
            ),
        ];
        for (apps, admin, want) in loops {
            let text = cfg(apps.into(), admin);
            let e = err(&text);
            assert!(
                e.starts_with("app \"a\": targets[1]: ") && e.contains(want) && e.contains("loop"),
                "{text}\n{e}"
            );
        }
        let fine = [
            // Another loopback IP, another family, another port, a real host, port 0.
            tcp("a", "127.0.0.1:7000", "127.0.0.2:7000"),
            tcp("b", "0.0.0.0:7001", "[::1]:7001"),
            tcp("c", "[::]:7002", "127.0.0.1:7002"),
            tcp("d", "0.0.0.0:7003", "127.0.0.1:7004"),
            tcp("e", "0.0.0.0:7005", "db.example:7005"),
            tcp("f", "10.0.0.1:7006", "localhost:7006"),
            tcp("g", "127.0.0.1:0", "127.0.0.1:7007"),
        ];
        let text = cfg(fine.to_vec().into(), Some("127.0.0.1:0"));
        assert!(v().parse(&text).is_ok(), "{:?}", v().parse(&text));
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

//! The declarative config: a list of apps, parsed from JSON and validated.
//!
//! Parsing happens in two steps so every error can name where it is: the text is
//! first read as a JSON value (syntax errors carry line and column), then each app is
//! deserialised on its own so an unknown key or bad type names the app it belongs to.
//! A [`Config`] that exists has passed validation: the daemon never sees a bad one.
//!
//! Fields shared by every app live here; each kind validates its own in [`tcp`] and
//! [`spec`].

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

impl ConfigError {
    /// The file at `path` could not be read.
    pub(crate) fn read(path: &Path, e: &std::io::Error) -> ConfigError {
        ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    }
}

/// Builds errors that name the app, and parses fields shared by kinds.
pub(crate) struct Fields<'a> {
    label: &'a str,
}

impl Fields<'_> {
    pub(crate) fn err(&self, field: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Field {
            app: self.label.to_string(),
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    /// A duration written with a unit ("500ms", "2s"); zero is refused.
    pub(crate) fn duration(
        &self,
        name: &str,
        v: Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => match humantime::parse_duration(&s) {
                Ok(d) if d.is_zero() => Err(self.err(name, "must be greater than zero")),
                Ok(d) => Ok(d),
                Err(e) => Err(self.err(
                    name,
                    format!("{s:?} is not a duration like \"500ms\" or \"2s\": {e}"),
                )),
            },
        }
    }

    /// Explicit addresses plus the `ports` shorthand (all IPv4 addresses).
    pub(crate) fn addresses(
        &self,
        listen: &[String],
        ports: &[i64],
        listen_field: &str,
        ports_field: &str,
    ) -> Result<Vec<SocketAddr>, ConfigError> {
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
        self.parse(&read_text(path)?)
    }

    /// Parses and validates JSON text.
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
                "unknown top-level key `{key}` (expected `apps` or `admin`)"
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
                    reason: scrub_values(&e.into_inner().to_string()),
                }
            })?;
            out.push(self.validate_app(raw, &label)?);
        }
        check_unique(&out)?;
        if let Some(admin) = &admin {
            check_admin_address(admin, &out)?;
        }
        Ok(Config { apps: out, admin })
    }

    fn validate_app(&self, mut raw: RawApp, label: &str) -> Result<AppConfig, ConfigError> {
        let f = Fields { label };
        if raw.name.trim().is_empty() {
            return Err(f.err("name", "must not be empty"));
        }
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

/// The text of the config file at `path`.
pub(crate) fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::read(path, &e))
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
}

fn parse_admin(raw: serde_json::Value) -> Result<AdminConfig, ConfigError> {
    let err = |field: &str, reason: String| ConfigError::Admin {
        field: field.into(),
        reason,
    };
    if !raw.is_object() {
        return Err(err(
            "admin",
            format!(
                "must be an object like {{\"listen\": \"{}\"}}",
                defaults::ADMIN_LISTEN
            ),
        ));
    }
    let raw: RawAdmin = serde_path_to_error::deserialize(raw).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "admin".to_string()
        } else {
            format!("admin.{path}")
        };
        err(&field, scrub_values(&e.into_inner().to_string()))
    })?;
    let listen = raw.listen.as_deref().unwrap_or(defaults::ADMIN_LISTEN);
    let listen = parse_listen(listen).map_err(|e| err("admin.listen", e))?;
    Ok(AdminConfig { listen })
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
            .find(|a| a.port() == addr.port() && overlaps(a.ip(), addr.ip()))
        {
            return Err(ConfigError::Admin {
                field: "admin.listen".into(),
                reason: format!("{addr} is also claimed by app {:?} ({other})", app.name),
            });
        }
    }
    Ok(())
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
                if *owner != app.name && overlaps(other.ip(), addr.ip()) {
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

fn overlaps(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a == b || a.is_unspecified() || b.is_unspecified())
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
                "admin.port: unknown field `port`, expected `listen`",
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

    #[test]
    fn overlapping_wildcard_conflicts_but_other_family_does_not() {
        assert!(v()
            .parse(r#"{"apps":[{"name":"a","ports":[9],"targets":["x:1"]},{"name":"b","listen":["[::]:9"],"targets":["x:1"]}]}"#)
            .is_ok());
        assert!(err(r#"{"apps":[{"name":"a","ports":[9],"targets":["x:1"]},{"name":"b","listen":["10.1.1.1:9"],"targets":["x:1"]}]}"#)
            .contains("claimed by"));
    }
}

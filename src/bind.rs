//! `--bind` addresses: parsing and naming, nothing else.
//!
//! This module turns what an operator wrote (`0.0.0.0:3000`,
//! `tcp://[::]:80?backlog=4096&name=web`, `unix:/run/app.sock?mode=660`,
//! `udp://127.0.0.1:5353`) into a [`BindSpec`]. It is pure apart from host
//! name resolution (`localhost`), which goes through the system resolver
//! once, at startup. It must not create sockets: that is `sockets.rs`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

/// What kind of socket a bind asks for, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindAddr {
    Tcp(SocketAddr),
    Udp(SocketAddr),
    Unix(PathBuf),
}

/// One validated `--bind` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindSpec {
    /// The address as the operator wrote it (for messages).
    pub raw: String,
    pub addr: BindAddr,
    /// The name workers see in `LISTEN_FDNAMES` and `{fd:NAME}`.
    pub name: String,
    /// `listen(2)` backlog; `None` means the default (1024 or somaxconn).
    pub backlog: Option<i32>,
    pub reuseport: bool,
    /// `balance=shared|reuseport`; `None` follows `--balance`. After the
    /// configuration is read it is always set (see `Config`): `Reuseport`
    /// only for TCP.
    pub balance: Option<Balance>,
    /// Unix sockets: file mode, owner and group applied after bind.
    pub mode: Option<u32>,
    pub owner: Option<String>,
    pub group: Option<String>,
    /// IPv6 sockets: accept only IPv6 (`ipv6only=1`); default is dual-stack.
    pub ipv6only: bool,
}

/// How a bind's connections reach the workers (`--balance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// One listening socket that every worker accepts from.
    #[default]
    Shared,
    /// One `SO_REUSEPORT` listener per worker slot, held by sup; new
    /// connections are spread over the slots that have a serving worker.
    Reuseport,
}

impl Balance {
    pub fn parse(s: &str) -> Option<Balance> {
        match s {
            "shared" => Some(Balance::Shared),
            "reuseport" => Some(Balance::Reuseport),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Balance::Shared => "shared",
            Balance::Reuseport => "reuseport",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BindParseError {
    #[error("invalid --bind `{raw}`: {why}")]
    Invalid { raw: String, why: String },
}

fn invalid(raw: &str, why: impl Into<String>) -> BindParseError {
    BindParseError::Invalid {
        raw: raw.to_string(),
        why: why.into(),
    }
}

impl BindSpec {
    /// Parse one `--bind` value.
    pub fn parse(raw: &str) -> Result<BindSpec, BindParseError> {
        let (base, query) = match raw.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (raw, None),
        };
        let addr = if let Some(rest) = base.strip_prefix("unix:") {
            // `unix:///path` and `unix:/path` both name `/path`.
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(invalid(raw, "a unix socket needs a path"));
            }
            BindAddr::Unix(PathBuf::from(path))
        } else if let Some(rest) = base.strip_prefix("udp://") {
            BindAddr::Udp(parse_host_port(raw, rest)?)
        } else if let Some(rest) = base.strip_prefix("tcp://") {
            BindAddr::Tcp(parse_host_port(raw, rest)?)
        } else if base.contains("://") {
            let scheme = base.split("://").next().unwrap_or_default();
            return Err(invalid(
                raw,
                format!("unknown scheme `{scheme}` (expected tcp://, udp:// or unix:)"),
            ));
        } else {
            BindAddr::Tcp(parse_host_port(raw, base)?)
        };

        let mut spec = BindSpec {
            raw: raw.to_string(),
            name: default_name(&addr),
            addr,
            backlog: None,
            reuseport: false,
            balance: None,
            mode: None,
            owner: None,
            group: None,
            ipv6only: false,
        };
        if let Some(query) = query {
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (key, value) = pair
                    .split_once('=')
                    .ok_or_else(|| invalid(raw, format!("option `{pair}` needs a value")))?;
                spec.apply_option(key, value)?;
            }
        }
        Ok(spec)
    }

    fn apply_option(&mut self, key: &str, value: &str) -> Result<(), BindParseError> {
        let raw = self.raw.clone();
        let is_unix = matches!(self.addr, BindAddr::Unix(_));
        match key {
            "backlog" => {
                let n: i32 = value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| invalid(&raw, format!("backlog `{value}` is not a positive number")))?;
                self.backlog = Some(n);
            }
            "name" => {
                validate_name(value).map_err(|why| invalid(&raw, why.to_string()))?;
                self.name = value.to_string();
            }
            "reuseport" => self.reuseport = parse_bool(&raw, key, value)?,
            "balance" => {
                let balance = Balance::parse(value)
                    .ok_or_else(|| invalid(&raw, format!("balance `{value}` is not one of: shared, reuseport")))?;
                if balance == Balance::Reuseport && !matches!(self.addr, BindAddr::Tcp(_)) {
                    return Err(invalid(
                        &raw,
                        "balance=reuseport applies to tcp sockets only (unix and udp sockets are shared)",
                    ));
                }
                self.balance = Some(balance);
            }
            "ipv6only" => {
                if is_unix {
                    return Err(invalid(&raw, "ipv6only applies to tcp and udp sockets only"));
                }
                self.ipv6only = parse_bool(&raw, key, value)?;
            }
            "mode" => {
                if !is_unix {
                    return Err(invalid(&raw, "mode applies to unix sockets only"));
                }
                let mode = u32::from_str_radix(value, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| invalid(&raw, format!("mode `{value}` is not an octal file mode")))?;
                self.mode = Some(mode);
            }
            "owner" | "group" => {
                if !is_unix {
                    return Err(invalid(&raw, format!("{key} applies to unix sockets only")));
                }
                if value.is_empty() {
                    return Err(invalid(&raw, format!("{key} is empty")));
                }
                if key == "owner" {
                    self.owner = Some(value.to_string());
                } else {
                    self.group = Some(value.to_string());
                }
            }
            _ => {
                return Err(invalid(
                    &raw,
                    format!(
                        "unknown option `{key}` (known: backlog, name, balance, reuseport, ipv6only, mode, owner, group)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl fmt::Display for BindAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindAddr::Tcp(a) => write!(f, "tcp://{a}"),
            BindAddr::Udp(a) => write!(f, "udp://{a}"),
            BindAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

fn parse_bool(raw: &str, key: &str, value: &str) -> Result<bool, BindParseError> {
    match value {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(invalid(raw, format!("{key} takes 1, 0, true or false, not `{value}`"))),
    }
}

fn parse_host_port(raw: &str, s: &str) -> Result<SocketAddr, BindParseError> {
    if s.contains('/') {
        return Err(invalid(raw, "expected HOST:PORT with no path"));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| invalid(raw, "missing `]` after an IPv6 address"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| invalid(raw, "missing `:PORT` after the IPv6 address"))?;
        (host, port)
    } else {
        s.rsplit_once(':')
            .ok_or_else(|| invalid(raw, "expected HOST:PORT, e.g. 0.0.0.0:3000"))?
    };
    let port: u16 = port
        .parse()
        .map_err(|_| invalid(raw, format!("port `{port}` is not a number from 0 to 65535")))?;
    if host.is_empty() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    if host.contains(':') && !s.starts_with('[') {
        return Err(invalid(
            raw,
            "an IPv6 address must be written in brackets, e.g. [::1]:3000",
        ));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    // A host name: resolve it once, now, and keep the first address.
    let resolved = (host, port)
        .to_socket_addrs()
        .map_err(|e| invalid(raw, format!("cannot resolve host `{host}`: {e}")))?
        .next();
    resolved.ok_or_else(|| invalid(raw, format!("host `{host}` has no address")))
}

/// The `LISTEN_FDNAMES` name a socket gets when `name=` is not given. It is
/// derived from the address as written, so it is stable across restarts
/// (and does not change when port 0 is bound to a random port).
fn default_name(addr: &BindAddr) -> String {
    let name = match addr {
        BindAddr::Tcp(a) => format!("tcp-{}-{}", a.ip(), a.port()),
        BindAddr::Udp(a) => format!("udp-{}-{}", a.ip(), a.port()),
        BindAddr::Unix(p) => format!("unix-{}", p.display()),
    };
    // systemd forbids `:` in names (it separates them) and non-printables.
    name.chars()
        .map(|c| if c == ':' || !c.is_ascii_graphic() { '_' } else { c })
        .take(255)
        .collect()
}

/// A socket name systemd would not accept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("a socket name must be 1 to 255 characters long")]
    Length,
    #[error(
        "socket name `{name}` contains `{}`: names are printable ASCII without `:` or spaces",
        .bad.escape_default()
    )]
    Character { name: String, bad: char },
}

/// systemd's rule for a file descriptor name: 1 to 255 printable ASCII
/// characters, no `:`.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() || name.len() > 255 {
        return Err(NameError::Length);
    }
    if let Some(bad) = name.chars().find(|c| *c == ':' || !c.is_ascii_graphic()) {
        return Err(NameError::Character {
            name: name.to_string(),
            bad,
        });
    }
    Ok(())
}

/// An address `--control` (or `sup ctl --control`) cannot listen on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlAddrError {
    #[error("invalid --control `{0}`: a unix socket needs a path")]
    NoPath(String),
    #[error("invalid --control `{0}`: expected unix:PATH or tcp://HOST:PORT")]
    Form(String),
}

/// Where the control server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl ControlAddr {
    pub fn parse(s: &str) -> Result<ControlAddr, ControlAddrError> {
        if let Some(rest) = s.strip_prefix("unix:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(ControlAddrError::NoPath(s.to_string()));
            }
            return Ok(ControlAddr::Unix(PathBuf::from(path)));
        }
        let hostport = s.strip_prefix("tcp://").unwrap_or(s);
        match BindSpec::parse(hostport).map(|spec| spec.addr) {
            Ok(BindAddr::Tcp(a)) => Ok(ControlAddr::Tcp(a)),
            _ => Err(ControlAddrError::Form(s.to_string())),
        }
    }
}

impl fmt::Display for ControlAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ControlAddr::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn tcp_forms() {
        assert_eq!(
            BindSpec::parse("0.0.0.0:3000").unwrap().addr,
            BindAddr::Tcp(tcp("0.0.0.0:3000"))
        );
        assert_eq!(
            BindSpec::parse("tcp://127.0.0.1:0").unwrap().addr,
            BindAddr::Tcp(tcp("127.0.0.1:0"))
        );
        assert_eq!(
            BindSpec::parse("[::1]:80").unwrap().addr,
            BindAddr::Tcp(tcp("[::1]:80"))
        );
        assert_eq!(
            BindSpec::parse("tcp://[::]:8080").unwrap().addr,
            BindAddr::Tcp(tcp("[::]:8080"))
        );
        assert_eq!(
            BindSpec::parse(":9000").unwrap().addr,
            BindAddr::Tcp(tcp("0.0.0.0:9000"))
        );
    }

    #[test]
    fn localhost_resolves() {
        let spec = BindSpec::parse("localhost:0").unwrap();
        let BindAddr::Tcp(a) = spec.addr else { panic!("not tcp") };
        assert!(a.ip().is_loopback());
    }

    #[test]
    fn unix_and_udp_forms() {
        assert_eq!(
            BindSpec::parse("unix:/tmp/a.sock").unwrap().addr,
            BindAddr::Unix("/tmp/a.sock".into())
        );
        assert_eq!(
            BindSpec::parse("unix:///tmp/a.sock").unwrap().addr,
            BindAddr::Unix("/tmp/a.sock".into())
        );
        assert_eq!(
            BindSpec::parse("udp://127.0.0.1:53").unwrap().addr,
            BindAddr::Udp(tcp("127.0.0.1:53"))
        );
    }

    #[test]
    fn options() {
        let s = BindSpec::parse("tcp://0.0.0.0:3000?backlog=4096&name=web&reuseport=1").unwrap();
        assert_eq!((s.backlog, s.name.as_str(), s.reuseport), (Some(4096), "web", true));
        let u = BindSpec::parse("unix:/tmp/x.sock?mode=660&owner=www&group=www").unwrap();
        assert_eq!(u.mode, Some(0o660));
        assert_eq!(u.owner.as_deref(), Some("www"));
        let v6 = BindSpec::parse("[::]:80?ipv6only=1").unwrap();
        assert!(v6.ipv6only);
        assert_eq!(
            BindSpec::parse("0.0.0.0:80?balance=reuseport").unwrap().balance,
            Some(Balance::Reuseport)
        );
        assert_eq!(BindSpec::parse("0.0.0.0:80").unwrap().balance, None);
        let e = BindSpec::parse("unix:/tmp/x.sock?balance=reuseport")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tcp sockets only"), "{e}");
        let e = BindSpec::parse("0.0.0.0:80?balance=fair").unwrap_err().to_string();
        assert!(e.contains("not one of: shared, reuseport"), "{e}");
    }

    #[test]
    fn default_names_have_no_colons() {
        assert_eq!(BindSpec::parse("127.0.0.1:3000").unwrap().name, "tcp-127.0.0.1-3000");
        assert_eq!(BindSpec::parse("[::1]:3000").unwrap().name, "tcp-__1-3000");
        assert_eq!(BindSpec::parse("unix:/run/a.sock").unwrap().name, "unix-/run/a.sock");
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        for (raw, why) in [
            ("3000", "HOST:PORT"),
            ("0.0.0.0:99999", "port `99999`"),
            ("http://0.0.0.0:80", "unknown scheme `http`"),
            ("::1:80", "brackets"),
            ("[::1]80", "missing `:PORT`"),
            ("unix:", "needs a path"),
            ("0.0.0.0:80?backlog=0", "backlog"),
            ("0.0.0.0:80?bogus=1", "unknown option `bogus`"),
            ("0.0.0.0:80?name=a:b", "contains `:`"),
            ("0.0.0.0:80?mode=600", "unix sockets only"),
            ("unix:/a?mode=999", "octal"),
            ("0.0.0.0:80?reuseport=yes", "takes 1, 0"),
            ("0.0.0.0:80?name", "needs a value"),
        ] {
            let err = BindSpec::parse(raw).unwrap_err().to_string();
            assert!(err.contains(why), "{raw}: {err}");
            assert!(err.starts_with(&format!("invalid --bind `{raw}`")), "{err}");
        }
    }
}

//! The control server (`--control`) and its client (`sup ctl`).
//!
//! HTTP/1.1 with JSON answers, on a unix socket (mode 0600) or on TCP
//! (which requires `--control-token`, sent as `Authorization: Bearer`). It
//! runs in sup's one loop, non-blocking, with bounded requests and a read
//! deadline per connection, so a slow or hostile client never stalls sup.
//! `route` decides what a request means; the server only moves bytes.

pub mod client;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod stats;

pub use crate::bind::ControlAddr;
use crate::core::Intent;
use http::Request;

/// What a request asks of sup. Only the form of the request is judged
/// here; whether sup can do it now is the core's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /health`, answered without the token.
    Health,
    Stats,
    /// `GET /metrics`: Prometheus text.
    Metrics,
    /// For the core to decide and answer.
    Intent(Intent),
    /// The request itself is wrong: reject it with this status and error.
    Refuse(u16, String),
    /// 405: the path exists, with this method only (the `Allow` header).
    WrongMethod {
        allow: &'static str,
    },
}

/// Decide what `req` means. The token (when one is configured) is checked
/// first, in constant time.
pub fn route(req: &Request, token: Option<&str>) -> Route {
    // Read-only and meant for load balancers and probes, which hold no token.
    if req.path.trim_end_matches('/') == protocol::HEALTH_PATH {
        return match req.method.as_str() {
            "GET" | "HEAD" => Route::Health,
            _ => Route::WrongMethod { allow: "GET" },
        };
    }
    if let Some(token) = token {
        let given = req
            .authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return Route::Refuse(403, "invalid or missing token".into());
        }
    }
    let path = req.path.trim_end_matches('/');
    let path = if path.is_empty() { "/" } else { path };
    match (req.method.as_str(), path, protocol::Command::from_path(path)) {
        ("GET" | "HEAD", protocol::STATS_PATH, _) => Route::Stats,
        (_, protocol::STATS_PATH, _) => Route::WrongMethod { allow: "GET" },
        ("GET" | "HEAD", protocol::METRICS_PATH, _) => Route::Metrics,
        (_, protocol::METRICS_PATH, _) => Route::WrongMethod { allow: "GET" },
        ("POST", _, Some(protocol::Command::Workers)) => {
            let count = req.query.iter().find(|(k, _)| k == "count").map(|(_, v)| v.as_str());
            match count.and_then(|c| c.parse::<usize>().ok()) {
                Some(n) if (1..=10_000).contains(&n) => Route::Intent(Intent::Scale(n)),
                _ => Route::Refuse(400, "POST /workers needs ?count=N, N from 1 to 10000".into()),
            }
        }
        ("POST", _, Some(protocol::Command::PhasedRestart)) if req.query.iter().any(|(k, _)| k == "canary") => {
            let canary = req.query.iter().find(|(k, _)| k == "canary").map(|(_, v)| v.as_str());
            match canary.and_then(|c| c.parse::<usize>().ok()) {
                Some(n) if (1..=10_000).contains(&n) => Route::Intent(Intent::Canary(n)),
                _ => Route::Refuse(400, "POST /phased-restart?canary=N needs N from 1 to 10000".into()),
            }
        }
        ("POST", _, Some(protocol::Command::Worker)) => {
            let get = |key: &str| req.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
            let target = get("target").and_then(protocol::parse_worker_ref);
            let action = get("action").and_then(|a| protocol::parse_worker_action(a, get("signal")));
            match (target, action) {
                (Some(target), Some(action)) => Route::Intent(Intent::Worker { target, action }),
                _ => Route::Refuse(
                    400,
                    "POST /worker needs ?target=SLOT|PID|slot:N|pid:N&action=replace|stop|signal (&signal=SIG)".into(),
                ),
            }
        }
        ("POST", _, Some(command)) => match command.intent(0) {
            Some(intent) => Route::Intent(intent),
            None => Route::Refuse(400, format!("POST {} needs parameters", command.path())),
        },
        (_, _, Some(_)) => Route::WrongMethod { allow: "POST" },
        _ => Route::Refuse(404, format!("no such endpoint: {}", req.path)),
    }
}

/// Compare without an early exit, so the time taken does not tell how much
/// of a guessed token was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= x ^ y;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, target: &str, auth: Option<&str>) -> Request {
        let mut raw = format!("{method} {target} HTTP/1.1\r\n");
        if let Some(a) = auth {
            raw.push_str(&format!("Authorization: {a}\r\n"));
        }
        raw.push_str("\r\n");
        match http::parse(raw.as_bytes()) {
            http::Parsed::Request(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn routes() {
        assert_eq!(route(&req("GET", "/stats", None), None), Route::Stats);
        assert_eq!(route(&req("GET", "/metrics", None), None), Route::Metrics);
        assert!(matches!(
            route(&req("POST", "/metrics", None), None),
            Route::WrongMethod { allow: "GET" }
        ));
        assert_eq!(
            route(&req("POST", "/phased-restart", None), None),
            Route::Intent(Intent::Rolling)
        );
        assert_eq!(route(&req("POST", "/restart", None), None), Route::Intent(Intent::Hot));
        assert_eq!(
            route(&req("POST", "/workers?count=3", None), None),
            Route::Intent(Intent::Scale(3))
        );
        assert!(matches!(
            route(&req("POST", "/workers?count=0", None), None),
            Route::Refuse(400, _)
        ));
        assert!(matches!(
            route(&req("GET", "/restart", None), None),
            Route::WrongMethod { allow: "POST" }
        ));
        assert!(matches!(
            route(&req("POST", "/stats", None), None),
            Route::WrongMethod { allow: "GET" }
        ));
        assert!(matches!(route(&req("GET", "/nope", None), None), Route::Refuse(404, _)));
    }

    #[test]
    fn one_worker_requests() {
        use crate::core::{WorkerAction, WorkerRef};
        assert_eq!(
            route(&req("POST", "/worker?target=2&action=replace", None), None),
            Route::Intent(Intent::Worker {
                target: WorkerRef::Either(2),
                action: WorkerAction::Replace
            })
        );
        assert_eq!(
            route(
                &req("POST", "/worker?target=pid:4121&action=signal&signal=USR1", None),
                None
            ),
            Route::Intent(Intent::Worker {
                target: WorkerRef::Pid(crate::pid::Pid::from_raw(4121)),
                action: WorkerAction::Signal(nix::sys::signal::Signal::SIGUSR1)
            })
        );
        assert_eq!(
            route(&req("POST", "/worker?target=slot:0&action=stop", None), None),
            Route::Intent(Intent::Worker {
                target: WorkerRef::Slot(0),
                action: WorkerAction::Stop
            })
        );
        for bad in [
            "/worker?target=2",
            "/worker?target=x&action=stop",
            "/worker?target=1&action=signal",
            "/worker?target=1&action=signal&signal=NOPE",
        ] {
            assert!(
                matches!(route(&req("POST", bad, None), None), Route::Refuse(400, _)),
                "{bad}"
            );
        }
    }

    #[test]
    fn health_needs_no_token_and_is_read_only() {
        assert_eq!(route(&req("GET", "/health", None), Some("s3cret")), Route::Health);
        assert_eq!(route(&req("GET", "/health/", None), None), Route::Health);
        assert!(matches!(
            route(&req("POST", "/health", None), Some("s3cret")),
            Route::WrongMethod { allow: "GET" }
        ));
    }

    #[test]
    fn tokens() {
        assert!(matches!(
            route(&req("GET", "/stats", None), Some("s3cret")),
            Route::Refuse(403, _)
        ));
        assert!(matches!(
            route(&req("GET", "/stats", Some("Bearer wrong")), Some("s3cret")),
            Route::Refuse(403, _)
        ));
        assert_eq!(
            route(&req("GET", "/stats", Some("Bearer s3cret")), Some("s3cret")),
            Route::Stats
        );
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }

    #[test]
    fn addresses() {
        assert_eq!(
            ControlAddr::parse("unix:/run/sup.sock").unwrap(),
            ControlAddr::Unix("/run/sup.sock".into())
        );
        assert_eq!(
            ControlAddr::parse("tcp://127.0.0.1:9293").unwrap(),
            ControlAddr::Tcp("127.0.0.1:9293".parse().unwrap())
        );
        assert!(ControlAddr::parse("udp://1.2.3.4:5").is_err());
        assert!(ControlAddr::parse("unix:").is_err());
    }
}

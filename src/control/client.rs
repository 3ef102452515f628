//! `sup ctl`: drive a running sup through its control server, or, without
//! one, through signals to the pid in its pidfile.
//!
//! `--wait` follows a restart to its end — printing a line as each new
//! worker comes up — and exits non-zero if it failed or was abandoned: what
//! a deploy task needs to fail a deploy. During a hot restart the control
//! socket is briefly re-created; the client retries until its deadline.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::ControlAddr;
use crate::cli::{CtlArgs, CtlCommand};

fn out(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Run `sup ctl`; returns the exit status.
pub fn run(args: CtlArgs) -> u8 {
    match execute(&args) {
        Ok(code) => code,
        Err((code, message)) => {
            crate::say(&format!("error: {message}"));
            code
        }
    }
}

type Failure = (u8, String);

fn usage(msg: impl Into<String>) -> Failure {
    (crate::EXIT_USAGE, msg.into())
}

fn runtime(msg: impl Into<String>) -> Failure {
    (crate::EXIT_RUNTIME, msg.into())
}

struct Target {
    control: Option<ControlAddr>,
    token: Option<String>,
    pidfile: Option<PathBuf>,
}

fn target(args: &CtlArgs) -> Result<Target, Failure> {
    let file = match &args.config {
        Some(path) => {
            Some(crate::config_file::read(path).map_err(|why| usage(format!("--config {}: {why}", path.display())))?)
        }
        None => None,
    };
    let control = args
        .control
        .clone()
        .or_else(|| file.as_ref().and_then(|f| f.control.clone()));
    let control = control.map(|c| ControlAddr::parse(&c)).transpose().map_err(usage)?;
    Ok(Target {
        control,
        token: args
            .control_token
            .clone()
            .or_else(|| file.as_ref().and_then(|f| f.control_token.clone())),
        pidfile: args.pidfile.clone().or_else(|| file.and_then(|f| f.pidfile)),
    })
}

fn execute(args: &CtlArgs) -> Result<u8, Failure> {
    let t = target(args)?;
    let Some(control) = &t.control else {
        return by_signal(args, t.pidfile.as_deref());
    };
    let token = t.token.as_deref();
    let (method, path, label) = match &args.command {
        CtlCommand::Status | CtlCommand::Stats => ("GET", "/stats".to_string(), ""),
        CtlCommand::Restart => ("POST", "/restart".into(), "hot restart"),
        CtlCommand::PhasedRestart => ("POST", "/phased-restart".into(), "rolling restart"),
        CtlCommand::Stop => ("POST", "/stop".into(), "stop"),
        CtlCommand::Halt => ("POST", "/halt".into(), "halt"),
        CtlCommand::Incr => ("POST", "/incr".into(), "one worker more"),
        CtlCommand::Decr => ("POST", "/decr".into(), "one worker fewer"),
        CtlCommand::Workers { count } => ("POST", format!("/workers?count={count}"), "worker count"),
        CtlCommand::ReopenLogs => ("POST", "/reopen-logs".into(), "reopen logs"),
    };
    let waits = matches!(args.command, CtlCommand::Restart | CtlCommand::PhasedRestart);
    if args.wait && !waits {
        return Err(usage("--wait goes with restart and phased-restart"));
    }
    let (status, body) = request(control, token, method, &path).map_err(|e| runtime(format!("{control}: {e}")))?;
    if status != 200 && status != 202 {
        let why = body["error"].as_str().unwrap_or("no reason given").to_string();
        return Err(runtime(format!("{control} answered {status}: {why}")));
    }
    match args.command {
        CtlCommand::Stats => {
            out(&serde_json::to_string_pretty(&body).unwrap_or_default());
            Ok(0)
        }
        CtlCommand::Status => {
            print_status(&body);
            Ok(0)
        }
        _ => {
            let id = body["restart_id"].as_u64().unwrap_or(0);
            out(&format!("sup: {label} accepted"));
            if args.wait {
                let timeout =
                    crate::config::parse_duration(&args.timeout).map_err(|e| usage(format!("--timeout: {e}")))?;
                wait(control, token, id, Instant::now() + timeout)
            } else {
                Ok(0)
            }
        }
    }
}

/// Follow restart `id` (or whatever superseded it) to its end.
fn wait(control: &ControlAddr, token: Option<&str>, id: u64, deadline: Instant) -> Result<u8, Failure> {
    let mut announced = std::collections::HashSet::new();
    let mut last_error = String::new();
    loop {
        if Instant::now() > deadline {
            return Err(runtime(format!(
                "gave up waiting for the restart to finish ({last_error})"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
        let stats = match request(control, token, "GET", "/stats") {
            Ok((200, body)) => body,
            // The control socket is re-created during a hot restart.
            Ok((status, _)) => {
                last_error = format!("answer {status}");
                continue;
            }
            Err(e) => {
                last_error = e;
                continue;
            }
        };
        let Some(restart) = stats["restart"].as_object() else {
            continue;
        };
        let rid = restart.get("id").and_then(Value::as_u64).unwrap_or(0);
        let generation = restart.get("generation").and_then(Value::as_u64);
        if rid < id {
            continue;
        }
        for w in stats["worker_status"].as_array().into_iter().flatten() {
            let ready = w["state"] == "ready";
            let fresh = generation.is_some_and(|g| w["generation"].as_u64() == Some(g));
            let pid = w["pid"].as_i64().unwrap_or(0);
            if ready && fresh && announced.insert(pid) {
                out(&format!(
                    "worker {} (pid {pid}, gen {}) is ready",
                    w["slot"], w["generation"]
                ));
            }
        }
        let outcome = restart.get("outcome").and_then(Value::as_str).unwrap_or("running");
        if outcome == "running" || stats["restart_busy"] == true {
            continue;
        }
        let kind = restart.get("kind").and_then(Value::as_str).unwrap_or("");
        let error = restart.get("error").and_then(Value::as_str).unwrap_or("");
        return match outcome {
            "completed" => {
                out(&format!(
                    "sup: {kind} restart to gen {} complete",
                    generation.unwrap_or(0)
                ));
                Ok(0)
            }
            "failed" => {
                let slot = restart.get("failed_slot").and_then(Value::as_u64).unwrap_or(0);
                Err(runtime(format!(
                    "{kind} restart failed: worker {slot} {error}; the old workers keep serving"
                )))
            }
            _ => Err(runtime(format!("{kind} restart abandoned: {error}"))),
        };
    }
}

fn print_status(s: &Value) {
    out(&format!(
        "sup {} (pid {}), up {}s: {}",
        s["version"].as_str().unwrap_or("?"),
        s["pid"],
        s["uptime_seconds"],
        s["status"].as_str().unwrap_or("")
    ));
    for b in s["binds"].as_array().into_iter().flatten() {
        out(&format!(
            "  listening on {} (fd {}, name {})",
            b["address"].as_str().unwrap_or(""),
            b["fd"],
            b["name"].as_str().unwrap_or("")
        ));
    }
    if let Some(r) = s["restart"].as_object() {
        let get = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let error = get("error");
        out(&format!(
            "  last restart: #{} {} {}{}",
            r.get("id").and_then(Value::as_u64).unwrap_or(0),
            get("kind"),
            get("outcome"),
            if error.is_empty() {
                String::new()
            } else {
                format!(": {error}")
            }
        ));
    }
    out(&format!(
        "{:<5} {:<8} {:<5} {:<9} {:<9} {:<14} {:>9} {:>6}  {}",
        "SLOT", "PID", "GEN", "STATE", "RESTARTS", "LAST EXIT", "RSS", "CPU%", "STATUS"
    ));
    for w in s["worker_status"].as_array().into_iter().flatten() {
        let rss = w["rss_bytes"]
            .as_u64()
            .map_or("-".to_string(), |b| format!("{:.1}M", b as f64 / 1_048_576.0));
        let cpu = w["cpu_percent"].as_f64().map_or("-".to_string(), |c| format!("{c:.1}"));
        // JSON values ignore width: pad their text.
        out(&format!(
            "{:<5} {:<8} {:<5} {:<9} {:<9} {:<14} {:>9} {:>6}  {}",
            w["slot"].to_string(),
            w["pid"].to_string(),
            w["generation"].to_string(),
            w["state"].as_str().unwrap_or(""),
            w["restarts"].to_string(),
            w["last_exit"].as_str().unwrap_or("-"),
            rss,
            cpu,
            w["status"].as_str().unwrap_or("")
        ));
    }
}

/// Without a control server: the same commands as signals to the pidfile's pid.
fn by_signal(args: &CtlArgs, pidfile: Option<&Path>) -> Result<u8, Failure> {
    use nix::sys::signal::Signal;
    let signal = match args.command {
        CtlCommand::Restart => Signal::SIGUSR2,
        CtlCommand::PhasedRestart => Signal::SIGUSR1,
        CtlCommand::Stop => Signal::SIGTERM,
        CtlCommand::Halt => Signal::SIGQUIT,
        CtlCommand::Incr => Signal::SIGTTIN,
        CtlCommand::Decr => Signal::SIGTTOU,
        CtlCommand::ReopenLogs => Signal::SIGHUP,
        CtlCommand::Status | CtlCommand::Stats | CtlCommand::Workers { .. } => {
            return Err(usage(
                "this command needs a control server: give --control (or a --config with control:)",
            ));
        }
    };
    if args.wait {
        return Err(usage(
            "--wait needs a control server: give --control (or a --config with control:)",
        ));
    }
    let pidfile = pidfile.ok_or_else(|| usage("no --control and no --pidfile: nothing to talk to"))?;
    let text = std::fs::read_to_string(pidfile).map_err(|e| {
        runtime(format!(
            "cannot read {}: {}",
            pidfile.display(),
            crate::command::os_error(&e)
        ))
    })?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| runtime(format!("{} does not hold a pid", pidfile.display())))?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
        .map_err(|e| runtime(format!("cannot signal sup (pid {pid}): {e}")))?;
    out(&format!("sup: sent {} to pid {pid}", signal.as_str()));
    Ok(0)
}

/// One HTTP request; the status and the JSON body.
pub fn request(control: &ControlAddr, token: Option<&str>, method: &str, path: &str) -> Result<(u16, Value), String> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: sup\r\nConnection: close\r\nContent-Length: 0\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    let mut text = Vec::new();
    let timeout = Some(Duration::from_secs(10));
    match control {
        ControlAddr::Unix(p) => {
            let mut s = std::os::unix::net::UnixStream::connect(p).map_err(|e| crate::command::os_error(&e))?;
            s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
            s.write_all(head.as_bytes()).map_err(|e| crate::command::os_error(&e))?;
            s.read_to_end(&mut text).map_err(|e| crate::command::os_error(&e))?;
        }
        ControlAddr::Tcp(a) => {
            let mut s = std::net::TcpStream::connect_timeout(a, Duration::from_secs(5))
                .map_err(|e| crate::command::os_error(&e))?;
            s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
            s.write_all(head.as_bytes()).map_err(|e| crate::command::os_error(&e))?;
            s.read_to_end(&mut text).map_err(|e| crate::command::os_error(&e))?;
        }
    }
    let text = String::from_utf8_lossy(&text);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "not an HTTP answer".to_string())?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let value = serde_json::from_str(body).unwrap_or(Value::Null);
    Ok((status, value))
}

//! `GET /metrics`, read by Prometheus's own parser (the `prometheus_client`
//! package), with the accept queue seen from the kernel.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::harness::*;

/// Every sample, as Prometheus's Python client parses the text: a line
/// `name{labels as JSON} value` each. None if the package is missing
/// (locally; in CI that fails, since .ci/run installs it).
fn parse(text: &str) -> Option<Vec<(String, serde_json::Value, f64)>> {
    const PARSER: &str = "import sys, json\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        for f in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   for s in f.samples:\n\
        \x20       print(json.dumps([s.name, s.labels, s.value]))\n";
    let have = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var("CI").is_err(),
            "prometheus_client is required in CI (.ci/run installs it)"
        );
        let _ = std::io::stderr()
            .write_all(b"skipped: prometheus_client is not installed (pip install prometheus_client)\n");
        return None;
    }
    let mut child = Command::new("python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the parser refused it:\n{text}");
    Some(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v[0].as_str().unwrap().to_string(), v[1].clone(), v[2].as_f64().unwrap())
            })
            .collect(),
    )
}

fn value(samples: &[(String, serde_json::Value, f64)], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[*k] == *v))
        .map(|s| s.2)
}

#[test]
fn metrics_parse_as_prometheus_text_and_show_the_accept_queue_of_stopped_workers() {
    let dir = TestDir::new();
    let sock = dir.join("c.sock");
    let control = format!("unix:{}", sock.display());
    let sup = Sup::start(
        &dir,
        &[
            "--bind",
            "127.0.0.1:0?name=web&backlog=64",
            "--workers",
            "2",
            "--ready",
            "notify",
            "--control",
            &control,
            "--",
            WORKER,
            "--serve",
            "--ready-after",
            "0",
        ],
    );
    let addr = sup.tcp_addr(0);
    sup.wait_workers_ready(2);
    sup.signal(libc::SIGUSR1);
    sup.wait_restart_complete(RestartKind::Rolling, 1, secs(30));
    let pids: Vec<i32> = sup.stats().worker_status.iter().map(|w| w.pid).collect();
    assert_eq!(pids.len(), 2);
    // Nobody accepts: 7 connections wait in the listener's queue.
    for pid in &pids {
        // SAFETY: workers of our sup.
        unsafe { libc::kill(*pid, libc::SIGSTOP) };
    }
    // Every thread of it: an accept loop runs in a thread of its own.
    for pid in &pids {
        wait_until("the worker's threads to be stopped", secs(10), || {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
            let all_stopped = tasks.filter_map(Result::ok).all(|t| {
                std::fs::read_to_string(t.path().join("stat"))
                    .is_ok_and(|stat| stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()) == Some("T"))
            });
            all_stopped.then_some(())
        });
    }
    let waiting: Vec<_> = (0..7).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
    let response = metrics_text(&sock);
    for pid in &pids {
        // SAFETY: as above.
        unsafe { libc::kill(*pid, libc::SIGCONT) };
    }
    drop(waiting);
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    let Some(samples) = parse(body) else { return };
    let address = format!("tcp://{addr}");
    let listener = [("listener", "web"), ("address", address.as_str())];
    assert_eq!(
        value(&samples, "sup_listener_queue_length", &listener),
        Some(7.0),
        "{body}"
    );
    assert_eq!(
        value(&samples, "sup_listener_queue_limit", &listener),
        Some(64.0),
        "{body}"
    );
    assert_eq!(value(&samples, "sup_workers", &[("state", "ready")]), Some(2.0));
    assert_eq!(value(&samples, "sup_generation", &[]), Some(1.0));
    // The parser names a counter's sample with its `_total`.
    let rolled = [("kind", "rolling"), ("outcome", "completed")];
    assert_eq!(value(&samples, "sup_restarts_total", &rolled), Some(1.0), "{body}");
    assert_eq!(
        value(&samples, "sup_worker_exits_total", &[("cause", "stopped")]),
        Some(2.0)
    );
    for pid in &pids {
        let p = pid.to_string();
        let memory = value(&samples, "sup_worker_resident_memory_bytes", &[("pid", &p)]).unwrap();
        assert!(memory > 0.0, "{body}");
        assert!(value(&samples, "sup_worker_cpu_seconds_total", &[("pid", &p)]).is_some());
    }
}

/// One sample's value, read from the text as a scraper sees it.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn counters_survive_a_reexec_and_an_overlap_hot_restart() {
    let dir = TestDir::new();
    let sock = dir.join("c.sock");
    let control = format!("unix:{}", sock.display());
    let _sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "2",
            "--hot-restart",
            "overlap",
            "--control",
            &control,
            "--",
            WORKER,
            "--serve",
        ],
    );
    let ready = |n: usize| {
        wait_until("workers ready", secs(30), || {
            let s = stats(&sock);
            (s.booted_workers == n && !s.restart_busy).then_some(s)
        })
    };
    wait_until("the control socket", secs(10), || sock.exists().then_some(()));
    let first = ready(2);
    // One crash, counted.
    let victim = first.worker_status[0].pid;
    // SAFETY: a worker of our sup.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    wait_until("the crash to be replaced", secs(30), || {
        let s = stats(&sock);
        (s.booted_workers == 2 && s.worker_status.iter().all(|w| w.pid != victim)).then_some(())
    });
    let metrics = || {
        let text = metrics_text(&sock);
        text.split_once("\r\n\r\n").unwrap().1.to_string()
    };
    let crashed = r#"sup_worker_exits_total{cause="crashed"}"#;
    assert_eq!(sample(&metrics(), crashed), Some(1.0));
    let (code, _, stderr) = ctl(&["--control", &control, "reexec", "--wait"]);
    assert_eq!(code, Some(0), "{stderr}");
    let body = metrics();
    assert_eq!(sample(&body, crashed), Some(1.0), "after the reexec:\n{body}");
    assert_eq!(
        sample(&body, r#"sup_restarts_total{kind="reexec",outcome="completed"}"#),
        Some(1.0),
        "{body}"
    );
    let (code, _, stderr) = ctl(&["--control", &control, "restart", "--wait"]);
    assert_eq!(code, Some(0), "{stderr}");
    ready(2);
    let body = metrics();
    assert_eq!(sample(&body, crashed), Some(1.0), "after the hot restart:\n{body}");
    assert_eq!(
        sample(&body, r#"sup_restarts_total{kind="reexec",outcome="completed"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&body, r#"sup_restarts_total{kind="hot",outcome="completed"}"#),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, r#"sup_worker_exits_total{cause="stopped"}"#),
        Some(2.0),
        "the overlap restart stopped the two adopted workers:\n{body}"
    );
}

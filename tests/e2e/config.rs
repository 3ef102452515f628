//! The YAML configuration file, its precedence, and config edits applied
//! by a hot restart.

use std::collections::HashSet;

use crate::harness::*;

fn write(dir: &TestDir, name: &str, text: &str) -> String {
    std::fs::write(dir.join(name), text).unwrap();
    dir.s(name)
}

#[test]
fn a_config_file_alone_runs_sup_and_flags_and_env_override_it() {
    let dir = TestDir::new();
    let cfg = write(
        &dir,
        "sup.yml",
        &format!("bind: 127.0.0.1:0\nworkers: 2\nready: notify\ncommand: [{WORKER}, --serve, --ready-after, \"0\"]\n"),
    );
    let check = |extra: &[&str], env: Option<(&str, &str)>| {
        let mut cmd = std::process::Command::new(SUP);
        cmd.args(["--check", "--config", &cfg]).args(extra);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(check(&[], None).contains("ok: 2 worker(s)"));
    assert!(
        check(&[], Some(("SUP_WORKERS", "4"))).contains("ok: 4 worker(s)"),
        "env over file"
    );
    assert!(
        check(&["--workers", "5"], Some(("SUP_WORKERS", "4"))).contains("ok: 5 worker(s)"),
        "flag over env"
    );

    let sup = Sup::start(&dir, &["--config", &cfg]);
    let addr = sup.tcp_addr(0);
    assert_eq!(answering(addr, 2).len(), 2);
}

#[test]
fn a_misspelled_key_is_rejected_with_its_line_and_check_agrees() {
    let dir = TestDir::new();
    let cfg = write(
        &dir,
        "sup.yml",
        &format!("workers: 2\nwrokers: 3\ncommand: [{WORKER}]\n"),
    );
    for args in [
        vec!["--config", cfg.as_str()],
        vec!["--check", "--config", cfg.as_str()],
    ] {
        let out = std::process::Command::new(SUP).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("line 2 column 1: unknown field `wrokers`"), "{err}");
    }
    let yes = write(&dir, "yes.yml", &format!("einhorn_ack: yes\ncommand: [{WORKER}]\n"));
    let out = std::process::Command::new(SUP)
        .args(["--check", "--config", &yes])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "`yes` is not a YAML 1.2 boolean");
}

#[test]
fn an_invalid_config_edit_abandons_the_hot_restart() {
    let dir = TestDir::new();
    let good =
        format!("bind: 127.0.0.1:0\nworkers: 2\nready: notify\ncommand: [{WORKER}, --serve, --ready-after, \"0\"]\n");
    let cfg = write(&dir, "sup.yml", &good);
    let sup = Sup::controlled(&dir, &["--config", &cfg]);
    let addr = sup.tcp_addr(0);
    let old: HashSet<i64> = answering_pids(addr, 2);
    write(&dir, "sup.yml", &good.replace("workers: 2", "workers: two"));
    sup.signal(libc::SIGUSR2);
    let (_, error) = sup.wait_restart_ended(1, RestartKind::Hot, RestartOutcome::Abandoned, secs(30));
    assert!(error.contains("failed its check"), "{error}");
    assert!(
        sup.log().contains("sup.yml: line 2 column 10"),
        "the reason is logged:\n{}",
        sup.log()
    );
    assert_eq!(answering_pids(addr, 2), old);
}

#[test]
fn a_valid_config_edit_is_applied_by_a_hot_restart() {
    let dir = TestDir::new();
    let (old_sock, new_sock) = (dir.s("old.sock"), dir.s("new.sock"));
    let config = |workers: u32, unix: &str| {
        format!(
            "bind: [\"127.0.0.1:0?name=web\", \"unix:{unix}\"]\nworkers: {workers}\nready: notify\n\
             command: [{WORKER}, --serve, --ready-after, \"0\"]\n"
        )
    };
    let cfg = write(&dir, "sup.yml", &config(2, &old_sock));
    let sup = Sup::controlled(&dir, &["--config", &cfg]);
    let addr = sup.tcp_addr(0);
    assert_eq!(answering(addr, 2).len(), 2);
    assert!(get_unix(std::path::Path::new(&old_sock)).is_ok());

    write(&dir, "sup.yml", &config(3, &new_sock));
    let load = Load::start(addr);
    sup.signal(libc::SIGUSR2);
    sup.wait_restart_complete(RestartKind::Hot, 1, secs(60));
    load.finish_without_failures(&sup);
    let now = answering(addr, 3);
    assert!(
        now.iter().all(|(_, g)| *g == 1),
        "3 workers of the new generation on the same port: {now:?}"
    );
    assert!(
        !std::path::Path::new(&old_sock).exists(),
        "the removed bind's socket file is gone"
    );
    let via_new = get_unix(std::path::Path::new(&new_sock)).unwrap();
    assert_eq!(via_new["fd"], 4);
}

#[test]
fn a_relative_config_is_read_from_the_new_release_after_a_hot_restart() {
    let dir = TestDir::new();
    let release_with = |name: &str, workers: u32| {
        let r = good(&dir, name);
        let cfg = format!("bind: 127.0.0.1:0\nworkers: {workers}\nready: notify\ncommand: [./run]\n");
        std::fs::write(r.join("sup.yml"), cfg).unwrap();
        r
    };
    let r1 = release_with("r1", 1);
    point(&dir, &r1);
    // sup starts in the release (as under systemd's WorkingDirectory=current).
    let control = dir.join("ctl.sock");
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c").arg(format!(
        "cd current && exec {SUP} --control unix:{} --directory {} --config sup.yml",
        control.display(),
        dir.s("current")
    ));
    let sup = Sup::launch(&dir, cmd).control_at(&control);
    let addr = sup.tcp_addr(0);
    assert_eq!(answering(addr, 1).len(), 1);
    point(&dir, &release_with("r2", 3));
    sup.signal(libc::SIGUSR2);
    sup.wait_restart_complete(RestartKind::Hot, 1, secs(60));
    let now = answering(addr, 3);
    assert!(now.iter().all(|(_, g)| *g == 1), "{now:?}");
}

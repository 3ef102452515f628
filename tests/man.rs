//! `man/sup.1` and `man/sup-ctl.1`: generated from the clap definitions (the
//! single source of `--help`) plus hand-written sections. This test fails
//! when a checked-in page is stale; `scripts/gen-man` regenerates them.

#![expect(clippy::unwrap_used, reason = "a test that cannot render should fail loudly")]

use clap::CommandFactory;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, italic, roman};

fn section(roff: &mut Roff, title: &str) {
    roff.control("SH", [title]);
}

/// A tagged paragraph: a bold term, then its text.
fn item(roff: &mut Roff, term: &str, text: &str) {
    roff.control("TP", []);
    roff.text([bold(term)]);
    roff.text([roman(text)]);
}

fn para(roff: &mut Roff, text: &str) {
    roff.control("PP", []);
    roff.text([roman(text)]);
}

/// An indented literal block (an example command).
fn example(roff: &mut Roff, lines: &[&str]) {
    roff.control("PP", []);
    roff.control("RS", ["4"]);
    roff.control("nf", []);
    for l in lines {
        roff.text([roman(*l)]);
    }
    roff.control("fi", []);
    roff.control("RE", []);
}

/// The generated part of a page: title, name, synopsis, description, options.
fn head(cmd: clap::Command, title: &str) -> (Man, Vec<u8>) {
    let man = Man::new(cmd)
        .title(title)
        .section("1")
        .manual("sup manual")
        .source(format!("sup {}", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    man.render_title(&mut out).unwrap();
    man.render_name_section(&mut out).unwrap();
    man.render_synopsis_section(&mut out).unwrap();
    man.render_description_section(&mut out).unwrap();
    man.render_options_section(&mut out).unwrap();
    (man, out)
}

fn sup_page() -> String {
    let (man, mut out) = head(sup::cli::Cli::command(), "SUP");

    let mut r = Roff::new();
    section(&mut r, "RESTARTS");
    para(
        &mut r,
        "SIGUSR1 (sup ctl phased-restart) is a rolling restart: for each slot a worker of the new generation is \
         started, and only once it is ready is the old worker sent the stop signal; --max-surge replacements boot \
         at once. A replacement that exits or misses --boot-timeout stops the rollout: it is cleaned up and every \
         old worker keeps serving.",
    );
    r.control("PP", []);
    r.text([
        bold("Old and new code serve side by side during a rolling restart."),
        roman(
            " Database migrations must be backwards-compatible with the code still running; when they are not, use \
             the hot restart.",
        ),
    ]);
    para(
        &mut r,
        "SIGUSR2 (sup ctl restart) is a hot restart: after the --on-restart hook and a preflight (the sup program at \
         the path sup was started as runs with --check and the same arguments in the resolved --directory), every \
         worker is stopped, then sup changes into the resolved directory and re-executes itself in place: same pid, \
         listening sockets kept open (connections wait in the backlog), configuration read again. Two versions \
         never serve at once. With --hot-restart overlap, sup re-executes with the workers still serving, adopts \
         them and rolls them to the new generation like SIGUSR1: no pause, but old and new code overlap. sup ctl \
         reexec re-executes and adopts every worker, touching none. A failed hook or preflight abandons the \
         restart and the old workers keep serving.",
    );
    section(&mut r, "SIGNALS");
    for (sig, what) in [
        ("USR1", "Rolling restart."),
        ("USR2", "Hot restart."),
        (
            "TERM, INT",
            "Graceful stop, drained: GET /health answers 503 at once and the workers serve on for \
             --stop-delay; then new connections are kept out (TCP SYNs dropped, which clients retry; a unix \
             socket's path removed) and the workers take what is already queued; then the stop signal to every \
             worker, SIGKILL to a worker's process group when --graceful-timeout runs out; exit 0. A second INT \
             stops at once.",
        ),
        (
            "QUIT",
            "Immediate stop: SIGKILL to every worker's process group; exit 0.",
        ),
        ("TTIN, TTOU", "One worker more, one fewer (never below one)."),
        ("HUP", "Reopen --log-file."),
        ("CHLD", "Reap every child that has exited; sup never leaves a zombie."),
    ] {
        item(&mut r, sig, what);
    }
    para(
        &mut r,
        "Workers receive the stop signal (--stop-signal, TERM by default) to their pid, and SIGKILL to their \
         process group after --graceful-timeout. They start with default signal dispositions and an empty mask.",
    );
    section(&mut r, "SYSTEMD");
    para(
        &mut r,
        "With NOTIFY_SOCKET set, sup tells systemd READY=1, RELOADING=1, STOPPING=1 and STATUS=, and hands every \
         listening socket (FDNAME= its bind's name) and the control socket (FDNAME=sup-control) to the unit's fd \
         store (FileDescriptorStoreMax=). A sup started with them in LISTEN_FDS/LISTEN_FDNAMES takes each by name, \
         when its address still fits the bind: a systemctl restart or a crash of sup refuses no connection.",
    );
    section(&mut r, "ENVIRONMENT");
    para(
        &mut r,
        "Workers receive sup's environment without sup's own LISTEN_*, NOTIFY_SOCKET and WATCHDOG_*, plus the \
         --env-file variables, plus:",
    );
    for (var, what) in [
        (
            "LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES",
            "systemd socket passing: the count, the worker's own pid, the names.",
        ),
        (
            "EINHORN_FD_COUNT, EINHORN_FD_n, EINHORN_FDS, EINHORN_MASTER_PID, EINHORN_CHILD_INDEX",
            "Einhorn's; EINHORN_SOCK_PATH too with --einhorn-ack.",
        ),
        ("SERVER_STARTER_PORT, SERVER_STARTER_GENERATION", "server::Starter's."),
        (
            "SUP_WORKER, SUP_GENERATION, SUP_PID",
            "The slot, the generation, sup's pid.",
        ),
        (
            "NOTIFY_SOCKET",
            "sup's sd_notify socket, a file path (or @name with --notify-socket abstract): send READY=1, STATUS=, \
             WATCHDOG=1, STOPPING=1 there.",
        ),
        (
            "WATCHDOG_USEC, WATCHDOG_PID",
            "With --watchdog: the timeout in microseconds, and the worker's own pid (as systemd sets them), so \
             sd_notify libraries send WATCHDOG=1 by themselves.",
        ),
        ("PWD", "The resolved working directory."),
    ] {
        item(&mut r, var, what);
    }
    para(
        &mut r,
        "sup reads SUP_CONFIG, SUP_BIND, SUP_WORKERS and a SUP_ variable for every other flag (named after the \
         flag); RUST_LOG sets the log level when neither -v nor -q is given; NOTIFY_SOCKET and WATCHDOG_USEC make it \
         report to systemd; LISTEN_FDS and LISTEN_PID (equal to sup's pid) hand it activated sockets.",
    );
    section(&mut r, "FILES");
    item(
        &mut r,
        "--config FILE",
        "YAML settings; keys are the long flags with _ for -.",
    );
    item(
        &mut r,
        "--pidfile FILE",
        "sup's pid, stable across hot restarts; removed on stop.",
    );
    item(
        &mut r,
        "--control unix:PATH",
        "The control socket, mode 0600; removed on stop (kept under systemd, whose fd store keeps the socket).",
    );
    item(
        &mut r,
        "$RUNTIME_DIRECTORY/sup.XXXXXX/",
        "sup's private directory (else under $XDG_RUNTIME_DIR, $TMPDIR or /tmp), mode 0700, owned by the workers' \
         user: notify (NOTIFY_SOCKET) and einhorn.sock (EINHORN_SOCK_PATH). Kept across hot restarts; removed when \
         sup stops.",
    );
    section(&mut r, "EXIT STATUS");
    item(
        &mut r,
        "0",
        "sup stopped after TERM, INT or QUIT (or sup ctl stop or halt), or --check found nothing wrong.",
    );
    item(&mut r, "1", "A runtime failure, such as a socket that cannot be bound.");
    item(
        &mut r,
        "2",
        "A usage or configuration error; every problem is printed, one line each.",
    );
    para(
        &mut r,
        "A worker that sup could not execute exits 127 (126 when exec was refused for permissions).",
    );
    section(&mut r, "EXAMPLES");
    example(
        &mut r,
        &["sup --bind 0.0.0.0:3000 --workers 4 --ready notify -- bundle exec puma -C config/puma.rb"],
    );
    example(
        &mut r,
        &["sup --bind unix:/run/app.sock --directory /srv/app/current -- gunicorn app:app"],
    );
    example(
        &mut r,
        &[
            "kill -USR1 $(cat tmp/pids/sup.pid)",
            "sup ctl --control unix:/run/app/sup.sock phased-restart --wait",
        ],
    );
    example(
        &mut r,
        &[
            "uvicorn under sup, given its socket by number:",
            "sup --bind :8000 -- uvicorn --fd {fd} app:app",
        ],
    );
    example(
        &mut r,
        &[
            "Shell completions (bash; also zsh, fish, elvish, powershell):",
            "source <(sup completions bash)",
        ],
    );
    section(&mut r, "SEE ALSO");
    r.text([
        bold("sup-ctl"),
        roman("(1), "),
        bold("systemd.socket"),
        roman("(5), "),
        bold("sd_notify"),
        roman("(3), "),
        bold("sd_listen_fds"),
        roman("(3)"),
    ]);
    out.extend(r.render().into_bytes());
    man.render_version_section(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn ctl_page() -> String {
    let cmd = sup::cli::Cli::command();
    let ctl = cmd
        .find_subcommand("ctl")
        .unwrap()
        .clone()
        .name("sup-ctl")
        .bin_name("sup ctl");
    let (man, mut out) = head(ctl, "SUP-CTL");
    man.render_subcommands_section(&mut out).unwrap();
    let mut r = Roff::new();
    section(&mut r, "EXIT STATUS");
    item(&mut r, "0", "Done; with --wait, the restart completed.");
    item(
        &mut r,
        "1",
        "sup could not be reached or refused, or the restart failed or was abandoned.",
    );
    item(&mut r, "2", "A usage error.");
    section(&mut r, "EXAMPLES");
    example(
        &mut r,
        &[
            "sup ctl --control unix:/run/app/sup.sock status",
            "sup ctl --config sup.yml phased-restart --wait",
        ],
    );
    section(&mut r, "SEE ALSO");
    r.text([bold("sup"), roman("(1)"), italic("")]);
    out.extend(r.render().into_bytes());
    String::from_utf8(out).unwrap()
}

fn check(path: &str, page: &str) {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_MAN").is_some() {
        std::fs::write(&full, page).unwrap();
        return;
    }
    let current = std::fs::read_to_string(&full).unwrap_or_default();
    assert!(
        current == page,
        "{path} is stale: run scripts/gen-man and commit the result"
    );
}

#[test]
fn the_man_pages_are_current() {
    check("man/sup.1", &sup_page());
    check("man/sup-ctl.1", &ctl_page());
}

#[test]
fn the_man_page_names_every_long_flag_of_the_help() {
    let page = sup_page();
    let cmd = sup::cli::Cli::command();
    for arg in cmd.get_arguments() {
        if let Some(long) = arg.get_long() {
            // roff escapes the dashes: \-\-graceful\-timeout
            let escaped = format!("\\-\\-{}", long.replace('-', "\\-"));
            assert!(page.contains(&escaped), "--{long} is missing from man/sup.1");
        }
    }
    for title in [
        "SIGNALS",
        "ENVIRONMENT",
        "SYSTEMD",
        "FILES",
        "EXIT STATUS",
        "EXAMPLES",
        "SEE ALSO",
        "RESTARTS",
    ] {
        assert!(
            page.contains(&format!(".SH {title}")) || page.contains(&format!(".SH \"{title}\"")),
            "{title}"
        );
    }
}

#[test]
fn groff_reports_no_warnings() {
    for page in ["man/sup.1", "man/sup-ctl.1"] {
        let path = format!("{}/{page}", env!("CARGO_MANIFEST_DIR"));
        let out = match std::process::Command::new("groff")
            .args(["-man", "-ww", "-z", &path])
            .output()
        {
            Ok(o) => o,
            Err(_) => {
                assert!(std::env::var("CI").is_err(), "groff is required in CI");
                let _ = std::io::Write::write_all(&mut std::io::stderr(), b"skipped: groff is not installed\n");
                return;
            }
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && stderr.is_empty(), "{page}: {stderr}");
    }
}

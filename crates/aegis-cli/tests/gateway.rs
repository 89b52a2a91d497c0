//! `aegis gateway` as real processes: the first admin token, the audit chain's verify command
//! (and tampering it detects), the OpenAPI document, and a gateway and a queue-mode FL server
//! that start and stop on SIGTERM.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use common::{Sandbox, s};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn python() -> String {
    std::env::var("AEGIS_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[test]
fn token_is_shown_once_and_the_verify_command_detects_tampering() {
    let sb = Sandbox::new();
    let db_path = sb.join("gw.db");
    let db = format!("sqlite:{}", db_path.display());
    let out = sb.aegis().ok([
        "gateway",
        "token",
        "--database",
        &db,
        "--role",
        "admin",
        "--name",
        "ops",
    ]);
    let token = stdout(&out).trim().to_string();
    assert!(token.starts_with("aegis_") && token.len() == 49, "{token}");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !err.contains(&token),
        "the token must not reach stderr: {err}"
    );
    // The database is private (0600) and holds the token's hash only.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&db_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    let raw = std::fs::read(&db_path).unwrap();
    assert!(!raw.windows(token.len()).any(|w| w == token.as_bytes()));
    sb.aegis().ok([
        "gateway",
        "token",
        "--database",
        &db,
        "--role",
        "scientist",
        "--name",
        "alice",
        "--expires-in",
        "3600",
    ]);
    let bad = sb.aegis().fail([
        "gateway",
        "token",
        "--database",
        &db,
        "--role",
        "root",
        "--name",
        "x",
    ]);
    assert!(bad.contains("root"), "{bad}");

    let ok = sb
        .aegis()
        .ok(["gateway", "audit", "verify", "--database", &db]);
    assert!(
        stdout(&ok).contains("audit log intact: 2 entries"),
        "{}",
        stdout(&ok)
    );

    // Edit the first entry behind the gateway's back.
    let tamper = std::process::Command::new(python())
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"UPDATE audit SET actor='mallory' WHERE seq=1\"); c.commit()",
            s(&db_path),
        ])
        .output()
        .unwrap();
    assert!(
        tamper.status.success(),
        "{}",
        String::from_utf8_lossy(&tamper.stderr)
    );
    let out = sb
        .aegis()
        .run(["gateway", "audit", "verify", "--database", &db]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TAMPERED at entry 1"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    // Deleting an entry is caught too.
    let tamper = std::process::Command::new(python())
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"UPDATE audit SET actor='cli' WHERE seq=1\"); c.execute('DELETE FROM audit WHERE seq=1'); c.commit()",
            s(&db_path),
        ])
        .output()
        .unwrap();
    assert!(tamper.status.success());
    let err = sb
        .aegis()
        .fail(["gateway", "audit", "verify", "--database", &db]);
    assert!(err.contains("TAMPERED at entry 2"), "{err}");

    // A URL that is neither SQLite nor PostgreSQL: one line, no panic.
    let err = sb
        .aegis()
        .fail(["gateway", "audit", "verify", "--database", "mysql://x"]);
    assert!(err.contains("expected sqlite:PATH or postgres://"), "{err}");
}

#[test]
fn openapi_command_prints_the_document() {
    let sb = Sandbox::new();
    let out = sb.aegis().ok(["gateway", "openapi"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["paths"]["/v1/jobs/{id}/model"]["get"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

/// Waits (bounded) for `needle` in the child's stderr.
fn wait_for_line(child: &mut std::process::Child, needle: &str) -> String {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let start = Instant::now();
    let mut seen = String::new();
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(needle) {
                return seen;
            }
        }
    }
    let _ = child.kill();
    panic!("{needle:?} not seen in 20 s:\n{seen}");
}

fn sigterm_and_wait(child: &mut std::process::Child) -> std::process::ExitStatus {
    let pid = rustix::process::Pid::from_child(child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn gateway_and_queue_server_processes_start_and_stop_on_sigterm() {
    let sb = Sandbox::new();
    let pki = sb.join("pki");
    sb.aegis().ok(["certs", "init", "--dir", s(&pki)]);
    // Without its administrator certificate the gateway says how to make one.
    let err = sb.aegis().fail([
        "gateway",
        "serve",
        "--pki",
        s(&pki),
        "--listen",
        "127.0.0.1:0",
        "--database",
        &format!("sqlite:{}", sb.join("gw.db").display()),
    ]);
    assert!(
        err.contains("aegis certs issue") && err.contains("--admin gateway"),
        "{err}"
    );
    sb.aegis()
        .ok(["certs", "issue", "--dir", s(&pki), "--admin", "gateway"]);
    sb.aegis().ok(["key", "init"]);

    let port = |l: &std::net::TcpListener| l.local_addr().unwrap().port();
    let (a, b) = (
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
    );
    let (fl_port, admin_port) = (port(&a), port(&b));
    drop((a, b));
    let mut server = sb.aegis().spawn([
        "server",
        "--pki",
        s(&pki),
        "--state-dir",
        s(&sb.join("state")),
        "--listen",
        &format!("127.0.0.1:{fl_port}"),
        "--admin-listen",
        &format!("127.0.0.1:{admin_port}"),
    ]);
    wait_for_line(&mut server, "waiting for jobs");
    let mut gateway = sb.aegis().spawn([
        "gateway",
        "serve",
        "--pki",
        s(&pki),
        "--listen",
        "127.0.0.1:0",
        "--fl-admin",
        &format!("127.0.0.1:{admin_port}"),
        "--database",
        &format!("sqlite:{}", sb.join("gw.db").display()),
    ]);
    let line = wait_for_line(&mut gateway, "aegis gateway: https://");
    assert!(line.contains("sqlite database"), "{line}");
    assert!(sigterm_and_wait(&mut gateway).success());
    assert!(sigterm_and_wait(&mut server).success());
}

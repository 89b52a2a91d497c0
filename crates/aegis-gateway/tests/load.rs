//! The gateway under load, briefly: `wrk` over TLS 1.3 keep-alive against an authenticated
//! `GET /v1/jobs/{id}` (every answer 200, no socket errors), then a flood of requests with a
//! wrong token (every answer 401; the gateway stays up; the auth-failure audit entries are
//! rate-limited and say how many failures they left out). A correctness-under-load check on a
//! debug build, not the benchmark (that is bench/gateway.sh).
//!
//! Needs `AEGIS_TEST_WRK` (path of wrk); without it the test is skipped, except in CI
//! (`CI=true`), where that is a failure.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// The longest a wrk run may take (its own duration is 2–3 s) before it is killed.
const WRK_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_under_wrk_load() {
    let Some(wrk) = tool("AEGIS_TEST_WRK") else {
        return;
    };
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let url = database("sqlite", dir.path()).await.unwrap();
    let env = Env::start(url, Opts::default()).await;
    let admin = env.admin_token.clone();

    let sci = scientist_token(&env, "alice").await;
    // No client ever connects: the job never finishes, and every GET asks the FL server for it.
    let id = create_job(
        &env,
        &sci,
        &json!({
            "name": "load",
            "model": {"kind": "softmax_regression", "inputs": 4, "classes": 2},
            "rounds": 5,
            "cohort_size": 3,
            "min_clients": 3,
        }),
    )
    .await;
    let one = env.get(&format!("/v1/jobs/{id}"), Some(&sci)).await;
    assert_eq!(one.status, 200);
    // The FL server takes it at once ("running") and waits there for clients.
    assert!(
        ["queued", "running"].contains(&one.json()["status"].as_str().unwrap()),
        "{}",
        one.json()
    );
    let target = format!("https://localhost:{}/v1/jobs/{id}", env.gw_addr.port());

    // ---- the authenticated GET: all 2xx, no socket errors
    let good = wrk_run(&wrk, &["-t2", "-c32", "-d3s", "--latency"], &sci, &target).await;
    eprintln!("wrk, valid token:\n{}", good.raw);
    eprintln!(
        "valid token: {} requests, {:.0} req/s, latency {}",
        good.requests,
        good.rps,
        good.latency
            .iter()
            .map(|(p, v)| format!("p{p} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(
        good.requests > 100,
        "only {} requests in 3 s:\n{}",
        good.requests,
        good.raw
    );
    assert_eq!(good.non_2xx, 0, "non-2xx answers under load:\n{}", good.raw);
    assert_eq!(
        good.socket_errors, 0,
        "socket errors under load:\n{}",
        good.raw
    );
    assert!(
        good.latency.len() == 4,
        "no latency distribution:\n{}",
        good.raw
    );

    // ---- a flood with a wrong (well-formed, unknown) token: all 401, the gateway stays up
    let before = auth_failures_metric(&env).await;
    let wrong = format!("aegis_{}", "A".repeat(43));
    let bad = wrk_run(&wrk, &["-t2", "-c32", "-d2s", "--latency"], &wrong, &target).await;
    eprintln!("wrk, wrong token:\n{}", bad.raw);
    assert!(
        bad.requests > 100,
        "only {} requests in 2 s:\n{}",
        bad.requests,
        bad.raw
    );
    assert_eq!(
        bad.non_2xx, bad.requests,
        "some answers to a wrong token were not errors:\n{}",
        bad.raw
    );
    assert_eq!(
        bad.socket_errors, 0,
        "socket errors in the flood:\n{}",
        bad.raw
    );
    let r = env.get(&format!("/v1/jobs/{id}"), Some(&wrong)).await;
    assert_eq!(r.status, 401, "the flood's answer is 401");
    let health = env.get("/healthz", None).await;
    assert_eq!(
        health.status,
        200,
        "{}",
        String::from_utf8_lossy(&health.body)
    );
    assert_eq!(health.json()["database"], "ok");
    // Every failure is counted...
    let counted = auth_failures_metric(&env).await - before;
    assert!(
        counted > bad.requests,
        "auth failures counted {counted}, wrk saw {} refused (plus the one above)",
        bad.requests
    );
    // ... but few are written to the audit log, and those say how many they left out.
    let r = env
        .get("/v1/audit?action=auth.failure&limit=1000", Some(&admin))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let entries = r.json().as_array().unwrap().clone();
    let logged = u64::try_from(entries.len()).unwrap();
    let unlogged: u64 = entries
        .iter()
        .filter_map(|e| e["detail"].as_str())
        .filter_map(|d| {
            let head = d.split(" earlier refusals not logged").next()?;
            if head.len() == d.len() {
                return None;
            }
            head.rsplit(' ').next()?.parse::<u64>().ok()
        })
        .sum();
    eprintln!(
        "auth failures: {} refused by wrk, {counted} counted in /metrics, {logged} audit entries \
         ({unlogged} failures reported as not logged), after {:.1?}",
        bad.requests,
        t0.elapsed()
    );
    assert!(logged >= 1, "no auth.failure entry at all");
    assert!(
        logged <= 40 && logged * 10 < bad.requests,
        "{logged} auth.failure entries for {} refused requests: not rate-limited",
        bad.requests
    );
    assert!(
        entries
            .iter()
            .any(|e| e["detail"].as_str().unwrap_or("").contains("not logged")),
        "no entry reports the failures it left out: {entries:?}"
    );
    assert!(
        unlogged > 0 && unlogged + logged <= counted,
        "the entries report {unlogged} unlogged failures, {counted} were counted"
    );
    assert!(entries.iter().all(|e| e["outcome"] == "denied"));

    // Still serving the valid token after the flood.
    let r = env.get(&format!("/v1/jobs/{id}"), Some(&sci)).await;
    assert_eq!(r.status, 200);
    env.stop().await;
    eprintln!("load test done in {:.1?}", t0.elapsed());
}

/// `aegis_gateway_auth_failures_total` from `/metrics`.
async fn auth_failures_metric(env: &Env) -> u64 {
    let m = env.get("/metrics", Some(&env.admin_token)).await;
    assert_eq!(m.status, 200);
    let text = String::from_utf8_lossy(&m.body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("aegis_gateway_auth_failures_total "))
        .unwrap_or_else(|| panic!("no auth failure counter in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// What one wrk run reported.
struct WrkReport {
    raw: String,
    /// Completed requests.
    requests: u64,
    rps: f64,
    /// "Non-2xx or 3xx responses" (absent: 0).
    non_2xx: u64,
    /// connect + read + write + timeout (absent: 0).
    socket_errors: u64,
    /// The latency distribution: (percentile, value as printed).
    latency: Vec<(String, String)>,
}

/// Runs wrk with `args` and `Authorization: Bearer <token>` on `url`, killed after
/// [`WRK_TIMEOUT`].
async fn wrk_run(wrk: &Path, args: &[&str], token: &str, url: &str) -> WrkReport {
    let child = tokio::process::Command::new(wrk)
        .args(args)
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", wrk.display()));
    let out = tokio::time::timeout(WRK_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("wrk did not finish within {WRK_TIMEOUT:?} (killed)"))
        .expect("wrk's output");
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "wrk failed ({}):\n{raw}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_wrk(raw)
}

fn parse_wrk(raw: String) -> WrkReport {
    let mut requests = None;
    let mut rps = None;
    let mut non_2xx = 0;
    let mut socket_errors = 0;
    let mut latency = Vec::new();
    let mut in_dist = false;
    for line in raw.lines().map(str::trim) {
        if line.starts_with("Latency Distribution") {
            in_dist = true;
            continue;
        }
        if in_dist {
            if let Some((p, v)) = line.split_once('%')
                && p.trim().parse::<f64>().is_ok()
            {
                latency.push((p.trim().to_string(), v.trim().to_string()));
                continue;
            }
            in_dist = false;
        }
        if let Some((n, _)) = line.split_once(" requests in ") {
            requests = Some(n.trim().parse::<u64>().unwrap());
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = Some(v.trim().parse::<f64>().unwrap());
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = v.trim().parse::<u64>().unwrap();
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            socket_errors = v
                .split(',')
                .map(|kv| {
                    kv.split_whitespace()
                        .last()
                        .unwrap()
                        .parse::<u64>()
                        .unwrap()
                })
                .sum();
        }
    }
    WrkReport {
        requests: requests.unwrap_or_else(|| panic!("no request count in wrk's output:\n{raw}")),
        rps: rps.unwrap_or_else(|| panic!("no Requests/sec in wrk's output:\n{raw}")),
        non_2xx,
        socket_errors,
        latency,
        raw,
    }
}

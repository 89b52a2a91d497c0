//! The web dashboard in a real browser: headless Chromium loads `/#token=...` from a real
//! gateway over TLS 1.3 (trusting the dev CA through an NSS database) while a real job is
//! running, and the test reads the page's DOM hooks. The screenshot and the DOM are kept as
//! artifacts (`target/test-artifacts/dashboard.png`, `dashboard.html`). The same URL in a
//! browser without the CA trusted must not render the app.
//!
//! Needs `AEGIS_TEST_CHROMIUM` (path of the browser) and `certutil`; without the variable the
//! test is skipped, except in CI (`CI=true`), where that is a failure.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// The longest a browser run may take before it is killed.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_in_headless_chromium() {
    let Some(chromium) = tool("AEGIS_TEST_CHROMIUM") else {
        return;
    };
    let repo = repo_root();
    let trust_script = repo.join("scripts/chromium-trust-ca.sh");
    assert!(trust_script.is_file(), "{} missing", trust_script.display());
    let t0 = Instant::now();

    let dir = tempfile::tempdir().unwrap();
    let url = database("sqlite", dir.path()).await.unwrap();
    let env = Env::start(url, Opts::default()).await;

    // A scientist, a long job and three clients running it.
    let sci = scientist_token(&env, "alice").await;
    let id = create_job(
        &env,
        &sci,
        &json!({
            "name": "dashboard-e2e",
            "model": {"kind": "softmax_regression", "inputs": 4, "classes": 2},
            "rounds": 200,
            "cohort_size": 3,
            "min_clients": 3,
        }),
    )
    .await;
    // Paced clients: ~0.25 s per round, so the 200 rounds outlast the browser by far (the
    // harness's `spawn_client` runs 10–40 rounds a second here, which would finish the job in
    // seconds), with reported metrics that improve round by round.
    let clients: Vec<_> = (1..=3)
        .map(|i| spawn_client_with(&env, i, PacedTrainer { rounds: 0 }))
        .collect();
    let job = wait_job(&env, &sci, &id, Duration::from_secs(60), |j| {
        j["status"] == "running" && j["rounds_done"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    eprintln!(
        "job {id} running with {} rounds done after {:.1?}",
        job["rounds_done"],
        t0.elapsed()
    );

    // The browser, trusting the dev CA through HOME/.pki/nssdb.
    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let out = std::process::Command::new("bash")
        .arg(&trust_script)
        .arg(&home)
        .arg(env.pki().ca_cert())
        .output()
        .expect("run scripts/chromium-trust-ca.sh");
    assert!(
        out.status.success(),
        "chromium-trust-ca.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(home.join(".pki/nssdb/cert9.db").is_file());
    let page = format!("https://localhost:{}/#token={sci}", env.gw_addr.port());
    let artifacts = target_dir().join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let t_browser = Instant::now();
    let run = chromium_run(&chromium, &home, &work.path().join("profile"), &shot, &page).await;
    eprintln!(
        "chromium (trusted CA) exited {:?} after {:.1?}",
        run.code,
        t_browser.elapsed()
    );
    let dom = run.stdout.as_str();
    std::fs::write(artifacts.join("dashboard.html"), dom).unwrap();
    let context = || {
        format!(
            "chromium exit {:?}\n--- DOM ---\n{dom}\n--- stderr ---\n{}",
            run.code, run.stderr
        )
    };

    // The app loaded, with the running job listed, selected and charted.
    let body = tags(dom, "body");
    assert!(
        body.iter().any(|t| attr(t, "data-loaded") == Some("true")),
        "body[data-loaded=true] missing: {}",
        context()
    );
    assert!(
        tags(dom, "tr").iter().any(|t| {
            attr(t, "data-job-id") == Some(id.as_str()) && attr(t, "data-status") == Some("running")
        }),
        "no tr[data-job-id={id}][data-status=running]: {}",
        context()
    );
    let detail = tags(dom, "section")
        .into_iter()
        .find(|t| attr(t, "id") == Some("job-detail"))
        .unwrap_or_else(|| panic!("#job-detail missing: {}", context()));
    assert_eq!(
        attr(detail, "data-job-id"),
        Some(id.as_str()),
        "#job-detail shows another job: {}",
        context()
    );
    assert_eq!(
        attr(detail, "data-status"),
        Some("running"),
        "{}",
        context()
    );
    let metrics = element(dom, "svg", "chart-metrics")
        .unwrap_or_else(|| panic!("svg#chart-metrics missing: {}", context()));
    let cohort = element(dom, "svg", "chart-cohort")
        .unwrap_or_else(|| panic!("svg#chart-cohort missing: {}", context()));
    // Data, not the empty state: one <path> per series with values (accuracy and loss; the
    // legend draws <line>s), and one data point per round and series besides the legend's two.
    let paths = metrics.matches("<path").count();
    let dots = metrics.matches("<circle").count();
    assert!(
        paths >= 2 && metrics.contains("data-series=\"accuracy\""),
        "chart-metrics draws no accuracy/loss lines ({paths} paths): {metrics}"
    );
    assert!(
        dots >= 2 + 2 * 2,
        "chart-metrics has {dots} circles, expected the legend's 2 and at least 2 rounds × 2 series: {metrics}"
    );
    assert!(
        !metrics.contains("No rounds yet") && !metrics.contains("Loading…"),
        "chart-metrics shows its empty state: {metrics}"
    );
    let bars = cohort.matches("class=\"bar-group").count();
    assert!(
        bars >= 2,
        "chart-cohort has {bars} bar groups, expected one per finished round (>= 2): {cohort}"
    );
    assert!(
        text_of(dom).contains("running"),
        "the word 'running' is not on the page: {}",
        context()
    );
    // No section could not load its data (every call the page made was answered as it expects).
    assert!(
        !dom.contains("section-msg-error"),
        "a section shows an error: {}",
        context()
    );
    let rounds_rows = dom.matches("<tr data-round=").count();
    eprintln!(
        "DOM: {} bytes, chart-metrics {paths} paths / {dots} circles, chart-cohort {bars} bar groups, \
         {rounds_rows} rows in the rounds table",
        dom.len()
    );

    // The screenshot: a PNG of the rendered page, kept as an artifact.
    let png = std::fs::read(&shot)
        .unwrap_or_else(|e| panic!("no screenshot at {} ({e}): {}", shot.display(), context()));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        shot.display()
    );
    assert!(
        png.len() > 10 * 1024,
        "screenshot of {} bytes only: a blank page?",
        png.len()
    );
    eprintln!("screenshot: {} ({} bytes)", shot.display(), png.len());

    // The same URL in a browser that does not trust the dev CA: no app.
    let bare_home = work.path().join("bare-home");
    std::fs::create_dir_all(&bare_home).unwrap();
    let t_bare = Instant::now();
    let bare = chromium_run(
        &chromium,
        &bare_home,
        &work.path().join("bare-profile"),
        &work.path().join("untrusted.png"),
        &page,
    )
    .await;
    eprintln!(
        "chromium (CA not trusted) exited {:?} after {:.1?}, DOM {} bytes",
        bare.code,
        t_bare.elapsed(),
        bare.stdout.len()
    );
    assert!(
        !bare.stdout.contains("data-loaded") && !bare.stdout.contains("jobs-body"),
        "the dashboard rendered without the CA trusted:\n{}\n--- stderr ---\n{}",
        bare.stdout,
        bare.stderr
    );
    // ... and for the right reason: the certificate's issuer is unknown to that browser
    // (Chromium's net error -202), while the trusted run had no certificate error.
    let cert_refused =
        |e: &str| e.contains("ERR_CERT_AUTHORITY_INVALID") || e.contains("net_error -202");
    assert!(
        cert_refused(&bare.stderr),
        "the untrusted run did not fail on the certificate:\n{}",
        bare.stderr
    );
    assert!(!cert_refused(&run.stderr), "{}", run.stderr);

    // The job was still running while the browser looked; cancel it so the FL server stops
    // at once, then stop everything.
    let r = env
        .send("POST", &format!("/v1/jobs/{id}/cancel"), Some(&sci), None)
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let end = wait_job(&env, &sci, &id, Duration::from_secs(30), |j| {
        j["status"] == "cancelled"
    })
    .await;
    eprintln!(
        "job cancelled after {} of 200 rounds",
        end["rounds_done"].as_u64().unwrap_or(0)
    );
    env.stop().await;
    for c in clients {
        c.abort();
    }
    eprintln!("dashboard test done in {:.1?}", t0.elapsed());
}

/// A trainer that takes [`PacedTrainer::PAUSE`] per round (in the client's blocking pool) and
/// reports an accuracy rising and a loss falling with the rounds it has trained.
struct PacedTrainer {
    rounds: u32,
}

impl PacedTrainer {
    const PAUSE: Duration = Duration::from_millis(200);
}

impl aegis_client::Trainer for PacedTrainer {
    fn train(
        &mut self,
        global: &aegis_client::Model,
    ) -> aegis_client::Result<aegis_client::TrainOutput> {
        std::thread::sleep(Self::PAUSE);
        let decay = 0.85f32.powi(i32::try_from(self.rounds).unwrap_or(i32::MAX));
        self.rounds += 1;
        let delta = vec![0.01; global.num_params()];
        Ok(aegis_client::TrainOutput {
            delta: global.unflatten(&delta)?,
            num_examples: 10,
            loss: 0.1 + 0.6 * decay,
            accuracy: 0.95 - 0.45 * decay,
        })
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the repository when relative) or
/// `<repo>/target`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                repo_root().join(d)
            }
        }
        _ => repo_root().join("target"),
    }
}

struct BrowserRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs headless Chromium with HOME=`home` on `url`: the DOM after 8 s of virtual time on
/// stdout, a screenshot to `shot`. Killed (its whole process group) after [`BROWSER_TIMEOUT`].
async fn chromium_run(
    chromium: &Path,
    home: &Path,
    profile: &Path,
    shot: &Path,
    url: &str,
) -> BrowserRun {
    std::fs::create_dir_all(profile).unwrap();
    assert!(
        std::fs::read_dir(profile).unwrap().next().is_none(),
        "the profile directory must start empty"
    );
    let mut cmd = tokio::process::Command::new(chromium);
    cmd.env("HOME", home)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--password-store=basic",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=8000", "--window-size=1280,1000"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
    let pgid = child.id().expect("a running child");
    match tokio::time::timeout(BROWSER_TIMEOUT, child.wait_with_output()).await {
        Ok(out) => {
            let out = out.expect("chromium's output");
            BrowserRun {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        }
        Err(_) => {
            // The main process is killed on drop; its renderer and helper processes share its
            // process group.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .status();
            panic!("chromium did not finish within {BROWSER_TIMEOUT:?} (killed)");
        }
    }
}

/// The opening tags `<name ...>` in `html`, as (start, end) byte ranges.
fn tag_spans(html: &str, name: &str) -> Vec<(usize, usize)> {
    let open = format!("<{name}");
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(i) = html[pos..].find(&open).map(|i| pos + i) {
        let Some(end) = html[i..].find('>').map(|e| i + e + 1) else {
            break;
        };
        let next = html[i + open.len()..].chars().next();
        if matches!(next, Some(' ' | '>' | '/' | '\n' | '\t')) {
            out.push((i, end));
        }
        pos = end;
    }
    out
}

/// The opening tags `<name ...>` in `html`.
fn tags<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
    tag_spans(html, name)
        .into_iter()
        .map(|(a, b)| &html[a..b])
        .collect()
}

/// The value of attribute `name` in the opening tag `tag` (as Chromium serializes it:
/// `name="value"`).
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let i = tag.find(&key)? + key.len();
    let len = tag[i..].find('"')?;
    Some(&tag[i..i + len])
}

/// The element `<name id="id" ...>...</name>` (not nested in another `name`).
fn element<'a>(html: &'a str, name: &str, id: &str) -> Option<&'a str> {
    let (start, _) = tag_spans(html, name)
        .into_iter()
        .find(|&(a, b)| attr(&html[a..b], "id") == Some(id))?;
    let close = format!("</{name}>");
    let len = html[start..].find(&close)? + close.len();
    Some(&html[start..start + len])
}

/// The text of `html` without its tags (roughly: what a reader sees, plus titles).
fn text_of(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

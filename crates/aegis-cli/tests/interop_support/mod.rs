//! Helpers shared by `tests/interop.rs` and `tests/keyring.rs`: real processes (the `aegis`
//! binary, the venv Python running `tests/python/*.py`) with a timeout, and test data.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Default limit for one child process.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(120);

/// `$AEGIS_TEST_PYTHON`, or why it is unusable.
pub(crate) fn python_from_env() -> Result<PathBuf, String> {
    match std::env::var_os("AEGIS_TEST_PYTHON") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Err("AEGIS_TEST_PYTHON is not set (venv python with cryptography and keyring)".into()),
    }
}

/// `AEGIS_TEST_SECRET_SERVICE=1`, or why not.
pub(crate) fn secret_service_from_env() -> Result<(), String> {
    if std::env::var("AEGIS_TEST_SECRET_SERVICE").as_deref() == Ok("1") {
        Ok(())
    } else {
        Err("AEGIS_TEST_SECRET_SERVICE is not 1 (no verified Secret Service session)".into())
    }
}

/// The repository root.
pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A script of `tests/python/`.
pub(crate) fn script(name: &str) -> PathBuf {
    repo_root().join("tests/python").join(name)
}

/// The frozen vectors of docs/format.md §5.
pub(crate) fn vector_dir() -> PathBuf {
    repo_root().join("crates/aegis-crypto/tests/vectors")
}

/// The `aegis` binary run in `dir`, with no `AEGIS_*` setting inherited.
pub(crate) fn aegis(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_aegis"));
    c.current_dir(dir);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AEGIS_") {
            c.env_remove(&k);
        }
    }
    c
}

/// The venv Python running `tests/python/<name>` in `dir`.
pub(crate) fn python(py: &Path, dir: &Path, name: &str) -> Command {
    let mut c = Command::new(py);
    c.current_dir(dir).arg(script(name));
    // No __pycache__ in the source tree; no keyring backend override from the caller.
    c.env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTHON_KEYRING_BACKEND");
    c
}

/// What a finished child did.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) what: String,
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) elapsed: Duration,
}

impl Run {
    /// Panic with the whole story unless the child succeeded.
    #[track_caller]
    pub(crate) fn ok(self) -> Self {
        assert!(self.status.success(), "{} failed: {self:#?}", self.what);
        self
    }

    /// Panic unless the child failed.
    #[track_caller]
    pub(crate) fn failed(self) -> Self {
        assert!(
            !self.status.success(),
            "{} should have failed: {self:#?}",
            self.what
        );
        self
    }

    /// Non-empty stderr lines, ANSI colour codes removed.
    pub(crate) fn stderr_lines(&self) -> Vec<String> {
        strip_ansi(&self.stderr)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    /// stdout, trimmed.
    pub(crate) fn out(&self) -> &str {
        self.stdout.trim()
    }
}

/// Remove ANSI escape sequences (tracing colours its level names).
pub(crate) fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(ch) = it.next() {
        if ch == '\u{1b}' {
            if it.peek() == Some(&'[') {
                it.next();
                for c in it.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(ch);
    }
    out
}

/// Run `cmd` to completion (killing it and failing the test after `timeout`).
#[track_caller]
pub(crate) fn run_for(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Run {
    let what = format!("{cmd:?}");
    let start = Instant::now();
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
    if let Some(data) = stdin {
        let mut w = child.stdin.take().unwrap();
        w.write_all(data).unwrap();
    }
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let err = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
            panic!("{what} did not finish within {timeout:?} (hung?); stderr so far: {err}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&out_t.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap()).into_owned();
    Run {
        what,
        status,
        stdout,
        stderr,
        elapsed,
    }
}

/// Run with the default timeout.
#[track_caller]
pub(crate) fn run(cmd: &mut Command) -> Run {
    run_for(cmd, None, TIMEOUT)
}

/// Deterministic pseudo-random bytes (SplitMix64), different for each seed.
pub(crate) fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ len as u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Read a file (panicking with its name).
#[track_caller]
pub(crate) fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// Read a text file, trimmed of nothing.
#[track_caller]
pub(crate) fn read_text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// Is `s` the stored form of a key written the Python way: 44 characters of URL-safe Base64
/// with `=` padding, no newline?
pub(crate) fn is_python_key_text(s: &str) -> bool {
    s.len() == 44
        && s.ends_with('=')
        && !s.ends_with("==")
        && s[..43]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// File mode bits (permissions only).
pub(crate) fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// `aegis key status --json`, parsed.
#[track_caller]
pub(crate) fn status_json(cmd: &mut Command) -> serde_json::Value {
    let r = run(cmd.args(["key", "status", "--json"])).ok();
    serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("key status --json printed invalid JSON ({e}): {r:#?}"))
}

/// The status of key `id` in a `key status --json` document.
pub(crate) fn status_of(doc: &serde_json::Value, id: &str) -> Option<String> {
    doc["keys"]
        .as_array()?
        .iter()
        .find(|k| k["id"] == id)
        .and_then(|k| k["status"].as_str())
        .map(str::to_string)
}

/// A name no other test (or run) uses, valid as a keyring service name.
pub(crate) fn unique_name(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("aegis_test_{tag}_{}_{nanos}", std::process::id())
}

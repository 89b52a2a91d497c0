//! Shared helpers of the `aegis` end-to-end tests: run the real binary in a private temporary
//! directory with the key-file store (never an OS keyring), check one-line errors, and make
//! reproducible pseudo-random data.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs,
    dead_code,
    unreachable_pub
)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The binary under test.
pub const AEGIS: &str = env!("CARGO_BIN_EXE_aegis");

/// Name of the key file every sandbox uses.
pub const KEY_FILE: &str = "aegis_key.key";

/// Environment variables of the parent that must not leak into the child.
const SCRUBBED_ENV: &[&str] = &[
    "DBUS_SESSION_BUS_ADDRESS",
    "XDG_RUNTIME_DIR",
    "AEGIS_KEYSTORE",
    "AEGIS_GATEWAY_DATABASE",
    "AEGIS_KEY_FILE",
    "AEGIS_ALLOW_LOOSE_PERMISSIONS",
    "AEGIS_KEYRING_SERVICE",
    "AEGIS_KEYRING_USER",
    "AEGIS_LOG",
];

/// A private temporary directory holding a key file (once `key init` ran) and test data.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("aegis-cli-test-")
            .tempdir()
            .expect("creating a temporary directory");
        Sandbox { dir }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `path()/rel`.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The default key file `path()/aegis_key.key`.
    pub fn key_file(&self) -> PathBuf {
        self.join(KEY_FILE)
    }

    /// The keyset document next to the default key file.
    pub fn keyset_doc(&self) -> PathBuf {
        self.join(&format!("{KEY_FILE}.keyset"))
    }

    /// Runs `aegis` in this directory with the default key file.
    pub fn aegis(&self) -> Aegis {
        self.aegis_with_key(&self.key_file())
    }

    /// Runs `aegis` in this directory with another key file (another keyset).
    pub fn aegis_with_key(&self, key_file: &Path) -> Aegis {
        Aegis {
            cwd: self.path().to_path_buf(),
            key_file: key_file.to_path_buf(),
        }
    }

    /// Create a directory (and its parents) under the sandbox.
    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.join(rel);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

/// `p` as `&str` (temporary directories have ASCII names).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// How to run the binary: working directory and key file.
#[derive(Clone, Debug)]
pub struct Aegis {
    pub cwd: PathBuf,
    pub key_file: PathBuf,
}

impl Aegis {
    /// The command, with a clean environment for the key store: `AEGIS_KEYSTORE=file`,
    /// `AEGIS_KEY_FILE=<key file>`, no D-Bus session.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Command::new(AEGIS);
        for v in SCRUBBED_ENV {
            c.env_remove(v);
        }
        c.current_dir(&self.cwd)
            .env("AEGIS_KEYSTORE", "file")
            .env("AEGIS_KEY_FILE", &self.key_file)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Run to completion.
    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(args).output().expect("running aegis")
    }

    /// Start without waiting (stdout and stderr piped).
    pub fn spawn<I, S>(&self, args: I) -> Child
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(args).spawn().expect("spawning aegis")
    }

    /// Run with `input` on stdin (written from a thread, so large inputs and outputs cannot
    /// deadlock on full pipes).
    pub fn run_stdin<I, S>(&self, args: I, input: &[u8]) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning aegis");
        let mut stdin = child.stdin.take().expect("stdin is piped");
        std::thread::scope(|scope| {
            let writer = scope.spawn(move || {
                // The child may fail early and close its stdin; that is not our error.
                let _ = stdin.write_all(input);
            });
            let out = child.wait_with_output().expect("waiting for aegis");
            writer.join().expect("stdin writer thread");
            out
        })
    }

    /// Run and require success; returns the output.
    pub fn ok<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.run(&args);
        assert_success(&out, &describe(&args));
        out
    }

    /// Run with stdin and require success.
    pub fn ok_stdin<I, S>(&self, args: I, input: &[u8]) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.run_stdin(&args, input);
        assert_success(&out, &describe(&args));
        out
    }

    /// Run and require a failure reported as one `aegis: error:` line; returns that line.
    pub fn fail<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.run(&args);
        assert_one_line_error(&out, &describe(&args))
    }

    /// Run with stdin and require a one-line failure; returns the line and the output.
    pub fn fail_stdin<I, S>(&self, args: I, input: &[u8]) -> (String, Output)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.run_stdin(&args, input);
        let line = assert_one_line_error(&out, &describe(&args));
        (line, out)
    }

    /// `key status --json`, parsed.
    pub fn status_json(&self) -> serde_json::Value {
        let out = self.ok(["key", "status", "--json"]);
        serde_json::from_slice(&out.stdout).expect("key status --json prints JSON")
    }

    /// The primary key id.
    pub fn primary_id(&self) -> String {
        self.status_json()["primary"]
            .as_str()
            .expect("`primary` is a string")
            .to_string()
    }

    /// Key id → status.
    pub fn key_statuses(&self) -> BTreeMap<String, String> {
        let v = self.status_json();
        v["keys"]
            .as_array()
            .expect("`keys` is an array")
            .iter()
            .map(|k| {
                (
                    k["id"].as_str().expect("id").to_string(),
                    k["status"].as_str().expect("status").to_string(),
                )
            })
            .collect()
    }

    /// `inspect FILE`, its one stdout line.
    pub fn inspect(&self, file: &Path) -> String {
        let out = self.ok(["inspect", s(file)]);
        let text = String::from_utf8(out.stdout).expect("inspect prints UTF-8");
        assert_eq!(text.lines().count(), 1, "inspect prints one line: {text:?}");
        text.trim_end().to_string()
    }

    /// The format named by `inspect` ("v1" or "v2").
    pub fn format_of(&self, file: &Path) -> String {
        let line = self.inspect(file);
        field_after(&line, "format ")
    }

    /// The key id named by `inspect` (v2 files).
    pub fn key_of(&self, file: &Path) -> String {
        let line = self.inspect(file);
        field_after(&line, ", key ")
    }

    /// Decrypt `file` to stdout and return the plaintext (requires success).
    pub fn decrypt_to_vec(&self, file: &Path) -> Vec<u8> {
        self.ok(["decrypt", s(file), "-o", "-"]).stdout
    }
}

/// The text after `marker` in `line`, up to the next comma.
fn field_after(line: &str, marker: &str) -> String {
    let start = line
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in {line:?}"))
        + marker.len();
    line[start..]
        .split(',')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn describe(args: &[std::ffi::OsString]) -> String {
    let parts: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    format!("aegis {}", parts.join(" "))
}

/// Require a zero exit.
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: expected success, got {:?}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Require a non-zero exit (not a signal) and exactly one line on stderr that starts with
/// `aegis: error:`; returns the line.
pub fn assert_one_line_error(out: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.code().is_some_and(|c| c != 0),
        "{what}: expected a non-zero exit, got {:?}\nstderr: {stderr}",
        out.status
    );
    assert!(
        stderr.ends_with('\n') && stderr.matches('\n').count() == 1,
        "{what}: expected exactly one line on stderr, got {stderr:?}"
    );
    let line = stderr.trim_end_matches('\n').to_string();
    assert!(
        line.starts_with("aegis: error:"),
        "{what}: the error line should start with `aegis: error:`: {line:?}"
    );
    line
}

/// A small seeded PRNG (xorshift64*), so every run of a test sees the same data.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // SplitMix-style scramble so small seeds give unrelated streams; never zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(if z == 0 { 1 } else { z })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`; the tiny modulo bias does not matter here).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// Every regular file under `dir` (recursively), sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Path → contents of every file under `dir`.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    files_under(dir)
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

/// Is this a scratch file of AEGIS (temporary file or rewrap journal)?
pub fn is_aegis_scratch(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(".aegis-tmp-") || n.starts_with(".aegis-rewrap.journal"))
}

/// Require that no temporary file or journal is left under `dir`.
pub fn assert_no_scratch(dir: &Path) {
    let left: Vec<PathBuf> = files_under(dir)
        .into_iter()
        .filter(|p| is_aegis_scratch(p))
        .collect();
    assert!(left.is_empty(), "scratch files left behind: {left:?}");
}

/// Unix permission bits of a file.
pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// `chmod`.
pub fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Write `contents` to `p` (creating parents).
pub fn write(p: &Path, contents: &[u8]) {
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(p, contents).unwrap();
}

/// Read `p`.
pub fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

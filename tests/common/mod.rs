//! Helpers for tests that run the real `tribe` binary against real storage: a local folder, or a
//! real S3-protocol server (moto) on loopback.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

/// Where `.ci/run` installs the Python tools the tests use.
pub fn tool_venv() -> PathBuf {
    if let Ok(v) = std::env::var("TRIBE_TEST_VENV") {
        return PathBuf::from(v);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/tribe/venv")
}

/// The Python interpreter with `deltalake` installed.
pub fn python() -> PathBuf {
    let p = tool_venv().join("bin/python");
    assert!(
        p.exists(),
        "{} is missing: run .ci/run once to install the test tools",
        p.display()
    );
    p
}

/// The `tribe` binary under test, run in `dir`.
pub fn tribe(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tribe"));
    cmd.current_dir(dir)
        .env_remove("TRIBE_WORKSPACE")
        .env_remove("TRIBE_STORAGE")
        .stdin(Stdio::null());
    if let Some(s3) = s3_env() {
        for (k, v) in s3 {
            cmd.env(k, v);
        }
    }
    cmd
}

/// Runs a Python script with the test tools installed; returns its stdout, failing with its
/// stderr.
pub fn python_run(script: &str) -> Vec<u8> {
    python_with(&python(), script).into_bytes()
}

/// Runs a Python script with the given interpreter; returns its stdout.
pub fn python_with(python: &Path, script: &str) -> String {
    let out = Command::new(python)
        .args(["-c", script])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command and returns its output, printing it when it fails unexpectedly.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("tribe runs")
}

/// Runs a command that must succeed; returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "command failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs SQL in a workspace and returns the CSV result without its header, one string per row.
pub fn sql(dir: &Path, query: &str) -> Vec<String> {
    let out = ok(tribe(dir).args(["sql", "--format", "csv", query]));
    out.lines().skip(1).map(str::to_string).collect()
}

/// A single number from a SQL query.
pub fn sql_count(dir: &Path, query: &str) -> i64 {
    let rows = sql(dir, query);
    assert_eq!(rows.len(), 1, "{query}: {rows:?}");
    rows[0]
        .parse()
        .unwrap_or_else(|_| panic!("{query}: not a number: {:?}", rows[0]))
}

/// Storage settings a test workspace uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backend {
    Local,
    S3,
}

/// A demo workspace (`tribe demo --no-sources`) of `people` in a fresh temporary folder; the
/// workspace is the returned path, inside the returned folder.
pub fn demo(people: u32, seed: u32) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    ok(tribe(tmp.path()).args(["demo", "d", "--no-sources"]).args([
        "--people".to_string(),
        people.to_string(),
        "--seed".to_string(),
        seed.to_string(),
    ]));
    let dir = tmp.path().join("d");
    (tmp, dir)
}

/// Creates a workspace in a fresh temporary folder on `backend`.
pub fn workspace(backend: Backend, config_extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = match backend {
        Backend::Local => "data".to_string(),
        Backend::S3 => {
            s3_server();
            format!("s3://tribe-test/{}", unique_name())
        }
    };
    let config =
        format!("[workspace]\nname = \"test\"\nstorage = \"{storage}\"\n\n{config_extra}\n");
    std::fs::write(dir.path().join("tribe.toml"), config).expect("write config");
    dir
}

fn unique_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "ws-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

struct S3Server {
    endpoint: String,
    _child: Child,
}

static S3: OnceLock<S3Server> = OnceLock::new();

/// Environment for S3 access, once a test has started the server.
fn s3_env() -> Option<Vec<(&'static str, String)>> {
    S3.get().map(|s| {
        vec![
            ("AWS_ENDPOINT", s.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    })
}

/// Starts (once per test process) a real S3-protocol server, moto, on a free loopback port,
/// with a bucket `tribe-test`.
pub fn s3_server() -> String {
    S3.get_or_init(|| {
        let server = tool_venv().join("bin/moto_server");
        assert!(
            server.exists(),
            "{} is missing: run .ci/run once to install the S3 test server",
            server.display()
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        // A watcher stops the server when this test process ends, however it ends.
        let watcher = format!(
            "import os, subprocess, time\n\
             parent = os.getppid()\n\
             p = subprocess.Popen([{server:?}, '-H', '127.0.0.1', '-p', '{port}'])\n\
             while os.getppid() == parent and p.poll() is None:\n    time.sleep(0.5)\n\
             p.kill()\n"
        );
        let mut child = Command::new(python())
            .args(["-c", &watcher])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start moto_server");
        // Wait until it serves.
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || for _ in BufReader::new(stderr).lines() {});
        let endpoint = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let status = Command::new(python())
            .args([
                "-c",
                &format!(
                    "import urllib.request as u; u.urlopen(u.Request('{endpoint}/tribe-test', method='PUT'))"
                ),
            ])
            .status()
            .expect("create bucket");
        assert!(status.success(), "could not create the test bucket");
        S3Server {
            endpoint,
            _child: child,
        }
    })
    .endpoint
    .clone()
}

/// Writes a file in `dir` and returns its path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}

/// A track message as a JSON line.
pub fn track(id: &str, user: &str, event: &str, ts: &str, props: &str) -> String {
    format!(
        r#"{{"type":"track","messageId":"{id}","userId":"{user}","event":"{event}","timestamp":"{ts}","properties":{props}}}"#
    )
}

/// The `bytes_scanned` of the first Parquet scan in `EXPLAIN ANALYZE` output ("445", "6.00 K").
pub fn bytes_scanned(plan: &str) -> f64 {
    let rest = plan
        .split("bytes_scanned=")
        .nth(1)
        .unwrap_or_else(|| panic!("no bytes_scanned in {plan}"));
    let value = rest.split([',', ']']).next().unwrap().trim();
    let (number, unit) = value.split_once(' ').unwrap_or((value, ""));
    let scale = match unit {
        "" => 1.0,
        "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        other => panic!("unit {other:?} in {value:?}"),
    };
    number.parse::<f64>().unwrap() * scale
}

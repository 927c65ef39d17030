//! `tribe serve` driven by real clients: the official Segment and RudderStack Python libraries
//! against the collector, raw HTTP for the protocol's edges (keys, limits, gzip, partial batches),
//! a kill -9 in the middle of a load, and the real `psql` (and psycopg, for the extended query
//! protocol) against the SQL endpoint.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const KEYS: &str = "[serve.write_keys]\nweb = \"wk-web\"\napp = \"wk-app\"\n";

/// The Python of a client library's own virtual environment (installed by `.ci/run`).
fn client_python(name: &str) -> PathBuf {
    let p = tool_venv()
        .with_file_name(format!("venv-{name}"))
        .join("bin/python");
    assert!(
        p.exists(),
        "{} is missing: run .ci/run once to install the test tools",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `tribe serve`.
struct Server {
    child: Child,
    collector: u16,
    pg: u16,
    log: PathBuf,
}

impl Server {
    fn start(dir: &Path, args: &[&str]) -> Server {
        Self::start_on(dir, args, free_port(), free_port())
    }

    fn start_on(dir: &Path, args: &[&str], collector: u16, pg: u16) -> Server {
        let log = dir.join(format!(
            "serve-{collector}-{}.log",
            Instant::now().elapsed().as_nanos()
        ));
        let mut cmd = tribe(dir);
        cmd.arg("serve");
        for arg in args {
            match *arg {
                "--collector" => cmd.arg(format!("--collector=127.0.0.1:{collector}")),
                "--pg" => cmd.arg(format!("--pg=127.0.0.1:{pg}")),
                other => cmd.arg(other),
            };
        }
        let child = cmd
            .env("TEST_ANALYST_PASSWORD", "s3cret")
            .env("TRIBE_PG_USER", "envuser")
            .env("TRIBE_PG_PASSWORD", "envpass")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let server = Server {
            child,
            collector,
            pg,
            log,
        };
        // Wait for every listener asked for: the SQL endpoint registers the workspace's tables
        // before it listens, so it can open well after the collector.
        let ports = [("--collector", collector), ("--pg", pg)]
            .into_iter()
            .filter(|(flag, _)| args.contains(flag))
            .map(|(_, port)| port);
        let deadline = Instant::now() + Duration::from_secs(120);
        for port in ports {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "serve did not start: {}",
                    server.logs()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        server
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.collector)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, the graceful stop: waits for it to finish flushing.
    fn stop(mut self) -> String {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "serve failed: {}", self.logs());
        self.logs()
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// A plain HTTP/1.1 request; returns the status and body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// POSTs a body to a collector endpoint with a write key.
fn post(port: u16, path: &str, key: &str, body: &[u8]) -> (u16, String) {
    http(port, "POST", path, &[basic(key)], body)
}

fn basic(key: &str) -> (&'static str, String) {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{key}:"));
    ("Authorization", format!("Basic {encoded}"))
}

fn json_rows(dir: &Path, query: &str) -> Vec<Value> {
    let out = ok(tribe(dir).args(["sql", query, "--format", "json"]));
    serde_json::from_str(&out).unwrap()
}

const SEGMENT_SCRIPT: &str = r#"
import json, sys
from segment.analytics import Client
errors = []
c = Client(sys.argv[1], host=sys.argv[2], gzip=True, on_error=lambda e, batch: errors.append(str(e)))
c.identify(user_id='u1', traits={'email': 'ana@example.com', 'name': 'Ana'}, message_id='seg-1')
c.track(user_id='u1', event='Order Completed', properties={'revenue': 12.5, 'currency': 'EUR'}, message_id='seg-2')
c.page(user_id='u1', category='Docs', name='Install', properties={'url': 'https://x.example/docs'}, message_id='seg-3')
c.screen(user_id='u1', category='App', name='Home', message_id='seg-4')
c.group(user_id='u1', group_id='g1', traits={'plan': 'pro'}, message_id='seg-5')
c.alias(previous_id='anon-1', user_id='u1', message_id='seg-6')
c.track(anonymous_id='anon-2', event='Signed Up', integrations={'All': False}, message_id='seg-7')
c.flush()
c.shutdown()
print(json.dumps(errors))
"#;

#[test]
fn the_segment_library_delivers_every_message_once_with_its_fields() {
    let ws = workspace(Backend::Local, KEYS);
    let dir = ws.path();
    let server = Server::start(dir, &["--collector"]);
    let python = client_python("segment");
    let run = |script: &str| {
        let out = Command::new(&python)
            .args(["-c", script, "wk-web", &server.url()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let errors: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
        assert!(errors.is_empty(), "client errors: {errors:?}");
    };
    run(SEGMENT_SCRIPT);
    // The same messages again, as a client retrying after a lost answer would send them.
    run(SEGMENT_SCRIPT);
    server.stop();

    let rows = json_rows(
        dir,
        "select message_id, type, event, name, user_id, anonymous_id, previous_id, group_id, source, \
         prop_revenue, json_get_str(context, 'library', 'name') as library, \
         json_get_str(traits, 'email') as email, json_get_bool(integrations, 'All') as all_integrations, \
         timestamp <= received_at as not_future \
         from events order by message_id",
    );
    let ids: Vec<&str> = rows
        .iter()
        .map(|r| r["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "seg-1", "seg-2", "seg-3", "seg-4", "seg-5", "seg-6", "seg-7"
        ]
    );
    let types: Vec<&str> = rows.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "identify", "track", "page", "screen", "group", "alias", "track"
        ]
    );
    assert!(rows.iter().all(|r| r["source"] == "web"));
    assert!(
        rows.iter().all(|r| r["library"] == "analytics-python"),
        "{rows:?}"
    );
    assert!(rows.iter().all(|r| r["not_future"] == true));
    assert_eq!(rows[0]["email"], "ana@example.com");
    assert_eq!(rows[1]["event"], "Order Completed");
    assert_eq!(rows[1]["prop_revenue"], 12.5);
    assert_eq!(rows[2]["name"], "Install");
    assert_eq!(rows[4]["group_id"], "g1");
    assert_eq!(rows[5]["previous_id"], "anon-1");
    assert_eq!(rows[6]["anonymous_id"], "anon-2");
    assert_eq!(rows[6]["all_integrations"], false);
}

#[test]
fn the_rudderstack_library_delivers_every_message_once() {
    let ws = workspace(Backend::Local, KEYS);
    let dir = ws.path();
    let server = Server::start(dir, &["--collector"]);
    let script = r#"
import json, sys
from rudderstack.analytics import Client
errors = []
c = Client(sys.argv[1], host=sys.argv[2], on_error=lambda e, batch: errors.append(str(e)))
for i in range(250):
    c.track(user_id='r%d' % (i % 10), event='Product Viewed', properties={'price': i}, message_id='rud-%03d' % i)
c.identify(user_id='r1', traits={'email': 'r1@example.com'}, message_id='rud-id')
c.flush()
c.shutdown()
print(json.dumps(errors))
"#;
    let out = python_with(
        &client_python("rudder"),
        &format!(
            "import sys; sys.argv = ['x', 'wk-app', '{}']\n{script}",
            server.url()
        ),
    );
    let errors: Vec<String> = serde_json::from_str(&out).unwrap();
    assert!(errors.is_empty(), "client errors: {errors:?}");
    server.stop();
    let rows = json_rows(
        dir,
        "select count(*) as n, count(distinct message_id) as ids, min(source) as source, \
         max(json_get_str(context, 'library', 'name')) as library from events",
    );
    assert_eq!(rows[0]["n"], 251);
    assert_eq!(rows[0]["ids"], 251);
    assert_eq!(rows[0]["source"], "app");
    assert!(
        rows[0]["library"].as_str().unwrap().contains("python"),
        "{rows:?}"
    );
}

#[test]
fn the_collector_checks_keys_limits_and_each_message() {
    // Nothing is flushed by size or age: what is stored at the end, SIGTERM's flush stored.
    let ws = workspace(
        Backend::Local,
        &format!("{KEYS}[serve]\nflush_seconds = 3600.0\n"),
    );
    let dir = ws.path();
    let server = Server::start(dir, &["--collector"]);
    let port = server.collector;
    let msg = |id: &str| {
        format!(
            r#"{{"type":"track","event":"E","userId":"u","messageId":"{id}","timestamp":"2026-05-01T10:00:00Z"}}"#
        )
    };
    let batch = format!(r#"{{"batch":[{}]}}"#, msg("k1"));

    // No key, a wrong key: 401.
    let (status, body) = http(port, "POST", "/v1/batch", &[], batch.as_bytes());
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("missing write key"), "{body}");
    let (status, _) = post(port, "/v1/batch", "nope", batch.as_bytes());
    assert_eq!(status, 401);
    // The key in the body works as well as in the header.
    let in_body = format!(r#"{{"writeKey":"wk-app","batch":[{}]}}"#, msg("k2"));
    let (status, body) = http(port, "POST", "/v1/batch", &[], in_body.as_bytes());
    assert_eq!(status, 200, "{body}");

    // A batch with one bad and one oversized message: the valid ones are kept, the others named.
    let huge = format!(
        r#"{{"type":"track","event":"E","userId":"u","messageId":"big","properties":{{"x":"{}"}}}}"#,
        "a".repeat(33 * 1024)
    );
    let mixed = format!(
        r#"{{"batch":[{},{{"type":"track","userId":"u","messageId":"bad"}},{huge},{}]}}"#,
        msg("k3"),
        msg("k4")
    );
    let (status, body) = post(port, "/v1/batch", "wk-web", mixed.as_bytes());
    assert_eq!(status, 400, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["accepted"], 2);
    assert_eq!(answer["rejected"][0]["index"], 1);
    assert_eq!(answer["rejected"][0]["field"], "event");
    assert_eq!(answer["rejected"][1]["index"], 2);
    assert!(
        answer["rejected"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("over the limit of 32768")
    );
    assert!(
        answer["message"].as_str().unwrap().contains("2 of 4"),
        "{body}"
    );

    // A message just under 32 KB in a batch whose context it inherits: what is logged is larger
    // than the limit, but the limit is on what was sent.
    let near = format!(
        r#"{{"batch":[{{"type":"track","event":"E","userId":"u","messageId":"near","properties":{{"x":"{}"}}}}],"context":{{"note":"{}"}}}}"#,
        "a".repeat(32 * 1024 - 120),
        "c".repeat(2048)
    );
    let (status, body) = post(port, "/v1/batch", "wk-web", near.as_bytes());
    assert_eq!(status, 200, "{body}");

    // Over 500 KB in one batch: 400, nothing taken.
    let many: Vec<String> = (0..8000).map(|i| msg(&format!("many-{i:04}"))).collect();
    let big_batch = format!(r#"{{"batch":[{}]}}"#, many.join(","));
    assert!(big_batch.len() > 500 * 1024);
    let (status, body) = post(port, "/v1/batch", "wk-web", big_batch.as_bytes());
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("over the limit of 512000 bytes"), "{body}");

    // Gzip bodies and the single-message endpoints.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(
        r#"{"userId":"u9","traits":{"email":"u9@example.com"},"messageId":"k5"}"#.as_bytes(),
    )
    .unwrap();
    let (status, body) = http(
        port,
        "POST",
        "/v1/identify",
        &[basic("wk-web"), ("Content-Encoding", "gzip".into())],
        &gz.finish().unwrap(),
    );
    assert_eq!(status, 200, "{body}");

    let (status, health) = http(port, "GET", "/health", &[], b"");
    assert_eq!(status, 200);
    assert!(health.contains("\"ok\""), "{health}");
    let (_, metrics) = http(port, "GET", "/metrics", &[], b"");
    assert!(
        metrics.contains("tribe_events_received_total 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tribe_events_rejected_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tribe_requests_unauthorized_total 2"),
        "{metrics}"
    );
    server.stop();

    let rows = json_rows(
        dir,
        "select message_id, source, type from events order by message_id",
    );
    let got: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r["message_id"].as_str().unwrap(),
                r["source"].as_str().unwrap(),
                r["type"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            "k2 app track",
            "k3 web track",
            "k4 web track",
            "k5 web identify",
            "near web track"
        ]
    );
    let rejected = sql_count(
        dir,
        "select count(*) from rejected where stage = 'collector'",
    );
    assert_eq!(rejected, 2);
}

#[test]
fn nothing_acknowledged_is_lost_or_doubled_by_a_kill_during_load() {
    let ws = workspace(
        Backend::Local,
        &format!("{KEYS}[serve]\nflush_seconds = 0.3\n"),
    );
    let dir = ws.path();
    let collector = free_port();
    let server = Server::start_on(dir, &["--collector"], collector, 0);
    let acked = dir.join("acked.txt");
    // Four senders post batches of 50 and write down each acknowledged batch; every third batch
    // is a resend of the previous one, as a client retrying would do.
    let script = format!(
        r#"
import json, threading, time, requests
url = 'http://127.0.0.1:{collector}/v1/batch'
out = open('{acked}', 'a')
lock = threading.Lock()
stop = time.time() + 6
def sender(t):
    s = requests.Session()
    n = 0
    last = None
    while time.time() < stop:
        if last is not None and n % 3 == 2:
            ids = last
        else:
            ids = ['t%d-%d-%d' % (t, n, i) for i in range(50)]
        body = {{'batch': [{{'type': 'track', 'event': 'Load', 'userId': 'u%d' % t, 'messageId': m,
                  'timestamp': '2026-06-01T10:00:00Z'}} for m in ids]}}
        try:
            r = s.post(url, json=body, auth=('wk-web', ''), timeout=5)
            if r.status_code == 200:
                with lock:
                    out.write('\n'.join(ids) + '\n'); out.flush()
        except Exception:
            time.sleep(0.05)
        last = ids
        n += 1
threads = [threading.Thread(target=sender, args=(t,)) for t in range(4)]
for t in threads: t.start()
for t in threads: t.join()
"#,
        acked = acked.display()
    );
    let python = client_python("segment");
    let mut load = Command::new(&python).args(["-c", &script]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    server.kill9();
    std::thread::sleep(Duration::from_millis(500));
    // Restarted on the same port: the log is replayed, and the load carries on.
    let server = Server::start_on(dir, &["--collector"], collector, 0);
    assert!(load.wait().unwrap().success());
    server.stop();

    let acked: std::collections::BTreeSet<String> = std::fs::read_to_string(&acked)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        acked.len() > 1000,
        "the load acknowledged only {}",
        acked.len()
    );
    let rows = json_rows(
        dir,
        "select count(*) as n, count(distinct message_id) as ids from events",
    );
    assert_eq!(rows[0]["n"], rows[0]["ids"], "an event was stored twice");
    let stored: std::collections::BTreeSet<String> = sql(dir, "select message_id from events")
        .into_iter()
        .collect();
    let lost: Vec<&String> = acked.difference(&stored).take(5).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
}

fn psql(port: u16, password: &str, args: &[&str]) -> std::process::Output {
    psql_as(port, "analyst", "disable", password, args)
}

fn psql_as(
    port: u16,
    user: &str,
    sslmode: &str,
    password: &str,
    args: &[&str],
) -> std::process::Output {
    Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={port} user={user} dbname=tribe sslmode={sslmode}"
        ))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql is installed (.ci/run installs it)")
}

#[test]
fn psql_reads_every_table_and_cannot_change_anything() {
    let ws = workspace(
        Backend::Local,
        &format!("{KEYS}[serve.users]\nanalyst = \"env:TEST_ANALYST_PASSWORD\"\n"),
    );
    let dir = ws.path();
    let events: Vec<String> = (0..20)
        .map(|i| {
            track(
                &format!("m{i}"),
                &format!("u{}", i % 4),
                "Order Completed",
                "2026-05-01T10:00:00Z",
                r#"{"revenue": 10}"#,
            )
        })
        .collect();
    let file = write(dir, "web.jsonl", &events.join("\n"));
    ok(tribe(dir).args(["ingest", "events"]).arg(&file));
    ok(tribe(dir).arg("resolve"));
    let server = Server::start(dir, &["--pg", "--collector"]);
    let port = server.pg;

    // The endpoint loads every events file's footer and page index into memory when it
    // (re)reads the table (`tribe::sql::cache_page_indexes`): its first scan reads only data
    // pages, where the same query run once also reads the file's footer and page index.
    let explain = "EXPLAIN ANALYZE select count(*) from events where message_id = 'm3'";
    let one_shot = ok(tribe(dir).args(["sql", "--format", "csv", explain]));
    let out = psql(port, "s3cret", &["-c", explain]);
    let served = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        bytes_scanned(&served) < bytes_scanned(&one_shot),
        "served:\n{served}\none-shot:\n{one_shot}"
    );

    let out = psql(port, "s3cret", &["-c", "select count(*) from profiles"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "4");
    let out = psql(
        port,
        "s3cret",
        &[
            "-c",
            "select count(*) from profile_events where profile_id is not null",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "20");

    // psql's own catalog queries.
    let out = psql(port, "s3cret", &["-c", "\\dt"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for table in ["events", "profiles", "identities", "profile_keys"] {
        assert!(
            listing.contains(&format!("|{table}|")),
            "\\dt lacks {table}: {listing}"
        );
    }
    let out = psql(port, "s3cret", &["-c", "\\d events"]);
    let columns = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        columns.contains("message_id") && columns.contains("prop_revenue"),
        "{columns}"
    );

    // Read-only, with a clear reason.
    for statement in [
        "insert into events (message_id) values ('x')",
        "drop table profiles",
        "create table t as select 1",
    ] {
        let out = psql(port, "s3cret", &["-c", statement]);
        assert!(!out.status.success(), "{statement} ran");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("read-only"), "{statement}: {err}");
    }

    // A wrong password is refused.
    let out = psql(port, "wrong", &["-c", "select 1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.to_lowercase()
            .contains("password authentication failed"),
        "{err}"
    );
    // An unknown user too.
    let out = psql_as(port, "mallory", "disable", "s3cret", &["-c", "select 1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.to_lowercase()
            .contains("password authentication failed"),
        "{err}"
    );

    // Extended query protocol with a bound parameter, from psycopg.
    let script = format!(
        "import psycopg\n\
         with psycopg.connect('host=127.0.0.1 port={port} user=analyst password=s3cret dbname=tribe sslmode=disable') as c:\n\
         \x20   print(c.execute('select count(*) from events where user_id = %s', ['u1']).fetchone()[0])\n"
    );
    let out = python_run(&script);
    assert_eq!(String::from_utf8_lossy(&out).trim(), "5");

    // Events the collector takes become visible to SQL within seconds.
    let batch = r#"{"batch":[{"type":"track","event":"Live","userId":"u1","messageId":"live-1"}]}"#;
    let (status, _) = post(server.collector, "/v1/batch", "wk-web", batch.as_bytes());
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = psql(
            port,
            "s3cret",
            &["-c", "select count(*) from events where event = 'Live'"],
        );
        if String::from_utf8_lossy(&out.stdout).trim() == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the flushed event never showed up: {}",
            server.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The counters settle just after what they count: the flush counts once its log segments
    // are removed (after the commit psql already saw), a session ends when the server has
    // seen the client go.
    let expected = [
        "tribe_events_flushed_total 1",
        "tribe_log_bytes 0",
        "tribe_flush_seconds_count",
        "tribe_ack_seconds_count 1",
        "tribe_sql_sessions 0",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (_, metrics) = http(server.collector, "GET", "/metrics", &[], b"");
        let missing: Vec<&str> = expected
            .iter()
            .copied()
            .filter(|e| !metrics.contains(e))
            .collect();
        if missing.is_empty() {
            break metrics;
        }
        assert!(Instant::now() < deadline, "{missing:?}: {metrics}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let opened = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tribe_sql_sessions_opened_total "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(opened >= 10, "{metrics}");
    server.stop();
}

#[test]
fn psql_sees_the_later_stages_tables_and_users_from_the_environment() {
    let (_tmp, dir) = demo(300, 5);
    let as_of = ["--as-of", "2026-07-01"];
    ok(tribe(&dir)
        .args(["segment", "run", "vip_by_spend", "--save"])
        .args(as_of));
    ok(tribe(&dir)
        .args(["export", "run", "vip_google"])
        .args(as_of));
    let server = Server::start(&dir, &["--pg"]);
    // TRIBE_PG_USER / TRIBE_PG_PASSWORD add a user to the demo's configured one.
    for (user, password) in [("envuser", "envpass"), ("analyst", "demo-analyst")] {
        let out = psql_as(
            server.pg,
            user,
            "disable",
            password,
            &[
                "-c",
                "select (select count(*) from traits) > 0 as traits, \
                 (select count(*) from segment_members where segment = 'vip_by_spend') > 0 as members, \
                 (select status from export_runs where export = 'vip_google')",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t|t|delivered");
    }
    server.stop();
}

#[test]
fn psql_connects_over_tls_when_a_certificate_is_configured() {
    let ws = workspace(
        Backend::Local,
        "[serve]\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n\n[serve.users]\nanalyst = \"env:TEST_ANALYST_PASSWORD\"\n",
    );
    let dir = ws.path();
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-keyout", "key.pem", "-out", "cert.pem"])
        .current_dir(dir)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let server = Server::start(dir, &["--pg"]);
    // sslmode=require: psql refuses to talk unless the server speaks TLS.
    let out = psql_as(
        server.pg,
        "analyst",
        "require",
        "s3cret",
        &["-c", "select 42"],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "42",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop();
}

//! Serving benchmark (run with `cargo bench --bench serve`), two parts:
//!
//! 1. Collector throughput: `TRIBE_BENCH_CLIENTS` (default 8) keep-alive HTTP clients on loopback
//!    post batches of 100 Segment track events (~330 bytes each) to a real collector for
//!    `TRIBE_BENCH_SECONDS` (default 20 s) while it logs, fsyncs and flushes to `events`. Reports
//!    sustained events/s and the acknowledgement latency percentiles, then stops the server
//!    gracefully and checks that every event was stored once.
//! 2. SQL round trip through the real `psql`: a point lookup by e-mail on `TRIBE_BENCH_PROFILES`
//!    (default 1,000,000) profiles, 20 times in one session (`\timing`), and as whole `psql -c`
//!    invocations (connect, SCRAM authentication, query, disconnect).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use tribe::serve::{Listening, ServeOptions, serve};
use tribe::workspace::Workspace;

mod common;
#[path = "support/profiles.rs"]
mod profiles;
use profiles::{email, profiles, write_profiles};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Starts `tribe serve` in this process on free ports; returns where it listens and the stop.
fn start(
    dir: &Path,
    options: ServeOptions,
) -> (
    Listening,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let dir = dir.to_path_buf();
    let handle = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let ws = Workspace::open(&dir).unwrap();
            serve(
                ws,
                options,
                async {
                    let _ = stop_rx.await;
                },
                |l| ready_tx.send(l.clone()).unwrap(),
                |_| {},
            )
            .await
            .unwrap();
        });
    });
    (ready_rx.recv().unwrap(), stop_tx, handle)
}

/// One keep-alive HTTP/1.1 connection.
struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    fn post(&mut self, body: &[u8]) -> u16 {
        let head = format!(
            "POST /v1/batch HTTP/1.1\r\nHost: bench\r\nAuthorization: Basic YmVuY2gta2V5Og==\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        self.stream.get_mut().write_all(&request).unwrap();
        let mut status = 0;
        let mut length = 0;
        let mut line = String::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if line.starts_with("HTTP/1.1 ") {
                status = line[9..12].parse().unwrap();
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).unwrap();
        status
    }
}

fn batch(client: usize, n: usize, size: usize, now: &str) -> Vec<u8> {
    let messages: Vec<String> = (0..size)
        .map(|i| {
            format!(
                r#"{{"type":"track","event":"Product Viewed","userId":"user-{}","anonymousId":"anon-{client}-{i}","messageId":"c{client}-b{n}-m{i}","timestamp":"{now}","properties":{{"product_id":"sku-{i}","price":19.99,"category":"shoes"}},"context":{{"library":{{"name":"bench","version":"1"}},"ip":"10.0.0.{i}"}}}}"#,
                (client * 7919 + n * 101 + i) % 100_000
            )
        })
        .collect();
    format!(r#"{{"batch":[{}],"sentAt":"{now}"}}"#, messages.join(",")).into_bytes()
}

fn collector_bench(root: &Path) {
    let clients = env("TRIBE_BENCH_CLIENTS", 8);
    let seconds = env("TRIBE_BENCH_SECONDS", 20) as u64;
    let dir = root.join("collector");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("tribe.toml"),
        "[workspace]\nname = \"bench\"\nstorage = \"data\"\n\n[serve.write_keys]\nweb = \"bench-key\"\n",
    )
    .unwrap();
    let options = ServeOptions {
        collector: Some("127.0.0.1:0".parse().unwrap()),
        ..ServeOptions::default()
    };
    let (listening, stop, server) = start(&dir, options);
    let addr: SocketAddr = listening.collector.unwrap();
    let now = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let now = now.clone();
            std::thread::spawn(move || {
                let stream = TcpStream::connect(addr).unwrap();
                stream.set_nodelay(true).unwrap();
                let mut client = Client {
                    stream: BufReader::new(stream),
                };
                let mut latencies = Vec::new();
                let mut sent = 0usize;
                let mut n = 0;
                while Instant::now() < deadline {
                    let body = batch(c, n, 100, &now);
                    let t = Instant::now();
                    let status = client.post(&body);
                    latencies.push(t.elapsed());
                    assert_eq!(status, 200);
                    sent += 100;
                    n += 1;
                }
                (sent, latencies)
            })
        })
        .collect();
    let mut sent = 0;
    let mut latencies = Vec::new();
    for w in workers {
        let (s, l) = w.join().unwrap();
        sent += s;
        latencies.extend(l);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let stop_started = Instant::now();
    stop.send(()).unwrap();
    server.join().unwrap();
    let final_flush = stop_started.elapsed();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stored = runtime.block_on(async {
        let ws = Workspace::open(&dir).unwrap();
        let (ctx, _) = tribe::sql::session(&ws).await.unwrap();
        let batches = ctx
            .sql("select count(*) as n, count(distinct message_id) as ids from events")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let col = |i: usize| {
            batches[0]
                .column(i)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap()
                .value(0)
        };
        (col(0), col(1))
    });
    println!(
        "| clients | events sent | seconds | events/s | ack p50 | ack p99 | ack max | final flush | stored (distinct) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {clients} | {sent} | {elapsed:.1} | {:.0} | {:.1} ms | {:.1} ms | {:.1} ms | {:.2} s | {} ({}) |",
        sent as f64 / elapsed,
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
        final_flush.as_secs_f64(),
        stored.0,
        stored.1
    );
    assert_eq!(
        stored.0 as usize, sent,
        "every acknowledged event is stored"
    );
    assert_eq!(stored.0, stored.1, "no event is stored twice");
}

fn sql_bench(root: &Path) {
    let n = env("TRIBE_BENCH_PROFILES", 1_000_000);
    let dir = root.join(format!("sql-{n}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("tribe.toml"),
        "[workspace]\nname = \"bench\"\nstorage = \"data\"\n\n[serve.users]\nanalyst = \"bench\"\n",
    )
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let ws = Workspace::open(&dir).unwrap();
        write_profiles(&ws, profiles(n, n, &|_| false)).await;
    });
    drop(runtime);
    let options = ServeOptions {
        pg: Some("127.0.0.1:0".parse().unwrap()),
        ..ServeOptions::default()
    };
    let (listening, stop, server) = start(&dir, options);
    let addr = listening.pg.unwrap();
    let conn = format!(
        "host=127.0.0.1 port={} user=analyst dbname=tribe sslmode=disable",
        addr.port()
    );
    let lookup = |i: usize| {
        format!(
            "select profile_id, email, phone from profiles where email = '{}';",
            email(i).replace('\'', "''")
        )
    };
    // In one session: the server's round trip, as psql's \timing reports it.
    let mut script = String::from("\\timing on\n");
    for k in 0..21 {
        script.push_str(&lookup((k * 48_271) % n));
        script.push('\n');
    }
    let script_file = dir.join("lookups.sql");
    std::fs::write(&script_file, &script).unwrap();
    let out = std::process::Command::new("psql")
        .arg(&conn)
        .args(["-X", "-A", "-t", "-f"])
        .arg(&script_file)
        .env("PGPASSWORD", "bench")
        .output()
        .unwrap();
    let mut times: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("Time: "))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(
        !times.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    times.remove(0); // the first query warms the caches
    times.sort_by(f64::total_cmp);
    // Whole invocations: connect, authenticate, query, print.
    let mut whole = Vec::new();
    for k in 0..10 {
        let t = Instant::now();
        let out = std::process::Command::new("psql")
            .arg(&conn)
            .args(["-X", "-A", "-t", "-c", &lookup((k * 7_919) % n)])
            .env("PGPASSWORD", "bench")
            .output()
            .unwrap();
        assert!(out.status.success());
        whole.push(t.elapsed().as_secs_f64() * 1e3);
    }
    whole.sort_by(f64::total_cmp);
    stop.send(()).unwrap();
    server.join().unwrap();
    println!();
    println!(
        "| profiles | point lookup in a session (median / max of 20) | whole `psql -c` (median / max of 10) |"
    );
    println!("|---:|---:|---:|");
    println!(
        "| {n} | {:.1} / {:.1} ms | {:.1} / {:.1} ms |",
        times[times.len() / 2],
        times[times.len() - 1],
        whole[whole.len() / 2],
        whole[whole.len() - 1]
    );
}

fn main() {
    tribe::tune_allocator();
    let root = common::bench_root("serve");
    let only = std::env::var("TRIBE_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "collector" {
        collector_bench(&root);
    }
    if only.is_empty() || only == "sql" {
        sql_bench(&root);
    }
}

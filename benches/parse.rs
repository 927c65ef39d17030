//! Micro-benchmark of the message parser, the hot loop of event ingestion.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tribe::config::ValueType;
use tribe::ingest::message::{ParseRules, parse_message};

fn parse(c: &mut Criterion) {
    let line = r#"{"type":"track","event":"Order Completed","userId":"u0001234","anonymousId":"2f1e8c8a-1b2c-4d3e-a4f5-0123456789ab","properties":{"order_id":"W1234-2","revenue":129.9,"total":129.9,"currency":"EUR","products":[{"product_id":"SKU-123","sku":"SKU-123","category":"shoes","price":89.9,"quantity":1,"currency":"EUR"},{"product_id":"SKU-311","sku":"SKU-311","category":"bags","price":40.0,"quantity":1,"currency":"EUR"}]},"context":{"library":{"name":"analytics.js","version":"2.11.1"},"userAgent":"Mozilla/5.0"},"messageId":"7d3c2b1a-0f9e-4d8c-a7b6-5c4d3e2f1a0b","timestamp":"2026-03-01T10:00:00.123Z","sentAt":"2026-03-01T10:00:01.456Z"}"#;
    let typed: Vec<(String, ValueType)> = tribe::storage::schema::DEFAULT_PROPERTIES
        .iter()
        .map(|(n, t)| (n.to_string(), *t))
        .collect();
    let rules = ParseRules {
        typed,
        max_bytes: 32 * 1024,
        received_at: 0,
    };
    let mut group = c.benchmark_group("parse_message");
    group.throughput(Throughput::Bytes(line.len() as u64));
    group.bench_function("order_completed", |b| {
        b.iter(|| parse_message(line, &rules).unwrap())
    });
    // What a workspace with forgotten people adds per message: the tombstone check (salted
    // hashes of the user id and anonymous id against 10,000 tombstones).
    let config = tribe::config::Config::default();
    let states = (0..10_000).map(|i| {
        let hash = tribe::privacy::hash_identifier(b"salt", "email", &format!("p{i}@example.com"));
        let state = tribe::privacy::tombstone::State {
            forgotten_at: 0,
            lifted_from: None,
        };
        (hash, state)
    });
    let stones =
        tribe::privacy::tombstone::Tombstones::new(b"salt".to_vec(), &config, states).unwrap();
    group.bench_function("order_completed_with_tombstones", |b| {
        b.iter(|| {
            let row = parse_message(line, &rules).unwrap();
            stones.check_event(&row)
        })
    });
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);

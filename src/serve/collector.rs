//! The Segment-compatible HTTP collector: `/v1/batch` (and `/v1/import`), `/v1/track`,
//! `/v1/identify`, `/v1/page`, `/v1/screen`, `/v1/group`, `/v1/alias`, as the official Segment
//! and RudderStack libraries call them. A request is answered 200 only once its messages are in
//! the write-ahead log on disk; the flusher moves them to `events`.
//!
//! Each message is checked here with the same rules as `tribe ingest events`, after the
//! collector has set `receivedAt` (its own clock) and corrected `timestamp` for the client's
//! clock skew (`timestamp + receivedAt - sentAt`; with `sent_at` stored, the client's own time
//! stays derivable).
//! Refused messages are answered 400 with their index and reason, logged for the `rejected`
//! table, and do not stop the valid messages of the same batch.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

use super::flush::{Refusal, event_record, refusal_record};
use super::metrics::Metrics;
use super::wal::Wal;
use crate::ingest::message::{ParseRules, Rejection, parse_message, parse_time, preview};

/// Segment's documented limit for one batch request.
pub const MAX_BATCH_BYTES: usize = 500 * 1024;
/// Requests being read or waiting for the log at once; more wait for a slot.
const IN_FLIGHT: usize = 256;

/// What the handlers share.
pub struct Collector {
    pub wal: Wal,
    /// Write key → source.
    pub keys: BTreeMap<String, String>,
    /// The ingest rules, without a size limit: that is `max_message_bytes`, on what was sent.
    pub rules: ParseRules,
    /// Largest message, in bytes as sent.
    pub max_message_bytes: usize,
    pub max_log_bytes: u64,
    pub metrics: Arc<Metrics>,
    permits: Semaphore,
}

impl Collector {
    pub fn new(
        wal: Wal,
        keys: BTreeMap<String, String>,
        rules: ParseRules,
        max_message_bytes: usize,
        max_log_bytes: u64,
        metrics: Arc<Metrics>,
    ) -> Collector {
        Collector {
            wal,
            keys,
            rules,
            max_message_bytes,
            max_log_bytes,
            metrics,
            permits: Semaphore::new(IN_FLIGHT),
        }
    }
}

/// The collector's routes, with `/health` and `/metrics`.
pub fn router(collector: Arc<Collector>) -> Router {
    Router::new()
        .route("/v1/{kind}", post(receive))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(collector)
}

async fn health(State(c): State<Arc<Collector>>) -> Response {
    let body = json!({
        "status": "ok",
        "log_bytes": c.wal.stats.pending_bytes.load(Ordering::SeqCst),
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn metrics(State(c): State<Arc<Collector>>) -> Response {
    let mut response = c.metrics.render(Some(&c.wal.stats)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// An error answer in the shape the client libraries read (`code`, `message`).
fn error(status: StatusCode, code: &str, message: String) -> Response {
    let body = json!({ "success": false, "code": code, "message": message });
    (status, axum::Json(body)).into_response()
}

#[derive(Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow, default)]
    batch: Option<Vec<&'a RawValue>>,
    #[serde(rename = "writeKey", default)]
    write_key: Option<String>,
    #[serde(rename = "sentAt", default)]
    sent_at: Option<Value>,
    #[serde(default)]
    context: Option<Value>,
    #[serde(default)]
    integrations: Option<Value>,
}

#[derive(Deserialize)]
struct SingleBody {
    #[serde(rename = "writeKey", default)]
    write_key: Option<String>,
}

async fn receive(
    State(c): State<Arc<Collector>>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    c.metrics.requests.inc();
    let single = match kind.as_str() {
        "batch" | "import" => None,
        "track" | "identify" | "page" | "screen" | "group" | "alias" => Some(kind.clone()),
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no endpoint /v1/{kind}"),
            );
        }
    };
    let header_key = match basic_user(&headers) {
        Ok(key) => key,
        Err(message) => {
            c.metrics.unauthorized.inc();
            return error(StatusCode::UNAUTHORIZED, "unauthorized", message);
        }
    };
    if let Some(key) = &header_key
        && !c.keys.contains_key(key)
    {
        c.metrics.unauthorized.inc();
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown write key".into(),
        );
    }
    if c.wal.stats.pending_bytes.load(Ordering::SeqCst) >= c.max_log_bytes {
        c.metrics.throttled.inc();
        let mut response = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "the collector's log is full while storage catches up; retry later".into(),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        return response;
    }
    let Ok(_permit) = c.permits.acquire().await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "shutting down".into(),
        );
    };
    let (what, limit) = match single {
        Some(_) => ("message", c.max_message_bytes),
        None => ("batch", MAX_BATCH_BYTES),
    };
    let body = match read_body(body, &headers, what, limit).await {
        Ok(body) => body,
        Err(message) => return error(StatusCode::BAD_REQUEST, "bad_request", message),
    };
    let received_at = chrono::Utc::now();
    let plan = match &single {
        Some(_) => plan_single(&body),
        None => plan_batch(&body),
    };
    let plan = match plan {
        Ok(plan) => plan,
        Err(message) => return error(StatusCode::BAD_REQUEST, "bad_request", message),
    };
    let key = header_key.or(plan.write_key.clone());
    let Some(source) = key.as_ref().and_then(|k| c.keys.get(k)) else {
        c.metrics.unauthorized.inc();
        let message = match key {
            Some(_) => "unknown write key",
            None => "missing write key: send it as the HTTP Basic user name or as writeKey",
        };
        return error(StatusCode::UNAUTHORIZED, "unauthorized", message.into());
    };

    let endpoint = format!("/v1/{kind}");
    let mut records = Vec::with_capacity(plan.messages.len());
    let mut refused = Vec::new();
    for (index, raw) in plan.messages.iter().enumerate() {
        match prepare(raw, &plan, single.as_deref(), received_at, &c) {
            Ok(line) => records.push(event_record(source, &line)),
            Err(rejection) => {
                let message_id = serde_json::from_str::<Map<String, Value>>(raw)
                    .ok()
                    .and_then(|m| m.get("messageId").cloned());
                refused.push(json!({
                    "index": index,
                    "messageId": message_id,
                    "field": rejection.field,
                    "reason": rejection.reason,
                }));
                records.push(refusal_record(&Refusal {
                    source: source.clone(),
                    endpoint: endpoint.clone(),
                    field: rejection.field,
                    reason: rejection.reason,
                    raw: raw.chars().take(4096).collect(),
                }));
            }
        }
    }
    if let Err(e) = c.wal.append(&records).await {
        tracing::error!(error = %e, "write-ahead log append failed");
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("could not write the log: {e}"),
        );
    }
    let accepted = plan.messages.len() - refused.len();
    c.metrics.received.inc_by(accepted as u64);
    c.metrics.rejected.inc_by(refused.len() as u64);
    c.metrics
        .ack_seconds
        .observe(started.elapsed().as_secs_f64());
    if refused.is_empty() {
        return (StatusCode::OK, axum::Json(json!({ "success": true }))).into_response();
    }
    let first = &refused[0];
    let message = format!(
        "{} of {} message(s) refused, the other {accepted} accepted; first: message {}: {}{}",
        refused.len(),
        plan.messages.len(),
        first["index"],
        first["field"]
            .as_str()
            .map(|f| format!("{f}: "))
            .unwrap_or_default(),
        first["reason"].as_str().unwrap_or_default(),
    );
    let body = json!({
        "success": false,
        "code": "bad_request",
        "message": message,
        "accepted": accepted,
        "rejected": refused,
    });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

/// The user name of an HTTP Basic `Authorization` header (the write key), if there is one.
fn basic_user(headers: &HeaderMap) -> Result<Option<String>, String> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| "unreadable Authorization header".to_string())?;
    let Some(encoded) = text.strip_prefix("Basic ") else {
        return Err("Authorization must be HTTP Basic with the write key as user name".into());
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| "Authorization: bad base64".to_string())?;
    let decoded = String::from_utf8(decoded).map_err(|_| "Authorization: not UTF-8".to_string())?;
    let user = decoded.split(':').next().unwrap_or_default();
    Ok((!user.is_empty()).then(|| user.to_string()))
}

/// Reads the body, gunzipping it when sent gzipped; refuses it past `limit` bytes of JSON.
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    what: &str,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let gzipped = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    // Compressed data can be a little larger than its content; the content limit applies below.
    let raw = axum::body::to_bytes(body, limit * 2 + 4096)
        .await
        .map_err(|_| format!("{what} is over the limit of {limit} bytes"))?;
    let json = if gzipped {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("bad gzip body: {e}"))?;
        out
    } else {
        raw.to_vec()
    };
    if json.len() > limit {
        let size = if gzipped {
            format!("more than {limit} bytes once unzipped")
        } else {
            format!("{} bytes", json.len())
        };
        return Err(format!("{what} is {size}, over the limit of {limit} bytes"));
    }
    Ok(json)
}

/// The messages of a request and what the batch says about all of them.
struct Plan {
    messages: Vec<String>,
    write_key: Option<String>,
    sent_at: Option<Value>,
    context: Option<Value>,
    integrations: Option<Value>,
}

fn plan_batch(body: &[u8]) -> Result<Plan, String> {
    let parsed: BatchBody =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let batch = parsed
        .batch
        .ok_or_else(|| "a batch request needs a \"batch\" array of messages".to_string())?;
    Ok(Plan {
        messages: batch.iter().map(|m| m.get().to_string()).collect(),
        write_key: parsed.write_key,
        sent_at: parsed.sent_at,
        context: parsed.context,
        integrations: parsed.integrations,
    })
}

fn plan_single(body: &[u8]) -> Result<Plan, String> {
    let text = std::str::from_utf8(body).map_err(|_| "body is not UTF-8".to_string())?;
    let parsed: SingleBody =
        serde_json::from_str(text).map_err(|e| format!("invalid JSON body: {e}"))?;
    Ok(Plan {
        messages: vec![text.to_string()],
        write_key: parsed.write_key,
        sent_at: None,
        context: None,
        integrations: None,
    })
}

/// One message as it goes into the log: checked, stamped and skew-corrected JSON.
fn prepare(
    raw: &str,
    plan: &Plan,
    endpoint_kind: Option<&str>,
    received_at: chrono::DateTime<chrono::Utc>,
    c: &Collector,
) -> Result<String, Rejection> {
    if raw.len() > c.max_message_bytes {
        return Err(Rejection::new(
            None,
            format!(
                "message is {} bytes, over the limit of {} bytes",
                raw.len(),
                c.max_message_bytes
            ),
        ));
    }
    let mut message: Map<String, Value> = serde_json::from_str(raw)
        .map_err(|e| Rejection::new(None, format!("invalid JSON: {e}")))?;
    // The key is a secret; it says which source, and that is stored instead.
    message.remove("writeKey");
    if let Some(kind) = endpoint_kind {
        match message.get("type").and_then(Value::as_str) {
            None => {
                message.insert("type".into(), Value::String(kind.into()));
            }
            Some(t) if t.eq_ignore_ascii_case(kind) => {}
            Some(t) => {
                return Err(Rejection::new(
                    Some("type"),
                    format!("a {t:?} message sent to /v1/{kind}"),
                ));
            }
        }
    }
    for (field, value) in [
        ("context", &plan.context),
        ("integrations", &plan.integrations),
    ] {
        if let Some(value) = value
            && !message.contains_key(field)
        {
            message.insert(field.into(), value.clone());
        }
    }
    let received = received_at.timestamp_micros();
    let sent_at = match message.get("sentAt").or(plan.sent_at.as_ref()) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(parse_time(s).ok_or_else(|| {
            Rejection::new(Some("sentAt"), format!("unparseable time {}", preview(s)))
        })?),
        Some(other) => {
            return Err(Rejection::new(
                Some("sentAt"),
                format!("expected a time, found {}", preview(&other.to_string())),
            ));
        }
    };
    match message.get("timestamp") {
        None | Some(Value::Null) => {
            message.insert("timestamp".into(), Value::String(rfc3339(received)));
        }
        Some(Value::String(original)) => {
            if let (Some(ts), Some(sent)) = (parse_time(original), sent_at) {
                let corrected = ts + (received - sent);
                message.insert("timestamp".into(), Value::String(rfc3339(corrected)));
                // Stored as sent_at: the client's own time stays derivable.
                message.insert("sentAt".into(), Value::String(rfc3339(sent)));
            }
        }
        Some(_) => {} // the check below names the field
    }
    message.insert("receivedAt".into(), Value::String(rfc3339(received)));
    let line = serde_json::to_string(&message).expect("a JSON map serialises");
    parse_message(&line, &c.rules)?;
    Ok(line)
}

fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collector(dir: &std::path::Path) -> Collector {
        Collector::new(
            Wal::open(dir).unwrap(),
            BTreeMap::from([("wk".to_string(), "web".to_string())]),
            ParseRules {
                typed: vec![],
                max_bytes: usize::MAX,
                received_at: 0,
            },
            32 * 1024,
            1 << 30,
            Arc::new(Metrics::new()),
        )
    }

    fn plan(sent_at: Option<&str>) -> Plan {
        Plan {
            messages: vec![],
            write_key: None,
            sent_at: sent_at.map(|s| Value::String(s.into())),
            context: Some(json!({"library": {"name": "batch-level"}})),
            integrations: None,
        }
    }

    #[tokio::test]
    async fn timestamps_are_corrected_for_client_clock_skew() {
        let dir = tempfile::tempdir().unwrap();
        let c = collector(dir.path());
        let received = chrono::DateTime::parse_from_rfc3339("2026-05-01T12:00:10Z")
            .unwrap()
            .to_utc();
        // The client's clock is 10 s behind: it sent at 12:00:00 by its clock.
        let raw = r#"{"type":"track","event":"E","userId":"u","messageId":"m","timestamp":"2026-05-01T11:59:00Z","writeKey":"secret"}"#;
        let line = prepare(raw, &plan(Some("2026-05-01T12:00:00Z")), None, received, &c).unwrap();
        let stored: Map<String, Value> = serde_json::from_str(&line).unwrap();
        assert_eq!(stored["timestamp"], "2026-05-01T11:59:10.000000Z");
        assert_eq!(stored["sentAt"], "2026-05-01T12:00:00.000000Z");
        assert_eq!(stored["receivedAt"], "2026-05-01T12:00:10.000000Z");
        assert_eq!(stored["context"]["library"]["name"], "batch-level");
        assert!(!stored.contains_key("writeKey"));

        // Without sentAt there is nothing to correct by; without a timestamp, receipt is the time.
        let raw = r#"{"type":"identify","userId":"u","messageId":"m2"}"#;
        let line = prepare(raw, &plan(None), None, received, &c).unwrap();
        let stored: Map<String, Value> = serde_json::from_str(&line).unwrap();
        assert_eq!(stored["timestamp"], "2026-05-01T12:00:10.000000Z");
    }

    #[tokio::test]
    async fn single_endpoints_set_or_check_the_type() {
        let dir = tempfile::tempdir().unwrap();
        let c = collector(dir.path());
        let now = chrono::Utc::now();
        let line = prepare(
            r#"{"event":"E","userId":"u"}"#,
            &plan(None),
            Some("track"),
            now,
            &c,
        )
        .unwrap();
        assert!(line.contains(r#""type":"track""#));
        let err = prepare(
            r#"{"type":"page","userId":"u"}"#,
            &plan(None),
            Some("track"),
            now,
            &c,
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("type"));
        let big = format!(
            r#"{{"type":"track","event":"E","userId":"u","properties":{{"x":"{}"}}}}"#,
            "a".repeat(40_000)
        );
        let err = prepare(&big, &plan(None), None, now, &c).unwrap_err();
        assert!(
            err.reason.contains("over the limit of 32768"),
            "{}",
            err.reason
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_log_answers_503_with_retry_after() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = collector(dir.path());
        c.max_log_bytes = 10;
        // Storage is "slow": something already waits in the log beyond the limit.
        c.wal.append(&[vec![b'x'; 64]]).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(Arc::new(c));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let response = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let body = r#"{"batch":[]}"#;
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            write!(
                s,
                "POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Basic d2s6\r\n\
                 Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .await
        .unwrap();
        assert!(response.starts_with("HTTP/1.1 503"), "{response}");
        assert!(
            response.to_lowercase().contains("retry-after: 2"),
            "{response}"
        );
        assert!(response.contains("log is full"), "{response}");
    }

    #[test]
    fn write_keys_come_from_basic_auth() {
        let mut headers = HeaderMap::new();
        assert_eq!(basic_user(&headers).unwrap(), None);
        let value = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("wk:")
        );
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        assert_eq!(basic_user(&headers).unwrap().as_deref(), Some("wk"));
        headers.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert!(basic_user(&headers).is_err());
    }
}

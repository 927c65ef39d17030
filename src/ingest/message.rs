//! One Segment-spec message: parsed from a JSON line, checked against the spec, and turned into
//! the values of an `events` row. Parsing borrows from the input line wherever it can; this is
//! the hot loop of ingestion.

use std::borrow::Cow;

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::ValueType;

/// The six Segment message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Track,
    Identify,
    Page,
    Screen,
    Group,
    Alias,
}

impl MessageType {
    pub fn parse(s: &str) -> Option<MessageType> {
        Some(match s.to_ascii_lowercase().as_str() {
            "track" => MessageType::Track,
            "identify" => MessageType::Identify,
            "page" => MessageType::Page,
            "screen" => MessageType::Screen,
            "group" => MessageType::Group,
            "alias" => MessageType::Alias,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Track => "track",
            MessageType::Identify => "identify",
            MessageType::Page => "page",
            MessageType::Screen => "screen",
            MessageType::Group => "group",
            MessageType::Alias => "alias",
        }
    }
}

/// Why a message was refused, and which field was at fault.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub field: Option<String>,
    pub reason: String,
}

impl Rejection {
    pub fn new(field: Option<&str>, reason: impl Into<String>) -> Self {
        Rejection {
            field: field.map(str::to_string),
            reason: reason.into(),
        }
    }
}

/// A typed property value, for the `prop_*` columns.
#[derive(Debug, Clone, PartialEq)]
pub enum TypedValue {
    Null,
    Text(String),
    Double(f64),
    Long(i64),
    Bool(bool),
    Time(i64),
}

/// The values of one `events` row.
#[derive(Debug, Clone)]
pub struct EventRow<'a> {
    pub message_id: Cow<'a, str>,
    pub kind: MessageType,
    pub event: Option<Cow<'a, str>>,
    pub name: Option<Cow<'a, str>>,
    pub user_id: Option<Cow<'a, str>>,
    pub anonymous_id: Option<Cow<'a, str>>,
    pub previous_id: Option<Cow<'a, str>>,
    pub group_id: Option<Cow<'a, str>>,
    /// Event time, microseconds since the epoch, UTC.
    pub timestamp: i64,
    pub received_at: i64,
    pub sent_at: Option<i64>,
    pub properties: Option<Cow<'a, str>>,
    pub traits: Option<Cow<'a, str>>,
    pub context: Option<Cow<'a, str>>,
    pub integrations: Option<Cow<'a, str>>,
    /// Values of the typed properties, in the order of the workspace's typed property list.
    pub typed: Vec<TypedValue>,
}

/// What parsing needs from the workspace.
#[derive(Debug, Clone)]
pub struct ParseRules {
    /// Typed properties in column order.
    pub typed: Vec<(String, ValueType)>,
    /// Largest message in bytes.
    pub max_bytes: usize,
    /// `received_at` for messages that do not carry one (microseconds).
    pub received_at: i64,
}

/// Segment's documented per-message limit.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 32 * 1024;

#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(borrow, rename = "messageId", alias = "message_id", default)]
    message_id: Option<&'a RawValue>,
    #[serde(borrow, rename = "type", default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    event: Option<&'a RawValue>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, rename = "userId", alias = "user_id", default)]
    user_id: Option<&'a RawValue>,
    #[serde(borrow, rename = "anonymousId", alias = "anonymous_id", default)]
    anonymous_id: Option<&'a RawValue>,
    #[serde(borrow, rename = "previousId", alias = "previous_id", default)]
    previous_id: Option<&'a RawValue>,
    #[serde(borrow, rename = "groupId", alias = "group_id", default)]
    group_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow, rename = "receivedAt", alias = "received_at", default)]
    received_at: Option<&'a RawValue>,
    #[serde(borrow, rename = "sentAt", alias = "sent_at", default)]
    sent_at: Option<&'a RawValue>,
    #[serde(borrow, default)]
    properties: Option<&'a RawValue>,
    #[serde(borrow, default)]
    traits: Option<&'a RawValue>,
    #[serde(borrow, default)]
    context: Option<&'a RawValue>,
    #[serde(borrow, default)]
    integrations: Option<&'a RawValue>,
}

/// The top-level properties of a message, in order, with their values as raw JSON. A list,
/// not a map: messages have a handful of properties, and this runs for every message.
struct Properties<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Properties<'a> {
    /// The value of a property; the last one wins when a name repeats, as in a JSON object.
    fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
    }
}

impl<'de> Deserialize<'de> for Properties<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Properties<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((key, value)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    entries.push((key.0, value));
                }
                Ok(Properties(entries))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// An object key, borrowed from the input unless it has escapes (a bare `Cow<str>` would
/// always allocate; `serde(borrow)` makes it borrow).
#[derive(Deserialize)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

/// Parses and checks one message. `line` is one JSON object.
pub fn parse_message<'a>(line: &'a str, rules: &ParseRules) -> Result<EventRow<'a>, Rejection> {
    if line.len() > rules.max_bytes {
        return Err(Rejection::new(
            None,
            format!(
                "message is {} bytes, over the limit of {} bytes",
                line.len(),
                rules.max_bytes
            ),
        ));
    }
    let raw: RawMessage<'a> = serde_json::from_str(line)
        .map_err(|e| Rejection::new(None, format!("invalid JSON: {e}")))?;

    let kind_text = text(raw.kind, "type")?
        .ok_or_else(|| Rejection::new(Some("type"), "missing message type"))?;
    let kind = MessageType::parse(&kind_text).ok_or_else(|| {
        Rejection::new(
            Some("type"),
            format!(
                "unknown message type {kind_text:?} (expected track, identify, page, screen, group or alias)"
            ),
        )
    })?;

    let message_id = match id(raw.message_id, "messageId")? {
        Some(id) => id,
        // Files exported without ids still ingest idempotently: the content names the message.
        None => Cow::Owned(format!(
            "content-{:032x}",
            xxhash_rust::xxh3::xxh3_128(line.as_bytes())
        )),
    };
    let user_id = id(raw.user_id, "userId")?;
    let anonymous_id = id(raw.anonymous_id, "anonymousId")?;
    if user_id.is_none() && anonymous_id.is_none() {
        return Err(Rejection::new(
            Some("userId"),
            "missing id: a message needs a userId or an anonymousId",
        ));
    }
    let previous_id = id(raw.previous_id, "previousId")?;
    let group_id = id(raw.group_id, "groupId")?;
    let event = text(raw.event, "event")?;
    let name = text(raw.name, "name")?;
    match kind {
        MessageType::Track if event.as_deref().is_none_or(str::is_empty) => {
            return Err(Rejection::new(
                Some("event"),
                "missing event name for a track message",
            ));
        }
        MessageType::Alias if previous_id.is_none() => {
            return Err(Rejection::new(
                Some("previousId"),
                "missing previousId for an alias message",
            ));
        }
        MessageType::Group if group_id.is_none() => {
            return Err(Rejection::new(
                Some("groupId"),
                "missing groupId for a group message",
            ));
        }
        _ => {}
    }

    let timestamp = time(raw.timestamp, "timestamp")?
        .ok_or_else(|| Rejection::new(Some("timestamp"), "missing timestamp"))?;
    let received_at = time(raw.received_at, "receivedAt")?.unwrap_or(rules.received_at);
    let sent_at = time(raw.sent_at, "sentAt")?;

    let properties = object(raw.properties, "properties")?;
    let typed = typed_values(properties.as_deref(), &rules.typed)?;
    Ok(EventRow {
        message_id,
        kind,
        event,
        name,
        user_id,
        anonymous_id,
        previous_id,
        group_id,
        timestamp,
        received_at,
        sent_at,
        properties,
        traits: object(raw.traits, "traits")?,
        context: object(raw.context, "context")?,
        integrations: object(raw.integrations, "integrations")?,
        typed,
    })
}

/// A JSON string (null and absent are `None`), borrowed when it has no escapes.
fn text<'a>(raw: Option<&'a RawValue>, field: &str) -> Result<Option<Cow<'a, str>>, Rejection> {
    let Some(raw) = raw else { return Ok(None) };
    let s = raw.get();
    match s.as_bytes().first() {
        Some(b'n') => Ok(None),
        Some(b'"') => Ok(Some(unquote(s, field)?)),
        _ => Err(Rejection::new(
            Some(field),
            format!("expected a string, found {}", preview(s)),
        )),
    }
}

/// An identifier: a string, or a number taken as its decimal text (as Segment's API does).
fn id<'a>(raw: Option<&'a RawValue>, field: &str) -> Result<Option<Cow<'a, str>>, Rejection> {
    let Some(raw) = raw else { return Ok(None) };
    let s = raw.get();
    let value = match s.as_bytes().first() {
        Some(b'n') => return Ok(None),
        Some(b'"') => unquote(s, field)?,
        Some(b'-' | b'0'..=b'9') => Cow::Borrowed(s),
        _ => {
            return Err(Rejection::new(
                Some(field),
                format!("expected a string id, found {}", preview(s)),
            ));
        }
    };
    Ok((!value.trim().is_empty()).then_some(value))
}

fn unquote<'a>(s: &'a str, field: &str) -> Result<Cow<'a, str>, Rejection> {
    let inner = &s[1..s.len() - 1];
    if inner.contains('\\') {
        serde_json::from_str::<String>(s)
            .map(Cow::Owned)
            .map_err(|e| Rejection::new(Some(field), format!("bad string: {e}")))
    } else {
        Ok(Cow::Borrowed(inner))
    }
}

/// A JSON object kept as text; a string holding an object (CSV and Parquet inputs) is unwrapped.
fn object<'a>(raw: Option<&'a RawValue>, field: &str) -> Result<Option<Cow<'a, str>>, Rejection> {
    let Some(raw) = raw else { return Ok(None) };
    let s = raw.get();
    match s.as_bytes().first() {
        Some(b'n') => Ok(None),
        Some(b'{') => Ok(Some(Cow::Borrowed(s))),
        Some(b'"') => {
            let inner = unquote(s, field)?;
            let trimmed = inner.trim();
            if trimmed.is_empty() {
                return Ok(None);
            }
            match serde_json::from_str::<&RawValue>(trimmed) {
                Ok(v) if v.get().starts_with('{') => Ok(Some(Cow::Owned(v.get().to_string()))),
                _ => Err(Rejection::new(
                    Some(field),
                    format!("expected an object, found the string {}", preview(s)),
                )),
            }
        }
        _ => Err(Rejection::new(
            Some(field),
            format!("expected an object, found {}", preview(s)),
        )),
    }
}

fn time(raw: Option<&RawValue>, field: &str) -> Result<Option<i64>, Rejection> {
    let Some(text) = text(raw, field)? else {
        return Ok(None);
    };
    parse_time(&text)
        .map(Some)
        .ok_or_else(|| Rejection::new(Some(field), format!("unparseable time {text:?}")))
}

/// Parses an ISO-8601 time into UTC microseconds: with an offset, or without (taken as UTC), or a
/// bare date (midnight UTC).
pub fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_micros());
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f%#z",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    if let Ok(t) = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z") {
        return Some(t.timestamp_micros());
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().map(|d| {
        d.and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            .timestamp_micros()
    })
}

pub fn typed_values(
    properties: Option<&str>,
    typed: &[(String, ValueType)],
) -> Result<Vec<TypedValue>, Rejection> {
    let mut out = vec![TypedValue::Null; typed.len()];
    let Some(properties) = properties else {
        return Ok(out);
    };
    let map: Properties = serde_json::from_str(properties)
        .map_err(|e| Rejection::new(Some("properties"), format!("invalid JSON: {e}")))?;
    if map.0.is_empty() {
        return Ok(out);
    }
    for (slot, (name, ty)) in out.iter_mut().zip(typed) {
        let found = match map.get(name) {
            Some(raw) => Some(Cow::Borrowed(raw.get())),
            None if name.contains('.') => nested(&map, name),
            None => None,
        };
        if let Some(raw) = found {
            *slot = typed_value(&raw, *ty)
                .map_err(|reason| Rejection::new(Some(&format!("properties.{name}")), reason))?;
        }
    }
    Ok(out)
}

/// A nested property by its dotted path (`product.sku`), as JSON text.
fn nested<'a>(map: &Properties<'a>, path: &str) -> Option<Cow<'a, str>> {
    let mut parts = path.split('.');
    let mut current: serde_json::Value =
        serde_json::from_str(map.get(parts.next()?)?.get()).ok()?;
    for part in parts {
        current = current.get(part)?.clone();
    }
    Some(Cow::Owned(current.to_string()))
}

/// Converts one JSON value to a column type. Numbers written as strings ("12.50") are accepted,
/// as real exports are full of them; anything else of the wrong type is an error.
pub fn typed_value(raw: &str, ty: ValueType) -> Result<TypedValue, String> {
    if raw == "null" {
        return Ok(TypedValue::Null);
    }
    let unquoted: Cow<str> = if raw.starts_with('"') {
        match serde_json::from_str::<String>(raw) {
            Ok(s) => Cow::Owned(s),
            Err(e) => return Err(format!("bad string: {e}")),
        }
    } else {
        Cow::Borrowed(raw)
    };
    convert_text(&unquoted, ty, raw.starts_with('"'))
}

/// Converts text (from a CSV cell or a JSON value) to a column type.
pub fn convert_text(text: &str, ty: ValueType, was_string: bool) -> Result<TypedValue, String> {
    let t = text.trim();
    match ty {
        ValueType::String => {
            if !was_string && (t.starts_with('{') || t.starts_with('[')) {
                return Err(format!("expected text, found {}", preview(t)));
            }
            Ok(TypedValue::Text(text.to_string()))
        }
        _ if t.is_empty() => Ok(TypedValue::Null),
        ValueType::Double => t
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .map(TypedValue::Double)
            .ok_or_else(|| format!("expected a number, found {}", preview(text))),
        ValueType::Long => t
            .parse::<i64>()
            .ok()
            .or_else(|| {
                t.parse::<f64>()
                    .ok()
                    .filter(|v| v.fract() == 0.0 && v.abs() < 9.0e15)
                    .map(|v| v as i64)
            })
            .map(TypedValue::Long)
            .ok_or_else(|| format!("expected a whole number, found {}", preview(text))),
        ValueType::Boolean => parse_bool(t)
            .map(TypedValue::Bool)
            .ok_or_else(|| format!("expected true or false, found {}", preview(text))),
        ValueType::Timestamp => parse_time(t)
            .map(TypedValue::Time)
            .ok_or_else(|| format!("expected a time, found {}", preview(text))),
    }
}

/// Reads the usual spellings of a yes/no flag.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "1" | "on" | "opt-in" | "opted_in" | "subscribed" => {
            Some(true)
        }
        "false" | "f" | "no" | "n" | "0" | "off" | "opt-out" | "opted_out" | "unsubscribed" => {
            Some(false)
        }
        _ => None,
    }
}

/// The start of a value, for messages.
pub fn preview(s: &str) -> String {
    const MAX: usize = 40;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(MAX).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> ParseRules {
        ParseRules {
            typed: vec![
                ("revenue".into(), ValueType::Double),
                ("currency".into(), ValueType::String),
                ("quantity".into(), ValueType::Long),
            ],
            max_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            received_at: 7,
        }
    }

    #[test]
    fn property_names_are_borrowed_unless_escaped() {
        let plain: Key = serde_json::from_str(r#""revenue""#).unwrap();
        assert!(matches!(plain.0, Cow::Borrowed("revenue")));
        let escaped: Key = serde_json::from_str(r#""re\u0076enue""#).unwrap();
        assert!(matches!(escaped.0, Cow::Owned(ref k) if k == "revenue"));
    }

    #[test]
    fn property_names_with_escapes_are_found_and_the_last_repeat_wins() {
        let line = r#"{"type":"track","userId":"u1","event":"E","timestamp":"2026-01-31","properties":{"re\u0076enue":3,"currency":"EUR","currency":"USD"}}"#;
        let row = parse_message(line, &rules()).unwrap();
        assert_eq!(
            row.typed,
            vec![
                TypedValue::Double(3.0),
                TypedValue::Text("USD".into()),
                TypedValue::Null
            ]
        );
    }

    #[test]
    fn parses_a_track_message() {
        let line = r#"{"type":"track","messageId":"m1","userId":"u1","event":"Order Completed","timestamp":"2026-01-31T10:00:00.5+01:00","properties":{"revenue":"12.50","currency":"EUR","quantity":2,"products":[{"sku":"a"}]},"context":{"ip":"1.2.3.4"}}"#;
        let row = parse_message(line, &rules()).unwrap();
        assert_eq!(row.kind, MessageType::Track);
        assert_eq!(row.message_id, "m1");
        assert_eq!(row.event.as_deref(), Some("Order Completed"));
        assert_eq!(row.timestamp, 1_769_850_000_500_000);
        assert_eq!(row.received_at, 7);
        assert_eq!(
            row.typed,
            vec![
                TypedValue::Double(12.5),
                TypedValue::Text("EUR".into()),
                TypedValue::Long(2)
            ]
        );
        assert!(row.properties.unwrap().contains("products"));
        assert_eq!(row.context.as_deref(), Some(r#"{"ip":"1.2.3.4"}"#));
    }

    #[test]
    fn refuses_bad_messages_with_the_field_at_fault() {
        let cases = [
            (r#"{"type":"track""#, None, "invalid JSON"),
            (
                r#"{"type":"track","userId":"u","event":"E"}"#,
                Some("timestamp"),
                "missing timestamp",
            ),
            (
                r#"{"type":"track","userId":"u","event":"E","timestamp":"yesterday"}"#,
                Some("timestamp"),
                "unparseable time",
            ),
            (
                r#"{"type":"track","event":"E","timestamp":"2026-01-01"}"#,
                Some("userId"),
                "missing id",
            ),
            (
                r#"{"type":"track","userId":"u","timestamp":"2026-01-01"}"#,
                Some("event"),
                "missing event name",
            ),
            (
                r#"{"type":"shout","userId":"u","timestamp":"2026-01-01"}"#,
                Some("type"),
                "unknown message type",
            ),
            (
                r#"{"type":"track","userId":"u","event":"E","timestamp":"2026-01-01","properties":{"revenue":"lots"}}"#,
                Some("properties.revenue"),
                "expected a number",
            ),
            (
                r#"{"type":"track","userId":{"a":1},"event":"E","timestamp":"2026-01-01"}"#,
                Some("userId"),
                "expected a string id",
            ),
            (
                r#"{"type":"alias","userId":"u","timestamp":"2026-01-01"}"#,
                Some("previousId"),
                "missing previousId",
            ),
            (
                r#"{"type":"identify","userId":"u","timestamp":"2026-01-01","traits":[1]}"#,
                Some("traits"),
                "expected an object",
            ),
        ];
        for (line, field, reason) in cases {
            let err = parse_message(line, &rules()).unwrap_err();
            assert_eq!(err.field.as_deref(), field, "{line}");
            assert!(err.reason.contains(reason), "{line}: {}", err.reason);
        }
    }

    #[test]
    fn oversized_messages_are_refused() {
        let mut r = rules();
        r.max_bytes = 50;
        let line = format!(
            r#"{{"type":"identify","userId":"u","timestamp":"2026-01-01","traits":{{"x":"{}"}}}}"#,
            "a".repeat(100)
        );
        let err = parse_message(&line, &r).unwrap_err();
        assert!(err.reason.contains("over the limit"), "{}", err.reason);
    }

    #[test]
    fn ids_may_be_numbers_and_missing_message_ids_come_from_content() {
        let line = r#"{"type":"identify","userId":42,"timestamp":"2026-01-01 10:00:00","traits":"{\"email\":\"a@b.c\"}"}"#;
        let row = parse_message(line, &rules()).unwrap();
        assert_eq!(row.user_id.as_deref(), Some("42"));
        assert!(row.message_id.starts_with("content-"));
        assert_eq!(row.traits.as_deref(), Some(r#"{"email":"a@b.c"}"#));
        let again = parse_message(line, &rules()).unwrap();
        assert_eq!(row.message_id, again.message_id);
    }

    #[test]
    fn times_in_common_formats() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Some(1_000_000));
        assert_eq!(parse_time("1970-01-01 00:00:01"), Some(1_000_000));
        assert_eq!(parse_time("1970-01-02"), Some(86_400_000_000));
        assert_eq!(parse_time("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_time("soon"), None);
    }
}

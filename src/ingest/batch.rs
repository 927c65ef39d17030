//! Column builders that turn parsed event rows into Arrow record batches shaped like the `events`
//! table, with the message-id hashes that deduplication uses.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::array::{AsArray, UInt32Array};
use arrow::datatypes::{Date32Type, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::message::{EventRow, TypedValue};
use crate::config::ValueType;
use crate::storage::append::key_hash;
use crate::storage::schema;

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The UTC day (days since 1970-01-01) of a timestamp in microseconds.
pub fn day_of(micros: i64) -> i32 {
    micros.div_euclid(MICROS_PER_DAY) as i32
}

/// A builder for one typed column.
pub enum TypedBuilder {
    Text(StringBuilder),
    Double(Float64Builder),
    Long(Int64Builder),
    Bool(BooleanBuilder),
    Time(TimestampMicrosecondBuilder),
}

impl TypedBuilder {
    pub fn new(ty: ValueType) -> Self {
        match ty {
            ValueType::String => TypedBuilder::Text(StringBuilder::new()),
            ValueType::Double => TypedBuilder::Double(Float64Builder::new()),
            ValueType::Long => TypedBuilder::Long(Int64Builder::new()),
            ValueType::Boolean => TypedBuilder::Bool(BooleanBuilder::new()),
            ValueType::Timestamp => {
                TypedBuilder::Time(TimestampMicrosecondBuilder::new().with_timezone("UTC"))
            }
        }
    }

    /// Appends a value already converted to this builder's type.
    pub fn append(&mut self, value: &TypedValue) {
        match (self, value) {
            (TypedBuilder::Text(b), TypedValue::Text(v)) => b.append_value(v),
            (TypedBuilder::Double(b), TypedValue::Double(v)) => b.append_value(*v),
            (TypedBuilder::Long(b), TypedValue::Long(v)) => b.append_value(*v),
            (TypedBuilder::Bool(b), TypedValue::Bool(v)) => b.append_value(*v),
            (TypedBuilder::Time(b), TypedValue::Time(v)) => b.append_value(*v),
            (b, _) => b.append_null(),
        }
    }

    pub fn append_null(&mut self) {
        match self {
            TypedBuilder::Text(b) => b.append_null(),
            TypedBuilder::Double(b) => b.append_null(),
            TypedBuilder::Long(b) => b.append_null(),
            TypedBuilder::Bool(b) => b.append_null(),
            TypedBuilder::Time(b) => b.append_null(),
        }
    }

    pub fn finish(&mut self) -> ArrayRef {
        match self {
            TypedBuilder::Text(b) => Arc::new(b.finish()),
            TypedBuilder::Double(b) => Arc::new(b.finish()),
            TypedBuilder::Long(b) => Arc::new(b.finish()),
            TypedBuilder::Bool(b) => Arc::new(b.finish()),
            TypedBuilder::Time(b) => Arc::new(b.finish()),
        }
    }
}

/// Accumulates event rows; `finish` yields a batch in the `events` schema.
pub struct EventBatchBuilder {
    schema: SchemaRef,
    message_id: StringBuilder,
    kind: StringBuilder,
    event: StringBuilder,
    name: StringBuilder,
    user_id: StringBuilder,
    anonymous_id: StringBuilder,
    previous_id: StringBuilder,
    group_id: StringBuilder,
    timestamp: TimestampMicrosecondBuilder,
    received_at: TimestampMicrosecondBuilder,
    sent_at: TimestampMicrosecondBuilder,
    source: StringBuilder,
    route_id: StringBuilder,
    route_hi: Int64Builder,
    route_lo: Int64Builder,
    typed: Vec<TypedBuilder>,
    properties: StringBuilder,
    traits: StringBuilder,
    context: StringBuilder,
    integrations: StringBuilder,
    day: Date32Builder,
    hashes: Vec<u128>,
}

/// A finished batch and the dedupe hash and UTC day of each of its rows.
pub struct EventBatch {
    pub batch: RecordBatch,
    pub hashes: Vec<u128>,
}

impl EventBatchBuilder {
    /// A builder for the events `schema` whose typed columns are `typed`, in order.
    pub fn new(schema: SchemaRef, typed: &[(String, ValueType)]) -> Self {
        Self::for_input(schema, typed, 0)
    }

    /// A builder sized for about `input_bytes` of JSON messages, so that its buffers do not
    /// grow (and get copied) row by row. Unused capacity is never touched, so it costs no memory.
    pub fn for_input(schema: SchemaRef, typed: &[(String, ValueType)], input_bytes: usize) -> Self {
        let rows = input_bytes / 256 + 1;
        let ids = || StringBuilder::with_capacity(rows, rows * 40);
        let small = || StringBuilder::with_capacity(rows, rows * 16);
        let json = |share: usize| StringBuilder::with_capacity(rows, input_bytes / share);
        let ts = || TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC");
        EventBatchBuilder {
            schema,
            message_id: ids(),
            kind: small(),
            event: small(),
            name: small(),
            user_id: ids(),
            anonymous_id: ids(),
            previous_id: StringBuilder::new(),
            group_id: StringBuilder::new(),
            timestamp: ts(),
            received_at: ts(),
            sent_at: ts(),
            source: small(),
            route_id: StringBuilder::new(),
            route_hi: Int64Builder::with_capacity(rows),
            route_lo: Int64Builder::with_capacity(rows),
            typed: typed.iter().map(|(_, t)| TypedBuilder::new(*t)).collect(),
            properties: json(2),
            traits: json(4),
            context: json(2),
            integrations: StringBuilder::new(),
            day: Date32Builder::with_capacity(rows),
            hashes: Vec::with_capacity(rows),
        }
    }

    /// Rows appended since the last `finish`.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Appends one row from `source`.
    pub fn push(&mut self, row: &EventRow<'_>, source: &str) {
        self.hashes.push(key_hash(&row.message_id));
        self.message_id.append_value(&row.message_id);
        self.kind.append_value(row.kind.as_str());
        self.event.append_option(row.event.as_deref());
        self.name.append_option(row.name.as_deref());
        self.user_id.append_option(row.user_id.as_deref());
        self.anonymous_id.append_option(row.anonymous_id.as_deref());
        self.previous_id.append_option(row.previous_id.as_deref());
        self.group_id.append_option(row.group_id.as_deref());
        self.timestamp.append_value(row.timestamp);
        self.received_at.append_value(row.received_at);
        self.sent_at.append_option(row.sent_at);
        self.source.append_value(source);
        let routed_by_message = row.user_id.is_none() && row.anonymous_id.is_none();
        let route_id = routed_by_message.then_some(row.message_id.as_ref());
        self.route_id.append_option(route_id);
        let (hi, lo) = schema::route_key(
            row.user_id.as_deref(),
            row.anonymous_id.as_deref(),
            route_id,
        );
        self.route_hi.append_value(hi);
        self.route_lo.append_value(lo);
        for (i, builder) in self.typed.iter_mut().enumerate() {
            match row.typed.get(i) {
                Some(v) => builder.append(v),
                None => builder.append_null(),
            }
        }
        self.properties.append_option(row.properties.as_deref());
        self.traits.append_option(row.traits.as_deref());
        self.context.append_option(row.context.as_deref());
        self.integrations.append_option(row.integrations.as_deref());
        self.day.append_value(day_of(row.timestamp));
    }

    /// The rows so far as a batch; the builder starts empty again.
    pub fn finish(&mut self) -> EventBatch {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.message_id.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.event.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.user_id.finish()),
            Arc::new(self.anonymous_id.finish()),
            Arc::new(self.previous_id.finish()),
            Arc::new(self.group_id.finish()),
            Arc::new(self.timestamp.finish()),
            Arc::new(self.received_at.finish()),
            Arc::new(self.sent_at.finish()),
            Arc::new(self.source.finish()),
            Arc::new(self.route_id.finish()),
            Arc::new(self.route_hi.finish()),
            Arc::new(self.route_lo.finish()),
        ];
        columns.extend(self.typed.iter_mut().map(TypedBuilder::finish));
        columns.extend([
            Arc::new(self.properties.finish()) as ArrayRef,
            Arc::new(self.traits.finish()),
            Arc::new(self.context.finish()),
            Arc::new(self.integrations.finish()),
            Arc::new(self.day.finish()),
        ]);
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .expect("builder columns follow the events schema");
        sorted_by_day(batch, std::mem::take(&mut self.hashes))
    }
}

/// Rows in day order, keeping input order within a day (the first copy of a message is the
/// one stored). The writer then takes each day's rows as one slice; sorting here runs on the
/// parsing threads instead of the single writer.
fn sorted_by_day(batch: RecordBatch, hashes: Vec<u128>) -> EventBatch {
    let days = batch
        .column_by_name("day")
        .expect("events batches have a day")
        .as_primitive::<Date32Type>()
        .values();
    if days.is_sorted() {
        return EventBatch { batch, hashes };
    }
    let mut order: Vec<u32> = (0..batch.num_rows() as u32).collect();
    order.sort_by_key(|&i| days[i as usize]);
    let hashes = order.iter().map(|&i| hashes[i as usize]).collect();
    let batch = arrow::compute::take_record_batch(&batch, &UInt32Array::from(order))
        .expect("indices are in bounds");
    EventBatch { batch, hashes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::message::{ParseRules, parse_message};

    fn builder_and_rules() -> (EventBatchBuilder, ParseRules) {
        let config = crate::config::Config::default();
        let spec = crate::storage::schema::events(&config);
        let typed: Vec<(String, ValueType)> = crate::storage::schema::typed_properties(&config)
            .into_iter()
            .collect();
        let rules = ParseRules {
            typed: typed.clone(),
            max_bytes: 32 * 1024,
            received_at: 0,
        };
        (EventBatchBuilder::new(spec.schema.clone(), &typed), rules)
    }

    fn texts<'a>(batch: &'a RecordBatch, column: &str) -> Vec<Option<&'a str>> {
        let array = batch.column_by_name(column).unwrap().as_string::<i32>();
        array.iter().collect()
    }

    #[test]
    fn only_events_without_user_or_anonymous_id_get_a_route_id() {
        let (mut builder, rules) = builder_and_rules();
        // Segment messages always carry one of the ids; records turned into events may not.
        for id in ["userId", "anonymousId", "none"] {
            let line = format!(
                r#"{{"type":"track","event":"E","userId":"u","anonymousId":"a","messageId":"m-{}","timestamp":"2026-03-01T10:00:00Z"}}"#,
                builder.len()
            );
            let mut row = parse_message(&line, &rules).unwrap();
            match id {
                "userId" => row.anonymous_id = None,
                "anonymousId" => row.user_id = None,
                _ => (row.user_id, row.anonymous_id) = (None, None),
            }
            builder.push(&row, "pos");
        }
        let EventBatch { batch, .. } = builder.finish();
        assert_eq!(texts(&batch, "route_id"), [None, None, Some("m-2")]);
    }

    #[test]
    fn batches_come_sorted_by_day_keeping_the_input_order_within_a_day() {
        let (mut builder, rules) = builder_and_rules();
        let lines = [
            ("a", "2026-03-02T10:00:00Z"),
            ("b", "2026-03-01T10:00:00Z"),
            ("c", "2026-03-02T09:00:00Z"),
            ("d", "2026-03-01T11:00:00Z"),
        ];
        for (id, ts) in lines {
            let line = format!(
                r#"{{"type":"track","event":"E","userId":"u","messageId":"{id}","timestamp":"{ts}"}}"#
            );
            builder.push(&parse_message(&line, &rules).unwrap(), "web");
        }
        let EventBatch { batch, hashes } = builder.finish();
        let ids: Vec<&str> = texts(&batch, "message_id").into_iter().flatten().collect();
        assert_eq!(ids, ["b", "d", "a", "c"]);
        let expected: Vec<u128> = ids.iter().map(|id| key_hash(id)).collect();
        assert_eq!(hashes, expected);
    }
}

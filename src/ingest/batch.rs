//! Column builders that turn parsed event rows into Arrow record batches shaped like the `events`
//! table, with the message-id hashes that deduplication uses.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use super::message::{EventRow, TypedValue};
use crate::config::ValueType;

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The dedupe key of a message id.
pub fn id_hash(message_id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(message_id.as_bytes())
}

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

fn ts() -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::new().with_timezone("UTC")
}

impl EventBatchBuilder {
    /// A builder for the events `schema` whose typed columns are `typed`, in order.
    pub fn new(schema: SchemaRef, typed: &[(String, ValueType)]) -> Self {
        EventBatchBuilder {
            schema,
            message_id: StringBuilder::new(),
            kind: StringBuilder::new(),
            event: StringBuilder::new(),
            name: StringBuilder::new(),
            user_id: StringBuilder::new(),
            anonymous_id: StringBuilder::new(),
            previous_id: StringBuilder::new(),
            group_id: StringBuilder::new(),
            timestamp: ts(),
            received_at: ts(),
            sent_at: ts(),
            source: StringBuilder::new(),
            typed: typed.iter().map(|(_, t)| TypedBuilder::new(*t)).collect(),
            properties: StringBuilder::new(),
            traits: StringBuilder::new(),
            context: StringBuilder::new(),
            integrations: StringBuilder::new(),
            day: Date32Builder::new(),
            hashes: Vec::new(),
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
        self.hashes.push(id_hash(&row.message_id));
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
        EventBatch {
            batch,
            hashes: std::mem::take(&mut self.hashes),
        }
    }
}

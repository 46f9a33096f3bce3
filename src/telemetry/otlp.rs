//! OTLP/protobuf encoding of finished spans, written straight from the
//! SDK's span data into the bytes of one export request.
//!
//! opentelemetry-proto converts every span into its generated message types
//! first (a dozen allocations a span: ids, name, each attribute's key and
//! value) before prost encodes them, and frees them after: together the
//! largest single cost of exporting a call's spans, over a third of it.
//! Here a span is read in place, with no allocation. The length of each
//! message is counted by the same code that writes it ([`Output`]), so the
//! two cannot disagree. Each span's length is counted once a batch, before
//! anything is written, and reused by the messages around it: counted again
//! at each level around it, as prost does, each span was gone through four
//! times (three counts and the write) rather than two.
//!
//! The request decodes to exactly what opentelemetry-proto's conversion
//! makes (the tests hold it to that, span for span), but for a time after
//! the year 2554, which is sent as the largest time rather than wrapped
//! around.

use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_sdk::trace::SpanData;
use prost::Message as _;
use prost::encoding::{WireType, encoded_len_varint, key_len};
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};

/// Where encoded bytes go: counted, to learn a message's length before it
/// is written, or written. Every message is encoded by one function
/// generic over this, for both.
trait Output {
    /// Appends `bytes`.
    fn put(&mut self, bytes: &[u8]);
    /// Appends `value` as a varint.
    fn varint(&mut self, value: u64);
    /// Appends the field key of `tag` with `wire_type`.
    fn key(&mut self, tag: u32, wire_type: WireType);
    /// Appends `message`, `length` bytes long, as field `tag`: its length,
    /// then its bytes.
    fn message_of_length<M: Encode + ?Sized>(&mut self, tag: u32, message: &M, length: usize);

    /// Appends `message` as field `tag`: its length, then its bytes.
    fn message<M: Encode + ?Sized>(&mut self, tag: u32, message: &M) {
        self.message_of_length(tag, message, length_of(message));
    }

    /// A length-delimited field of raw bytes (a string, bytes, or a message
    /// already encoded).
    fn bytes_field(&mut self, tag: u32, bytes: &[u8]) {
        self.key(tag, WireType::LengthDelimited);
        self.varint(bytes.len() as u64);
        self.put(bytes);
    }
    /// A varint field.
    fn varint_field(&mut self, tag: u32, value: u64) {
        self.key(tag, WireType::Varint);
        self.varint(value);
    }
    /// A fixed32 field.
    fn fixed32_field(&mut self, tag: u32, value: u32) {
        self.key(tag, WireType::ThirtyTwoBit);
        self.put(&value.to_le_bytes());
    }
    /// A fixed64 field (also a double's bits).
    fn fixed64_field(&mut self, tag: u32, value: u64) {
        self.key(tag, WireType::SixtyFourBit);
        self.put(&value.to_le_bytes());
    }
}

/// Counts the bytes a message takes.
#[derive(Debug, Default)]
struct Length(usize);

impl Output for Length {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
    fn varint(&mut self, value: u64) {
        self.0 += encoded_len_varint(value);
    }
    fn key(&mut self, tag: u32, _wire_type: WireType) {
        self.0 += key_len(tag);
    }
    fn message_of_length<M: Encode + ?Sized>(&mut self, tag: u32, _message: &M, length: usize) {
        self.0 += key_len(tag) + encoded_len_varint(length as u64) + length;
    }
}

impl Output for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn varint(&mut self, value: u64) {
        prost::encoding::encode_varint(value, self);
    }
    fn key(&mut self, tag: u32, wire_type: WireType) {
        prost::encoding::encode_key(tag, wire_type, self);
    }
    fn message_of_length<M: Encode + ?Sized>(&mut self, tag: u32, message: &M, length: usize) {
        self.key(tag, WireType::LengthDelimited);
        self.varint(length as u64);
        let start = self.len();
        message.encode(self);
        debug_assert_eq!(self.len() - start, length, "a message's counted length is its length");
    }
}

/// The bytes `message` takes.
fn length_of<M: Encode + ?Sized>(message: &M) -> usize {
    let mut length = Length::default();
    message.encode(&mut length);
    length.0
}

/// A protobuf message: its fields, in field number order, each left out
/// when it has its default value (as prost does).
trait Encode {
    /// Writes (or counts) the message's fields.
    fn encode<O: Output>(&self, out: &mut O);
}

/// The resource every request is sent with, encoded once.
#[derive(Debug)]
pub(super) struct EncodedResource {
    /// The `Resource` message.
    resource: Vec<u8>,
    /// The resource's schema URL, or empty.
    schema_url: String,
}

impl EncodedResource {
    /// Encodes `resource` (with prost: it is done once).
    pub(super) fn new(resource: &ResourceAttributesWithSchema) -> Self {
        let message = opentelemetry_proto::tonic::resource::v1::Resource {
            attributes: resource.attributes.0.clone(),
            dropped_attributes_count: 0,
            entity_refs: Vec::new(),
        };
        Self {
            resource: message.encode_to_vec(),
            schema_url: resource.schema_url.clone().unwrap_or_default(),
        }
    }
}

/// Writes into `out` (emptied first) the `ExportTraceServiceRequest` of
/// `spans`: one `ResourceSpans` with `resource`, holding a `ScopeSpans` for
/// each instrumentation scope in the order they first appear.
pub(super) fn encode_request(spans: &[SpanData], resource: &EncodedResource, out: &mut Vec<u8>) {
    // Scopes are few (one per tracer), so a linear search suffices; each
    // is encoded once a batch, with prost.
    let mut scopes: Vec<(&InstrumentationScope, Vec<u8>)> = Vec::new();
    let mut scope_of_span = Vec::with_capacity(spans.len());
    let span_lengths: Vec<usize> = spans.iter().map(|span| length_of(&SpanMessage(span))).collect();
    for span in spans {
        let scope = &span.instrumentation_scope;
        let index = match scopes.iter().position(|(known, _)| *known == scope) {
            Some(index) => index,
            None => {
                let encoded = opentelemetry_proto::tonic::common::v1::InstrumentationScope::from((
                    scope, None,
                ))
                .encode_to_vec();
                scopes.push((scope, encoded));
                scopes.len() - 1
            }
        };
        scope_of_span.push(index);
    }
    out.clear();
    out.message(
        1,
        &ResourceSpans {
            resource,
            spans,
            span_lengths: &span_lengths,
            scopes: &scopes,
            scope_of_span: &scope_of_span,
        },
    );
}

/// `ResourceSpans`: the resource, then a `ScopeSpans` a scope.
struct ResourceSpans<'a> {
    resource: &'a EncodedResource,
    spans: &'a [SpanData],
    /// Each span's length, counted once.
    span_lengths: &'a [usize],
    scopes: &'a [(&'a InstrumentationScope, Vec<u8>)],
    scope_of_span: &'a [usize],
}

impl Encode for ResourceSpans<'_> {
    fn encode<O: Output>(&self, out: &mut O) {
        out.bytes_field(1, &self.resource.resource);
        for (index, (scope, encoded)) in self.scopes.iter().enumerate() {
            out.message(2, &ScopeSpans { scope, encoded, index, of: self });
        }
        if !self.resource.schema_url.is_empty() {
            out.bytes_field(3, self.resource.schema_url.as_bytes());
        }
    }
}

/// `ScopeSpans`: the scope, then the spans it made.
struct ScopeSpans<'a> {
    scope: &'a InstrumentationScope,
    encoded: &'a [u8],
    index: usize,
    of: &'a ResourceSpans<'a>,
}

impl Encode for ScopeSpans<'_> {
    fn encode<O: Output>(&self, out: &mut O) {
        out.bytes_field(1, self.encoded);
        let spans = self.of.spans.iter().zip(self.of.span_lengths).zip(self.of.scope_of_span);
        for ((span, length), _) in spans.filter(|(_, scope)| **scope == self.index) {
            out.message_of_length(2, &SpanMessage(span), *length);
        }
        if let Some(schema_url) = self.scope.schema_url().filter(|url| !url.is_empty()) {
            out.bytes_field(3, schema_url.as_bytes());
        }
    }
}

/// OTLP span flags: the W3C trace flags, and whether the parent is known to
/// be remote (as opentelemetry-proto sets them).
fn span_flags(trace_flags: u8, parent_is_remote: bool) -> u32 {
    /// `SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`.
    const HAS_IS_REMOTE: u32 = 0x100;
    /// `SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK`.
    const IS_REMOTE: u32 = 0x200;
    u32::from(trace_flags) | HAS_IS_REMOTE | if parent_is_remote { IS_REMOTE } else { 0 }
}

/// Nanoseconds since the Unix epoch; 0 before it.
fn unix_nanos(time: std::time::SystemTime) -> u64 {
    let since_epoch = time.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX)
}

/// The trace id, span id and trace state of `context`: fields 1 to 3 of a
/// `Span` and of a `Span.Link` alike.
fn identity_fields<O: Output>(out: &mut O, context: &opentelemetry::trace::SpanContext) {
    out.bytes_field(1, &context.trace_id().to_bytes());
    out.bytes_field(2, &context.span_id().to_bytes());
    let trace_state = context.trace_state().header();
    if !trace_state.is_empty() {
        out.bytes_field(3, trace_state.as_bytes());
    }
}

/// `Span`.
struct SpanMessage<'a>(&'a SpanData);

impl Encode for SpanMessage<'_> {
    fn encode<O: Output>(&self, out: &mut O) {
        let span = self.0;
        let context = &span.span_context;
        identity_fields(out, context);
        if span.parent_span_id != SpanId::INVALID {
            out.bytes_field(4, &span.parent_span_id.to_bytes());
        }
        if !span.name.is_empty() {
            out.bytes_field(5, span.name.as_bytes());
        }
        // `Span.SpanKind`; never unspecified (0) from the SDK.
        let kind = match span.span_kind {
            SpanKind::Internal => 1,
            SpanKind::Server => 2,
            SpanKind::Client => 3,
            SpanKind::Producer => 4,
            SpanKind::Consumer => 5,
        };
        out.varint_field(6, kind);
        for (tag, time) in [(7, span.start_time), (8, span.end_time)] {
            let nanos = unix_nanos(time);
            if nanos != 0 {
                out.fixed64_field(tag, nanos);
            }
        }
        for attribute in &span.attributes {
            out.message(9, &KeyValueMessage(attribute));
        }
        if span.dropped_attributes_count != 0 {
            out.varint_field(10, span.dropped_attributes_count.into());
        }
        for event in span.events.iter() {
            out.message(11, &EventMessage(event));
        }
        if span.events.dropped_count != 0 {
            out.varint_field(12, span.events.dropped_count.into());
        }
        for link in span.links.iter() {
            out.message(13, &LinkMessage(link));
        }
        if span.links.dropped_count != 0 {
            out.varint_field(14, span.links.dropped_count.into());
        }
        // Always present, as opentelemetry-proto sends it.
        out.message(15, &StatusMessage(&span.status));
        out.fixed32_field(
            16,
            span_flags(context.trace_flags().to_u8(), span.parent_span_is_remote),
        );
    }
}

/// `Status`: its description (for an error), then its code.
struct StatusMessage<'a>(&'a Status);

impl Encode for StatusMessage<'_> {
    fn encode<O: Output>(&self, out: &mut O) {
        // `Status.StatusCode`: unset 0, ok 1, error 2.
        let code = match self.0 {
            Status::Unset => 0,
            Status::Ok => 1,
            Status::Error { description } => {
                if !description.is_empty() {
                    out.bytes_field(2, description.as_bytes());
                }
                2
            }
        };
        if code != 0 {
            out.varint_field(3, code);
        }
    }
}

/// `Span.Event`.
struct EventMessage<'a>(&'a opentelemetry::trace::Event);

impl Encode for EventMessage<'_> {
    fn encode<O: Output>(&self, out: &mut O) {
        let event = self.0;
        let nanos = unix_nanos(event.timestamp);
        if nanos != 0 {
            out.fixed64_field(1, nanos);
        }
        if !event.name.is_empty() {
            out.bytes_field(2, event.name.as_bytes());
        }
        for attribute in &event.attributes {
            out.message(3, &KeyValueMessage(attribute));
        }
        if event.dropped_attributes_count != 0 {
            out.varint_field(4, event.dropped_attributes_count.into());
        }
    }
}

/// `Span.Link`.
struct LinkMessage<'a>(&'a opentelemetry::trace::Link);

impl Encode for LinkMessage<'_> {
    fn encode<O: Output>(&self, out: &mut O) {
        let link = self.0;
        let context = &link.span_context;
        identity_fields(out, context);
        for attribute in &link.attributes {
            out.message(4, &KeyValueMessage(attribute));
        }
        if link.dropped_attributes_count != 0 {
            out.varint_field(5, link.dropped_attributes_count.into());
        }
        out.fixed32_field(6, span_flags(context.trace_flags().to_u8(), context.is_remote()));
    }
}

/// `KeyValue`.
struct KeyValueMessage<'a>(&'a KeyValue);

impl Encode for KeyValueMessage<'_> {
    fn encode<O: Output>(&self, out: &mut O) {
        let key = self.0.key.as_str();
        if !key.is_empty() {
            out.bytes_field(1, key.as_bytes());
        }
        out.message(2, &AnyValueMessage(&self.0.value));
    }
}

/// `AnyValue`: one of its fields, always written (it is a `oneof`).
struct AnyValueMessage<'a>(&'a Value);

impl Encode for AnyValueMessage<'_> {
    fn encode<O: Output>(&self, out: &mut O) {
        match self.0 {
            Value::String(value) => out.bytes_field(1, value.as_str().as_bytes()),
            Value::Bool(value) => out.varint_field(2, u64::from(*value)),
            Value::I64(value) => out.varint_field(3, *value as u64),
            Value::F64(value) => out.fixed64_field(4, value.to_bits()),
            Value::Array(array) => out.message(5, &ArrayMessage(array)),
            // A kind of value newer than this code: sent as its text.
            other => out.bytes_field(1, other.as_str().as_bytes()),
        }
    }
}

/// `ArrayValue`: each element an `AnyValue`.
struct ArrayMessage<'a>(&'a Array);

impl Encode for ArrayMessage<'_> {
    fn encode<O: Output>(&self, out: &mut O) {
        match self.0 {
            Array::Bool(values) => values.iter().for_each(|value| {
                out.message(1, &AnyValueMessage(&Value::Bool(*value)));
            }),
            Array::I64(values) => values.iter().for_each(|value| {
                out.message(1, &AnyValueMessage(&Value::I64(*value)));
            }),
            Array::F64(values) => values.iter().for_each(|value| {
                out.message(1, &AnyValueMessage(&Value::F64(*value)));
            }),
            Array::String(values) => values.iter().for_each(|value| {
                out.message(1, &ScalarString(value.as_str()));
            }),
            // A kind of array newer than this code: sent as its text.
            other => out.message(1, &ScalarString(&other.to_string())),
        }
    }
}

/// An `AnyValue` holding a string.
struct ScalarString<'a>(&'a str);

impl Encode for ScalarString<'_> {
    fn encode<O: Output>(&self, out: &mut O) {
        out.bytes_field(1, self.0.as_bytes());
    }
}

/// The gRPC codec of an export: the request goes as the bytes
/// [`encode_request`] wrote, the response is decoded with prost.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct ExportCodec;

impl Codec for ExportCodec {
    type Encode = Vec<u8>;
    type Decode = ExportTraceServiceResponse;
    type Encoder = EncodedRequest;
    type Decoder = tonic_prost::ProstDecoder<ExportTraceServiceResponse>;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedRequest
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::new(BufferSettings::default())
    }
}

/// Writes an encoded request as it is.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct EncodedRequest;

impl Encoder for EncodedRequest {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use opentelemetry::trace::{Event, Link, SpanContext, TraceFlags, TraceId, TraceState};
    use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
    use proptest::prelude::*;
    use prost::Message as _;

    use super::*;

    /// What opentelemetry-proto's conversion and prost make of `spans`:
    /// the encoding here must decode to exactly this.
    fn expected(
        spans: &[SpanData],
        resource: &ResourceAttributesWithSchema,
    ) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(spans.to_vec(), resource),
        }
    }

    /// `spans` encoded here, and decoded with opentelemetry-proto's types.
    fn encoded(
        spans: &[SpanData],
        resource: &ResourceAttributesWithSchema,
    ) -> (usize, ExportTraceServiceRequest) {
        let mut bytes = vec![0xff; 3]; // emptied first
        encode_request(spans, &EncodedResource::new(resource), &mut bytes);
        let request = ExportTraceServiceRequest::decode(bytes.as_slice()).expect("a valid request");
        (bytes.len(), request)
    }

    /// The resource the server sends, and one with a schema URL.
    fn resources() -> [ResourceAttributesWithSchema; 2] {
        let points = opentelemetry_sdk::Resource::builder()
            .with_service_name("points")
            .with_attribute(KeyValue::new("service.version", "0.1.0"))
            .build();
        let with_schema = opentelemetry_sdk::Resource::builder_empty()
            .with_schema_url(
                [KeyValue::new("host.name", "a")],
                "https://opentelemetry.io/schemas/1.27.0",
            )
            .build();
        [(&points).into(), (&with_schema).into()]
    }

    /// The spans of one traced call, as the server makes them: the call's
    /// own, a child of a remote caller's, and a storage span inside it.
    fn a_calls_spans() -> Vec<SpanData> {
        let scope = InstrumentationScope::builder("points").build();
        let started = UNIX_EPOCH + Duration::from_nanos(1_763_800_000_123_456_789);
        let call = SpanData {
            span_context: SpanContext::new(
                TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
                SpanId::from(0x0102_0304_0506_0708),
                TraceFlags::SAMPLED,
                false,
                TraceState::from_key_value([("vendor", "abc")]).expect("a valid trace state"),
            ),
            parent_span_id: SpanId::from(0x00f0_67aa_0ba9_02b7),
            parent_span_is_remote: true,
            span_kind: SpanKind::Server,
            name: Cow::Borrowed("AddTransaction"),
            start_time: started,
            end_time: started + Duration::from_micros(850),
            attributes: vec![
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("method", "AddTransaction"),
                KeyValue::new("user", "alice"),
                KeyValue::new("code", "OK"),
            ],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope.clone(),
        };
        let storage = SpanData {
            span_context: SpanContext::new(
                call.span_context.trace_id(),
                SpanId::from(0x1112_1314_1516_1718),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: call.span_context.span_id(),
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: Cow::Borrowed("journal_wait"),
            start_time: started + Duration::from_micros(100),
            end_time: started + Duration::from_micros(800),
            attributes: Vec::new(),
            status: Status::error("UNAVAILABLE"),
            ..call.clone()
        };
        vec![storage, call]
    }

    /// A call's spans decode to what opentelemetry-proto would have sent.
    #[test]
    fn a_calls_spans_encode_as_opentelemetry_proto_would() {
        for resource in resources() {
            let spans = a_calls_spans();
            let (length, request) = encoded(&spans, &resource);
            let expected = expected(&spans, &resource);
            assert_eq!(request, expected);
            assert_eq!(length, expected.encoded_len(), "nothing sent beyond the fields");
        }
    }

    /// No spans make a request with the resource alone.
    #[test]
    fn no_spans_encode_as_the_resource_alone() {
        for resource in resources() {
            assert_eq!(encoded(&[], &resource).1, expected(&[], &resource));
        }
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z_.]{0,10}"
    }

    fn value() -> impl Strategy<Value = Value> {
        // Finite doubles: NaN is not equal to itself.
        let double = -1e12f64..1e12;
        prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::I64),
            double.clone().prop_map(Value::F64),
            ".{0,12}".prop_map(|text| Value::String(StringValue::from(text))),
            prop::collection::vec(any::<bool>(), 0..3)
                .prop_map(|values| Value::Array(Array::Bool(values))),
            prop::collection::vec(any::<i64>(), 0..3)
                .prop_map(|values| Value::Array(Array::I64(values))),
            prop::collection::vec(double, 0..3).prop_map(|values| Value::Array(Array::F64(values))),
            prop::collection::vec(".{0,5}", 0..3).prop_map(|values| Value::Array(Array::String(
                values.into_iter().map(StringValue::from).collect()
            ))),
        ]
    }

    fn attributes() -> impl Strategy<Value = Vec<KeyValue>> {
        prop::collection::vec(
            (name(), value()).prop_map(|(key, value)| KeyValue::new(key, value)),
            0..4,
        )
    }

    fn time() -> impl Strategy<Value = SystemTime> {
        prop_oneof![Just(0u64), any::<u64>()]
            .prop_map(|nanos| UNIX_EPOCH + Duration::from_nanos(nanos))
    }

    fn span_context() -> impl Strategy<Value = SpanContext> {
        (any::<u128>(), any::<u64>(), any::<u8>(), any::<bool>(), any::<bool>()).prop_map(
            |(trace_id, span_id, flags, is_remote, has_state)| {
                let state = if has_state {
                    TraceState::from_key_value([("vendor", "abc"), ("other", "x1")])
                        .expect("a valid trace state")
                } else {
                    TraceState::default()
                };
                SpanContext::new(
                    TraceId::from(trace_id),
                    SpanId::from(span_id),
                    TraceFlags::new(flags),
                    is_remote,
                    state,
                )
            },
        )
    }

    fn scope() -> impl Strategy<Value = InstrumentationScope> {
        prop_oneof![
            Just(InstrumentationScope::builder("points").build()),
            Just(
                InstrumentationScope::builder("points.storage")
                    .with_version("1.2.3")
                    .with_schema_url("https://opentelemetry.io/schemas/1.27.0")
                    .with_attributes([KeyValue::new("scope.attribute", 7)])
                    .build()
            ),
            Just(InstrumentationScope::builder("").build()),
        ]
    }

    fn status() -> impl Strategy<Value = Status> {
        prop_oneof![Just(Status::Unset), Just(Status::Ok), ".{0,8}".prop_map(Status::error),]
    }

    fn kind() -> impl Strategy<Value = SpanKind> {
        prop_oneof![
            Just(SpanKind::Internal),
            Just(SpanKind::Server),
            Just(SpanKind::Client),
            Just(SpanKind::Producer),
            Just(SpanKind::Consumer),
        ]
    }

    fn event() -> impl Strategy<Value = Event> {
        (name(), time(), attributes(), 0u32..3).prop_map(|(name, time, attributes, dropped)| {
            Event::new(name, time, attributes, dropped)
        })
    }

    fn link() -> impl Strategy<Value = Link> {
        (span_context(), attributes(), 0u32..3)
            .prop_map(|(context, attributes, dropped)| Link::new(context, attributes, dropped))
    }

    fn span() -> impl Strategy<Value = SpanData> {
        let identity =
            (span_context(), prop_oneof![Just(0u64), any::<u64>()], any::<bool>(), kind(), name());
        let times_and_fields = (time(), time(), attributes(), 0u32..3, status(), scope());
        let events_and_links = (
            prop::collection::vec(event(), 0..3),
            0u32..3,
            prop::collection::vec(link(), 0..2),
            0u32..3,
        );
        (identity, times_and_fields, events_and_links).prop_map(
            |(
                (span_context, parent, parent_span_is_remote, span_kind, name),
                (
                    start_time,
                    end_time,
                    attributes,
                    dropped_attributes_count,
                    status,
                    instrumentation_scope,
                ),
                (events, dropped_events, links, dropped_links),
            )| {
                let mut span_events = SpanEvents::default();
                span_events.events = events;
                span_events.dropped_count = dropped_events;
                let mut span_links = SpanLinks::default();
                span_links.links = links;
                span_links.dropped_count = dropped_links;
                SpanData {
                    span_context,
                    parent_span_id: SpanId::from(parent),
                    parent_span_is_remote,
                    span_kind,
                    name: Cow::Owned(name),
                    start_time,
                    end_time,
                    attributes,
                    dropped_attributes_count,
                    events: span_events,
                    links: span_links,
                    status,
                    instrumentation_scope,
                }
            },
        )
    }

    proptest! {
        /// Any batch of spans, of any scopes, decodes to what
        /// opentelemetry-proto's conversion makes of it, and takes no more
        /// bytes than prost would write for that.
        #[test]
        fn any_spans_encode_as_opentelemetry_proto_would(
            spans in prop::collection::vec(span(), 0..6),
            with_schema in any::<bool>(),
        ) {
            let resource = &resources()[usize::from(with_schema)];
            let (length, request) = encoded(&spans, resource);
            let expected = expected(&spans, resource);
            prop_assert_eq!(&request, &expected);
            prop_assert_eq!(length, expected.encoded_len());
        }
    }
}

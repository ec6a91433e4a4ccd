//! Fuzz harnesses (cargo feature `fuzzing`): one `pub fn <target>(data:
//! &[u8])` per `cargo fuzz` target in `crates/relayer/fuzz/`, each feeding
//! arbitrary bytes to one of the relayer's input paths and asserting the
//! properties that path promises. A harness returns normally on every input
//! the code handles as documented (including every error answer) and panics
//! only when a property is broken: that panic is the fuzzer's finding.
//!
//! The same functions replay the committed corpora on stable Rust
//! (`tests/fuzz_corpora.rs`), so every crash once found stays a test.
//!
//! Adding a target: a harness function here plus its row in [`TARGETS`], a
//! `fuzz_targets/<name>.rs` (and `[[bin]]`) in `crates/relayer/fuzz/`, and
//! a seed directory `crates/relayer/fuzz/corpus/<name>/`. `docs/fuzzing.md`
//! says how to run them.

use std::path::Path;
use std::rc::Rc;
use std::sync::Mutex;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use crate::commands::outcome::CommandError;
use crate::commands::validate::{
    is_label, parse_api_version, validate, KubeRequest, ValidatedCommand, ValidationLimits,
};
use crate::config::{parse_str, redacted_toml, ConfigError, RelayerConfig, ENV_PREFIX};
use crate::proto::{command::Action, ApplyManifest, Command};
use crate::telemetry::count::data_points;
use crate::telemetry::{forward, OtlpRequest, Piece, Refusal, Signal, TelemetrySink};

/// A fuzz target: its name (the `fuzz_targets/<name>.rs` file and the
/// `corpus/<name>/` directory) and its harness.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub harness: fn(&[u8]),
}

mod backend_frames;
pub use backend_frames::{backend_frames, encode_input as encode_backend_frames};

/// Every target, for the corpus replay test.
pub const TARGETS: &[Target] = &[
    Target {
        name: "backend_frames",
        harness: backend_frames,
    },
    Target {
        name: "manifest",
        harness: manifest,
    },
    Target {
        name: "config",
        harness: config,
    },
    Target {
        name: "otlp_split",
        harness: otlp_split,
    },
    Target {
        name: "connect_response",
        harness: connect_response,
    },
];

// ---------------------------------------------------------------- manifest

/// The relayer's own limit: one frame (`connection.max_frame_bytes`, 4 MiB
/// by default); fuzz inputs are far smaller.
const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// `data` is an `apply` manifest, validated through [`validate`] as the
/// router does. The command's `namespace` is empty for inputs of even
/// length and `team-a` for odd ones, so both ways of choosing an object's
/// namespace are reached without a header that would spoil readable seeds.
///
/// Asserts, on success: at least one object; objects numbered 1, 2, … with
/// strictly increasing lines inside the manifest; each object's `kind`,
/// `name` and `namespace` — what the policy checks — are what its `value` —
/// what is applied — holds, in the canonical forms the policy matches on
/// (CamelCase kind, DNS-1123 namespace, a name that is a path segment).
/// On failure: INVALID_ARGUMENT naming `apply.…`, and any line it cites is
/// inside the manifest. Bounded time and memory are checked by the fuzzer's
/// own timeout and RSS limit.
pub fn manifest(data: &[u8]) {
    let namespace = if data.len().is_multiple_of(2) {
        ""
    } else {
        "team-a"
    };
    let command = Command {
        action: Some(Action::Apply(ApplyManifest {
            manifest: data.to_vec().into(),
            namespace: namespace.to_string(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let limits = ValidationLimits {
        max_manifest_bytes: MAX_MANIFEST_BYTES,
        max_log_bytes: 1 << 20,
    };
    // Lines a message may cite: the manifest's, plus the end of input.
    let last_line = data.iter().filter(|&&b| b == b'\n').count() + 1;
    match validate(&command, &limits) {
        Ok(ValidatedCommand::Kube(KubeRequest::Apply(plan))) => {
            assert!(!plan.objects.is_empty(), "an accepted manifest has objects");
            let default_namespace = (!namespace.is_empty()).then(|| namespace.to_string());
            assert_eq!(plan.default_namespace, default_namespace);
            let mut previous_line = 0;
            for (i, object) in plan.objects.iter().enumerate() {
                assert_eq!(object.index, i + 1, "documents numbered from 1 in order");
                assert!(
                    object.line > previous_line && object.line <= last_line,
                    "object {} at line {} (previous {previous_line}, last {last_line})",
                    object.index,
                    object.line
                );
                previous_line = object.line;
                check_manifest_object(object, default_namespace.as_deref());
            }
        }
        Ok(other) => panic!("an apply command validated as {other:?}"),
        Err(CommandError::InvalidArgument(message)) => {
            assert!(message.starts_with("apply."), "names the field: {message}");
            if let Some(line) = cited_line(&message) {
                assert!(
                    (1..=last_line).contains(&line),
                    "cites line {line} of {last_line}: {message}"
                );
            }
        }
        Err(other) => panic!("validation answered {other:?}, not INVALID_ARGUMENT"),
    }
}

fn check_manifest_object(
    object: &crate::commands::validate::ManifestObject,
    default_namespace: Option<&str>,
) {
    let value = object
        .value
        .as_object()
        .unwrap_or_else(|| panic!("object {} is not a mapping", object.index));
    let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_string);
    let api_version = text(value.get("apiVersion")).expect("apiVersion is a string");
    assert_eq!(
        parse_api_version(&api_version).as_ref(),
        Ok(&object.api_version)
    );
    assert_eq!(object.api_version.to_string(), api_version);
    assert_eq!(
        text(value.get("kind")).as_deref(),
        Some(object.kind.as_str())
    );
    assert!(
        object.kind.len() <= 63
            && object.kind.starts_with(|c: char| c.is_ascii_uppercase())
            && object.kind.chars().all(|c| c.is_ascii_alphanumeric()),
        "kind {:?} is not CamelCase: a policy rule could miss it",
        object.kind
    );
    let metadata = value
        .get("metadata")
        .and_then(|m| m.as_object())
        .expect("metadata is a mapping");
    assert_eq!(
        text(metadata.get("name")).as_deref(),
        Some(object.name.as_str())
    );
    let name = object.name.as_str();
    assert!(
        !name.is_empty()
            && name.len() <= 253
            && name != "."
            && name != ".."
            && !name.contains(['/', '%']),
        "name {name:?} is not a path segment"
    );
    let in_manifest = text(metadata.get("namespace")).filter(|ns| !ns.is_empty());
    assert_eq!(object.namespace_in_manifest, in_manifest.is_some());
    let expected = in_manifest.or_else(|| default_namespace.map(str::to_string));
    assert_eq!(object.namespace, expected, "namespace of {name:?}");
    if let Some(ns) = &object.namespace {
        assert!(is_label(ns), "namespace {ns:?} is not a DNS-1123 label");
    }
}

/// The number after "(line " in a validation message.
fn cited_line(message: &str) -> Option<usize> {
    let rest = &message[message.find("(line ")? + "(line ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

// ------------------------------------------------------------------ config

/// `data` is a config file, then optionally a NUL byte and environment
/// overrides, one `SECTION__KEY=value` a line (the `CONSONANT_RELAYER__`
/// prefix is added), loaded with [`parse_str`] as `run` and
/// `check-config` load a file.
///
/// Asserts, on success: every range of config.md's "Bounds" holds (a value
/// outside them must never reach the running relayer); the config written
/// back as TOML loads again to the same config (the units print what they
/// parse); `check-config`'s redacted print is TOML; the gRPC target derives.
/// On failure: a message, and every invalid value names its key and where
/// it came from.
pub fn config(data: &[u8]) {
    let (toml_part, env_part) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let text = String::from_utf8_lossy(toml_part);
    let env: Vec<(String, String)> = env_part
        .map(|bytes| {
            String::from_utf8_lossy(bytes)
                .lines()
                .filter_map(|line| line.split_once('='))
                .map(|(key, value)| (format!("{ENV_PREFIX}{key}"), value.to_string()))
                .collect()
        })
        .unwrap_or_default();
    let path = Path::new("fuzz.toml");
    match parse_str(&text, path, env) {
        Ok(cfg) => {
            check_bounds(&cfg);
            let written = toml::to_string(&cfg)
                .unwrap_or_else(|err| panic!("a loaded config does not serialise: {err}"));
            match parse_str(&written, path, Vec::new()) {
                Ok(again) => assert_eq!(again, cfg, "written back as\n{written}"),
                Err(err) => panic!("written back as\n{written}\nit does not load: {err}"),
            }
            let redacted = redacted_toml(&cfg);
            if let Err(err) = redacted.parse::<toml::Table>() {
                panic!("check-config prints no TOML ({err}):\n{redacted}");
            }
            if let Err(err) = cfg.backend.grpc_target() {
                panic!("a valid config has no gRPC target: {err}");
            }
        }
        Err(err) => {
            assert!(!err.to_string().is_empty());
            if let ConfigError::Invalid(errors) = &err {
                assert!(!errors.is_empty(), "an empty list of invalid values");
                for invalid in errors {
                    assert!(
                        !invalid.key.is_empty()
                            && !invalid.origin.is_empty()
                            && !invalid.problem.is_empty(),
                        "unattributed: {invalid:?}"
                    );
                }
            }
        }
    }
}

/// config.md "Bounds", restated from the contract rather than taken from
/// `config::validate`, so a range the validator forgets is caught.
fn check_bounds(cfg: &RelayerConfig) {
    use std::time::Duration;
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    let ms = Duration::from_millis;
    let s = Duration::from_secs;
    let within = |key: &str, value: Duration, min: Duration, max: Duration| {
        assert!(
            (min..=max).contains(&value),
            "{key} = {value:?} outside {min:?} – {max:?}"
        );
    };
    let count = |key: &str, value: u64, min: u64, max: u64| {
        assert!(
            (min..=max).contains(&value),
            "{key} = {value} outside {min} – {max}"
        );
    };
    let c = &cfg.connection;
    within(
        "connection.connect_timeout",
        c.connect_timeout,
        ms(100),
        s(300),
    );
    within(
        "connection.heartbeat_interval",
        c.heartbeat_interval,
        ms(100),
        s(300),
    );
    within("connection.backoff_base", c.backoff_base, ms(10), s(60));
    within(
        "connection.backoff_max",
        c.backoff_max,
        c.backoff_base,
        s(3600),
    );
    count(
        "connection.breaker_failure_threshold",
        c.breaker_failure_threshold.into(),
        1,
        1000,
    );
    within(
        "connection.breaker_open_duration",
        c.breaker_open_duration,
        ms(100),
        s(3600),
    );
    count(
        "connection.max_frame_bytes",
        c.max_frame_bytes,
        64 * KIB,
        64 * MIB,
    );
    count(
        "connection.replay_buffer_bytes",
        c.replay_buffer_bytes,
        MIB.max(c.max_frame_bytes),
        4 * GIB,
    );
    within(
        "connection.http2_keepalive_interval",
        c.http2_keepalive_interval,
        s(1),
        s(3600),
    );
    let m = &cfg.commands;
    count("commands.max_in_flight", m.max_in_flight.into(), 1, 100_000);
    count(
        "commands.rate_per_second",
        m.rate_per_second.into(),
        1,
        100_000_000,
    );
    count("commands.burst", m.burst.into(), 1, 100_000_000);
    within(
        "commands.default_timeout",
        m.default_timeout,
        s(1),
        s(86_400),
    );
    within(
        "commands.dedup_retention",
        m.dedup_retention,
        s(1),
        s(86_400),
    );
    count(
        "commands.dedup_max_entries",
        m.dedup_max_entries,
        1,
        10_000_000,
    );
    let t = &cfg.telemetry;
    count("telemetry.buffer_bytes", t.buffer_bytes, 4 * KIB, 4 * GIB);
    count(
        "telemetry.max_batch_bytes",
        t.max_batch_bytes,
        KIB,
        c.max_frame_bytes,
    );
    within("telemetry.flush_interval", t.flush_interval, ms(1), s(60));
}

// -------------------------------------------------------------- otlp_split

/// Header of an `otlp_split` input: one byte (bits 0–1: the signal,
/// traces / metrics / logs, 3 = traces; bit 2: OTLP/JSON instead of
/// protobuf), then the frame limit as a little-endian `u16`.
pub const OTLP_HEADER_BYTES: usize = 3;

/// An `otlp_split` input: `body` as an export request of `signal` in
/// protobuf or JSON, split at `limit` bytes. Used to write seeds.
pub fn otlp_input(signal: Signal, json: bool, limit: u16, body: &[u8]) -> Vec<u8> {
    let signal_bits = match signal {
        Signal::Traces => 0,
        Signal::Metrics => 1,
        Signal::Logs => 2,
    };
    let mut input = vec![signal_bits | if json { 4 } else { 0 }];
    input.extend_from_slice(&limit.to_le_bytes());
    input.extend_from_slice(body);
    input
}

/// `data` (see [`otlp_input`]) decoded as an OTLP/HTTP receiver decodes a
/// body, then offered through [`forward`] — which splits it when it is
/// larger than the limit — to a sink whose pieces may be `limit` bytes.
///
/// Asserts split.rs's promises: every piece within the limit; a request
/// within the limit is one piece, its own bytes untouched; each piece
/// decodes and holds the items it says; the pieces' items, in order and each
/// with its own resource and scope, are the request's items less the ones
/// reported rejected, and the counts add up; a rejection is always
/// explained. The pieces together are at most twice the request's size plus
/// one frame: repeating a resource in every piece must not multiply a
/// request. An item is left out only when it cannot fit a frame even alone
/// (with its resource and scope) or, as the answer says, for that bound.
pub fn otlp_split(data: &[u8]) {
    if data.len() < OTLP_HEADER_BYTES {
        return;
    }
    let json = data[0] & 4 != 0;
    let limit = usize::from(u16::from_le_bytes([data[1], data[2]]));
    let body = &data[OTLP_HEADER_BYTES..];
    match data[0] & 3 {
        1 => split_one::<ExportMetricsServiceRequest>(json, limit, body),
        2 => split_one::<ExportLogsServiceRequest>(json, limit, body),
        _ => split_one::<ExportTraceServiceRequest>(json, limit, body),
    }
}

/// Records what [`forward`] offers; never refuses.
struct RecordingSink {
    limit: usize,
    offers: Mutex<Vec<(Signal, Vec<Piece>)>>,
}

impl TelemetrySink for RecordingSink {
    fn max_piece_bytes(&self) -> usize {
        self.limit
    }

    fn offer(&self, signal: Signal, pieces: Vec<Piece>) -> Result<(), Refusal> {
        self.offers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((signal, pieces));
        Ok(())
    }
}

/// The protobuf path as the receivers take it (`forward_bytes`: never
/// decoded): the wire count is the decoded count (prost skips unknown
/// groups, which OTLP never has; the walk refuses them), a request within
/// the limit is forwarded as the very same bytes, and a larger one comes out
/// as pieces within the limit that decode, carry their counted items, and
/// with the items left out add up to the request's, in at most twice its
/// size plus one frame.
fn wire_path<R: OtlpRequest + Walk>(raw: &bytes::Bytes, limit: usize, items: u64) {
    use crate::telemetry::request::{forward_bytes, ForwardError};
    use crate::telemetry::wire::{count_items, WireError};
    match count_items(R::SIGNAL, raw) {
        Ok(counted) => assert_eq!(counted, items, "the wire count is the decoded count"),
        Err(WireError::WireType {
            wire_type: 3 | 4, ..
        }) => return,
        Err(other) => panic!("prost decodes what the wire walk refuses: {other}"),
    }
    let sink = RecordingSink {
        limit,
        offers: Mutex::new(Vec::new()),
    };
    let rejected = match forward_bytes(&sink, R::SIGNAL, raw.clone()) {
        Ok(rejected) => rejected,
        Err(ForwardError::Refused(refusal)) => panic!("the sink never refuses, yet: {refusal}"),
        Err(ForwardError::Malformed(why)) => panic!("counted, then malformed: {why}"),
    };
    let pieces: Vec<Piece> = sink
        .offers
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .flat_map(|(_, pieces)| pieces)
        .collect();
    if items == 0 {
        assert!(pieces.is_empty());
        return;
    }
    if raw.len() <= limit {
        assert_eq!(pieces.len(), 1);
        assert_eq!(
            &pieces[0].otlp, raw,
            "within the limit: the very same bytes"
        );
        return;
    }
    let mut carried = 0;
    let mut total = 0;
    for piece in &pieces {
        assert!(
            piece.otlp.len() <= limit,
            "a piece of {} bytes, limit {limit}",
            piece.otlp.len()
        );
        let decoded = R::decode(piece.otlp.clone())
            .unwrap_or_else(|err| panic!("a wire piece does not decode: {err}"));
        assert_eq!(
            decoded.item_count(),
            piece.items,
            "a wire piece's item count"
        );
        carried += piece.items;
        total += piece.otlp.len();
    }
    assert_eq!(
        carried + rejected.items,
        items,
        "wire: carried + left out = sent"
    );
    assert!(
        total <= 2 * raw.len() + limit,
        "wire: {total} bytes from {}",
        raw.len()
    );
}

fn split_one<R: OtlpRequest + Walk>(json: bool, limit: usize, body: &[u8]) {
    // As the HTTP receiver decodes (telemetry/http.rs): protobuf as is,
    // JSON with nothing after the value.
    let (request, raw) = if json {
        match serde_json::from_slice::<R>(body) {
            Ok(request) => (request, None),
            Err(_) => return,
        }
    } else {
        match R::decode(body) {
            Ok(request) => (request, Some(bytes::Bytes::copy_from_slice(body))),
            Err(_) => return,
        }
    };
    let items = request.item_count();
    let encoded_len = request.encoded_len();
    let canonical = request.encode_to_vec();
    let entries = request.entries();
    if let Some(raw) = &raw {
        wire_path::<R>(raw, limit, items);
    }
    let sink = RecordingSink {
        limit,
        offers: Mutex::new(Vec::new()),
    };
    let rejected = match forward(&sink, request, raw.clone()) {
        Ok(rejected) => rejected,
        Err(refusal) => panic!("the sink never refuses, yet: {refusal}"),
    };
    let offers = sink.offers.into_inner().unwrap_or_else(|e| e.into_inner());
    assert!(
        offers.len() <= 1,
        "one request, one offer: {}",
        offers.len()
    );
    if items == 0 {
        assert!(offers.is_empty(), "an empty request reached the sink");
        assert_eq!(rejected.items, 0);
        return;
    }
    assert_eq!(
        rejected.message().is_some(),
        rejected.items > 0,
        "a rejection is explained, and only a rejection: {:?}",
        rejected.message()
    );
    let pieces: Vec<Piece> = offers
        .into_iter()
        .flat_map(|(signal, pieces)| {
            assert_eq!(signal, R::SIGNAL);
            pieces
        })
        .collect();
    let total: usize = pieces.iter().map(|p| p.otlp.len()).sum();
    assert!(
        total <= 2 * encoded_len + limit,
        "{} pieces of {total} bytes from a request of {encoded_len} bytes (limit {limit})",
        pieces.len()
    );
    // Within the limit: one piece, untouched.
    let whole = match &raw {
        Some(raw) if raw.len() <= limit => Some(raw.clone()),
        _ if encoded_len <= limit => Some(bytes::Bytes::from(canonical)),
        _ => None,
    };
    if let Some(whole) = whole {
        assert_eq!(pieces.len(), 1, "a request within the limit is one piece");
        assert_eq!(
            pieces[0].otlp, whole,
            "a request within the limit is untouched"
        );
        assert_eq!(pieces[0].items, items);
        assert_eq!(rejected.items, 0);
        return;
    }
    let mut carried = Vec::new();
    let mut carried_items = 0;
    for piece in &pieces {
        assert!(
            piece.otlp.len() <= limit,
            "a piece of {} bytes, limit {limit}",
            piece.otlp.len()
        );
        let decoded = R::decode(piece.otlp.clone())
            .unwrap_or_else(|err| panic!("a piece does not decode: {err}"));
        assert_eq!(decoded.item_count(), piece.items, "a piece's item count");
        carried_items += piece.items;
        carried.extend(decoded.entries());
    }
    assert_eq!(
        carried_items + rejected.items,
        items,
        "items carried + rejected = items sent"
    );
    // The carried items are the request's, in order, each with its resource
    // and scope; the ones skipped are the rejected ones. One that fits a
    // frame alone may only be skipped for the repetition budget, and the
    // answer must say so — unless it counts for nothing (a metric without
    // data points), which partial success cannot express.
    let over_budget = rejected
        .message()
        .is_some_and(|m| m.contains("repeating them in every piece"));
    let mut original = entries.iter();
    let mut skipped = 0;
    let mut skip = |next: &Entry| {
        assert!(
            next.alone > limit || over_budget || next.count == 0,
            "an item that fits a frame alone ({} <= {limit} bytes) was left out, not for the repetition budget: {:?}",
            next.alone,
            rejected.message()
        );
        skipped += next.count;
    };
    for entry in &carried {
        loop {
            let Some(next) = original.next() else {
                panic!(
                    "a piece carries an item the request does not have, or out of order: {entry:?}"
                );
            };
            if next == entry {
                break;
            }
            skip(next);
        }
    }
    original.for_each(&mut skip);
    assert_eq!(skipped, rejected.items, "items left out = items reported");
}

/// One item of a request with what travels with it, each encoded: the
/// resource without its scopes, the scope without its items.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    resource: Rc<[u8]>,
    scope: Rc<[u8]>,
    item: Vec<u8>,
    /// What the item counts for (a metric: its data points).
    count: u64,
    /// Encoded size of a request holding only this item, its scope and its
    /// resource.
    alone: usize,
}

/// The items of an export request, flattened.
trait Walk {
    fn entries(&self) -> Vec<Entry>;
}

/// Size of a message embedded as a field numbered below 16.
fn embedded(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

macro_rules! walk {
    ($request:ty, $resources:ident, $scopes:ident, $items:ident, $count:expr) => {
        impl Walk for $request {
            fn entries(&self) -> Vec<Entry> {
                let mut out = Vec::new();
                for resource in &self.$resources {
                    let mut shell = resource.clone();
                    let scopes = std::mem::take(&mut shell.$scopes);
                    let resource_len = shell.encoded_len();
                    let resource_bytes: Rc<[u8]> = shell.encode_to_vec().into();
                    for mut scope in scopes {
                        let items = std::mem::take(&mut scope.$items);
                        let scope_len = scope.encoded_len();
                        let scope_bytes: Rc<[u8]> = scope.encode_to_vec().into();
                        for item in items {
                            let item_len = item.encoded_len();
                            out.push(Entry {
                                resource: resource_bytes.clone(),
                                scope: scope_bytes.clone(),
                                alone: embedded(
                                    resource_len + embedded(scope_len + embedded(item_len)),
                                ),
                                count: $count(&item),
                                item: item.encode_to_vec(),
                            });
                        }
                    }
                }
                out
            }
        }
    };
}

walk!(
    ExportTraceServiceRequest,
    resource_spans,
    scope_spans,
    spans,
    |_: &_| 1u64
);
walk!(
    ExportMetricsServiceRequest,
    resource_metrics,
    scope_metrics,
    metrics,
    data_points
);
walk!(
    ExportLogsServiceRequest,
    resource_logs,
    scope_logs,
    log_records,
    |_: &_| 1u64
);

/// An HTTP proxy's answer to CONNECT, as bytes arriving in pieces: the
/// parser never panics, never reads past [`MAX_RESPONSE_HEAD_BYTES`], gives
/// the same answer however the bytes are split (a prefix without the blank
/// line is incomplete, never an error unless it passed the bound), reports
/// a head no longer than the input, a status from 100 to 599, and a reason
/// of printable ASCII only, at most 100 characters (it ends up in
/// `/health`).
///
/// [`MAX_RESPONSE_HEAD_BYTES`]: crate::egress::tunnel::MAX_RESPONSE_HEAD_BYTES
pub fn connect_response(data: &[u8]) {
    use crate::egress::tunnel::{parse_connect_response, MAX_RESPONSE_HEAD_BYTES};
    let whole = parse_connect_response(data);
    if let Ok(Some(answer)) = &whole {
        assert!(answer.head_len <= data.len().min(MAX_RESPONSE_HEAD_BYTES));
        assert!((100..=599).contains(&answer.status));
        assert!(answer.reason.len() <= 100);
        assert!(answer
            .reason
            .bytes()
            .all(|b| b.is_ascii_graphic() || b == b' '));
        // The head alone parses to the same answer.
        assert_eq!(parse_connect_response(&data[..answer.head_len]), whole);
    }
    // Every prefix is either incomplete or the same final answer.
    for cut in [1, 7, 64, 512, 4096] {
        if cut >= data.len() {
            break;
        }
        match parse_connect_response(&data[..cut]) {
            Ok(None) => {}
            prefix => assert_eq!(prefix, whole, "prefix of {cut} bytes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    #[test]
    fn alone_is_the_encoded_size_of_a_one_item_request() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                schema_url: "s".repeat(300),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "n".repeat(200),
                        ..Default::default()
                    }),
                    spans: vec![Span {
                        name: "x".repeat(20_000),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let entries = request.entries();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].alone, request.encoded_len());
    }

    #[test]
    fn cited_lines() {
        assert_eq!(
            cited_line("apply.manifest document 2 (line 14): x"),
            Some(14)
        );
        assert_eq!(cited_line("apply.manifest is empty"), None);
    }
}

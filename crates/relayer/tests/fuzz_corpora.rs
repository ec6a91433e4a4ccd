//! The fuzz corpora as ordinary tests, on stable (no libFuzzer): every file
//! of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` goes through
//! its harness in `consonant_relayer::fuzzing`, which panics when a
//! property is broken. A crash the fuzzer once found stays fixed this way.
//! Also checks that each target has its three parts (harness, fuzz target
//! file, seeds) and that the generated OTLP seeds are the committed ones.
#![cfg(feature = "fuzzing")]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use consonant_relayer::fuzzing::{otlp_input, TARGETS};
use consonant_relayer::telemetry::Signal;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir`, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("read corpus directory").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_and_regression_input_passes_its_harness() {
    let mut failures = Vec::new();
    let mut replayed = 0;
    for target in TARGETS {
        let corpus = fuzz_dir().join("corpus").join(target.name);
        let seeds = files(&corpus);
        assert!(
            !seeds.is_empty(),
            "{} is missing or empty: every fuzz target needs seeds",
            corpus.display()
        );
        let regressions = files(&fuzz_dir().join("regressions").join(target.name));
        for file in seeds.iter().chain(&regressions) {
            let data = std::fs::read(file).expect("read corpus file");
            let harness = target.harness;
            if let Err(panic) = std::panic::catch_unwind(move || harness(&data)) {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{}: {why}", file.display()));
            }
            replayed += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {replayed} inputs break a property:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A target is a harness in `TARGETS`, `fuzz_targets/<name>.rs` calling it,
/// a `[[bin]]` in fuzz/Cargo.toml and a seed directory; none without the rest.
#[test]
fn every_target_has_harness_fuzz_target_bin_and_seeds() {
    let harnesses: BTreeSet<&str> = TARGETS.iter().map(|t| t.name).collect();
    let files: BTreeSet<String> = files(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_string()))
        .collect();
    let files: BTreeSet<&str> = files.iter().map(String::as_str).collect();
    assert_eq!(files, harnesses, "fuzz_targets/*.rs and fuzzing::TARGETS");
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for name in harnesses {
        let source =
            std::fs::read_to_string(fuzz_dir().join(format!("fuzz_targets/{name}.rs"))).unwrap();
        assert!(
            source.contains(&format!("consonant_relayer::fuzzing::{name}(")),
            "fuzz_targets/{name}.rs does not call its harness"
        );
        assert!(
            manifest.contains(&format!(
                "name = \"{name}\"\npath = \"fuzz_targets/{name}.rs\""
            )),
            "fuzz/Cargo.toml has no [[bin]] for {name}"
        );
    }
}

/// The OTLP seeds are written by [`otlp_seeds`]; this keeps the committed
/// files equal to it. `FUZZ_WRITE_SEEDS=1` (re)writes them instead.
#[test]
fn otlp_seeds_are_the_generated_ones() {
    let dir = fuzz_dir().join("corpus/otlp_split");
    let write = std::env::var_os("FUZZ_WRITE_SEEDS").is_some_and(|v| v == "1");
    for (name, data) in otlp_seeds() {
        let path = dir.join(&name);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &data).unwrap();
            continue;
        }
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == data,
            "{} differs from its generator: run FUZZ_WRITE_SEEDS=1 cargo test -p consonant-relayer --features fuzzing --test fuzz_corpora",
            path.display()
        );
    }
}

/// Small export requests of each signal, in protobuf and JSON, with limits
/// that keep them whole, split them, and leave an item out.
fn otlp_seeds() -> Vec<(String, Vec<u8>)> {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        any_value, AnyValue, InstrumentationScope, KeyValue,
    };
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::metrics::v1::{
        exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
        ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint,
        Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{
        span, status, ResourceSpans, ScopeSpans, Span, Status,
    };
    use prost::Message;

    let attr = |key: &str, value: &str| KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    };
    let resource = |service: &str| {
        Some(Resource {
            attributes: vec![
                attr("service.name", service),
                attr("k8s.namespace.name", "agents"),
            ],
            ..Default::default()
        })
    };
    let scope = |name: &str| {
        Some(InstrumentationScope {
            name: name.into(),
            version: "1.0.0".into(),
            ..Default::default()
        })
    };
    let span = |i: u8, name: &str| Span {
        trace_id: vec![0x4b; 16],
        span_id: vec![i; 8],
        parent_span_id: if i > 1 { vec![1; 8] } else { Vec::new() },
        name: name.into(),
        kind: span::SpanKind::Client as i32,
        start_time_unix_nano: 1_700_000_000_000_000_000 + u64::from(i),
        end_time_unix_nano: 1_700_000_000_500_000_000,
        attributes: vec![attr("gen_ai.operation.name", "chat")],
        events: vec![span::Event {
            name: "tool_call".into(),
            time_unix_nano: 1_700_000_000_100_000_000,
            ..Default::default()
        }],
        status: Some(Status {
            code: status::StatusCode::Ok as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let traces = ExportTraceServiceRequest {
        resource_spans: ["planner", "executor"]
            .iter()
            .map(|service| ResourceSpans {
                resource: resource(service),
                scope_spans: ["agent.sdk", "http.client"]
                    .iter()
                    .map(|s| ScopeSpans {
                        scope: scope(s),
                        spans: (1..=3).map(|i| span(i, "llm.call")).collect(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
    };
    let mut oversized = traces.clone();
    oversized.resource_spans[0].scope_spans[0].spans[1].name = "x".repeat(600);

    let point = |v: f64| NumberDataPoint {
        time_unix_nano: 1_700_000_000_000_000_000,
        value: Some(number_data_point::Value::AsDouble(v)),
        attributes: vec![attr("model", "m")],
        ..Default::default()
    };
    let metric = |name: &str, data: Option<Data>| Metric {
        name: name.into(),
        unit: "1".into(),
        data,
        ..Default::default()
    };
    let metrics = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource("planner"),
            scope_metrics: vec![ScopeMetrics {
                scope: scope("agent.sdk"),
                metrics: vec![
                    metric(
                        "tokens",
                        Some(Data::Gauge(Gauge {
                            data_points: vec![point(1.0), point(2.5)],
                        })),
                    ),
                    metric(
                        "calls",
                        Some(Data::Sum(Sum {
                            data_points: vec![point(7.0)],
                            aggregation_temporality: 2,
                            is_monotonic: true,
                        })),
                    ),
                    metric(
                        "latency",
                        Some(Data::Histogram(Histogram {
                            data_points: vec![HistogramDataPoint {
                                count: 3,
                                bucket_counts: vec![1, 2, 0],
                                explicit_bounds: vec![0.1, 1.0],
                                ..Default::default()
                            }],
                            aggregation_temporality: 2,
                        })),
                    ),
                    metric(
                        "latency.exp",
                        Some(Data::ExponentialHistogram(ExponentialHistogram {
                            data_points: vec![ExponentialHistogramDataPoint {
                                count: 2,
                                scale: 3,
                                positive: Some(Buckets {
                                    offset: 1,
                                    bucket_counts: vec![1, 1],
                                }),
                                ..Default::default()
                            }],
                            aggregation_temporality: 1,
                        })),
                    ),
                    metric(
                        "summary",
                        Some(Data::Summary(Summary {
                            data_points: vec![
                                SummaryDataPoint {
                                    count: 1,
                                    sum: 2.0,
                                    ..Default::default()
                                };
                                2
                            ],
                        })),
                    ),
                    metric("no.data", None),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let logs = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource("executor"),
            scope_logs: vec![ScopeLogs {
                scope: scope("agent.log"),
                log_records: (0..4)
                    .map(|i| LogRecord {
                        time_unix_nano: 1_700_000_000_000_000_000 + i,
                        severity_number: 9,
                        severity_text: "INFO".into(),
                        body: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(format!("step {i} done"))),
                        }),
                        trace_id: vec![0x4b; 16],
                        span_id: vec![1; 8],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    };

    let mut seeds = Vec::new();
    let mut add = |name: &str, signal: Signal, json: bool, limit: u16, body: Vec<u8>| {
        seeds.push((name.to_string(), otlp_input(signal, json, limit, &body)));
    };
    let t = traces.encode_to_vec();
    add(
        "traces-whole.bin",
        Signal::Traces,
        false,
        u16::MAX,
        t.clone(),
    );
    add("traces-split.bin", Signal::Traces, false, 400, t.clone());
    add("traces-tight.bin", Signal::Traces, false, 160, t);
    add(
        "traces-oversized-span.bin",
        Signal::Traces,
        false,
        500,
        oversized.encode_to_vec(),
    );
    add(
        "traces-split.json",
        Signal::Traces,
        true,
        500,
        serde_json::to_vec(&traces).unwrap(),
    );
    let m = metrics.encode_to_vec();
    add(
        "metrics-whole.bin",
        Signal::Metrics,
        false,
        u16::MAX,
        m.clone(),
    );
    add("metrics-split.bin", Signal::Metrics, false, 200, m);
    add(
        "metrics-split.json",
        Signal::Metrics,
        true,
        250,
        serde_json::to_vec(&metrics).unwrap(),
    );
    let l = logs.encode_to_vec();
    add("logs-whole.bin", Signal::Logs, false, u16::MAX, l.clone());
    add("logs-split.bin", Signal::Logs, false, 150, l);
    add(
        "logs-split.json",
        Signal::Logs,
        true,
        150,
        serde_json::to_vec(&logs).unwrap(),
    );
    add("empty-request.bin", Signal::Traces, false, 0, Vec::new());
    seeds
}

/// The seeds meant as valid inputs are accepted, so the fuzzer starts from
/// the success paths (where the harnesses assert most), not only from errors.
#[test]
fn valid_seeds_are_accepted() {
    use consonant_relayer::commands::validate::{validate, ValidationLimits};
    use consonant_relayer::proto::{command::Action, ApplyManifest, Command};

    let corpus = fuzz_dir().join("corpus");
    for name in [
        "minimal.toml",
        "bounds-min.toml",
        "bounds-max.toml",
        "spec-example-known-keys.toml",
    ] {
        let text = std::fs::read_to_string(corpus.join("config").join(name)).unwrap();
        if let Err(err) = consonant_relayer::config::parse_str(&text, Path::new(name), Vec::new()) {
            panic!("{name}: {err}");
        }
    }
    let limits = ValidationLimits {
        max_manifest_bytes: 1 << 20,
        max_log_bytes: 1 << 20,
    };
    for name in [
        "deployment.yaml",
        "deployment.json",
        "multi-document.yaml",
        "anchors-merge-keys.yaml",
        "json-multi-document.json",
        "cluster-scoped.yaml",
        "null-documents.yaml",
    ] {
        let manifest = std::fs::read(corpus.join("manifest").join(name)).unwrap();
        let command = Command {
            action: Some(Action::Apply(ApplyManifest {
                manifest: manifest.into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        if let Err(err) = validate(&command, &limits) {
            panic!("{name}: {err}");
        }
    }
}

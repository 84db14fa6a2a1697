//! The Grafana dashboard (`configs/grafana-dashboard.json`) against the metric names the
//! daemon exports: every `vstreamd_*` and `process_*` name its queries use must be one the
//! code defines, used the way its kind allows (`rate`/`increase` over counters and
//! histogram buckets only, `_bucket`/`_sum`/`_count` on histograms only), and the exporter
//! must really expose histograms with `_bucket` series under those names.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;
use vstreamd::metrics::*;

const COUNTERS: &[&str] = &[
    INGEST_FRAMES_DECODED,
    INGEST_FRAMES_SAMPLED,
    INGEST_FRAMES_DROPPED,
    INGEST_RECONNECTS,
    INGEST_ERRORS,
    KV_EVICTIONS,
    KV_SPILLS,
    KV_RELOADS,
    KV_CORRUPT_RECORDS,
    KV_TORN_TAILS,
    KV_RETENTION_DELETES,
    KV_WRITE_ERRORS,
    KV_DEDUP_DROPS,
    ENGINE_FRAMES_ENCODED,
    ENGINE_ENCODE_ERRORS,
    ENGINE_ASKS,
    ENGINE_TOKENS_GENERATED,
    RETRIEVAL_BLOCKS_LOADED,
    GRPC_REQUESTS,
    GRPC_REJECTED,
    WATCH_ALERTS,
    INTERNAL_ERRORS,
];

const GAUGES: &[&str] = &[
    INGEST_SOURCE_STATE,
    KV_BYTES,
    KV_BLOCKS,
    KV_DEGRADED,
    KV_COMPRESSION_RATIO,
    ENGINE_STREAMS,
    ENGINE_OPEN_ANSWERS,
    ENGINE_HEARTBEAT_GAP_MAX,
    GRPC_IN_FLIGHT,
    SERVE_STREAMS,
    SERVE_READY,
];

const HISTOGRAMS: &[&str] = &[
    INGEST_ENQUEUE_LATENCY,
    KV_RELOAD_LATENCY,
    ENGINE_ENCODE_BATCH_SECONDS,
    ENGINE_BATCH_FRAMES,
    ENGINE_TIME_TO_FIRST_TOKEN,
    ENGINE_ASK_QUEUE_SECONDS,
    ENGINE_ANSWER_STEP_SECONDS,
    RETRIEVAL_BLOCKS_SCANNED,
    RETRIEVAL_SECONDS,
    GRPC_REQUEST_SECONDS,
];

/// What `metrics_process::Collector` exports (no prefix configured): counters, then gauges.
const PROCESS_COUNTERS: &[&str] = &["process_cpu_seconds_total"];
const PROCESS_GAUGES: &[&str] = &[
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_virtual_memory_max_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    "process_threads",
];

const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

fn kind_of(name: &str) -> Option<Kind> {
    if COUNTERS.contains(&name) || PROCESS_COUNTERS.contains(&name) {
        Some(Kind::Counter)
    } else if GAUGES.contains(&name) || PROCESS_GAUGES.contains(&name) {
        Some(Kind::Gauge)
    } else if HISTOGRAMS.contains(&name) {
        Some(Kind::Histogram)
    } else {
        None
    }
}

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/grafana-dashboard.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every PromQL string of the dashboard: panel targets' `expr`, and the template
/// variables' queries.
fn queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => queries(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// A metric name in a query, with what it was wrapped in.
#[derive(Debug)]
struct Use {
    /// As written, suffix included (`vstreamd_retrieval_seconds_bucket`).
    written: String,
    /// The function applied directly to it (`rate` in `rate(x[5m])`), if any.
    function: Option<String>,
}

/// The `vstreamd_*` and `process_*` identifiers of a PromQL expression, outside string
/// literals, each with the function it is the direct argument of.
fn metric_uses(expr: &str) -> Vec<Use> {
    let bytes = expr.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut uses = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'"' || b == b'\'' || b == b'`' {
            // Skip a string literal (label values, regexes).
            i += 1;
            while i < bytes.len() && bytes[i] != b {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if is_ident(b) {
            let start = i;
            while i < bytes.len() && is_ident(bytes[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            if word.starts_with("vstreamd_") || word.starts_with("process_") {
                // The identifier right before the `(` that precedes this one, if any.
                let before = expr[..start].trim_end();
                let function = before.strip_suffix('(').map(|f| {
                    let f = f.trim_end();
                    let fstart = f
                        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .map_or(0, |p| p + 1);
                    f[fstart..].to_owned()
                });
                uses.push(Use {
                    written: word.to_owned(),
                    function: function.filter(|f| !f.is_empty()),
                });
            }
            continue;
        }
        i += 1;
    }
    uses
}

/// `(base name, suffix)`: `x_bucket` → `(x, Some("_bucket"))` when `x` is a histogram.
fn split_suffix(written: &str) -> (&str, Option<&'static str>) {
    for suffix in HISTOGRAM_SUFFIXES {
        if let Some(base) = written.strip_suffix(suffix) {
            if HISTOGRAMS.contains(&base) {
                return (base, Some(suffix));
            }
        }
    }
    (written, None)
}

fn all_uses() -> Vec<(String, Use)> {
    let mut exprs = Vec::new();
    queries(&dashboard(), &mut exprs);
    assert!(!exprs.is_empty(), "the dashboard has no queries");
    exprs
        .into_iter()
        .flat_map(|e| {
            metric_uses(&e)
                .into_iter()
                .map(move |u| (e.clone(), u))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn dashboard_uses_only_defined_metrics_the_right_way() {
    let uses = all_uses();
    let mut errors = Vec::new();
    let mut shown = BTreeSet::new();
    for (expr, u) in &uses {
        let (base, suffix) = split_suffix(&u.written);
        let Some(kind) = kind_of(base) else {
            errors.push(format!("unknown metric {:?} in: {expr}", u.written));
            continue;
        };
        shown.insert(base.to_owned());
        if u.function.as_deref() == Some("label_values") {
            continue; // a template variable's label lookup: any kind of series will do
        }
        let ranged = matches!(u.function.as_deref(), Some("rate" | "increase" | "irate"));
        match (kind, suffix) {
            (Kind::Histogram, None) => errors.push(format!(
                "histogram {base} used without _bucket/_sum/_count in: {expr}"
            )),
            (Kind::Gauge, _) if ranged => errors.push(format!(
                "{} over gauge {base} in: {expr}",
                u.function.as_ref().unwrap()
            )),
            (Kind::Counter, _) if !ranged => errors.push(format!(
                "counter {base} used without rate/increase in: {expr}"
            )),
            (Kind::Histogram, Some(_)) if !ranged => errors.push(format!(
                "histogram series {} used without rate/increase in: {expr}",
                u.written
            )),
            _ => {}
        }
        if u.written.ends_with("_bucket") && !expr.contains("histogram_quantile") {
            errors.push(format!(
                "{} outside histogram_quantile in: {expr}",
                u.written
            ));
        }
    }
    // histogram_quantile needs `le` kept by every aggregation under it.
    let exprs: BTreeSet<&str> = uses.iter().map(|(e, _)| e.as_str()).collect();
    for expr in exprs {
        if expr.contains("histogram_quantile") && !expr.contains("le)") {
            errors.push(format!(
                "histogram_quantile without `by (..., le)` in: {expr}"
            ));
        }
    }
    assert!(
        errors.is_empty(),
        "dashboard problems:\n{}",
        errors.join("\n")
    );

    let all = COUNTERS.iter().chain(GAUGES).chain(HISTOGRAMS);
    let unshown: Vec<_> = all.filter(|n| !shown.contains(**n)).collect();
    eprintln!(
        "{} metrics shown; not on the dashboard: {unshown:?}",
        shown.len()
    );
}

#[test]
fn dashboard_shows_the_required_metrics() {
    let uses = all_uses();
    let shown: BTreeSet<&str> = uses
        .iter()
        .map(|(_, u)| split_suffix(&u.written).0)
        .collect();
    for name in [
        INGEST_FRAMES_DECODED,
        INGEST_FRAMES_SAMPLED,
        INGEST_FRAMES_DROPPED,
        INGEST_RECONNECTS,
        INGEST_SOURCE_STATE,
        ENGINE_FRAMES_ENCODED,
        ENGINE_ENCODE_BATCH_SECONDS,
        ENGINE_ASKS,
        ENGINE_TIME_TO_FIRST_TOKEN,
        ENGINE_ASK_QUEUE_SECONDS,
        ENGINE_TOKENS_GENERATED,
        KV_BYTES,
        KV_BLOCKS,
        KV_EVICTIONS,
        KV_SPILLS,
        KV_RELOADS,
        KV_CORRUPT_RECORDS,
        KV_DEGRADED,
        RETRIEVAL_BLOCKS_SCANNED,
        RETRIEVAL_SECONDS,
        GRPC_REQUESTS,
        GRPC_REQUEST_SECONDS,
        GRPC_IN_FLIGHT,
        GRPC_REJECTED,
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        assert!(shown.contains(name), "the dashboard does not show {name}");
    }
}

#[test]
fn dashboard_is_importable() {
    let d = dashboard();
    assert_eq!(d["uid"], "vstreamd");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "no DS_PROMETHEUS datasource input"
    );

    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut rows = Vec::new();
    for p in panels {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
        let pos = &p["gridPos"];
        let (x, w) = (pos["x"].as_u64().unwrap(), pos["w"].as_u64().unwrap());
        assert!(x + w <= 24, "panel {id} overflows the grid: {pos}");
        if p["type"] == "row" {
            rows.push(p["title"].as_str().unwrap().to_owned());
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {id} ({}) does not use the datasource input",
            p["title"]
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {id} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "panel {id}");
        }
    }
    for wanted in ["Ingest", "Engine", "KV", "Retrieval", "gRPC", "Process"] {
        assert!(
            rows.iter().any(|r| r.starts_with(wanted)),
            "no {wanted} row in {rows:?}"
        );
    }
}

/// The exporter renders every histogram the dashboard reads with `_bucket` series (a
/// histogram without configured buckets would come out as a summary), and counters and
/// gauges under exactly the names the dashboard uses.
#[test]
fn exporter_exposes_the_dashboard_series() {
    let handle = install_prometheus().expect("install the Prometheus recorder");
    for name in COUNTERS {
        metrics::counter!(*name).increment(1);
    }
    for name in GAUGES {
        metrics::gauge!(*name).set(1.0);
    }
    for name in HISTOGRAMS {
        metrics::histogram!(*name).record(1.0);
    }
    let text = handle.render();
    let series: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for (expr, u) in all_uses() {
        if u.written.starts_with("process_") {
            continue; // the process collector runs on scrape, in the serving layer
        }
        assert!(
            series.contains(u.written.as_str()),
            "{} (from: {expr}) is not in the exporter's output:\n{text}",
            u.written
        );
    }
}

#[test]
fn metric_uses_parses_promql() {
    let uses = metric_uses(
        r#"histogram_quantile(0.99, sum by (le) (rate(vstreamd_x_seconds_bucket{job=~"vstreamd_not_me"}[5m]))) / process_open_fds"#,
    );
    let got: Vec<_> = uses
        .iter()
        .map(|u| (u.written.as_str(), u.function.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            ("vstreamd_x_seconds_bucket", Some("rate")),
            ("process_open_fds", None)
        ]
    );
}

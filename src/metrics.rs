//! Metric names, label keys, descriptions and histogram buckets, in one place
//! (mistral.rs habit). Core code only records through the `metrics` macros with these
//! names; [`install_prometheus`] installs the exporter (the serving layer calls it and
//! serves its text on its own HTTP port).

/// Frames that came out of the decoder, before sampling. Labels: `stream`.
pub const INGEST_FRAMES_DECODED: &str = "vstreamd_ingest_frames_decoded_total";
/// Frames kept by sampling and converted for the model. Labels: `stream`.
pub const INGEST_FRAMES_SAMPLED: &str = "vstreamd_ingest_frames_sampled_total";
/// Sampled frames lost because the consumer fell behind. Labels: `stream`.
pub const INGEST_FRAMES_DROPPED: &str = "vstreamd_ingest_frames_dropped_total";
/// Reconnection attempts of live sources. Labels: `stream`.
pub const INGEST_RECONNECTS: &str = "vstreamd_ingest_reconnects_total";
/// Source errors by type. Labels: `stream`, `error_type`.
pub const INGEST_ERRORS: &str = "vstreamd_ingest_errors_total";
/// 1 for the stream's current state, 0 for the others. Labels: `stream`, `state`.
pub const INGEST_SOURCE_STATE: &str = "vstreamd_ingest_source_state";
/// Capture (pipeline clock) to enqueue, live sources only. Labels: `stream`.
pub const INGEST_ENQUEUE_LATENCY: &str = "vstreamd_ingest_capture_to_enqueue_seconds";

/// Bytes held per tier. Labels: `stream`, `tier` (`ram`, `disk`, `rep_keys`).
pub const KV_BYTES: &str = "vstreamd_kv_bytes";
/// Blocks held per tier. Labels: `stream`, `tier`.
pub const KV_BLOCKS: &str = "vstreamd_kv_blocks";
/// Blocks evicted from the RAM tier (still on disk). Labels: `stream`.
pub const KV_EVICTIONS: &str = "vstreamd_kv_ram_evictions_total";
/// Blocks written to the disk tier. Labels: `stream`.
pub const KV_SPILLS: &str = "vstreamd_kv_disk_appends_total";
/// Block loads by where they were found. Labels: `stream`, `source` (`ram`, `disk`).
pub const KV_RELOADS: &str = "vstreamd_kv_loads_total";
/// Latency of loading a block. Labels: `source`.
pub const KV_RELOAD_LATENCY: &str = "vstreamd_kv_load_seconds";
/// Corrupt records found (on recovery or read), never served. Labels: `stream`.
pub const KV_CORRUPT_RECORDS: &str = "vstreamd_kv_corrupt_records_total";
/// Torn tails truncated on recovery. Labels: `stream`.
pub const KV_TORN_TAILS: &str = "vstreamd_kv_torn_tails_total";
/// Whole segments deleted by retention. Labels: `stream`, `reason` (`bytes`, `age`, `disk_full`).
pub const KV_RETENTION_DELETES: &str = "vstreamd_kv_segments_deleted_total";
/// 1 while a stream's store runs RAM-only because its disk tier cannot write. Labels: `stream`.
pub const KV_DEGRADED: &str = "vstreamd_kv_ram_only";
/// Disk tier write errors by type. Labels: `stream`, `error_type`.
pub const KV_WRITE_ERRORS: &str = "vstreamd_kv_write_errors_total";
/// Uncompressed bytes / stored bytes of blocks appended. Labels: `stream`.
pub const KV_COMPRESSION_RATIO: &str = "vstreamd_kv_compression_ratio";
/// Near-duplicate blocks dropped. Labels: `stream`.
pub const KV_DEDUP_DROPS: &str = "vstreamd_kv_duplicate_blocks_dropped_total";

/// Frames encoded into blocks. Labels: `stream`.
pub const ENGINE_FRAMES_ENCODED: &str = "vstreamd_engine_frames_encoded_total";
/// Wall time of one encode batch (vision tower + projector + prefill), all streams.
pub const ENGINE_ENCODE_BATCH_SECONDS: &str = "vstreamd_engine_encode_batch_seconds";
/// Frames per encode batch.
pub const ENGINE_BATCH_FRAMES: &str = "vstreamd_engine_batch_frames";
/// Frames whose encoding failed (the stream goes on). Labels: `stream`, `error_type`.
pub const ENGINE_ENCODE_ERRORS: &str = "vstreamd_engine_encode_errors_total";
/// Questions answered by mode and outcome. Labels: `mode`, `outcome`.
pub const ENGINE_ASKS: &str = "vstreamd_engine_asks_total";
/// Time from a question reaching the engine to its first token. Labels: `mode`.
pub const ENGINE_TIME_TO_FIRST_TOKEN: &str = "vstreamd_engine_time_to_first_token_seconds";
/// Time a question waited in the engine's queue before work on it began.
pub const ENGINE_ASK_QUEUE_SECONDS: &str = "vstreamd_engine_ask_queue_seconds";
/// Tokens generated in answers.
pub const ENGINE_TOKENS_GENERATED: &str = "vstreamd_engine_tokens_generated_total";
/// Engine thread time of one answering step. Labels: `step` (`first`: a question's
/// retrieval, question pass and first token; `decode`: one more token). Its `_sum`
/// against the encode batches' shows the answering/encoding share at work.
pub const ENGINE_ANSWER_STEP_SECONDS: &str = "vstreamd_engine_answer_step_seconds";
/// Longest time between two engine heartbeats (progress: a decode step, a stream's
/// encode, a loop turn) since start; the watchdog interval must exceed it.
pub const ENGINE_HEARTBEAT_GAP_MAX: &str = "vstreamd_engine_heartbeat_gap_max_seconds";
/// Questions open in the engine (first step done, still decoding).
pub const ENGINE_OPEN_ANSWERS: &str = "vstreamd_engine_open_answers";
/// Internal failures (a caught panic, a broken invariant): the daemon's fault, never a
/// request's. Labels: `component` (`engine`, `ingest`, `serve`), `what`.
pub const INTERNAL_ERRORS: &str = "vstreamd_internal_errors_total";
/// Streams the engine is encoding.
pub const ENGINE_STREAMS: &str = "vstreamd_engine_streams";
/// Blocks scored per question (representative keys scanned).
pub const RETRIEVAL_BLOCKS_SCANNED: &str = "vstreamd_retrieval_blocks_scanned";
/// Blocks loaded into a question's context by tier. Labels: `tier` (`ram`, `disk`).
pub const RETRIEVAL_BLOCKS_LOADED: &str = "vstreamd_retrieval_blocks_loaded_total";
/// Time to score candidates and load the selected blocks.
pub const RETRIEVAL_SECONDS: &str = "vstreamd_retrieval_seconds";

/// gRPC requests by method and final status code. Labels: `method`, `code`.
pub const GRPC_REQUESTS: &str = "vstreamd_grpc_requests_total";
/// gRPC request duration (streaming methods: until the stream ends). Labels: `method`.
pub const GRPC_REQUEST_SECONDS: &str = "vstreamd_grpc_request_duration_seconds";
/// gRPC requests in flight. Labels: `method`.
pub const GRPC_IN_FLIGHT: &str = "vstreamd_grpc_in_flight";
/// Requests refused before any work. Labels: `reason` (`unauthenticated`,
/// `resource_exhausted`, `invalid_argument`, `malformed_message`: a body that is not
/// the method's protobuf message, refused before a handler sees it).
pub const GRPC_REJECTED: &str = "vstreamd_grpc_rejected_total";
/// Alerts sent by standing questions. Labels: `stream`.
pub const WATCH_ALERTS: &str = "vstreamd_watch_alerts_total";
/// Streams known to the daemon. Labels: `origin` (`config`, `api`).
pub const SERVE_STREAMS: &str = "vstreamd_streams";
/// 1 once the daemon serves (model loaded, stores recovered), 0 before and while stopping.
pub const SERVE_READY: &str = "vstreamd_ready";

/// Counts an internal failure of `component` (logged by the caller with its context).
pub fn internal_error(component: &'static str, what: &'static str) {
    metrics::counter!(INTERNAL_ERRORS, "component" => component, "what" => what).increment(1);
}

/// Histogram buckets for latencies in seconds: 1 ms to 10 min.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];
/// Histogram buckets for counts (frames per batch, blocks scanned).
pub const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0,
];

/// Installs the process-wide Prometheus recorder with this module's buckets and
/// descriptions; the handle renders the exposition text.
pub fn install_prometheus(
) -> Result<metrics_exporter_prometheus::PrometheusHandle, metrics_exporter_prometheus::BuildError>
{
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(ENGINE_BATCH_FRAMES.into()), COUNT_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(RETRIEVAL_BLOCKS_SCANNED.into()),
            COUNT_BUCKETS,
        )?
        .install_recorder()?;
    describe();
    Ok(handle)
}

/// Describes every metric (help text for the exporter).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(INGEST_FRAMES_DECODED, "Frames decoded, before sampling");
    describe_counter!(
        INGEST_FRAMES_SAMPLED,
        "Frames sampled and converted for the model"
    );
    describe_counter!(
        INGEST_FRAMES_DROPPED,
        "Sampled frames dropped because the queue was full"
    );
    describe_counter!(INGEST_RECONNECTS, "Reconnection attempts of live sources");
    describe_counter!(INGEST_ERRORS, "Source errors by type");
    describe_gauge!(
        INGEST_SOURCE_STATE,
        "1 for the stream's current source state"
    );
    describe_gauge!(KV_BYTES, Unit::Bytes, "KV bytes held per tier");
    describe_gauge!(KV_BLOCKS, "KV blocks held per tier");
    describe_counter!(KV_EVICTIONS, "Blocks evicted from the RAM tier");
    describe_counter!(KV_SPILLS, "Blocks appended to the disk tier");
    describe_counter!(KV_RELOADS, "Block loads by tier they were found in");
    describe_histogram!(
        KV_RELOAD_LATENCY,
        Unit::Seconds,
        "Latency of loading a block"
    );
    describe_counter!(KV_CORRUPT_RECORDS, "Corrupt records detected and skipped");
    describe_counter!(KV_TORN_TAILS, "Torn segment tails truncated on recovery");
    describe_counter!(KV_RETENTION_DELETES, "Segments deleted by retention");
    describe_gauge!(KV_DEGRADED, "1 while the store runs RAM-only");
    describe_counter!(KV_WRITE_ERRORS, "Disk tier write errors by type");
    describe_gauge!(KV_COMPRESSION_RATIO, "Uncompressed over stored block bytes");
    describe_counter!(KV_DEDUP_DROPS, "Near-duplicate blocks dropped");
    describe_counter!(ENGINE_FRAMES_ENCODED, "Frames encoded into KV blocks");
    describe_histogram!(
        ENGINE_ENCODE_BATCH_SECONDS,
        Unit::Seconds,
        "Wall time of one encode batch"
    );
    describe_histogram!(ENGINE_BATCH_FRAMES, "Frames per encode batch");
    describe_counter!(ENGINE_ENCODE_ERRORS, "Frames whose encoding failed");
    describe_counter!(ENGINE_ASKS, "Questions by mode and outcome");
    describe_histogram!(
        ENGINE_TIME_TO_FIRST_TOKEN,
        Unit::Seconds,
        "Time from a question reaching the engine to its first token"
    );
    describe_histogram!(
        ENGINE_ASK_QUEUE_SECONDS,
        Unit::Seconds,
        "Time a question waited for the engine"
    );
    describe_counter!(ENGINE_TOKENS_GENERATED, "Answer tokens generated");
    describe_gauge!(ENGINE_STREAMS, "Streams being encoded");
    describe_histogram!(
        ENGINE_ANSWER_STEP_SECONDS,
        Unit::Seconds,
        "Engine thread time of one answering step"
    );
    describe_gauge!(
        ENGINE_HEARTBEAT_GAP_MAX,
        Unit::Seconds,
        "Longest gap between engine heartbeats since start"
    );
    describe_gauge!(ENGINE_OPEN_ANSWERS, "Questions being decoded");
    describe_counter!(
        INTERNAL_ERRORS,
        "Internal failures (caught panics, broken invariants)"
    );
    describe_histogram!(RETRIEVAL_BLOCKS_SCANNED, "Blocks scored per question");
    describe_counter!(
        RETRIEVAL_BLOCKS_LOADED,
        "Blocks loaded into answers by tier"
    );
    describe_histogram!(
        RETRIEVAL_SECONDS,
        Unit::Seconds,
        "Time to score and load the blocks of a question"
    );
    describe_counter!(GRPC_REQUESTS, "gRPC requests by method and status code");
    describe_histogram!(
        GRPC_REQUEST_SECONDS,
        Unit::Seconds,
        "gRPC request duration (streams: until they end)"
    );
    describe_gauge!(GRPC_IN_FLIGHT, "gRPC requests in flight");
    describe_counter!(GRPC_REJECTED, "gRPC requests refused before any work");
    describe_counter!(WATCH_ALERTS, "Alerts sent by standing questions");
    describe_gauge!(SERVE_STREAMS, "Streams known to the daemon by origin");
    describe_gauge!(SERVE_READY, "1 while the daemon serves");
    describe_histogram!(
        INGEST_ENQUEUE_LATENCY,
        Unit::Seconds,
        "Latency from capture to the frame entering the engine queue"
    );
}

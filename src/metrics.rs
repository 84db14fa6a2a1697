//! Metric names, label keys and descriptions, in one place (mistral.rs habit). Core code
//! only records through the `metrics` macros with these names; the Prometheus exporter
//! is installed by the serving layer.

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
    describe_histogram!(
        INGEST_ENQUEUE_LATENCY,
        Unit::Seconds,
        "Latency from capture to the frame entering the engine queue"
    );
}

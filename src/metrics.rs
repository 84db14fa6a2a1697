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
    describe_histogram!(
        INGEST_ENQUEUE_LATENCY,
        Unit::Seconds,
        "Latency from capture to the frame entering the engine queue"
    );
}

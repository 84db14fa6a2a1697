//! Bounds on everything a client sends (STYLE habit 14, TGI's `validation.rs`): every
//! number is range-checked and every string length-checked before use, arithmetic on
//! them is checked, and a status message quotes a client's text only as an
//! [`excerpt`](crate::error::excerpt). The README's "Request bounds" table lists them.

use std::time::Duration;

use tonic::Status;

use crate::config::streams::MAX_DISK_MIB;
use crate::metrics as names;

/// INVALID_ARGUMENT, counted as a rejection.
pub fn invalid(message: impl Into<String>) -> Status {
    metrics::counter!(names::GRPC_REJECTED, "reason" => "invalid_argument").increment(1);
    Status::invalid_argument(message)
}

/// Longest time a client may name (stream seconds, seconds ago): 100 years.
pub const MAX_TIME_SECONDS: f64 = 3_155_760_000.0;
/// Latest wall-clock time a client may name: 9999-12-31T23:59:59.999Z.
pub const MAX_WALL_UNIX_MS: i64 = 253_402_300_799_999;
/// Largest disk tier a stream may ask for (1 PiB).
pub const MAX_DISK_BYTES: u64 = MAX_DISK_MIB << 20;
/// Longest `positive` word of a standing question.
pub const MAX_POSITIVE_BYTES: usize = 64;
/// Longest status message sent (a safety net: messages quote excerpts only).
pub const MAX_STATUS_MESSAGE_BYTES: usize = 1024;

/// The daemon's bounds on questions (from its config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AskBounds {
    pub max_question_bytes: usize,
    /// `top_k` and a summary's `frames`.
    pub max_top_k: usize,
    /// `max_new_tokens`.
    pub max_new_tokens: usize,
}

impl Default for AskBounds {
    fn default() -> Self {
        Self {
            max_question_bytes: crate::engine::config::MAX_QUESTION_BYTES,
            max_top_k: 64,
            max_new_tokens: 1024,
        }
    }
}

/// `value` seconds as a duration: finite and in `[0, MAX_TIME_SECONDS]`, and above 0
/// when `positive`.
pub fn seconds(value: f64, field: &str, positive: bool) -> Result<Duration, Status> {
    let low_ok = if positive { value > 0.0 } else { value >= 0.0 };
    if !(low_ok && value <= MAX_TIME_SECONDS) {
        let low = if positive { "(0" } else { "[0" };
        return Err(invalid(format!(
            "{field} must be in {low}, {MAX_TIME_SECONDS}] seconds"
        )));
    }
    Ok(Duration::from_secs_f64(value))
}

/// A count from the wire: 0 (unset) or in `1..=max`.
pub fn count(value: u32, field: &str, max: usize) -> Result<Option<usize>, Status> {
    let value = value as usize;
    match value {
        0 => Ok(None),
        v if v <= max => Ok(Some(v)),
        _ => Err(invalid(format!(
            "{field} must be in 1..={max} (0: default)"
        ))),
    }
}

/// A stream id as requests name it.
pub fn stream_id(id: &str, field: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(invalid(format!("{field} is empty")));
    }
    crate::engine::validate_stream_id(id).map_err(|_| {
        invalid(format!(
            "{field} `{}`: stream ids are 1–64 of [A-Za-z0-9_.-], not starting with a dot",
            crate::error::excerpt(id)
        ))
    })
}

/// `status` with its message cut to [`MAX_STATUS_MESSAGE_BYTES`] (metadata limits of
/// clients are a few KiB).
pub fn bounded(status: Status) -> Status {
    let message = status.message();
    if message.len() <= MAX_STATUS_MESSAGE_BYTES {
        return status;
    }
    let mut end = MAX_STATUS_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    Status::new(status.code(), format!("{}…", &message[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn seconds_are_bounded_not_panicking() {
        for bad in [
            1e30,
            1e300,
            f64::INFINITY,
            f64::NAN,
            -1.0,
            MAX_TIME_SECONDS * 2.0,
        ] {
            let e = seconds(bad, "x", false).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{bad}");
        }
        assert_eq!(
            seconds(0.0, "x", true).unwrap_err().code(),
            Code::InvalidArgument
        );
        assert_eq!(
            seconds(1.5, "x", true).unwrap(),
            Duration::from_millis(1500)
        );
        assert!(seconds(MAX_TIME_SECONDS, "x", false).is_ok());
    }

    #[test]
    fn counts_and_ids_are_bounded() {
        assert_eq!(count(0, "k", 8).unwrap(), None);
        assert_eq!(count(8, "k", 8).unwrap(), Some(8));
        assert_eq!(
            count(u32::MAX, "k", 8).unwrap_err().code(),
            Code::InvalidArgument
        );
        let e = stream_id(&"x".repeat(100_000), "stream").unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().len() < 300, "{}", e.message().len());
    }

    #[test]
    fn long_messages_are_cut() {
        let s = bounded(Status::not_found("é".repeat(10_000)));
        assert_eq!(s.code(), Code::NotFound);
        assert!(s.message().len() <= MAX_STATUS_MESSAGE_BYTES + 3);
    }
}

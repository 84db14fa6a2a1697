//! Ingest: any video a user points vstreamd at becomes a steady flow of RGB frames at
//! the rate and size the model wants, stamped with time, in a bounded queue.
//!
//! One GStreamer pipeline per stream (gstreamer-rs `appsink` habits: fixed caps on the
//! sink, frames mapped without copies, bus errors turned into typed errors):
//!
//! ```text
//! source ─► decode ─► videorate (drop only) ─► [aspectratiocrop] ─► videoscale ─► videoconvert ─► appsink (RGB W×H)
//! ```
//!
//! Sampling happens on decoded frames *before* scaling and colour conversion, so a
//! 1080p30 camera sampled at 1 fps converts one frame a second, not thirty. A
//! supervisor thread per stream runs the pipeline, watches its bus, and reconnects live
//! sources with exponential backoff and jitter; a file ends with [`StreamState::Ended`].
//!
//! # Layout
//! - [`source`]: URI → [`Source`], credentials kept out of logs.
//! - [`queue`]: the bounded drop-oldest (or blocking) frame queue.
//! - [`pipeline`]: building a pipeline and running one session of it.
//! - this file: configuration, [`Frame`], stream status, the supervisor.

pub mod pipeline;
pub mod queue;
pub mod source;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam::channel::Receiver;

use crate::error::IngestError;
use crate::metrics as names;
pub use queue::Overflow;
pub use source::{Credentials, RtspTransport, Source};

/// Initialises GStreamer once per process.
pub fn init() -> Result<(), IngestError> {
    gstreamer::init().map_err(|e| IngestError::Pipeline(format!("initialising GStreamer: {e}")))
}

/// How a frame of another aspect ratio is fitted to the output size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// Scale to fit, pad with black (no content lost, no distortion).
    #[default]
    Letterbox,
    /// Crop the centre to the output aspect, then scale (no borders).
    Crop,
    /// Scale each axis independently (distorts).
    Stretch,
}

/// Reconnection backoff of live sources: `initial · 2^attempt`, capped, ±20% jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// Delay before reconnection attempt `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max);
        base.mul_f64(0.8 + 0.4 * fastrand::f64())
    }
}

/// One stream's ingest settings.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Stream id, used in frames, logs and metric labels.
    pub id: String,
    pub source: Source,
    /// Frames kept per second of video (> 0), e.g. 0.5 to 2.
    pub sample_fps: f64,
    /// Output size; the model's input size by default.
    pub width: u32,
    pub height: u32,
    pub resize: ResizeMode,
    /// Frames the queue holds (≥ 1).
    pub queue_capacity: usize,
    pub overflow: Overflow,
    pub backoff: Backoff,
    /// A live source with no frame for this long is restarted.
    pub stall_timeout: Duration,
}

impl StreamConfig {
    /// Defaults for `source`: 1 fps, 384×384 letterbox, a queue of 64 frames dropping
    /// the oldest for live sources and blocking for files.
    pub fn new(id: impl Into<String>, source: Source) -> Self {
        let overflow = if source.is_live() {
            Overflow::DropOldest
        } else {
            Overflow::Block
        };
        Self {
            id: id.into(),
            source,
            sample_fps: 1.0,
            width: 384,
            height: 384,
            resize: ResizeMode::Letterbox,
            queue_capacity: 64,
            overflow,
            backoff: Backoff::default(),
            stall_timeout: Duration::from_secs(10),
        }
    }

    pub fn validate(&self) -> Result<(), IngestError> {
        let bad = |m: String| Err(IngestError::InvalidConfig(m));
        if self.id.is_empty() {
            return bad("stream id is empty".into());
        }
        if !(self.sample_fps.is_finite() && self.sample_fps > 0.0 && self.sample_fps <= 120.0) {
            return bad(format!(
                "sample_fps must be in (0, 120], got {}",
                self.sample_fps
            ));
        }
        if !(1..=8192).contains(&self.width) || !(1..=8192).contains(&self.height) {
            return bad(format!(
                "output size {}x{} out of range",
                self.width, self.height
            ));
        }
        if self.queue_capacity == 0 {
            return bad("queue_capacity must be at least 1".into());
        }
        if self.backoff.initial.is_zero() || self.backoff.max < self.backoff.initial {
            return bad("backoff: initial must be > 0 and ≤ max".into());
        }
        check_source(&self.source)
    }
}

/// Checks what can be checked of `source` before any pipeline runs: a test pattern
/// must be one the installed `videotestsrc` knows (a bad one would only fail once the
/// pipeline is built, leaving the stream connecting).
pub fn check_source(source: &Source) -> Result<(), IngestError> {
    match source {
        Source::Test { pattern } => {
            init()?;
            pipeline::test_source(pattern).map(drop)
        }
        _ => Ok(()),
    }
}

/// Pixels of a frame: the mapped GStreamer buffer when its rows are tightly packed,
/// otherwise a packed copy.
pub enum FrameData {
    Mapped(gstreamer::MappedBuffer<gstreamer::buffer::Readable>),
    Owned(Vec<u8>),
}

/// One sampled frame.
pub struct Frame {
    pub stream_id: Arc<str>,
    /// 0, 1, 2, … over the stream's life, across reconnections.
    pub seq: u64,
    /// Stream time, monotonic over the stream's life (reconnections included).
    pub pts: Duration,
    /// Wall-clock capture time (live sources: from the pipeline clock; files: arrival).
    pub captured_at: SystemTime,
    pub width: u32,
    pub height: u32,
    data: FrameData,
}

impl Frame {
    /// A frame from packed RGB bytes made outside a GStreamer pipeline (synthetic
    /// sources, tests); `rgb` must hold `width · height · 3` bytes.
    pub fn from_rgb(
        stream_id: Arc<str>,
        seq: u64,
        pts: Duration,
        captured_at: SystemTime,
        (width, height): (u32, u32),
        rgb: Vec<u8>,
    ) -> Result<Self, IngestError> {
        if rgb.len() != width as usize * height as usize * 3 {
            return Err(IngestError::InvalidConfig(format!(
                "{} bytes for a {width}x{height} RGB frame",
                rgb.len()
            )));
        }
        Ok(Self {
            stream_id,
            seq,
            pts,
            captured_at,
            width,
            height,
            data: FrameData::Owned(rgb),
        })
    }

    /// Tightly packed RGB rows, `height · width · 3` bytes.
    pub fn rgb(&self) -> &[u8] {
        match &self.data {
            FrameData::Mapped(m) => m.as_slice(),
            FrameData::Owned(v) => v,
        }
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("stream_id", &self.stream_id)
            .field("seq", &self.seq)
            .field("pts", &self.pts)
            .field("width", &self.width)
            .field("height", &self.height)
            .finish()
    }
}

/// Where a stream's source stands.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamState {
    Connecting,
    Live,
    /// Waiting to reconnect; `attempt` counts from 1.
    Reconnecting {
        attempt: u32,
    },
    /// A file reached its end.
    Ended,
    /// Stopped for good by an error that retrying cannot fix.
    Failed(IngestError),
    /// Stopped on request.
    Stopped,
}

impl StreamState {
    pub fn label(&self) -> &'static str {
        match self {
            StreamState::Connecting => "connecting",
            StreamState::Live => "live",
            StreamState::Reconnecting { .. } => "reconnecting",
            StreamState::Ended => "ended",
            StreamState::Failed(_) => "failed",
            StreamState::Stopped => "stopped",
        }
    }

    const LABELS: [&'static str; 6] = [
        "connecting",
        "live",
        "reconnecting",
        "ended",
        "failed",
        "stopped",
    ];

    /// No more frames will come.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            StreamState::Ended | StreamState::Failed(_) | StreamState::Stopped
        )
    }
}

/// A snapshot of a stream's ingest.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamStatus {
    pub state: StreamState,
    pub frames_decoded: u64,
    pub frames_sampled: u64,
    pub frames_dropped: u64,
    pub reconnects: u64,
    /// Pipeline sessions started (1 + successful or failed reconnections).
    pub sessions: u64,
    /// Frames per second delivered once caps are negotiated: `sample_fps`, or the
    /// source's own rate where that is lower (sampling never invents frames).
    pub delivered_fps: Option<f64>,
    pub last_error: Option<IngestError>,
}

/// Status shared between the supervisor, the streaming thread and the handle.
pub(crate) struct Shared {
    pub id: Arc<str>,
    status: Mutex<StreamStatus>,
    changed: Condvar,
    pub stop: AtomicBool,
}

impl Shared {
    pub(crate) fn update(&self, f: impl FnOnce(&mut StreamStatus)) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut status);
        self.changed.notify_all();
    }

    pub(crate) fn set_state(&self, state: StreamState) {
        for label in StreamState::LABELS {
            let value = if label == state.label() { 1.0 } else { 0.0 };
            metrics::gauge!(names::INGEST_SOURCE_STATE, "stream" => self.id.to_string(), "state" => label).set(value);
        }
        tracing::info!(stream = %self.id, state = state.label(), "source state");
        self.update(|s| s.state = state);
    }

    pub(crate) fn record_error(&self, err: &IngestError) {
        metrics::counter!(names::INGEST_ERRORS, "stream" => self.id.to_string(), "error_type" => err.error_type()).increment(1);
        tracing::warn!(stream = %self.id, error = %err, error_type = err.error_type(), "source error");
        self.update(|s| s.last_error = Some(err.clone()));
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// A running stream: its frames, its status, and the way to stop it (also on drop).
pub struct StreamHandle {
    pub frames: Receiver<Frame>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl StreamHandle {
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    pub fn status(&self) -> StreamStatus {
        self.shared
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until `pred` holds for the status, or `timeout`; returns the last status.
    pub fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&StreamStatus) -> bool,
    ) -> Result<StreamStatus, StreamStatus> {
        let deadline = Instant::now() + timeout;
        let mut status = self.shared.status.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if pred(&status) {
                return Ok(status.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(status.clone());
            }
            status = self
                .shared
                .changed
                .wait_timeout(status, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Stops the pipeline and waits for the supervisor to end.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(stream = %self.shared.id, "ingest supervisor panicked");
            }
        }
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts ingesting `config`'s source on its own supervisor thread.
pub fn spawn(config: StreamConfig) -> Result<StreamHandle, IngestError> {
    config.validate()?;
    init()?;
    let (tx, rx) = queue::bounded(config.queue_capacity, config.overflow);
    let shared = Arc::new(Shared {
        id: Arc::from(config.id.as_str()),
        status: Mutex::new(StreamStatus {
            state: StreamState::Connecting,
            frames_decoded: 0,
            frames_sampled: 0,
            frames_dropped: 0,
            reconnects: 0,
            sessions: 0,
            delivered_fps: None,
            last_error: None,
        }),
        changed: Condvar::new(),
        stop: AtomicBool::new(false),
    });
    let thread_shared = shared.clone();
    let thread = std::thread::Builder::new()
        .name(format!("ingest-{}", config.id))
        .spawn(move || supervise(config, tx, thread_shared))
        .map_err(|e| IngestError::Pipeline(format!("spawning the ingest thread: {e}")))?;
    Ok(StreamHandle {
        frames: rx,
        shared,
        thread: Some(thread),
    })
}

/// Runs sessions until the source ends, fails for good, or the handle stops it.
fn supervise(config: StreamConfig, tx: queue::QueueSender<Frame>, shared: Arc<Shared>) {
    let live = config.source.is_live();
    let mut clock = pipeline::StreamClock::new();
    let mut attempt: u32 = 0;
    shared.set_state(StreamState::Connecting);
    loop {
        shared.update(|s| s.sessions += 1);
        let session = std::panic::AssertUnwindSafe(|| {
            pipeline::run_session(&config, &tx, &shared, &mut clock)
        });
        let outcome = match std::panic::catch_unwind(session) {
            Ok(outcome) => outcome,
            Err(panic) => {
                // A bug, not the source's fault: say so, and do not retry into it.
                let msg = crate::error::panic_message(panic.as_ref());
                tracing::error!(stream = %shared.id, msg, "caught a panic in the ingest session");
                names::internal_error("ingest", "session");
                let err = IngestError::Pipeline(format!("internal error: {msg}"));
                shared.record_error(&err);
                shared.set_state(StreamState::Failed(err));
                return;
            }
        };
        if outcome.frames > 0 {
            attempt = 0;
        }
        let end = match outcome.end {
            pipeline::SessionEnd::Stopped => {
                shared.set_state(StreamState::Stopped);
                return;
            }
            pipeline::SessionEnd::Eos if !live => {
                shared.set_state(StreamState::Ended);
                return;
            }
            pipeline::SessionEnd::Eos => None,
            pipeline::SessionEnd::Error(err) => Some(err),
        };
        if let Some(err) = &end {
            shared.record_error(err);
            if !live {
                shared.set_state(StreamState::Failed(err.clone()));
                return;
            }
        }
        attempt = attempt.saturating_add(1);
        // Counted before the state changes, so whoever sees `Reconnecting` sees the count.
        metrics::counter!(names::INGEST_RECONNECTS, "stream" => shared.id.to_string()).increment(1);
        shared.update(|s| s.reconnects += 1);
        shared.set_state(StreamState::Reconnecting { attempt });
        let delay = config.backoff.delay(attempt - 1);
        tracing::info!(stream = %shared.id, attempt, delay_ms = delay.as_millis() as u64, "reconnecting");
        let until = Instant::now() + delay;
        while Instant::now() < until {
            if shared.stopping() {
                shared.set_state(StreamState::Stopped);
                return;
            }
            std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
        }
        shared.set_state(StreamState::Connecting);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_test_patterns_are_refused_before_any_pipeline() {
        let bad = Source::parse("test://nosuchpattern", RtspTransport::Tcp, None).unwrap();
        assert!(matches!(
            check_source(&bad),
            Err(IngestError::InvalidUri(_))
        ));
        let good = Source::parse("test://ball", RtspTransport::Tcp, None).unwrap();
        check_source(&good).unwrap();
    }
}

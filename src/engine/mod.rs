//! The engine: the only place that runs the model. One OS thread owns the model, the
//! device and every stream's state (TGI's habit: one owner, others talk to it over
//! channels with one-shot replies); tokio tasks never run tensor work.
//!
//! The thread ([`worker`]) encodes every stream's frames in batches and answers
//! questions a token at a time, sharing its time between the two by a stated policy
//! ([`schedule::SharePolicy`], `answer_share` of the thread to answering while frames
//! wait): neither starves, and a question waits at most one encode batch for its first
//! step. When encoding falls behind, live ingest queues drop their oldest frames
//! (counted by ingest) instead of letting latency grow.
//!
//! # Layout
//! - [`config`]: engine settings and questions ([`AskRequest`]).
//! - [`prompt`]: the streaming prompt layout (sinks, question suffix).
//! - [`stream`]: one stream's sinks, window and store; encoding.
//! - [`answer`]: contexts for the three modes, step-wise decoding, citations.
//! - [`schedule`]: frame batches round robin; the answering/encoding time share.
//! - [`worker`]: the engine thread's loop.
//! - this file: the handle ([`Engine`]) and what crosses the channels.

pub mod answer;
pub mod config;
pub mod prompt;
pub mod schedule;
pub mod stream;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{self, Receiver, Sender};
use tokio::sync::{mpsc, oneshot};

use crate::error::{EngineError, EngineResult};
use crate::ingest::{self, Frame, StreamState};
use crate::kv::StoreConfig;
use crate::model::VideoLlm;
use crate::retrieval::LayerSelection;

pub use answer::{BlockSource, Citation, Figures, FinishReason};
pub use config::{AskDefaults, AskMode, AskRequest, EngineConfig, Sampling};
use prompt::PromptLayout;
use worker::Worker;

/// Where a stream's frames come from.
pub enum FrameInput {
    /// A GStreamer source, started by the engine.
    Ingest(ingest::StreamConfig),
    /// Frames pushed by the caller (tests, benchmarks, embedding applications).
    Frames(Receiver<Frame>),
}

/// A stream to add.
pub struct StreamSpec {
    /// `[A-Za-z0-9_.-]{1,64}`, not starting with a dot: it names a directory.
    pub id: String,
    pub input: FrameInput,
    /// The engine's store settings if unset.
    pub store: Option<StoreConfig>,
}

/// A snapshot of one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    pub id: String,
    /// Ingest state (`None` for caller-fed streams).
    pub state: Option<StreamState>,
    /// The caller-fed input was closed, or the source reached a final state.
    pub input_ended: bool,
    pub frames_encoded: u64,
    /// Frames ingest dropped because encoding fell behind.
    pub frames_dropped: u64,
    /// Frames per second ingest delivers once negotiated: the stream's sampling rate,
    /// or the source's own rate where that is lower (`None` before, or caller-fed).
    pub delivered_fps: Option<f64>,
    pub blocks: usize,
    pub blocks_in_ram: usize,
    pub ram_bytes: usize,
    pub disk_bytes: u64,
    pub window_frames: usize,
    /// Stream time and wall clock of the oldest and newest stored blocks.
    pub first: Option<(Duration, SystemTime)>,
    pub last: Option<(Duration, SystemTime)>,
    pub ram_only: bool,
    pub last_error: Option<String>,
}

/// What an asked question sends back, in order: tokens, then one `Done` or `Failed`.
#[derive(Debug)]
pub enum AskEvent {
    Token { id: i64, text: String },
    Done(Answer),
    Failed(EngineError),
}

/// A finished answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub text: String,
    pub tokens: Vec<i64>,
    pub finish: FinishReason,
    /// Blocks attended to, in temporal order.
    pub citations: Vec<Citation>,
    pub figures: Figures,
}

/// A question in flight. Dropping it cancels the question.
pub struct AskHandle {
    pub events: mpsc::UnboundedReceiver<AskEvent>,
    cancel: Arc<AtomicBool>,
}

impl AskHandle {
    /// Stops generation at the next token.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Blocks until the answer is complete (not from inside an async runtime).
    pub fn wait(mut self) -> EngineResult<Answer> {
        while let Some(event) = self.events.blocking_recv() {
            match event {
                AskEvent::Token { .. } => {}
                AskEvent::Done(answer) => return Ok(answer),
                AskEvent::Failed(e) => return Err(e),
            }
        }
        Err(EngineError::ShuttingDown)
    }
}

impl Drop for AskHandle {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// A reply still to come from the engine thread.
pub struct Pending<T>(oneshot::Receiver<EngineResult<T>>);

impl<T> Pending<T> {
    /// Blocks for the reply (not from inside an async runtime).
    pub fn wait(self) -> EngineResult<T> {
        self.0
            .blocking_recv()
            .unwrap_or(Err(EngineError::ShuttingDown))
    }

    pub async fn recv(self) -> EngineResult<T> {
        self.0.await.unwrap_or(Err(EngineError::ShuttingDown))
    }
}

/// What the handle asks of the engine thread.
enum Request {
    AddStream(StreamSpec, oneshot::Sender<EngineResult<StreamInfo>>),
    RemoveStream(String, oneshot::Sender<EngineResult<()>>),
    Info(
        Option<String>,
        oneshot::Sender<EngineResult<Vec<StreamInfo>>>,
    ),
    Sync(oneshot::Sender<EngineResult<()>>),
    Ask(PendingAsk),
}

struct PendingAsk {
    req: AskRequest,
    events: mpsc::UnboundedSender<AskEvent>,
    cancel: Arc<AtomicBool>,
    received: Instant,
}

impl PendingAsk {
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.events.is_closed()
    }
}

/// The handle to the engine thread. Dropping it shuts the engine down (ingest stopped,
/// stores synced, questions still queued answered with `ShuttingDown`).
pub struct Engine {
    requests: Option<Sender<Request>>,
    thread: Option<JoinHandle<()>>,
    heartbeat: Arc<AtomicU64>,
    config: EngineConfig,
}

impl Engine {
    /// Starts the engine thread with `model` (a family's model, or a
    /// `Box<dyn VideoLlm>` from [`crate::model::load`]).
    pub fn start(model: impl Into<Box<dyn VideoLlm>>, config: EngineConfig) -> EngineResult<Self> {
        let model: Box<dyn VideoLlm> = model.into();
        config.validate()?;
        if let LayerSelection::Shared(layer) = config.layer_selection {
            let layers = model.decoder().num_layers();
            if layer >= layers {
                return Err(EngineError::InvalidRequest(format!(
                    "engine config: shared retrieval layer {layer}, but the model has {layers} layers"
                )));
            }
        }
        let layout = PromptLayout::new(&*model)?;
        let (tx, rx) = channel::unbounded();
        let heartbeat = Arc::new(AtomicU64::new(unix_ms()));
        let worker = Worker::new(model, layout, config.clone(), heartbeat.clone());
        let thread = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| EngineError::Internal(format!("spawning the engine: {e}")))?;
        Ok(Self {
            requests: Some(tx),
            thread: Some(thread),
            heartbeat,
            config,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Unix milliseconds of the engine thread's last progress (a watchdog's input): a
    /// loop turn (at least every 200 ms when idle), a decode step, a stream's prefill.
    pub fn heartbeat_ms(&self) -> u64 {
        self.heartbeat.load(Ordering::Relaxed)
    }

    fn send<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<EngineResult<T>>) -> Request,
    ) -> Pending<T> {
        let (tx, rx) = oneshot::channel();
        if let Some(requests) = &self.requests {
            // A send error means the thread is gone; the dropped `tx` then answers
            // ShuttingDown through `Pending`.
            let _ = requests.send(make(tx));
        }
        Pending(rx)
    }

    pub fn add_stream(&self, spec: StreamSpec) -> Pending<StreamInfo> {
        self.send(|tx| Request::AddStream(spec, tx))
    }

    /// Stops the stream's input and forgets it; its stored blocks stay on disk.
    pub fn remove_stream(&self, id: &str) -> Pending<()> {
        self.send(|tx| Request::RemoveStream(id.to_owned(), tx))
    }

    /// One stream, or all (`None`).
    pub fn info(&self, id: Option<&str>) -> Pending<Vec<StreamInfo>> {
        self.send(|tx| Request::Info(id.map(str::to_owned), tx))
    }

    /// Makes every stored block durable.
    pub fn sync(&self) -> Pending<()> {
        self.send(Request::Sync)
    }

    /// Queues a question; its answer streams through the handle.
    pub fn ask(&self, req: AskRequest) -> EngineResult<AskHandle> {
        req.validate(&self.config)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let pending = PendingAsk {
            req,
            events: tx,
            cancel: cancel.clone(),
            received: Instant::now(),
        };
        self.requests
            .as_ref()
            .ok_or(EngineError::ShuttingDown)?
            .send(Request::Ask(pending))
            .map_err(|_| EngineError::ShuttingDown)?;
        Ok(AskHandle { events: rx, cancel })
    }

    /// Stops the engine and waits for it.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("engine thread panicked");
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Stream ids name directories: `[A-Za-z0-9_.-]{1,64}`, not starting with a dot.
pub fn validate_stream_id(id: &str) -> EngineResult<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(EngineError::InvalidRequest(format!(
            "stream id `{}` must be 1–64 of [A-Za-z0-9_.-], not starting with a dot",
            crate::error::excerpt(id)
        )))
    }
}

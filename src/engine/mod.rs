//! The engine: the only place that runs the model. One OS thread owns the model, the
//! device and every stream's state (TGI's habit: one owner, others talk to it over
//! channels with one-shot replies); tokio tasks never run tensor work.
//!
//! Its loop, each turn:
//! 1. take requests (streams added/removed, statistics, questions);
//! 2. answer every pending question — so a question waits at most one encode batch;
//! 3. take up to `batch_frames` frames round robin over the streams (fair: each turn
//!    starts one stream further), run the vision tower once over all of them, then one
//!    prefill chunk per stream ([`stream::StreamCtx::encode`]) — streams' contexts are
//!    independent, so only the tower is batched across them;
//! 4. sleep on the request channel and the frame queues when nothing is waiting.
//!
//! When encoding falls behind, live ingest queues drop their oldest frames (counted by
//! ingest) instead of letting latency grow. A failed batch or question is logged and
//! counted; a panic inside one is caught: the engine goes on.
//!
//! # Layout
//! - [`config`]: engine settings and questions ([`AskRequest`]).
//! - [`prompt`]: the streaming prompt layout (sinks, question suffix).
//! - [`stream`]: one stream's sinks, window and store; encoding.
//! - [`answer`]: contexts for the three modes, decoding, citations.

pub mod answer;
pub mod config;
pub mod prompt;
pub mod stream;

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{self, Receiver, Select, Sender, TryRecvError};
use tch::Tensor;
use tokio::sync::{mpsc, oneshot};

use crate::error::{EngineError, EngineResult};
use crate::ingest::{self, Frame, StreamHandle, StreamState};
use crate::kv::StoreConfig;
use crate::metrics as names;
use crate::model::LlavaOnevision;
use crate::retrieval::LayerSelection;

pub use answer::{BlockSource, Citation, Figures, FinishReason};
pub use config::{AskMode, AskRequest, EngineConfig, Sampling};
use prompt::PromptLayout;
use stream::{FrameStamp, StreamCtx};

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
    /// Starts the engine thread with `model`.
    pub fn start(model: LlavaOnevision, config: EngineConfig) -> EngineResult<Self> {
        config.validate()?;
        if let LayerSelection::Shared(layer) = config.layer_selection {
            let layers = model.decoder().num_layers();
            if layer >= layers {
                return Err(EngineError::InvalidRequest(format!(
                    "engine config: shared retrieval layer {layer}, but the model has {layers} layers"
                )));
            }
        }
        let layout = PromptLayout::new(&model)?;
        let (tx, rx) = channel::unbounded();
        let heartbeat = Arc::new(AtomicU64::new(unix_ms()));
        let worker = Worker {
            model,
            layout,
            config: config.clone(),
            streams: Vec::new(),
            asks: VecDeque::new(),
            next_stream: 0,
            heartbeat: heartbeat.clone(),
            last_retention: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| EngineError::InvalidRequest(format!("spawning the engine: {e}")))?;
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

    /// Unix milliseconds of the engine loop's last turn (a watchdog's input: the loop
    /// turns at least every 200 ms unless a batch or a question is running).
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

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A stream as the engine thread holds it.
struct Entry {
    ctx: StreamCtx,
    frames: Receiver<Frame>,
    /// Keeps the GStreamer pipeline alive; dropping it stops ingest.
    ingest: Option<StreamHandle>,
    input_ended: bool,
    last_error: Option<String>,
}

impl Entry {
    fn info(&self) -> StreamInfo {
        let status = self.ingest.as_ref().map(StreamHandle::status);
        let store = &self.ctx.store;
        let stamp = |m: &crate::kv::BlockMeta| (m.pts, m.wall());
        StreamInfo {
            id: self.ctx.id.to_string(),
            input_ended: self.input_ended,
            frames_encoded: self.ctx.frames_encoded(),
            frames_dropped: status.as_ref().map_or(0, |s| s.frames_dropped),
            blocks: store.len(),
            blocks_in_ram: store.ram().len(),
            ram_bytes: store.ram().bytes(),
            disk_bytes: store.disk_bytes(),
            window_frames: self.ctx.window().len(),
            first: store.metas().next().map(stamp),
            last: store.metas().last().map(stamp),
            ram_only: store.is_degraded(),
            last_error: self.last_error.clone().or_else(|| {
                status
                    .as_ref()
                    .and_then(|s| s.last_error.as_ref().map(|e| e.to_string()))
            }),
            state: status.map(|s| s.state),
        }
    }
}

struct Worker {
    model: LlavaOnevision,
    layout: PromptLayout,
    config: EngineConfig,
    streams: Vec<Entry>,
    asks: VecDeque<PendingAsk>,
    /// Round-robin start of the next batch.
    next_stream: usize,
    heartbeat: Arc<AtomicU64>,
    last_retention: Instant,
}

/// Runs `f`, turning a panic into an error (the engine thread must survive).
fn guarded<T>(what: &str, f: impl FnOnce() -> EngineResult<T>) -> EngineResult<T> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("panic");
        tracing::error!(what, msg, "caught a panic in the engine");
        Err(EngineError::InvalidRequest(format!(
            "internal error in {what}: {msg}"
        )))
    })
}

impl Worker {
    fn run(mut self, requests: Receiver<Request>) {
        let _guard = tch::no_grad_guard();
        loop {
            self.heartbeat.store(unix_ms(), Ordering::Relaxed);
            loop {
                match requests.try_recv() {
                    Ok(r) => self.handle(r),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return self.shut_down(),
                }
            }
            while let Some(ask) = self.asks.pop_front() {
                self.answer(ask);
            }
            if self.last_retention.elapsed() >= self.config.retention_interval {
                self.retention();
            }
            let batch = self.take_batch();
            if batch.is_empty() {
                self.wait_for_work(&requests);
            } else {
                self.encode_batch(batch);
            }
        }
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::AddStream(spec, reply) => {
                let _ = reply.send(guarded("add_stream", || self.add_stream(spec)));
            }
            Request::RemoveStream(id, reply) => {
                let found = self.streams.iter().position(|e| *e.ctx.id == *id);
                let result = match found {
                    Some(i) => {
                        let mut entry = self.streams.remove(i);
                        drop(entry.ingest.take());
                        entry.ctx.store.sync().map_err(EngineError::from)
                    }
                    None => Err(EngineError::UnknownStream(id)),
                };
                metrics::gauge!(names::ENGINE_STREAMS).set(self.streams.len() as f64);
                let _ = reply.send(result);
            }
            Request::Info(id, reply) => {
                let result = match id {
                    None => Ok(self.streams.iter().map(Entry::info).collect()),
                    Some(id) => self
                        .streams
                        .iter()
                        .find(|e| *e.ctx.id == *id)
                        .map(|e| vec![e.info()])
                        .ok_or(EngineError::UnknownStream(id)),
                };
                let _ = reply.send(result);
            }
            Request::Sync(reply) => {
                let result = self
                    .streams
                    .iter_mut()
                    .try_for_each(|e| e.ctx.store.sync())
                    .map_err(EngineError::from);
                let _ = reply.send(result);
            }
            Request::Ask(ask) => self.asks.push_back(ask),
        }
    }

    fn add_stream(&mut self, spec: StreamSpec) -> EngineResult<StreamInfo> {
        validate_stream_id(&spec.id)?;
        if self.streams.iter().any(|e| *e.ctx.id == *spec.id) {
            return Err(EngineError::StreamExists(spec.id));
        }
        let dir = self.config.state_dir.join("kv").join(&spec.id);
        let store = spec.store.unwrap_or_else(|| self.config.store.clone());
        let (ctx, report) = StreamCtx::open(
            &self.model,
            &self.layout,
            &dir,
            &spec.id,
            store,
            self.config.window_frames,
        )?;
        if let Some(r) = report {
            tracing::info!(stream = %spec.id, blocks = ctx.store.len(), report = ?r, "store recovered");
        }
        let (frames, ingest) = match spec.input {
            FrameInput::Frames(rx) => (rx, None),
            FrameInput::Ingest(mut config) => {
                config.id = spec.id.clone();
                let handle = ingest::spawn(config)?;
                (handle.frames.clone(), Some(handle))
            }
        };
        let entry = Entry {
            ctx,
            frames,
            ingest,
            input_ended: false,
            last_error: None,
        };
        let info = entry.info();
        self.streams.push(entry);
        metrics::gauge!(names::ENGINE_STREAMS).set(self.streams.len() as f64);
        Ok(info)
    }

    /// Up to `batch_frames` frames, one per stream in turn, starting one stream further
    /// each batch.
    fn take_batch(&mut self) -> Vec<(usize, Frame)> {
        let start = self.next_stream;
        self.next_stream = self.next_stream.wrapping_add(1);
        let queues: Vec<&Receiver<Frame>> = self.streams.iter().map(|e| &e.frames).collect();
        let (batch, ended) = round_robin(&queues, start, self.config.batch_frames);
        for i in ended {
            self.streams[i].input_ended = true;
        }
        batch
    }

    /// Sleeps until a request or a frame arrives, at most 200 ms.
    fn wait_for_work(&mut self, requests: &Receiver<Request>) {
        for entry in &mut self.streams {
            if !entry.input_ended
                && entry
                    .ingest
                    .as_ref()
                    .is_some_and(|h| h.status().state.is_final())
                && entry.frames.is_empty()
            {
                entry.input_ended = true;
            }
        }
        let mut select = Select::new();
        select.recv(requests);
        for entry in self.streams.iter().filter(|e| !e.input_ended) {
            select.recv(&entry.frames);
        }
        let _ = select.ready_timeout(Duration::from_millis(200));
    }

    fn encode_batch(&mut self, batch: Vec<(usize, Frame)>) {
        let started = Instant::now();
        let frames = batch.len();
        let result = guarded("encode", || self.encode_frames(&batch));
        if let Err(e) = result {
            for (i, _) in &batch {
                let entry = &mut self.streams[*i];
                metrics::counter!(names::ENGINE_ENCODE_ERRORS, "stream" => entry.ctx.id.to_string(), "error_type" => e.error_type()).increment(1);
                entry.last_error = Some(e.to_string());
            }
            tracing::warn!(error = %e, frames, "encode batch failed; frames dropped");
        }
        metrics::histogram!(names::ENGINE_ENCODE_BATCH_SECONDS)
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!(names::ENGINE_BATCH_FRAMES).record(frames as f64);
    }

    /// The vision tower once over the whole batch, then one prefill per stream.
    fn encode_frames(&mut self, batch: &[(usize, Frame)]) -> EngineResult<()> {
        let mut pixels = Vec::with_capacity(batch.len());
        for (_, frame) in batch {
            pixels.push(self.model.preprocessor.process(&frame_tensor(frame)?)?);
        }
        let embeds = self.model.encode_frames(&Tensor::f_cat(&pixels, 0)?)?;
        let mut order: Vec<usize> = batch.iter().map(|(i, _)| *i).collect();
        order.sort_unstable();
        order.dedup();
        for i in order {
            let rows: Vec<i64> = batch
                .iter()
                .enumerate()
                .filter(|(_, (s, _))| *s == i)
                .map(|(row, _)| row as i64)
                .collect();
            let stamps: Vec<FrameStamp> = batch
                .iter()
                .filter(|(s, _)| *s == i)
                .map(|(_, f)| FrameStamp {
                    pts: f.pts,
                    wall: f.captured_at,
                })
                .collect();
            let index = Tensor::from_slice(&rows).f_to_device(self.model.device())?;
            let mine = embeds.f_index_select(0, &index)?;
            let entry = &mut self.streams[i];
            if let Err(e) = entry.ctx.encode(&self.model, &mine, &stamps) {
                metrics::counter!(names::ENGINE_ENCODE_ERRORS, "stream" => entry.ctx.id.to_string(), "error_type" => e.error_type()).increment(stamps.len() as u64);
                tracing::warn!(stream = %entry.ctx.id, error = %e, "encoding failed; frames dropped");
                entry.last_error = Some(e.to_string());
            }
        }
        Ok(())
    }

    fn answer(&mut self, ask: PendingAsk) {
        let mode = ask.req.mode.label();
        if ask.cancelled() {
            metrics::counter!(names::ENGINE_ASKS, "mode" => mode, "outcome" => "cancelled")
                .increment(1);
            let _ = ask.events.send(AskEvent::Failed(EngineError::Cancelled));
            return;
        }
        let queued = ask.received.elapsed();
        metrics::histogram!(names::ENGINE_ASK_QUEUE_SECONDS).record(queued.as_secs_f64());
        let result = guarded("ask", || self.answer_inner(&ask, queued));
        let outcome = match &result {
            Ok(a) if a.finish == FinishReason::Cancelled => "cancelled",
            Ok(_) => "ok",
            Err(e) => e.error_type(),
        };
        metrics::counter!(names::ENGINE_ASKS, "mode" => mode, "outcome" => outcome).increment(1);
        let event = match result {
            Ok(answer) => AskEvent::Done(answer),
            Err(e) => AskEvent::Failed(e),
        };
        let _ = ask.events.send(event);
    }

    fn answer_inner(&mut self, ask: &PendingAsk, queued: Duration) -> EngineResult<Answer> {
        let req = &ask.req;
        let entry = self
            .streams
            .iter_mut()
            .find(|e| *e.ctx.id == *req.stream)
            .ok_or_else(|| EngineError::UnknownStream(req.stream.clone()))?;
        let mut prepared = answer::prepare(
            &self.model,
            &self.layout,
            &mut entry.ctx,
            req,
            self.config.top_k,
            self.config.layer_selection,
            SystemTime::now(),
        )?;
        let max_new = req.max_new_tokens.unwrap_or(self.config.max_new_tokens);
        let mut ttft = Duration::ZERO;
        let received = ask.received;
        let (tokens, text, finish) = answer::generate(
            &self.model,
            &mut prepared,
            max_new,
            req.sampling,
            &req.stop,
            || ttft = received.elapsed(),
            |id, text| {
                !ask.cancelled()
                    && ask
                        .events
                        .send(AskEvent::Token {
                            id,
                            text: text.to_owned(),
                        })
                        .is_ok()
            },
        )?;
        metrics::histogram!(names::ENGINE_TIME_TO_FIRST_TOKEN, "mode" => req.mode.label())
            .record(ttft.as_secs_f64());
        metrics::counter!(names::ENGINE_TOKENS_GENERATED).increment(tokens.len() as u64);
        let mut figures = prepared.figures;
        figures.time_to_first_token = ttft;
        figures.queued = queued;
        figures.total = received.elapsed();
        Ok(Answer {
            text,
            tokens,
            finish,
            citations: prepared.citations,
            figures,
        })
    }

    fn retention(&mut self) {
        self.last_retention = Instant::now();
        let now = SystemTime::now();
        for entry in &mut self.streams {
            if let Err(e) = entry.ctx.store.enforce_retention(now) {
                tracing::warn!(stream = %entry.ctx.id, error = %e, "retention failed");
            }
        }
    }

    fn shut_down(mut self) {
        for ask in self.asks.drain(..) {
            let _ = ask.events.send(AskEvent::Failed(EngineError::ShuttingDown));
        }
        for entry in &mut self.streams {
            drop(entry.ingest.take());
            if let Err(e) = entry.ctx.store.sync() {
                tracing::error!(stream = %entry.ctx.id, error = %e, "sync at shutdown failed");
            }
        }
        tracing::info!("engine stopped");
    }
}

/// Takes up to `max` items from `queues`, one per queue in turn starting at queue
/// `start % n`, until `max` or every queue is empty: every stream with frames waiting
/// gets a share of each batch, and no stream always goes first. Returns the items with
/// their queue index, and the queues found disconnected and empty (input ended).
fn round_robin<T>(
    queues: &[&Receiver<T>],
    start: usize,
    max: usize,
) -> (Vec<(usize, T)>, Vec<usize>) {
    let n = queues.len();
    let mut batch = Vec::new();
    let mut ended = Vec::new();
    if n == 0 {
        return (batch, ended);
    }
    let mut open = vec![true; n];
    while batch.len() < max && open.iter().any(|&o| o) {
        for step in 0..n {
            let i = (start + step) % n;
            if !open[i] || batch.len() >= max {
                continue;
            }
            match queues[i].try_recv() {
                Ok(item) => batch.push((i, item)),
                Err(TryRecvError::Empty) => open[i] = false,
                Err(TryRecvError::Disconnected) => {
                    open[i] = false;
                    ended.push(i);
                }
            }
        }
    }
    (batch, ended)
}

/// A frame's packed RGB as uint8 [1, 3, H, W].
fn frame_tensor(frame: &Frame) -> EngineResult<Tensor> {
    let (w, h) = (i64::from(frame.width), i64::from(frame.height));
    let rgb = frame.rgb();
    if rgb.len() as i64 != w * h * 3 {
        return Err(EngineError::InvalidRequest(format!(
            "frame {} of stream {} holds {} bytes for {w}x{h} RGB",
            frame.seq,
            frame.stream_id,
            rgb.len()
        )));
    }
    Ok(Tensor::from_slice(rgb)
        .f_view([1, h, w, 3])?
        .f_permute([0, 3, 1, 2])?
        .f_contiguous()?)
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
            "stream id `{id}` must be 1–64 of [A-Za-z0-9_.-], not starting with a dot"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(items: &[u32]) -> (Sender<u32>, Receiver<u32>) {
        let (tx, rx) = channel::unbounded();
        for &i in items {
            tx.send(i).unwrap();
        }
        (tx, rx)
    }

    #[test]
    fn batches_take_turns_across_streams() {
        let (_a, qa) = queue(&[10, 11, 12, 13, 14, 15]);
        let (_b, qb) = queue(&[20, 21]);
        let (_c, qc) = queue(&[30, 31, 32, 33]);
        let queues = [&qa, &qb, &qc];
        // One from each in turn; b runs dry and the others share the rest.
        let (batch, ended) = round_robin(&queues, 0, 7);
        let items: Vec<u32> = batch.iter().map(|(_, x)| *x).collect();
        assert_eq!(items, vec![10, 20, 30, 11, 21, 31, 12]);
        assert!(ended.is_empty());
        // The next batch starts one stream further.
        let (batch, _) = round_robin(&queues, 1, 3);
        let items: Vec<u32> = batch.iter().map(|(_, x)| *x).collect();
        assert_eq!(items, vec![32, 13, 33]);
    }

    #[test]
    fn closed_and_drained_queues_are_reported_once_empty() {
        let (a, qa) = queue(&[1]);
        drop(a);
        let (_b, qb) = queue(&[2, 3]);
        let (batch, ended) = round_robin(&[&qa, &qb], 0, 8);
        assert_eq!(batch.len(), 3);
        assert_eq!(ended, vec![0]);
        let (batch, ended) = round_robin::<u32>(&[], 0, 8);
        assert!(batch.is_empty() && ended.is_empty());
    }
}

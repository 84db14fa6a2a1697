//! The engine thread: it owns the model and every stream's state, and shares its time
//! between encoding frames and answering questions.
//!
//! Each turn of its loop:
//! 1. take requests (streams added/removed, statistics, questions);
//! 2. give every newly asked question its first step — retrieval, the question pass
//!    and its first token — so a question waits at most one encode batch;
//! 3. decode the open answers, one token per step, round robin, as long as
//!    [`SharePolicy`] allows: while frames wait, answering gets `answer_share` of the
//!    thread; while none waits, answers run until a request or a frame arrives;
//! 4. encode one batch: up to `batch_frames` frames round robin over the streams (each
//!    batch starts one stream further), the vision tower once over all of them, then
//!    one prefill chunk per stream ([`StreamCtx::encode`]). A family whose blocks hold
//!    several frames (Qwen2.5-VL: two) gets whole blocks: a stream's frames wait,
//!    preprocessed, for the rest of their block; when its input ends, the last block
//!    is filled by repeating its last frame, as `transformers` pads a video;
//! 5. sleep on the request channel and the frame queues when there is nothing to do.
//!
//! The heartbeat (what the systemd watchdog checks) is written on progress — each
//! decode step, each stream's prefill, each loop turn — so only a hung engine lets it
//! go stale. A failed step, batch or question is logged and counted; a panic inside one
//! is caught and answered as an internal error: the engine goes on.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam::channel::{Receiver, Select, TryRecvError};
use tch::Tensor;

use super::answer::{self, Decoding, Step};
use super::prompt::PromptLayout;
use super::schedule::{round_robin, SharePolicy};
use super::stream::{FrameStamp, StreamCtx};
use super::{
    unix_ms, validate_stream_id, Answer, AskEvent, EngineConfig, FinishReason, FrameInput,
    PendingAsk, Request, StreamInfo, StreamSpec,
};
use crate::error::{panic_message, EngineError, EngineResult};
use crate::ingest::{self, Frame, StreamHandle};
use crate::metrics as names;
use crate::model::VideoLlm;

/// Longest the loop decodes without a frame waiting before it turns again (to look at
/// requests, retention and input states).
const IDLE_DECODE_SLICE: Duration = Duration::from_millis(100);

/// A stream as the engine thread holds it.
struct Entry {
    ctx: StreamCtx,
    frames: Receiver<Frame>,
    /// Keeps the GStreamer pipeline alive; dropping it stops ingest.
    ingest: Option<StreamHandle>,
    input_ended: bool,
    last_error: Option<String>,
    /// Preprocessed frames waiting for the rest of their block (fewer than a block).
    pending: Vec<(Tensor, FrameStamp)>,
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
            delivered_fps: status.as_ref().and_then(|s| s.delivered_fps),
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

/// A question past its first step, decoding. Its context is its own: the stream may be
/// removed meanwhile.
struct OpenAnswer {
    ask: PendingAsk,
    decoding: Decoding,
    queued: Duration,
    time_to_first_token: Duration,
}

/// Writes the heartbeat and keeps the longest gap between two beats.
pub(super) struct Heartbeat {
    shared: Arc<AtomicU64>,
    last: Instant,
    longest: Duration,
}

impl Heartbeat {
    pub(super) fn new(shared: Arc<AtomicU64>) -> Self {
        Self {
            shared,
            last: Instant::now(),
            longest: Duration::ZERO,
        }
    }

    fn beat(&mut self) {
        let gap = self.last.elapsed();
        self.last = Instant::now();
        if gap > self.longest {
            self.longest = gap;
            metrics::gauge!(names::ENGINE_HEARTBEAT_GAP_MAX).set(gap.as_secs_f64());
        }
        self.shared.store(unix_ms(), Ordering::Relaxed);
    }
}

pub(super) struct Worker {
    pub(super) model: Box<dyn VideoLlm>,
    pub(super) layout: PromptLayout,
    pub(super) config: EngineConfig,
    streams: Vec<Entry>,
    /// Asked, not yet started.
    queued: VecDeque<PendingAsk>,
    /// Started, decoding; stepped round robin from `next_answer`.
    open: Vec<OpenAnswer>,
    next_answer: usize,
    policy: SharePolicy,
    /// Round-robin start of the next batch.
    next_stream: usize,
    heartbeat: Heartbeat,
    last_retention: Instant,
}

/// Runs `f`, turning a panic into an internal error (the engine thread must survive).
fn guarded<T>(what: &'static str, f: impl FnOnce() -> EngineResult<T>) -> EngineResult<T> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let msg = panic_message(panic.as_ref());
        tracing::error!(what, msg, "caught a panic in the engine");
        Err(EngineError::Internal(format!("{what}: {msg}")))
    })
}

/// Counts and logs an internal error (a caught panic, a broken invariant) with its
/// context, once, where it ends a piece of work; other errors pass unrecorded.
fn note_internal(e: &EngineError, what: &'static str, stream: &str) {
    if let EngineError::Internal(_) = e {
        names::internal_error("engine", what);
        tracing::error!(what, stream, error = %e, "internal error");
    }
}

impl Worker {
    pub(super) fn new(
        model: Box<dyn VideoLlm>,
        layout: PromptLayout,
        config: EngineConfig,
        heartbeat: Arc<AtomicU64>,
    ) -> Self {
        let policy = SharePolicy::new(config.answer_share);
        Self {
            model,
            layout,
            config,
            streams: Vec::new(),
            queued: VecDeque::new(),
            open: Vec::new(),
            next_answer: 0,
            policy,
            next_stream: 0,
            heartbeat: Heartbeat::new(heartbeat),
            last_retention: Instant::now(),
        }
    }

    pub(super) fn run(mut self, requests: Receiver<Request>) {
        let _guard = tch::no_grad_guard();
        loop {
            self.heartbeat.beat();
            loop {
                match requests.try_recv() {
                    Ok(r) => self.handle(r),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return self.shut_down(),
                }
            }
            while let Some(ask) = self.queued.pop_front() {
                self.start_answer(ask);
                self.heartbeat.beat();
            }
            if self.last_retention.elapsed() >= self.config.retention_interval {
                self.retention();
            }
            self.decode_turn(&requests);
            let batch = self.take_batch();
            if !batch.is_empty() || self.partial_blocks_ended() {
                self.encode_batch(batch);
            } else if self.open.is_empty() {
                self.wait_for_work(&requests);
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
            Request::Ask(ask) => self.queued.push_back(ask),
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
            &*self.model,
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
            pending: Vec::new(),
        };
        let info = entry.info();
        self.streams.push(entry);
        metrics::gauge!(names::ENGINE_STREAMS).set(self.streams.len() as f64);
        Ok(info)
    }

    fn frames_waiting(&self) -> bool {
        self.streams.iter().any(|e| !e.frames.is_empty())
    }

    /// A stream's input ended with part of a block waiting.
    fn partial_blocks_ended(&self) -> bool {
        self.streams
            .iter()
            .any(|e| e.input_ended && e.frames.is_empty() && !e.pending.is_empty())
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
        let streams: Vec<usize> = batch.iter().map(|(i, _)| *i).collect();
        let result = guarded("encode", || self.encode_frames(batch));
        if let Err(e) = result {
            for i in streams {
                let entry = &mut self.streams[i];
                metrics::counter!(names::ENGINE_ENCODE_ERRORS, "stream" => entry.ctx.id.to_string(), "error_type" => e.error_type()).increment(1);
                entry.last_error = Some(e.to_string());
            }
            note_internal(&e, "encode", "");
            tracing::warn!(error = %e, frames, "encode batch failed; frames dropped");
        }
        let took = started.elapsed();
        self.policy.encoded(took);
        metrics::histogram!(names::ENGINE_ENCODE_BATCH_SECONDS).record(took.as_secs_f64());
        metrics::histogram!(names::ENGINE_BATCH_FRAMES).record(frames as f64);
    }

    /// Preprocesses the batch's frames into their streams' pending blocks, then runs the
    /// vision tower once over every whole block, then one prefill per stream.
    fn encode_frames(&mut self, batch: Vec<(usize, Frame)>) -> EngineResult<()> {
        for (i, frame) in &batch {
            let pixels = self.model.preprocess(&frame_tensor(frame)?)?;
            let stamp = FrameStamp {
                pts: frame.pts,
                wall: frame.captured_at,
            };
            self.streams[*i].pending.push((pixels, stamp));
        }
        let per = self.model.frames_per_block().max(1);
        // (stream, its blocks' stamps) in tower order; the tower's input rows.
        let mut work: Vec<(usize, usize, Vec<FrameStamp>)> = Vec::new();
        let mut pixels = Vec::new();
        for (i, entry) in self.streams.iter_mut().enumerate() {
            // A stream whose input ended takes its last, partial block too: its last
            // frame is repeated to fill it.
            let ended = entry.input_ended && entry.frames.is_empty();
            let whole = if ended {
                entry.pending.len()
            } else {
                entry.pending.len() / per * per
            };
            if whole == 0 {
                continue;
            }
            let taken: Vec<(Tensor, FrameStamp)> = entry.pending.drain(..whole).collect();
            let blocks = whole.div_ceil(per);
            let stamps = taken.iter().map(|(_, s)| *s).collect();
            let mut rows: Vec<Tensor> = taken.into_iter().map(|(p, _)| p).collect();
            if let Some(last) = rows.last().map(Tensor::shallow_clone) {
                while rows.len() < blocks * per {
                    rows.push(last.shallow_clone());
                }
            }
            pixels.extend(rows);
            work.push((i, blocks, stamps));
        }
        if work.is_empty() {
            return Ok(());
        }
        let embeds = self.model.encode_frames(&Tensor::f_cat(&pixels, 0)?)?;
        self.heartbeat.beat();
        let mut first = 0;
        for (i, blocks, stamps) in work {
            let mine = embeds.f_narrow(0, first, blocks as i64)?;
            first += blocks as i64;
            let entry = &mut self.streams[i];
            if let Err(e) = entry.ctx.encode(&*self.model, &mine, &stamps) {
                metrics::counter!(names::ENGINE_ENCODE_ERRORS, "stream" => entry.ctx.id.to_string(), "error_type" => e.error_type()).increment(stamps.len() as u64);
                note_internal(&e, "encode", &entry.ctx.id);
                tracing::warn!(stream = %entry.ctx.id, error = %e, "encoding failed; frames dropped");
                entry.last_error = Some(e.to_string());
            }
            self.heartbeat.beat();
        }
        Ok(())
    }

    /// A question's first step: its context, the question pass, its first token. It
    /// then decodes with the others, or ends here (a one-token answer, an error).
    fn start_answer(&mut self, ask: PendingAsk) {
        let started = Instant::now();
        let charged = self.frames_waiting();
        if ask.cancelled() {
            finish_metrics(&ask, "cancelled");
            let _ = ask.events.send(AskEvent::Failed(EngineError::Cancelled));
            return;
        }
        let queued = ask.received.elapsed();
        metrics::histogram!(names::ENGINE_ASK_QUEUE_SECONDS).record(queued.as_secs_f64());
        let result = guarded("ask", || self.first_step(&ask));
        match result {
            Ok(decoding) => {
                let mut open = OpenAnswer {
                    time_to_first_token: ask.received.elapsed(),
                    ask,
                    decoding,
                    queued,
                };
                match guarded("decode", || step(&*self.model, &mut open)) {
                    Ok(Step::Continue) => self.open.push(open),
                    Ok(Step::Done(finish)) => complete(open, finish),
                    Err(e) => fail(open.ask, e),
                }
                metrics::gauge!(names::ENGINE_OPEN_ANSWERS).set(self.open.len() as f64);
            }
            Err(e) => fail(ask, e),
        }
        self.charge_answering("first", started.elapsed(), charged);
    }

    fn first_step(&mut self, ask: &PendingAsk) -> EngineResult<Decoding> {
        let req = &ask.req;
        let entry = self
            .streams
            .iter_mut()
            .find(|e| *e.ctx.id == *req.stream)
            .ok_or_else(|| EngineError::UnknownStream(req.stream.clone()))?;
        let prepared = answer::prepare(
            &*self.model,
            &self.layout,
            &mut entry.ctx,
            req,
            self.config.ask_defaults(),
            SystemTime::now(),
        )?;
        let room = answer::new_tokens_room(&*self.model, prepared.next_position)?;
        let max_new = req
            .max_new_tokens
            .unwrap_or(self.config.max_new_tokens)
            .min(room);
        Decoding::start(
            &*self.model,
            prepared,
            max_new,
            req.sampling,
            req.stop.clone(),
        )
    }

    /// Decode steps of the open answers, round robin, as the policy allows.
    fn decode_turn(&mut self, requests: &Receiver<Request>) {
        let turn = Instant::now();
        let mut steps = 0;
        while !self.open.is_empty() {
            let waiting = self.frames_waiting();
            if !self.policy.may_decode(waiting, steps) {
                break;
            }
            // New questions and other requests go first; so do frames that arrive after
            // a stretch of free decoding.
            if steps > 0
                && (!requests.is_empty() || (!waiting && turn.elapsed() > IDLE_DECODE_SLICE))
            {
                break;
            }
            let started = Instant::now();
            self.decode_step();
            self.charge_answering("decode", started.elapsed(), waiting);
            self.heartbeat.beat();
            steps += 1;
        }
        metrics::gauge!(names::ENGINE_OPEN_ANSWERS).set(self.open.len() as f64);
    }

    /// One decode step of up to `decode_batch` open answers, round robin: each hands out
    /// its token (an answer may end there), then those that go on are fed back in one
    /// batched step ([`answer::step_batch`]).
    fn decode_step(&mut self) {
        let n = self.open.len();
        let start = self.next_answer % n;
        let take = n.min(self.config.decode_batch);
        self.next_answer = start + take;
        let mut chosen: Vec<usize> = (0..take).map(|k| (start + k) % n).collect();
        chosen.sort_unstable();
        let mut ended: Vec<(usize, EngineResult<FinishReason>)> = Vec::new();
        let mut going: Vec<usize> = Vec::new();
        for &i in &chosen {
            let open = &mut self.open[i];
            let emitted = if open.ask.cancelled() {
                Ok(Some(FinishReason::Cancelled))
            } else {
                guarded("decode", || emit(&*self.model, open))
            };
            match emitted {
                Ok(Some(finish)) => ended.push((i, Ok(finish))),
                Ok(None) => going.push(i),
                Err(e) => ended.push((i, Err(e))),
            }
        }
        if !going.is_empty() {
            let model = &*self.model;
            let mut batch: Vec<&mut Decoding> = self
                .open
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| going.binary_search(i).is_ok())
                .map(|(_, open)| &mut open.decoding)
                .collect();
            if let Err(e) = guarded("decode", || answer::step_batch(model, &mut batch)) {
                // The step fed every one of them: none can go on.
                let message = e.to_string();
                let mut first = Some(e);
                for &i in &going {
                    let err = first.take().unwrap_or_else(|| {
                        EngineError::Internal(format!("a batched decode step failed: {message}"))
                    });
                    ended.push((i, Err(err)));
                }
            }
        }
        ended.sort_unstable_by_key(|(i, _)| std::cmp::Reverse(*i));
        for (i, outcome) in ended {
            let open = self.open.remove(i);
            match outcome {
                Ok(finish) => complete(open, finish),
                Err(e) => fail(open.ask, e),
            }
        }
    }

    /// Records a stretch of answering (`kind`: a question's `first` step or a `decode`
    /// step), charged to the policy when frames were waiting.
    fn charge_answering(&mut self, kind: &'static str, took: Duration, frames_were_waiting: bool) {
        if frames_were_waiting {
            self.policy.answered(took);
        }
        metrics::histogram!(names::ENGINE_ANSWER_STEP_SECONDS, "step" => kind)
            .record(took.as_secs_f64());
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
        for ask in self.queued.drain(..) {
            let _ = ask.events.send(AskEvent::Failed(EngineError::ShuttingDown));
        }
        for open in self.open.drain(..) {
            complete(open, FinishReason::Cancelled);
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

/// The token sender of `ask`: false once it is cancelled or its asker gone.
fn sender(ask: &PendingAsk) -> impl FnMut(i64, &str) -> bool + '_ {
    move |id, text| {
        !ask.cancelled()
            && ask
                .events
                .send(AskEvent::Token {
                    id,
                    text: text.to_owned(),
                })
                .is_ok()
    }
}

/// One whole decode step of `open` alone, its token sent to the asker.
fn step(model: &dyn VideoLlm, open: &mut OpenAnswer) -> EngineResult<Step> {
    open.decoding.step(model, sender(&open.ask))
}

/// `open` hands out its picked token to the asker ([`Decoding::emit`]).
fn emit(model: &dyn VideoLlm, open: &mut OpenAnswer) -> EngineResult<Option<FinishReason>> {
    open.decoding.emit(model, sender(&open.ask))
}

fn finish_metrics(ask: &PendingAsk, outcome: &'static str) {
    metrics::counter!(names::ENGINE_ASKS, "mode" => ask.req.mode.label(), "outcome" => outcome)
        .increment(1);
}

/// Sends the finished answer.
fn complete(open: OpenAnswer, finish: FinishReason) {
    let OpenAnswer {
        ask,
        decoding,
        queued,
        time_to_first_token,
    } = open;
    let (tokens, text, prepared) = decoding.into_output();
    metrics::histogram!(names::ENGINE_TIME_TO_FIRST_TOKEN, "mode" => ask.req.mode.label())
        .record(time_to_first_token.as_secs_f64());
    metrics::counter!(names::ENGINE_TOKENS_GENERATED).increment(tokens.len() as u64);
    finish_metrics(
        &ask,
        if finish == FinishReason::Cancelled {
            "cancelled"
        } else {
            "ok"
        },
    );
    let mut figures = prepared.figures;
    figures.time_to_first_token = time_to_first_token;
    figures.queued = queued;
    figures.total = ask.received.elapsed();
    let answer = Answer {
        text,
        tokens,
        finish,
        citations: prepared.citations,
        figures,
    };
    let _ = ask.events.send(AskEvent::Done(answer));
}

/// Sends the error that ended a question.
fn fail(ask: PendingAsk, e: EngineError) {
    note_internal(&e, "ask", &ask.req.stream);
    finish_metrics(&ask, e.error_type());
    let _ = ask.events.send(AskEvent::Failed(e));
}

/// A frame's packed RGB as uint8 [1, 3, H, W].
fn frame_tensor(frame: &Frame) -> EngineResult<Tensor> {
    let (w, h) = (i64::from(frame.width), i64::from(frame.height));
    let rgb = frame.rgb();
    if rgb.len() as i64 != w * h * 3 {
        return Err(EngineError::Internal(format!(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caught_panics_are_internal_errors() {
        let e = guarded("decode", || -> EngineResult<()> {
            panic!("index out of range")
        })
        .unwrap_err();
        assert!(matches!(e, EngineError::Internal(_)), "{e}");
        assert_eq!(e.error_type(), "internal");
        assert_eq!(guarded("decode", || Ok(3)).unwrap(), 3);
    }
}

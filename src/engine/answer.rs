//! Answering a question about a stream: the context it attends over, then decoding.
//!
//! The context is ReKV's `[sinks + retrieved blocks + recent window + question]`, all at
//! contiguous positions: sinks at `0..S`, then each layer's chosen blocks in temporal
//! order (keys stored before rotary, re-rotated here to their new positions), then the
//! recent window, then the question (the `image_newline` embedding and the templated
//! question text). Which blocks depends on the mode:
//! - retrieve: the question is first run over `[sinks + window]` to get its per-layer
//!   query vectors; each layer takes its own top-k stored blocks by the dot product with
//!   their representative keys ([`crate::retrieval`]);
//! - recent: the window only;
//! - uniform: k blocks spread evenly over the range, the same in every layer.
//!
//! Retrieving every block, unquantised, with a window wider than the stream is exactly
//! the prompt `transformers` builds for the whole video (tested).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tch::{Kind, Tensor};

use crate::engine::config::{AskDefaults, AskMode, AskRequest, Sampling};
use crate::engine::prompt::PromptLayout;
use crate::engine::stream::{layouts, StreamCtx, WindowFrame};
use crate::error::{EngineError, EngineResult};
use crate::kv::{BlockMeta, CompressedBlock, Tier};
use crate::metrics as names;
use crate::model::{AttnContext, ForwardOptions, LayerKv, Positions, VideoLlm};
use crate::retrieval::{self, Selection};

/// Where a cited block's KV came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockSource {
    /// The recent window (full precision, in the engine).
    Window,
    Ram,
    Disk,
}

impl From<Tier> for BlockSource {
    fn from(t: Tier) -> Self {
        match t {
            Tier::Ram => BlockSource::Ram,
            Tier::Disk => BlockSource::Disk,
        }
    }
}

/// A block an answer attended to.
#[derive(Debug, Clone, PartialEq)]
pub struct Citation {
    pub seq: u64,
    /// Stream time of the block's (first) frame.
    pub pts: Duration,
    /// Wall-clock capture time of that frame.
    pub wall: SystemTime,
    /// Mean over layers of its retrieval score (retrieved blocks only).
    pub score: Option<f32>,
    /// Layers whose context held it.
    pub layers: u32,
    pub source: BlockSource,
    /// Frames the block covers, from `pts` on.
    pub frames: u32,
}

/// What answering a question took.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// Candidate blocks whose representative keys were scored.
    pub blocks_scanned: usize,
    pub blocks_from_ram: usize,
    pub blocks_from_disk: usize,
    pub window_frames: usize,
    /// Tokens attended by the question (sinks, blocks, window).
    pub context_tokens: i64,
    /// Scoring and loading blocks.
    pub retrieval: Duration,
    /// From the question reaching the engine to its first token.
    pub time_to_first_token: Duration,
    /// From the question reaching the engine to work on it starting.
    pub queued: Duration,
    pub total: Duration,
}

/// A question's context, ready to decode.
pub struct Prepared {
    pub ctx: AttnContext,
    /// The question chunk's embeddings [T, hidden] and their positions.
    pub question: Tensor,
    pub positions: Positions,
    /// Position of the first generated token.
    pub next_position: i64,
    /// In temporal order.
    pub citations: Vec<Citation>,
    pub figures: Figures,
}

impl Prepared {
    /// Holds a place while the real one is decoding (no tensors).
    fn placeholder() -> Self {
        Self {
            ctx: AttnContext::new(0),
            question: Tensor::new(),
            positions: Positions::from_tensor(Tensor::new()),
            next_position: 0,
            citations: Vec::new(),
            figures: Figures::default(),
        }
    }
}

/// Builds the context of `req` over `stream` (see the module doc).
pub fn prepare(
    model: &dyn VideoLlm,
    layout: &PromptLayout,
    stream: &mut StreamCtx,
    req: &AskRequest,
    defaults: AskDefaults,
    now: SystemTime,
) -> EngineResult<Prepared> {
    let range = req.range.resolve(now);
    let question = layout.question_embeddings(model, &req.question)?;
    let layers = model.decoder().num_layers();
    let device = model.device();
    let k = req.top_k.unwrap_or(defaults.top_k);

    // The recent frames used as they are: the last r of the window inside the range.
    let recent_default = match req.mode {
        AskMode::Uniform => 0,
        AskMode::Retrieve | AskMode::Recent => defaults.recent_frames.unwrap_or(usize::MAX),
    };
    let r = req.recent_frames.unwrap_or(recent_default);
    let in_range: Vec<usize> = (0..stream.window().len())
        .filter(|&i| range.contains(&stream.window()[i].meta))
        .collect();
    let recent_idx: Vec<usize> = in_range[in_range.len().saturating_sub(r)..].to_vec();
    let first_recent = recent_idx
        .first()
        .map_or(u64::MAX, |&i| stream.window()[i].meta.seq);

    // Candidates: stored blocks in range, older than the recent frames used. In
    // retrieve mode they are scored in the same pass over the store's keys.
    let started = Instant::now();
    let layers_n = layers;
    let (candidates, selection) = match req.mode {
        AskMode::Recent => (Vec::new(), Selection::default()),
        AskMode::Uniform => {
            let candidates: Vec<BlockMeta> = stream
                .store
                .metas()
                .filter(|m| m.seq < first_recent && range.contains(m))
                .copied()
                .collect();
            let selection = retrieval::select_uniform(candidates.len(), k, layers_n);
            (candidates, selection)
        }
        AskMode::Retrieve => {
            let recent: Vec<&WindowFrame> =
                recent_idx.iter().map(|&i| &stream.window()[i]).collect();
            let any = stream
                .store
                .metas()
                .any(|m| m.seq < first_recent && range.contains(m));
            if any {
                let queries = question_queries(model, stream, &recent, &question)?;
                let mut candidates = Vec::new();
                let mut scores = retrieval::Scores::new(layers_n);
                stream.store.visit_rep_keys(first_recent, |meta, keys| {
                    if range.contains(meta) {
                        candidates.push(*meta);
                        scores.push_block(&queries, keys);
                    }
                })?;
                let how = req.layer_selection.unwrap_or(defaults.layer_selection);
                let selection = retrieval::select_top_k(&scores, k, how);
                (candidates, selection)
            } else {
                (Vec::new(), Selection::default())
            }
        }
    };
    if candidates.is_empty() && recent_idx.is_empty() {
        return Err(EngineError::NoContent(stream.id.to_string()));
    }
    let picked: Vec<u64> = selection
        .picks
        .iter()
        .map(|p| candidates[p.index].seq)
        .collect();
    // Positions of everything, planned from the blocks' metas: the context must fit
    // the model's positions, checked before any block is loaded.
    let plan = {
        let recent: Vec<&WindowFrame> = recent_idx.iter().map(|&i| &stream.window()[i]).collect();
        plan_positions(
            model,
            stream,
            &candidates,
            &selection,
            &recent,
            question.size()[0],
        )?
    };
    new_tokens_room(model, plan.next)?;
    let loaded = stream.store.get_many(&picked)?;
    let retrieval_time = started.elapsed();
    let recent: Vec<&WindowFrame> = recent_idx.iter().map(|&i| &stream.window()[i]).collect();

    let mut figures = Figures {
        blocks_scanned: candidates.len(),
        window_frames: recent.len(),
        retrieval: retrieval_time,
        ..Default::default()
    };
    let mut citations = Vec::with_capacity(picked.len() + recent.len());
    let mut blocks: HashMap<usize, Arc<CompressedBlock>> = HashMap::new();
    for (pick, (block, tier)) in selection.picks.iter().zip(loaded) {
        match tier {
            Tier::Ram => figures.blocks_from_ram += 1,
            Tier::Disk => figures.blocks_from_disk += 1,
        }
        let meta = &candidates[pick.index];
        citations.push(Citation {
            seq: meta.seq,
            pts: meta.pts,
            wall: meta.wall(),
            score: pick.score,
            layers: pick.layers,
            source: tier.into(),
            frames: meta.layout.frames,
        });
        blocks.insert(pick.index, block);
    }
    for f in &recent {
        citations.push(Citation {
            seq: f.meta.seq,
            pts: f.meta.pts,
            wall: f.meta.wall(),
            score: None,
            layers: layers as u32,
            source: BlockSource::Window,
            frames: f.meta.layout.frames,
        });
    }
    record_loads(&figures, retrieval_time);

    // [sinks + per-layer blocks], then the window, then the question.
    let (mut ctx, _) = stream.sinks_and(model, &[])?;
    if selection.k() > 0 {
        let mut per_layer = Vec::with_capacity(layers);
        for (l, chosen) in selection.per_layer.iter().enumerate() {
            let parts = chosen
                .iter()
                .map(|i| {
                    blocks
                        .get(i)
                        .ok_or_else(|| EngineError::Internal(format!("block {i} not loaded")))?
                        .layer_kv(l, device, model.dtype())
                        .map_err(EngineError::from)
                })
                .collect::<EngineResult<Vec<LayerKv>>>()?;
            let keys: Vec<&Tensor> = parts.iter().map(|p| &p.keys).collect();
            let values: Vec<&Tensor> = parts.iter().map(|p| &p.values).collect();
            per_layer.push(LayerKv {
                keys: Tensor::f_cat(&keys, 1)?,
                values: Tensor::f_cat(&values, 1)?,
            });
        }
        match &plan.blocks {
            LayerPositions::Shared(at) => model.place(&mut ctx, &per_layer, at)?,
            // Blocks of different lengths in different layers (a family whose chunks
            // vary): each layer placed at its own positions.
            LayerPositions::PerLayer(each) => model.place_ragged(&mut ctx, &per_layer, each)?,
        }
    }
    if let Some(at) = &plan.window {
        let parts: Vec<&crate::model::KvSegment> = recent.iter().map(|f| &f.kv).collect();
        let window = crate::model::KvSegment::concat(&parts)?;
        model.place(&mut ctx, &window.layers, at)?;
    }
    figures.context_tokens = ctx.len();
    citations.sort_by_key(|c| c.seq);
    Ok(Prepared {
        ctx,
        question,
        positions: plan.question,
        next_position: plan.next,
        citations,
        figures,
    })
}

/// Where the retrieved blocks go: the same positions in every layer, or each layer
/// its own (layers holding different numbers of tokens).
enum LayerPositions {
    Shared(Positions),
    PerLayer(Vec<Positions>),
}

/// Positions of a question's context after the sinks: the chosen blocks, the window,
/// the question, and where generated tokens start.
struct Plan {
    blocks: LayerPositions,
    window: Option<Positions>,
    question: Positions,
    next: i64,
}

/// Plans the positions of `[sinks + each layer's chosen blocks + recent + question]`
/// from the blocks' metas alone (nothing is loaded yet).
fn plan_positions(
    model: &dyn VideoLlm,
    stream: &StreamCtx,
    candidates: &[BlockMeta],
    selection: &Selection,
    recent: &[&WindowFrame],
    question_tokens: i64,
) -> EngineResult<Plan> {
    let (_, sinks) = stream.sinks_and(model, &[])?;
    let mut per_layer = Vec::with_capacity(selection.per_layer.len());
    let mut cursors = Vec::with_capacity(selection.per_layer.len());
    for chosen in &selection.per_layer {
        let mut cursor = sinks;
        let planned = layouts(chosen.iter().map(|&i| &candidates[i]));
        per_layer.push((model.block_positions(&mut cursor, &planned)?, planned));
        cursors.push(cursor);
    }
    // The context grows by its longest layer; what follows goes after it.
    let mut cursor = cursors
        .iter()
        .copied()
        .max_by_key(|c| (c.next, c.end))
        .unwrap_or(sinks);
    cursor.end = cursors.iter().map(|c| c.end).max().unwrap_or(cursor.end);
    let same = per_layer.windows(2).all(|w| w[0].1 == w[1].1);
    let blocks = if same {
        match per_layer.into_iter().next() {
            Some((at, _)) => LayerPositions::Shared(at),
            None => LayerPositions::Shared(model.positions(cursor.next, 0)?),
        }
    } else {
        LayerPositions::PerLayer(per_layer.into_iter().map(|(at, _)| at).collect())
    };
    let window = if recent.is_empty() {
        None
    } else {
        Some(model.block_positions(&mut cursor, &layouts(recent.iter().map(|f| &f.meta)))?)
    };
    let question = model.text_positions(&mut cursor, question_tokens)?;
    Ok(Plan {
        blocks,
        window,
        question,
        next: cursor.end,
    })
}

/// How many new tokens fit when the first would sit at position `next` (after the
/// sinks, frames and question) within the model's `max_position_embeddings`: a context
/// that leaves no room is refused (the client asked for too many frames); answers are
/// cut to the room left (they end with LENGTH there).
pub fn new_tokens_room(model: &dyn VideoLlm, next: i64) -> EngineResult<usize> {
    let limit = model.max_positions();
    if next >= limit {
        return Err(EngineError::InvalidRequest(format!(
            "the context would reach position {next}, the model has {limit} positions: ask \
             for fewer frames (top_k, recent_frames, a narrower range)"
        )));
    }
    Ok(usize::try_from(limit - next).unwrap_or(0))
}

fn record_loads(figures: &Figures, took: Duration) {
    metrics::histogram!(names::RETRIEVAL_BLOCKS_SCANNED).record(figures.blocks_scanned as f64);
    metrics::counter!(names::RETRIEVAL_BLOCKS_LOADED, "tier" => "ram")
        .increment(figures.blocks_from_ram as u64);
    metrics::counter!(names::RETRIEVAL_BLOCKS_LOADED, "tier" => "disk")
        .increment(figures.blocks_from_disk as u64);
    metrics::histogram!(names::RETRIEVAL_SECONDS).record(took.as_secs_f64());
}

/// The question's per-layer query vectors [layers · kv_heads · head_dim], from a pass
/// of the question over `[sinks + recent]`.
fn question_queries(
    model: &dyn VideoLlm,
    stream: &StreamCtx,
    recent: &[&WindowFrame],
    question: &Tensor,
) -> EngineResult<Vec<f32>> {
    let (mut ctx, mut cursor) = stream.sinks_and(model, recent)?;
    let pos = model.text_positions(&mut cursor, question.size()[0])?;
    let opts = ForwardOptions {
        return_queries: true,
        ..Default::default()
    };
    let out = model.decoder().forward(question, &pos, &mut ctx, opts)?;
    let queries = out
        .queries
        .ok_or_else(|| EngineError::Internal("forward returned no queries".into()))?;
    let flat = queries
        .f_to_kind(Kind::Float)?
        .f_to_device(tch::Device::Cpu)?
        .f_contiguous()?
        .f_reshape([-1])?;
    Ok(Vec::<f32>::try_from(&flat)?)
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model ended its turn (a stop token).
    Stop,
    /// A stop string was produced.
    StopString,
    /// `max_new_tokens` reached.
    Length,
    /// The caller cancelled (or went away).
    Cancelled,
}

/// One answer being decoded a token at a time, so that the engine can interleave the
/// steps of several answers with encoding. [`Decoding::start`] runs the question over
/// its context and picks the first token; each [`Decoding::step`] hands out the token
/// picked last and, unless the answer ends there, runs the decoder once to pick the
/// next. Running the steps to the end is exactly [`generate`].
pub struct Decoding {
    /// The question's context, grown by one token per step.
    pub prepared: Prepared,
    /// Picked, not yet handed out.
    next: i64,
    /// Position of `next` once fed back.
    pos: i64,
    /// Handed out so far (no stop token).
    tokens: Vec<i64>,
    /// The text of `tokens` up to its last whole character.
    text: String,
    max_new_tokens: usize,
    sampling: Sampling,
    stop_strings: Vec<String>,
    rng: fastrand::Rng,
}

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A token was handed out (or held back while a character is incomplete); more come.
    Continue,
    Done(FinishReason),
}

impl Decoding {
    /// The question pass: runs `prepared`'s question over its context and picks the
    /// first token.
    pub fn start(
        model: &dyn VideoLlm,
        mut prepared: Prepared,
        max_new_tokens: usize,
        sampling: Sampling,
        stop_strings: Vec<String>,
    ) -> EngineResult<Self> {
        let dec = model.decoder();
        let mut rng = fastrand::Rng::with_seed(sampling.seed);
        let out = dec.forward(
            &prepared.question,
            &prepared.positions,
            &mut prepared.ctx,
            append_options(),
        )?;
        let last = out.hidden.f_narrow(0, out.hidden.size()[0] - 1, 1)?;
        let next = pick(&dec.logits(&last)?, sampling, &mut rng)?;
        let pos = prepared.next_position;
        Ok(Self {
            prepared,
            next,
            pos,
            tokens: Vec::new(),
            text: String::new(),
            max_new_tokens,
            sampling,
            stop_strings,
            rng,
        })
    }

    /// Hands out the picked token through `on_token(id, new text)` (false: cancel),
    /// then ends the answer or picks the next token.
    pub fn step(
        &mut self,
        model: &dyn VideoLlm,
        on_token: impl FnMut(i64, &str) -> bool,
    ) -> EngineResult<Step> {
        if let Some(finish) = self.emit(model, on_token)? {
            return Ok(Step::Done(finish));
        }
        step_batch(model, &mut [self])?;
        Ok(Step::Continue)
    }

    /// Hands out the picked token through `on_token` (false: cancel); the reason when
    /// the answer ends with it, `None` when the token must be fed back.
    pub fn emit(
        &mut self,
        model: &dyn VideoLlm,
        mut on_token: impl FnMut(i64, &str) -> bool,
    ) -> EngineResult<Option<FinishReason>> {
        let next = self.next;
        if model.stop_tokens().contains(&next) {
            return Ok(Some(FinishReason::Stop));
        }
        self.tokens.push(next);
        let full = model.detokenize(&self.tokens)?;
        // Emit only whole characters: a byte-level token may complete one later.
        let piece = full.get(self.text.len()..).unwrap_or_default().to_owned();
        if !piece.ends_with('\u{FFFD}') {
            self.text = full;
            if !on_token(next, &piece) {
                return Ok(Some(FinishReason::Cancelled));
            }
        }
        if self
            .stop_strings
            .iter()
            .any(|s| self.text.ends_with(s.as_str()))
        {
            return Ok(Some(FinishReason::StopString));
        }
        if self.tokens.len() >= self.max_new_tokens {
            return Ok(Some(FinishReason::Length));
        }
        Ok(None)
    }

    /// Picks the next token from the final hidden state [1, hidden] of the step that
    /// fed the emitted one back.
    fn advance(&mut self, model: &dyn VideoLlm, hidden: &Tensor) -> EngineResult<()> {
        self.pos += 1;
        self.next = pick(
            &model.decoder().logits(hidden)?,
            self.sampling,
            &mut self.rng,
        )?;
        Ok(())
    }

    /// Tokens handed out (the stop token excluded) and their text.
    pub fn into_output(self) -> (Vec<i64>, String, Prepared) {
        (self.tokens, self.text, self.prepared)
    }
}

/// One decode step for several answers at once, each having just emitted a token that
/// must be fed back ([`Decoding::emit`] returned `None`): the decoder's linear layers
/// run once over all of them ([`crate::model::Qwen2::decode_batch`]), attention over
/// each one's own context. One answer alone takes the single-token path of
/// [`crate::model::Qwen2::forward`], exactly as [`generate`] does.
pub fn step_batch(model: &dyn VideoLlm, batch: &mut [&mut Decoding]) -> EngineResult<()> {
    let dec = model.decoder();
    let device = model.device();
    if let [single] = batch {
        let ids = Tensor::from_slice(&[single.next]).f_to_device(device)?;
        let p = model.positions(single.pos, 1)?;
        let out = dec.forward(
            &dec.embed(&ids)?,
            &p,
            &mut single.prepared.ctx,
            append_options(),
        )?;
        return single.advance(model, &out.hidden);
    }
    let ids: Vec<i64> = batch.iter().map(|d| d.next).collect();
    let at: Vec<i64> = batch.iter().map(|d| d.pos).collect();
    let ids = Tensor::from_slice(&ids).f_to_device(device)?;
    let mut ctxs: Vec<&mut AttnContext> = batch.iter_mut().map(|d| &mut d.prepared.ctx).collect();
    let hidden = dec.decode_batch(&dec.embed(&ids)?, &at, &mut ctxs)?;
    for (row, d) in batch.iter_mut().enumerate() {
        d.advance(model, &hidden.f_narrow(0, row as i64, 1)?)?;
    }
    Ok(())
}

fn append_options() -> ForwardOptions {
    ForwardOptions {
        append: true,
        ..Default::default()
    }
}

/// Decodes the answer of a prepared question to its end: `on_token(id, text)` receives
/// each new piece of text as it is produced and returns false to cancel. Returns the
/// tokens (the stop token excluded), the full text and why it ended. `first_token` is
/// called once, when the first token is known. `prepared` holds the grown context after.
pub fn generate(
    model: &dyn VideoLlm,
    prepared: &mut Prepared,
    max_new_tokens: usize,
    sampling: Sampling,
    stop_strings: &[String],
    mut first_token: impl FnMut(),
    mut on_token: impl FnMut(i64, &str) -> bool,
) -> EngineResult<(Vec<i64>, String, FinishReason)> {
    let taken = std::mem::replace(prepared, Prepared::placeholder());
    let mut decoding = Decoding::start(
        model,
        taken,
        max_new_tokens,
        sampling,
        stop_strings.to_vec(),
    )?;
    first_token();
    let finish = loop {
        match decoding.step(model, &mut on_token) {
            Ok(Step::Continue) => {}
            Ok(Step::Done(finish)) => break Ok(finish),
            Err(e) => break Err(e),
        }
    };
    let (tokens, text, grown) = decoding.into_output();
    *prepared = grown;
    Ok((tokens, text, finish?))
}

/// Greedy, or temperature + nucleus (top-p) sampling, from logits [1, vocab].
fn pick(logits: &Tensor, sampling: Sampling, rng: &mut fastrand::Rng) -> EngineResult<i64> {
    let logits = logits.f_reshape([-1])?.f_to_kind(Kind::Float)?;
    if sampling.temperature <= 0.0 {
        return Ok(logits.f_argmax(-1, false)?.int64_value(&[]));
    }
    let probs = logits
        .f_div_scalar(f64::from(sampling.temperature))?
        .f_softmax(-1, Kind::Float)?
        .f_to_device(tch::Device::Cpu)?;
    let probs = Vec::<f32>::try_from(&probs)?;
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_unstable_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let mut kept = Vec::new();
    let mut mass = 0.0f32;
    for &i in &order {
        kept.push(i);
        mass += probs[i];
        if mass >= sampling.top_p {
            break;
        }
    }
    let mut x = rng.f32() * mass;
    for &i in &kept {
        x -= probs[i];
        if x <= 0.0 {
            return Ok(i as i64);
        }
    }
    Ok(kept.last().copied().unwrap_or(0) as i64)
}

//! Training the tiny LLaVA-OneVision from scratch on synthetic clip QA, on the CPU with
//! libtorch autograd, through the model code inference runs.
//!
//! 1. Write the checkpoint files ([`TinySpec::write_files`]) and random initial weights,
//!    then load them with [`LlavaOnevision::load_trainable`]: the real loader, handing
//!    out every weight as a leaf that requires grad, by checkpoint name.
//! 2. Each step renders a batch of fresh random clips (never repeated: clip k of the
//!    training stream `seed`), up to two questions of each kind per clip, runs the
//!    frames through the model's preprocessor and vision tower, scatters them into the
//!    templated prompt ([`LlavaOnevision::embed_batch_with_video`]) and packs each
//!    clip's questions into one row after its video: each question segment (rest of
//!    the prompt, answer, `<|im_end|>`) sees the video prefix and itself only, at the
//!    positions it would have alone ([`crate::model::decoder::llama::Llama::forward_packed`]),
//!    so one vision pass serves ~8 answers. The loss is the cross entropy of the answer
//!    tokens and `<|im_end|>`, plus half that of linear probes on the frame tokens
//!    ([`CellProbes`]). Measured: one question per clip plateaued at ~45% of answers
//!    for 1,200 steps; packed, the same recipe passes 90% by step 1,100.
//! 3. AdamW (β = 0.9, 0.95; decoupled weight decay on matrices only), linear warm-up
//!    then cosine decay to a tenth of the peak, gradients clipped to norm 1, written
//!    as tensor operations under `no_grad` (tch's optimisers need a `VarStore`).
//! 4. Save `model.safetensors` under the same names (plus the tensors the model never
//!    reads, as initialised), so the result loads like any hub checkpoint.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tch::{Kind, Reduction, Tensor};

use crate::error::{SynthError, SynthResult};
use crate::model::{LlavaOnevision, ModelOptions, Precision};
use crate::synth::checkpoint::{self, TinySpec, IM_END_ID, PAD_ID};
use crate::synth::qa;
use crate::synth::render::frames_to_tensor;
use crate::synth::script::{NeedleSpec, Script, NEEDLE_SHAPES};
use crate::synth::world::{clip_seed, mix, Clip, ClipSpec, Colour, Shape};

/// Everything a training run depends on.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub out: PathBuf,
    /// Seeds the initial weights and names the training clip stream.
    pub seed: u64,
    pub steps: usize,
    /// Wall-clock budget: training stops early (and says so) when it runs out.
    pub max_time: Duration,
    pub batch: usize,
    pub lr: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    pub model: TinySpec,
    /// The clips' shape; `clip.frames` is the length evaluation uses.
    pub clip: ClipSpec,
    /// Frames per training clip, drawn per step uniformly from this range (inclusive):
    /// short clips early in the mix make the objects easy to find, long ones teach the
    /// model contexts longer than the evaluation clips (the engine's window plus
    /// retrieved frames).
    pub frames: (usize, usize),
    /// Share of steps (0..=1) that train on retrieval-like contexts instead of clips
    /// (see [`context_example`]): frames picked from a long needle stream with time
    /// gaps, distractor frames around the evidence, a recent run at the end or not.
    pub contexts: f64,
    /// Frames per context, drawn per context step uniformly from this range.
    pub context_frames: (usize, usize),
    /// Weight of the retrieval objective ([`retrieval_loss`]; 0: off): in every layer,
    /// the question's query must score the frames that show what it asks about above
    /// the others, as ReKV's per-layer top-k scores them.
    pub retrieval_weight: f64,
}

impl TrainOptions {
    pub fn new(out: PathBuf) -> Self {
        Self {
            out,
            seed: 1,
            steps: 2000,
            max_time: Duration::from_secs(40 * 60),
            batch: 32,
            lr: 2e-3,
            warmup: 150,
            weight_decay: 0.01,
            model: TinySpec::default(),
            clip: ClipSpec::default(),
            frames: (6, 6),
            contexts: 0.0,
            context_frames: (2, 32),
            retrieval_weight: 0.0,
        }
    }
}

/// State after a step, for a progress display.
#[derive(Debug, Clone)]
pub struct Progress {
    pub step: usize,
    pub steps: usize,
    /// Mean loss over the steps since the previous report.
    pub loss: f64,
    /// Mean loss of the cell probes over the same steps (part of `loss`).
    pub probe_loss: f64,
    /// Mean retrieval objective over the same steps (NaN when off).
    pub retrieval_loss: f64,
    /// Answer words right under teacher forcing (argmax), same window.
    pub answer_accuracy: f64,
    pub lr: f64,
    pub elapsed: Duration,
    /// Steps per second over the run so far.
    pub rate: f64,
    pub eta: Duration,
}

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct TrainReport {
    pub steps: usize,
    pub stopped_early: bool,
    pub elapsed: Duration,
    pub parameters: i64,
    pub final_loss: f64,
}

struct Batch {
    /// [B, T] int64, right-padded.
    ids: Tensor,
    /// [B·T] int64: the next token where it is part of an answer, else -100.
    labels: Tensor,
    /// [B·T] int64: the answer word where the next token is one, else -100 (for the
    /// accuracy: answers are one word).
    answers: Tensor,
    /// [B, T] int64: rotary positions (each question segment restarts after the video).
    positions: Tensor,
    /// [B, 1, T, T] bool: what each token attends to.
    mask: Tensor,
    /// [B·F, 3, H, W] uint8.
    frames: Tensor,
    /// [B·F·cells] int64: per pooled cell of each frame, 1 + the index in
    /// [`Shape::ALL`] of the object centred in it (the topmost), 0 for none.
    cell_shapes: Tensor,
    /// [B·F·cells] int64: likewise its colour (1 + index in [`Colour::ALL`]), 0 for none.
    cell_colours: Tensor,
    /// The retrieval objective's inputs; `None` when not asked for, or when no question
    /// of the batch has frames both with and without what it asks about.
    retrieval: Option<RetrievalTargets>,
}

/// Each question's retrieval pass — the question alone after the sinks, as the engine
/// runs it to get the question's per-layer queries (with no recent frames) — and the
/// frames that show what it asks about.
struct RetrievalTargets {
    /// [Q, Tq] int64, right-padded; positions [Q, Tq]; causal mask [Q, 1, Tq, Tq].
    ids: Tensor,
    positions: Tensor,
    mask: Tensor,
    /// [Q, Tq] float: 1 on the question's tokens (after the sinks), 0 elsewhere.
    select: Tensor,
    /// [Q] int64: the batch row (clip) each question is about.
    rows: Tensor,
    /// [Q, F] bool: the frames that show the question's subject (some, not all).
    evidence: Tensor,
    /// Index of the first video token of every row; frame f's tokens follow it at
    /// f · tokens_per_frame.
    video_start: i64,
}

/// Which of `clip`'s frames show what `question` asks about — the first shape word
/// (singular or plural) and the colour word just before it, if any — when some do and
/// some do not (else there is nothing to rank).
fn question_evidence(clip: &Clip, question: &str) -> Option<Vec<bool>> {
    let words: Vec<&str> = question.split_whitespace().collect();
    let (at, shape) = words.iter().enumerate().find_map(|(i, w)| {
        Shape::ALL
            .into_iter()
            .find(|s| s.word() == *w || s.plural() == *w)
            .map(|s| (i, s))
    })?;
    let colour = at
        .checked_sub(1)
        .and_then(|i| Colour::ALL.into_iter().find(|c| c.word() == words[i]));
    let shown: Vec<bool> = clip
        .times
        .iter()
        .map(|&t| {
            clip.scene
                .visible_at(t)
                .any(|o| o.shape == shape && colour.is_none_or(|c| o.colour == c))
        })
        .collect();
    (shown.iter().any(|&s| s) && !shown.iter().all(|&s| s)).then_some(shown)
}

/// Per-cell labels of the frame at `t`: the pooled token grid is `side`×`side` cells of
/// the frame; each object is assigned to the cell holding its centre.
fn cell_labels(clip: &Clip, t: f64, side: usize, shapes: &mut Vec<i64>, colours: &mut Vec<i64>) {
    let start = shapes.len();
    shapes.resize(start + side * side, 0);
    colours.resize(start + side * side, 0);
    let (w, h) = (clip.scene.width as f32, clip.scene.height as f32);
    for o in clip.scene.visible_at(t) {
        let [x, y] = o.centre_at(t);
        let col = ((x / w * side as f32) as usize).min(side - 1);
        let row = ((y / h * side as f32) as usize).min(side - 1);
        let at = start + row * side + col;
        shapes[at] = 1 + Shape::ALL.iter().position(|&s| s == o.shape).unwrap_or(0) as i64;
        colours[at] = 1 + Colour::ALL.iter().position(|&c| c == o.colour).unwrap_or(0) as i64;
    }
}

/// Questions asked about each training clip, per kind.
const QUESTIONS_PER_KIND: usize = 2;

/// Clip `index` of the training stream and its questions.
fn training_example(spec: &ClipSpec, stream: u64, index: u64) -> (Clip, Vec<qa::Qa>) {
    let seed = clip_seed(stream, index);
    let clip = Clip::random(spec, seed);
    let questions = qa::sample_set(
        &clip,
        QUESTIONS_PER_KIND,
        &mut fastrand::Rng::with_seed(mix(seed)),
    );
    (clip, questions)
}

/// Salt of the draws that make a step a context step, and of context streams' seeds.
const CONTEXT_SALT: u64 = 0x5eed_c0de;

/// Context `index` of the training stream: `frames` frames picked from a long needle
/// stream (100–1,000 frames, one or both needle shapes, chained or not) the way
/// retrieval and the recent window assemble a context: with probability ½ a run of the
/// stream's last frames (the window, 1–8), each needle's evidence with probability 0.8
/// (a run of 1 to all of its frames), and distractor frames from anywhere else, in time
/// order with gaps. Questions of every kind, answered by the clip rules on exactly
/// these frames (so a needle left out is "no"/"zero").
fn context_example(spec: &ClipSpec, stream: u64, index: u64, frames: usize) -> (Clip, Vec<qa::Qa>) {
    let seed = clip_seed(stream ^ CONTEXT_SALT, index);
    let mut rng = fastrand::Rng::with_seed(mix(seed));
    let length = rng.usize(100..=1000).max(frames + 8);
    let shapes = match rng.usize(..3) {
        0 => vec![Shape::Triangle],
        1 => vec![Shape::Star],
        _ => NEEDLE_SHAPES.to_vec(),
    };
    let script = Script::needle(&NeedleSpec {
        width: spec.width,
        height: spec.height,
        fps: spec.fps,
        frames: length,
        shapes,
        needle_frames: rng.usize(1..=4),
        chained: rng.bool(),
        seed,
        ..NeedleSpec::default()
    });
    let mut picked: Vec<usize> = Vec::with_capacity(frames);
    if frames > 1 && rng.bool() {
        let window = rng.usize(1..=8.min(frames - 1));
        picked.extend(length - window..length);
    }
    for needle in script
        .scene
        .objects
        .iter()
        .filter(|o| NEEDLE_SHAPES.contains(&o.shape))
    {
        if picked.len() >= frames || rng.f32() >= 0.8 {
            continue;
        }
        let first = (needle.appear * script.fps).round() as usize;
        let last = ((needle.leave * script.fps).round() as usize).min(length);
        let shown = last.saturating_sub(first).max(1);
        let take = rng.usize(1..=shown).min(frames - picked.len());
        let start = first + rng.usize(..=shown - take);
        picked.extend(start..start + take);
    }
    picked.sort_unstable();
    picked.dedup();
    while picked.len() < frames {
        let f = rng.usize(..length);
        if let Err(at) = picked.binary_search(&f) {
            picked.insert(at, f);
        }
    }
    picked.truncate(frames);
    let clip = Clip {
        times: picked.iter().map(|&i| script.frame_time(i)).collect(),
        scene: script.scene,
    };
    let questions = qa::sample_set(&clip, QUESTIONS_PER_KIND, &mut rng);
    (clip, questions)
}

/// One row: the video prefix, then one segment per question (the rest of its prompt,
/// its answer and `<|im_end|>`), each segment placed at the positions it would have
/// alone and seeing only the prefix and itself: the row scores every question exactly
/// as separate single-question sequences would, for the price of one video.
fn make_batch(
    model: &LlavaOnevision,
    examples: &[(Clip, Vec<qa::Qa>)],
    retrieval: bool,
) -> SynthResult<Batch> {
    let size = examples.len();
    let frame_count = examples.first().map_or(0, |(c, _)| c.times.len());
    if examples.iter().any(|(c, _)| c.times.len() != frame_count) {
        return Err(SynthError::InvalidInput(
            "the clips of one batch differ in length".into(),
        ));
    }
    struct Row {
        prefix: Vec<i64>,
        /// (rest of the prompt, answer + `<|im_end|>`)
        segments: Vec<(Vec<i64>, Vec<i64>)>,
    }
    let mut rows = Vec::with_capacity(size);
    let mut frames = Vec::with_capacity(size * frame_count);
    let side = (model.tokens_per_frame() as f64).sqrt().round() as usize;
    let (mut cell_shapes, mut cell_colours) = (Vec::new(), Vec::new());
    let video_id = model.text.video_token_id();
    // Retrieval passes: (row, sinks + question ids, sinks length, evidence).
    let mut passes: Vec<(usize, Vec<i64>, usize, Vec<bool>)> = Vec::new();
    let mut video_start = None;
    for (row_index, (clip, questions)) in examples.iter().enumerate() {
        frames.extend(clip.times.iter().map(|&t| clip.scene.render(t)));
        for &t in &clip.times {
            cell_labels(clip, t, side, &mut cell_shapes, &mut cell_colours);
        }
        let mut row = Row {
            prefix: Vec::new(),
            segments: Vec::new(),
        };
        for qa in questions {
            let prompt = model.video_prompt_ids(&qa.question, frame_count as i64)?;
            let split = prompt
                .iter()
                .rposition(|&id| id == video_id)
                .map_or(0, |p| p + 1);
            if row.prefix.is_empty() {
                row.prefix = prompt[..split].to_vec();
            } else if row.prefix[..] != prompt[..split] {
                return Err(SynthError::InvalidInput(
                    "prompts of one clip differ before the question".into(),
                ));
            }
            if retrieval {
                let first = prompt.iter().position(|&id| id == video_id).unwrap_or(0);
                if *video_start.get_or_insert(first) != first {
                    return Err(SynthError::InvalidInput(
                        "rows of one batch start their videos at different tokens".into(),
                    ));
                }
                if let Some(evidence) = question_evidence(clip, &qa.question) {
                    let mut ids = prompt[..first].to_vec();
                    ids.extend_from_slice(&prompt[split..]);
                    passes.push((row_index, ids, first, evidence));
                }
            }
            let mut answer = model.text.encode(&qa.answer)?;
            answer.push(IM_END_ID);
            row.segments.push((prompt[split..].to_vec(), answer));
        }
        rows.push(row);
    }
    let length = |r: &Row| {
        r.prefix.len()
            + r.segments
                .iter()
                .map(|(p, a)| p.len() + a.len())
                .sum::<usize>()
    };
    let t = rows.iter().map(length).max().unwrap_or(0);
    let mut ids = vec![PAD_ID; size * t];
    let mut labels = vec![-100i64; size * t];
    let mut answers = vec![-100i64; size * t];
    let mut positions = vec![0i64; size * t];
    let mut mask = vec![false; size * t * t];
    for (b, row) in rows.iter().enumerate() {
        let base = b * t;
        let allow = |mask: &mut Vec<bool>, query: usize, keys: std::ops::Range<usize>| {
            let at = (base + query) * t;
            mask[at + keys.start..at + keys.end].fill(true);
        };
        let p = row.prefix.len();
        for (j, &id) in row.prefix.iter().enumerate() {
            ids[base + j] = id;
            positions[base + j] = j as i64;
            allow(&mut mask, j, 0..j + 1);
        }
        let mut start = p;
        for (prompt, answer) in &row.segments {
            for (k, &id) in prompt.iter().chain(answer).enumerate() {
                let j = start + k;
                ids[base + j] = id;
                positions[base + j] = (p + k) as i64;
                allow(&mut mask, j, 0..p);
                allow(&mut mask, j, start..j + 1);
            }
            // The logit at position j predicts token j + 1: the last prompt token
            // predicts the first answer token.
            let last_prompt = start + prompt.len() - 1;
            for (k, &id) in answer.iter().enumerate() {
                labels[base + last_prompt + k] = id;
            }
            answers[base + last_prompt] = answer[0];
            start += prompt.len() + answer.len();
        }
        // Padding attends to itself only, so no row of the mask is empty.
        for j in start..t {
            allow(&mut mask, j, j..j + 1);
        }
    }
    let retrieval = match video_start {
        Some(video_start) if !passes.is_empty() => {
            Some(retrieval_targets(&passes, video_start, frame_count)?)
        }
        _ => None,
    };
    let (b, t) = (size as i64, t as i64);
    Ok(Batch {
        retrieval,
        ids: Tensor::from_slice(&ids).f_view([b, t])?,
        labels: Tensor::from_slice(&labels),
        answers: Tensor::from_slice(&answers),
        positions: Tensor::from_slice(&positions).f_view([b, t])?,
        mask: Tensor::from_slice(&mask).f_view([b, 1, t, t])?,
        frames: frames_to_tensor(&frames)?,
        cell_shapes: Tensor::from_slice(&cell_shapes),
        cell_colours: Tensor::from_slice(&cell_colours),
    })
}

/// The retrieval passes of a batch as tensors (see [`RetrievalTargets`]).
fn retrieval_targets(
    passes: &[(usize, Vec<i64>, usize, Vec<bool>)],
    video_start: usize,
    frames: usize,
) -> SynthResult<RetrievalTargets> {
    let q = passes.len();
    let t = passes.iter().map(|p| p.1.len()).max().unwrap_or(1);
    let mut ids = vec![PAD_ID; q * t];
    let mut positions = vec![0i64; q * t];
    let mut mask = vec![false; q * t * t];
    let mut select = vec![0f32; q * t];
    let mut evidence = Vec::with_capacity(q * frames);
    let mut rows = Vec::with_capacity(q);
    for (i, (row, seq, sinks, shown)) in passes.iter().enumerate() {
        for j in 0..t {
            if j < seq.len() {
                ids[i * t + j] = seq[j];
                positions[i * t + j] = j as i64;
                mask[(i * t + j) * t..(i * t + j) * t + j + 1].fill(true);
                if j >= *sinks {
                    select[i * t + j] = 1.0;
                }
            } else {
                // Padding attends to itself only.
                mask[(i * t + j) * t + j] = true;
            }
        }
        rows.push(*row as i64);
        evidence.extend_from_slice(shown);
    }
    let (q, t) = (q as i64, t as i64);
    Ok(RetrievalTargets {
        ids: Tensor::from_slice(&ids).f_view([q, t])?,
        positions: Tensor::from_slice(&positions).f_view([q, t])?,
        mask: Tensor::from_slice(&mask).f_view([q, 1, t, t])?,
        select: Tensor::from_slice(&select).f_view([q, t])?,
        rows: Tensor::from_slice(&rows),
        evidence: Tensor::from_slice(&evidence).f_view([q, frames as i64])?,
        video_start: video_start as i64,
    })
}

/// The retrieval objective: in every layer, each question's query (its pre-rotary
/// queries over its own tokens, averaged, query heads averaged per GQA group — as the
/// engine computes it) dotted with every frame's representative key (the mean of the
/// frame's pre-rotary keys, from `probes`, the packed forward's) ranks the evidence
/// frames first: multi-positive InfoNCE, −log Σ_evidence softmax(scores / √D), averaged
/// over layers and questions. This is what makes ReKV's per-layer top-k — each layer
/// picking by its own scores — find the frames a question needs.
fn retrieval_loss(
    model: &LlavaOnevision,
    probes: &[(Tensor, Tensor)],
    targets: &RetrievalTargets,
    frames: i64,
) -> SynthResult<Tensor> {
    let dec = model.decoder();
    let tpf = model.tokens_per_frame();
    let embeds = dec.embed(&targets.ids)?;
    let (_, question_probes) =
        dec.forward_packed_probe(&embeds, &targets.positions, &targets.mask)?;
    let select = targets.select.f_unsqueeze(1)?.f_unsqueeze(-1)?;
    let count = targets
        .select
        .f_sum_dim_intlist(1, false, Kind::Float)?
        .f_clamp_min(1.0)?
        .f_view([-1, 1, 1])?;
    let others = targets.evidence.f_logical_not()?;
    let mut total: Option<Tensor> = None;
    for ((q_raw, _), (_, k_raw)) in question_probes.iter().zip(probes) {
        let q = q_raw
            .f_mul(&select)?
            .f_sum_dim_intlist(2, false, Kind::Float)?
            .f_div(&count)?;
        let q = dec.group_query_heads(&q)?;
        let (b, kv, _, d) = k_raw.size4()?;
        let keys = k_raw
            .f_narrow(2, targets.video_start, frames * tpf)?
            .f_reshape([b, kv, frames, tpf, d])?
            .f_mean_dim(3, false, Kind::Float)?
            .f_permute([0, 2, 1, 3])?
            .f_reshape([b, frames, kv * d])?
            .f_index_select(0, &targets.rows)?;
        let scores = keys
            .f_matmul(&q.f_unsqueeze(-1)?)?
            .f_squeeze_dim(-1)?
            .f_div_scalar(((kv * d) as f64).sqrt())?;
        let all = scores.f_logsumexp(1, false)?;
        let hit = scores
            .f_masked_fill(&others, f64::NEG_INFINITY)?
            .f_logsumexp(1, false)?;
        let layer = all.f_sub(&hit)?.f_mean(Kind::Float)?;
        total = Some(match total {
            None => layer,
            Some(acc) => acc.f_add(&layer)?,
        });
    }
    let layers = probes.len().max(1) as f64;
    match total {
        Some(t) => Ok(t.f_div_scalar(layers)?),
        None => Err(SynthError::InvalidInput("a decoder without layers".into())),
    }
}

/// Linear probes on the frame tokens, trained with the model and not saved: each pooled
/// token must tell which shape and colour is centred in its cell. This dense grounding
/// signal (nine labels per frame against one answer per clip) teaches the tower and
/// projector to separate objects long before the answers alone would.
struct CellProbes {
    shape: (Tensor, Tensor),
    colour: (Tensor, Tensor),
}

impl CellProbes {
    fn new(hidden: i64) -> SynthResult<Self> {
        let head = |classes: i64| -> SynthResult<(Tensor, Tensor)> {
            let w = Tensor::f_randn([classes, hidden], (Kind::Float, tch::Device::Cpu))?
                .f_div_scalar((hidden as f64).sqrt())?
                .f_set_requires_grad(true)?;
            let b = Tensor::f_zeros([classes], (Kind::Float, tch::Device::Cpu))?
                .f_set_requires_grad(true)?;
            Ok((w, b))
        };
        Ok(Self {
            shape: head(1 + Shape::ALL.len() as i64)?,
            colour: head(1 + Colour::ALL.len() as i64)?,
        })
    }

    /// Named for the optimiser; the `probe.` prefix keeps them out of the checkpoint.
    fn parameters(&self) -> Vec<(String, Tensor)> {
        vec![
            ("probe.shape.weight".into(), self.shape.0.shallow_clone()),
            ("probe.shape.bias".into(), self.shape.1.shallow_clone()),
            ("probe.colour.weight".into(), self.colour.0.shallow_clone()),
            ("probe.colour.bias".into(), self.colour.1.shallow_clone()),
        ]
    }

    /// Mean cross entropy of both probes over every cell; `tokens` [N, cells, hidden].
    fn loss(&self, tokens: &Tensor, batch: &Batch) -> SynthResult<Tensor> {
        let hidden = tokens.size()[2];
        let flat = tokens.f_reshape([-1, hidden])?;
        let ce = |(w, b): &(Tensor, Tensor), labels: &Tensor| -> SynthResult<Tensor> {
            Ok(flat.f_linear(w, Some(b))?.f_cross_entropy_loss::<Tensor>(
                labels,
                None,
                Reduction::Mean,
                -100,
                0.0,
            )?)
        };
        Ok(ce(&self.shape, &batch.cell_shapes)?.f_add(&ce(&self.colour, &batch.cell_colours)?)?)
    }
}

/// Loss and teacher-forced answer accuracy of one batch (the graph kept for backward),
/// with the cell probes' and the retrieval objective's parts (NaN when not computed).
fn batch_loss(
    model: &LlavaOnevision,
    probes: &CellProbes,
    batch: &Batch,
    frames: i64,
    retrieval_weight: f64,
) -> SynthResult<(Tensor, f64, f64, f64)> {
    let (b, t) = batch.ids.size2()?;
    let pixels = model.preprocessor.process(&batch.frames)?;
    let per_frame = model.encode_frames(&pixels)?;
    let probe_loss = probes.loss(&per_frame, batch)?;
    let (_, tokens, hidden) = per_frame.size3()?;
    let video = per_frame.f_view([b, frames, tokens, hidden])?;
    let embeds = model.embed_batch_with_video(&batch.ids, &video)?;
    let (out, layer_probes) =
        model
            .decoder()
            .forward_packed_probe(&embeds, &batch.positions, &batch.mask)?;
    let logits = model.decoder().logits(&out)?.f_view([b * t, -1])?;
    let answer_loss =
        logits.f_cross_entropy_loss::<Tensor>(&batch.labels, None, Reduction::Mean, -100, 0.0)?;
    let probe_value = probe_loss.double_value(&[]);
    let mut loss = answer_loss.f_add(&probe_loss.f_mul_scalar(PROBE_WEIGHT)?)?;
    let mut retrieval_value = f64::NAN;
    if let (Some(targets), true) = (&batch.retrieval, retrieval_weight > 0.0) {
        let r = retrieval_loss(model, &layer_probes, targets, frames)?;
        retrieval_value = r.double_value(&[]);
        loss = loss.f_add(&r.f_mul_scalar(retrieval_weight)?)?;
    }
    let accuracy = tch::no_grad(|| -> SynthResult<f64> {
        let asked = batch.answers.f_ne(-100)?;
        let right = logits
            .f_argmax(-1, false)?
            .f_eq_tensor(&batch.answers)?
            .f_logical_and(&asked)?
            .f_sum(Kind::Int64)?
            .int64_value(&[]);
        let asked = asked.f_sum(Kind::Int64)?.int64_value(&[]);
        Ok(right as f64 / asked.max(1) as f64)
    })?;
    Ok((loss, accuracy, probe_value, retrieval_value))
}

struct AdamW {
    /// First and second moments, one pair per parameter.
    moments: Vec<(Tensor, Tensor)>,
    /// Whether weight decay applies (matrices and embeddings, not norms or biases).
    decays: Vec<bool>,
    step: i32,
}

/// Weight of the cell probes' loss against the answers'.
const PROBE_WEIGHT: f64 = 0.5;

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.95;
const EPS: f64 = 1e-8;
const CLIP_NORM: f64 = 1.0;

impl AdamW {
    fn new(params: &[(String, Tensor)]) -> SynthResult<Self> {
        let moments = params
            .iter()
            .map(|(_, p)| Ok((p.f_zeros_like()?, p.f_zeros_like()?)))
            .collect::<SynthResult<_>>()?;
        let decays = params.iter().map(|(_, p)| p.dim() >= 2).collect();
        Ok(Self {
            moments,
            decays,
            step: 0,
        })
    }

    /// One update from the accumulated gradients, which it then zeroes.
    fn step(&mut self, params: &mut [(String, Tensor)], lr: f64, decay: f64) -> SynthResult<()> {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let mut squares = Vec::with_capacity(params.len());
        for (_, p) in params.iter() {
            let g = p.grad();
            if g.defined() {
                squares.push(g.f_square()?.f_sum(Kind::Float)?);
            }
        }
        let norm = Tensor::f_stack(&squares, 0)?
            .f_sum(Kind::Float)?
            .f_sqrt()?
            .double_value(&[]);
        let scale = (CLIP_NORM / (norm + 1e-6)).min(1.0);
        let c1 = 1.0 - BETA1.powi(self.step);
        let c2 = 1.0 - BETA2.powi(self.step);
        for (((_, p), (m, v)), &decays) in params
            .iter_mut()
            .zip(self.moments.iter_mut())
            .zip(&self.decays)
        {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let g = g.f_mul_scalar(scale)?;
            let _ = m
                .f_mul_scalar_(BETA1)?
                .f_add_(&g.f_mul_scalar(1.0 - BETA1)?)?;
            let _ = v
                .f_mul_scalar_(BETA2)?
                .f_add_(&g.f_square()?.f_mul_scalar(1.0 - BETA2)?)?;
            if decays {
                let _ = p.f_mul_scalar_(1.0 - lr * decay)?;
            }
            let denom = v.f_div_scalar(c2)?.f_sqrt()?.f_add_scalar(EPS)?;
            let update = m.f_div_scalar(c1)?.f_div(&denom)?.f_mul_scalar(lr)?;
            let _ = p.f_sub_(&update)?;
            p.zero_grad();
        }
        Ok(())
    }
}

/// Learning rate at `step` (0-based): linear warm-up, then cosine to a tenth.
fn learning_rate(opts: &TrainOptions, step: usize) -> f64 {
    if step < opts.warmup {
        return opts.lr * (step + 1) as f64 / opts.warmup as f64;
    }
    let span = opts.steps.saturating_sub(opts.warmup).max(1) as f64;
    let progress = ((step - opts.warmup) as f64 / span).min(1.0);
    let floor = 0.1 * opts.lr;
    floor + (opts.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Trains a tiny model into `opts.out`, calling `progress` after every step.
pub fn train(opts: &TrainOptions, progress: &mut dyn FnMut(&Progress)) -> SynthResult<TrainReport> {
    let spec = &opts.model;
    if (opts.clip.width, opts.clip.height) != (spec.image_size as u32, spec.image_size as u32) {
        return Err(SynthError::InvalidInput(format!(
            "clips of {}x{} for a tower of {}x{}: render at the tower's size",
            opts.clip.width, opts.clip.height, spec.image_size, spec.image_size
        )));
    }
    if opts.seed == crate::synth::eval::HELD_OUT_SEED {
        return Err(SynthError::InvalidInput(format!(
            "seed {} is the held-out evaluation stream",
            opts.seed
        )));
    }
    if opts.frames.0 == 0 || opts.frames.0 > opts.frames.1 {
        return Err(SynthError::InvalidInput(format!(
            "clip lengths {}..={}: need 1 ≤ min ≤ max",
            opts.frames.0, opts.frames.1
        )));
    }
    let (lo, hi) = opts.context_frames;
    if !(0.0..=1.0).contains(&opts.contexts) || lo == 0 || lo > hi {
        return Err(SynthError::InvalidInput(format!(
            "contexts {} (a share in 0..=1) of {lo}..={hi} frames (1 ≤ min ≤ max)",
            opts.contexts
        )));
    }
    if !(opts.retrieval_weight.is_finite() && opts.retrieval_weight >= 0.0) {
        return Err(SynthError::InvalidInput(format!(
            "retrieval weight {} must be finite and not negative",
            opts.retrieval_weight
        )));
    }
    if opts.batch == 0 || opts.steps == 0 {
        return Err(SynthError::InvalidInput(
            "steps and batch must be positive".into(),
        ));
    }
    tch::manual_seed(opts.seed as i64);
    spec.write_files(&opts.out, &opts.clip)?;
    let init = spec.init_weights()?;
    checkpoint::write_weights(&opts.out, &init)?;
    let (model, mut params) =
        LlavaOnevision::load_trainable(&opts.out, ModelOptions::cpu(Precision::F32))?;
    let unk = model.text.token_id("<unk>");
    let probe = model.video_prompt_ids("which shape appeared after the red circle ?", 1)?;
    if unk.is_some_and(|u| probe.contains(&u)) {
        return Err(SynthError::InvalidInput(
            "the templated prompt holds words outside the vocabulary".into(),
        ));
    }
    let probes = CellProbes::new(spec.hidden)?;
    params.extend(probes.parameters());
    let mut optimiser = AdamW::new(&params)?;
    let start = Instant::now();
    let (mut window_loss, mut window_acc, mut window_n) = (0.0, 0.0, 0usize);
    let mut window_probe = 0.0;
    let (mut window_retrieval, mut window_retrieval_n) = (0.0, 0usize);
    let mut final_loss = f64::NAN;
    let mut done = 0;
    let mut stopped_early = false;
    for step in 0..opts.steps {
        if start.elapsed() >= opts.max_time {
            stopped_early = true;
            break;
        }
        let draw = |salt: u64, (lo, hi): (usize, usize)| {
            lo + (mix(opts.seed ^ step as u64 ^ salt) % (hi - lo + 1) as u64) as usize
        };
        let roll = (mix(opts.seed ^ step as u64 ^ CONTEXT_SALT) % 1000) as f64;
        let is_context = roll < opts.contexts * 1000.0;
        let examples: Vec<(Clip, Vec<qa::Qa>)> = if is_context {
            // The same frames a step as a clip step: fewer rows for longer contexts.
            let frames = draw(CONTEXT_SALT, opts.context_frames);
            let rows = (opts.batch * opts.frames.1 / frames).max(1);
            (0..rows as u64)
                .map(|i| {
                    context_example(
                        &opts.clip,
                        opts.seed,
                        (step * opts.batch) as u64 + i,
                        frames,
                    )
                })
                .collect()
        } else {
            let clip = ClipSpec {
                frames: draw(0, opts.frames),
                ..opts.clip.clone()
            };
            (0..opts.batch as u64)
                .map(|i| training_example(&clip, opts.seed, (step * opts.batch) as u64 + i))
                .collect()
        };
        let frame_count = examples.first().map_or(0, |(c, _)| c.times.len()) as i64;
        let batch = make_batch(&model, &examples, opts.retrieval_weight > 0.0)?;
        let (loss, accuracy, probe, retrieval) =
            batch_loss(&model, &probes, &batch, frame_count, opts.retrieval_weight)?;
        loss.f_backward()?;
        let lr = learning_rate(opts, step);
        optimiser.step(&mut params, lr, opts.weight_decay)?;
        let loss = loss.double_value(&[]);
        if !loss.is_finite() {
            return Err(SynthError::InvalidInput(format!(
                "loss diverged at step {step} (lr {lr:.2e})"
            )));
        }
        final_loss = loss;
        done = step + 1;
        window_loss += loss;
        window_acc += accuracy;
        window_probe += probe;
        if retrieval.is_finite() {
            window_retrieval += retrieval;
            window_retrieval_n += 1;
        }
        window_n += 1;
        let elapsed = start.elapsed();
        let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);
        let by_steps = Duration::from_secs_f64((opts.steps - done) as f64 / rate.max(1e-9));
        let eta = by_steps.min(opts.max_time.saturating_sub(elapsed));
        progress(&Progress {
            step: done,
            steps: opts.steps,
            loss: window_loss / window_n as f64,
            probe_loss: window_probe / window_n as f64,
            retrieval_loss: if window_retrieval_n > 0 {
                window_retrieval / window_retrieval_n as f64
            } else {
                f64::NAN
            },
            answer_accuracy: window_acc / window_n as f64,
            lr,
            elapsed,
            rate,
            eta,
        });
        if done % 10 == 0 {
            (window_loss, window_acc, window_n) = (0.0, 0.0, 0);
            window_probe = 0.0;
            (window_retrieval, window_retrieval_n) = (0.0, 0);
        }
    }
    let mut tensors: BTreeMap<String, Tensor> = init;
    params.retain(|(name, _)| !name.starts_with("probe."));
    for (name, p) in &params {
        tensors.insert(name.clone(), p.f_detach()?);
    }
    checkpoint::write_weights(&opts.out, &tensors)?;
    let parameters = params.iter().map(|(_, p)| p.numel() as i64).sum();
    Ok(TrainReport {
        steps: done,
        stopped_early,
        elapsed: start.elapsed(),
        parameters,
        final_loss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_are_time_ordered_frames_of_a_needle_stream_with_true_answers() {
        let spec = ClipSpec {
            width: 48,
            height: 48,
            ..ClipSpec::default()
        };
        let mut with_needle = 0;
        for index in 0..40 {
            let frames = 2 + index as usize % 31;
            let (clip, questions) = context_example(&spec, 1, index, frames);
            assert_eq!(clip.times.len(), frames);
            assert!(
                clip.times.windows(2).all(|w| w[0] < w[1]),
                "{:?}",
                clip.times
            );
            assert!(!questions.is_empty());
            // Exists answers say whether the picked frames show a needle shape.
            for shape in NEEDLE_SHAPES {
                let seen = clip
                    .times
                    .iter()
                    .any(|&t| clip.scene.visible_at(t).any(|o| o.shape == shape));
                with_needle += usize::from(seen);
                let q = format!("is there a {shape} ?");
                if let Some(qa) = questions.iter().find(|x| x.question == q) {
                    assert_eq!(qa.answer, if seen { "yes" } else { "no" });
                }
            }
        }
        // Most contexts hold evidence, not all.
        assert!((20..80).contains(&with_needle), "{with_needle}");
    }
}

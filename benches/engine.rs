//! Engine benchmark (issue 5): does the streaming engine keep its promises as a stream
//! grows? Four figures, each a ratio of two times (or sizes) measured in the same run,
//! so that a slow machine moves both sides alike:
//!
//! 1. **Encode rate does not decay**: frames/s over the last 10% of a long stream
//!    against the first 10%. Target ≥ 0.9. Encoding attends to the sinks and a
//!    sliding window of W frames only, so the cost of a frame must not grow with the
//!    stream. This machine is shared and drifts by 10–20% over minutes, so a
//!    *same-time control* is measured too: a fresh stream's first frames and the long
//!    stream's latest ones, fed in alternation (chunks, or single frames for 0.5B), so
//!    that any drift hits both sides; it isolates the dependence on stream length.
//! 2. **Time to first token (TTFT) does not grow with the store**: a question in
//!    retrieve mode (the engine's default top-k, `max_new_tokens` 1), median of
//!    `VSTREAMD_BENCH_ASKS` asks, each round a different question of the same token
//!    length, with 100, 1,000 and 10,000 stored blocks. The three levels are separate
//!    streams asked in turn (round by round), for the same reason. Target
//!    TTFT@10k / TTFT@100 ≤ 1.3.
//! 3. **TTFT against a full re-prefill**: one decoder forward over
//!    `[sink prompt + the frames' embeddings + question]` from an empty context (what a
//!    system without a KV cache does for every question; the vision tower is left out,
//!    which favours the re-prefill), against TTFT@1000. Target ≥ 10×.
//! 4. **Resident memory**: VmRSS (/proc/self/status) after 1,000 and after 50,000
//!    frames; the growth, and the growth minus that of the representative-key index
//!    (`KvStore::rep_key_bytes`, which retrieval scans and keeps in RAM by design).
//!    Target: growth minus rep keys ≤ 10% of the RSS at 1,000 frames.
//!
//! Two checkpoints:
//!
//! - **tiny** (`tests/fixtures/llava_ov/tiny_a`, f32, 9 tokens per frame): all four
//!   for real, through [`Engine`] with [`FrameInput::Frames`]: synthetic frames of the
//!   tower's size (a formula, see [`frame_rgb`]) fed by the bench thread; int8 blocks
//!   in a disk-backed store in a tempdir with a RAM tier of 64 KiB (≈ 60 blocks), so
//!   retrieval reads from the disk tier; the engine's defaults otherwise (window 8,
//!   batch 4, top-16). One libtorch thread (`VSTREAMD_BENCH_THREADS` overrides): the
//!   tiny model's ops are too small to split, and a second OpenMP thread on a busy
//!   2-core machine makes every op wait for a descheduled thread.
//!   Streams `b100` and `b1000` are fed 100 and 1,000 frames; the long stream `cam`
//!   then gets `VSTREAMD_BENCH_TINY_FRAMES` (50,000) in chunks of 500, each timed
//!   from its first send to the engine reporting it encoded (asks stop the clock);
//!   (1) compares the median chunk rates. VmRSS is read when `cam` holds 1,000 blocks
//!   and at the end; at 10,000 the three streams are asked in turn. The rep-key growth
//!   is the block count times the bytes of one block's keys (all stay in RAM under
//!   this budget), checked against a store reopened on `cam`'s directory after the
//!   engine stopped (`StreamInfo` does not report it). The re-prefill of (3) runs on
//!   a second copy of the model in the bench thread, over the embeddings of the same
//!   1,000 frames, after the memory readings. The block-count-dependent part of
//!   answering is also timed alone, step by step (see below), to show what grows.
//! - **0.5B-shaped** (LLaVA-OneVision-0.5B's shapes: SigLIP-so400m 384/14 tower, Qwen2
//!   896 × 24 layers, 2 KV heads, 196 tokens per frame; random weights): written by
//!   this bench in Rust at first use (no Python), as `transformers` 5 lays it out,
//!   bf16, in shards, cached in `target/bench-checkpoints/llava_ov_0p5b_shape_rs/`
//!   with a `.complete` marker (1.5 GB, ≈ 10 s). Its text vocabulary is the tiny
//!   tokenizer's (102 ids): the vocabulary size only changes the embedding table and
//!   the LM head over one row, nothing these figures measure. It runs in f32 or bf16,
//!   whichever multiplies faster here (a decoder-sized product is timed in both
//!   first): on this AVX2-only CPU libtorch's bf16 GEMM is a slow fallback (≈ 9
//!   against ≈ 36 GFLOP/s), so f32. A frame then costs ≈ 20 s, so this part runs
//!   library-level (`StreamCtx`, `answer::prepare` + `answer::generate`, as the
//!   engine thread calls them):
//!   1. The tower is timed on 3 real frames (it sees one frame at a time: its cost
//!      cannot depend on the stream); prefill + store, where growth would show, on
//!      every frame of a stream of `VSTREAMD_BENCH_BIG_FRAMES` (20), window 8, fed
//!      those frames' embeddings in turn; a frame's encode time is the tower's median
//!      plus its prefill + store. The control alternates a fresh stream's frames
//!      1..=3 with the long stream's next 3.
//!   2. Stored blocks are synthesised (random KV of the real shape, `Block::new` +
//!      `KvStore::append` through a `StreamCtx`'s store, `VSTREAMD_BENCH_BIG_QUANT`,
//!      int4 by default), the stream is reopened (recovering its store from disk) and
//!      a real window of 8 frames is encoded on top, so questions attend to sinks,
//!      retrieved blocks and a real window. A level is measured for real only if its
//!      blocks fit in `VSTREAMD_BENCH_BIG_DISK_GB` (3): an int4 block is ≈ 0.7 MB, so
//!      100 and 1,000 are real and 10,000 (≈ 7 GB) is not. For 10,000 the part of
//!      answering that depends on the block count — listing the candidates and
//!      mapping seqs to them, `KvStore::rep_keys`, `retrieval::score_blocks`,
//!      `retrieval::select_top_k`, as `answer::prepare` runs them — is timed alone
//!      over a store of 10,000 one-token blocks with representative keys of the real
//!      shape, and TTFT@10k is *estimated* as TTFT@1000 + (that part at 10,000 − at
//!      1,000); the output says so.
//!   3. A re-prefill of 1,000 × 196 tokens would take hours here: the bench fits a
//!      FLOP model to a 2-frame re-prefill, runs the longest one predicted to take
//!      `VSTREAMD_BENCH_BIG_PREFILL_S` (60 s) and compares it with TTFT@1000 asked
//!      3 times right before and 3 times right after it (median) — a lower bound on
//!      the 1,000-frame ratio, labelled so (the 1,000-frame time extrapolated by
//!      FLOPs is printed as an estimate).
//!   4. Skipped: 50,000 frames of this model would take days here.
//!
//! Run times on this 2-core shared CPU (`cargo bench --bench engine`, build excluded):
//! tiny ≈ 1 min 10 s; 0.5B-shaped ≈ 7.5 min (+ ≈ 10 s and 1.5 GB of disk the first
//! time, for the checkpoint; ≈ 1.2 GB of temporary blocks under target/): part 1
//! ≈ 3.5 min, part 2 ≈ 3 min, part 3 ≈ 1 min. About 9 minutes in all.
//!
//! Settings (environment variables; `cargo bench` passes `--bench`, ignored):
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `VSTREAMD_BENCH_TINY` | 1 | 0 skips the tiny part |
//! | `VSTREAMD_BENCH_TINY_FRAMES` | 50000 | frames of the long tiny stream (≥ 10000) |
//! | `VSTREAMD_BENCH_ASKS` | 5 | asks per TTFT point (median) |
//! | `VSTREAMD_BENCH_BIG` | 1 | 0 skips the 0.5B-shaped part |
//! | `VSTREAMD_BENCH_BIG_MODEL` | generated (above) | another checkpoint for that part, of any family (`model::load`) |
//! | `VSTREAMD_BENCH_BIG_DTYPE` | auto | `f32`, `bf16`, `f16`, or `auto` (the faster) |
//! | `VSTREAMD_BENCH_BIG_FRAMES` | 20 | frames of the prefill stream of (1) (≥ 10) |
//! | `VSTREAMD_BENCH_BIG_QUANT` | int4 | `int4`, `int8`, `bf16`, `f16` stored blocks |
//! | `VSTREAMD_BENCH_BIG_DISK_GB` | 3 | disk allowed for synthetic blocks |
//! | `VSTREAMD_BENCH_BIG_PREFILL_S` | 60 | time allowed for the re-prefill of (3) |
//! | `VSTREAMD_BENCH_THREADS` | libtorch's (tiny: 1) | `tch::set_num_threads` |

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use support::{checkpoint, median};
use tch::{Device, Kind, Tensor};
use vstreamd::engine::answer;
use vstreamd::engine::prompt::PromptLayout;
use vstreamd::engine::stream::{FrameStamp, StreamCtx};
use vstreamd::engine::{
    AskDefaults, AskMode, AskRequest, Engine, EngineConfig, Figures, FrameInput, Sampling,
    StreamInfo, StreamSpec,
};
use vstreamd::ingest::Frame;
use vstreamd::kv::disk::{DiskConfig, SyncPolicy};
use vstreamd::kv::{Block, BlockMeta, CompressedBlock, KvStore, Quant, StoreConfig, Tier};
use vstreamd::model::{
    self as vmodel, AttnContext, BlockLayout, Cursor, ForwardOptions, KvSegment, LayerKv,
    ModelOptions, Precision, VideoLlm,
};
use vstreamd::retrieval::{self, LayerSelection};

/// Questions of equal token length (tiny vocabulary): one per ask, so successive asks
/// retrieve different blocks rather than hitting what the previous one loaded.
const QUESTIONS: [&str; 8] = [
    "what colour is the circle ?",
    "what colour is the square ?",
    "what colour is the star ?",
    "what colour is the car ?",
    "what colour is the dog ?",
    "what colour is the door ?",
    "what colour is the sky ?",
    "what colour is the tree ?",
];

/// Real frames through the 0.5B-shaped tower in (1), after a warm-up frame.
const BIG_TOWER_FRAMES: u64 = 3;
/// Stored-block counts of the TTFT figure.
const LEVELS: [usize; 3] = [100, 1_000, 10_000];
/// Frames of the re-prefill comparison.
const REPREFILL_FRAMES: usize = 1_000;

// ---------------------------------------------------------------------------------
// Settings

struct Settings {
    tiny: bool,
    tiny_frames: u64,
    asks: usize,
    big: bool,
    big_model: Option<PathBuf>,
    big_frames: usize,
    big_quant: Quant,
    /// `None`: whichever of f32 and bf16 multiplies faster here.
    big_dtype: Option<Precision>,
    big_disk_bytes: u64,
    big_prefill_s: f64,
    threads: Option<i32>,
}

fn env_parse<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow!("{name}={v:?} does not parse")),
        Err(std::env::VarError::NotPresent) => Ok(default),
        Err(e) => Err(anyhow!("{name}: {e}")),
    }
}

fn env_flag(name: &str, default: bool) -> Result<bool> {
    match std::env::var(name) {
        Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => bail!("{name}={v:?}: expected 0 or 1"),
        },
        Err(std::env::VarError::NotPresent) => Ok(default),
        Err(e) => Err(anyhow!("{name}: {e}")),
    }
}

impl Settings {
    fn from_env() -> Result<Self> {
        let quant_name: String = env_parse("VSTREAMD_BENCH_BIG_QUANT", "int4".to_string())?;
        let big_quant = match quant_name.as_str() {
            "int4" => Quant::Int4,
            "int8" => Quant::Int8,
            "bf16" => Quant::Bf16,
            "f16" => Quant::F16,
            other => bail!("VSTREAMD_BENCH_BIG_QUANT={other:?}: int4, int8, bf16 or f16"),
        };
        let dtype_name: String = env_parse("VSTREAMD_BENCH_BIG_DTYPE", "auto".to_string())?;
        let big_dtype = match dtype_name.as_str() {
            "auto" => None,
            other => Some(
                other
                    .parse::<Precision>()
                    .map_err(|e| anyhow!("VSTREAMD_BENCH_BIG_DTYPE: {e}"))?,
            ),
        };
        let threads = match std::env::var_os("VSTREAMD_BENCH_THREADS") {
            Some(_) => Some(env_parse("VSTREAMD_BENCH_THREADS", 0i32)?),
            None => None,
        };
        let disk_gb: f64 = env_parse("VSTREAMD_BENCH_BIG_DISK_GB", 3.0)?;
        let s = Self {
            tiny: env_flag("VSTREAMD_BENCH_TINY", true)?,
            tiny_frames: env_parse("VSTREAMD_BENCH_TINY_FRAMES", 50_000)?,
            asks: env_parse("VSTREAMD_BENCH_ASKS", 5)?,
            big: env_flag("VSTREAMD_BENCH_BIG", true)?,
            big_model: std::env::var_os("VSTREAMD_BENCH_BIG_MODEL").map(PathBuf::from),
            big_frames: env_parse("VSTREAMD_BENCH_BIG_FRAMES", 20)?,
            big_quant,
            big_dtype,
            big_disk_bytes: (disk_gb.max(0.0) * 1e9) as u64,
            big_prefill_s: env_parse("VSTREAMD_BENCH_BIG_PREFILL_S", 60.0)?,
            threads,
        };
        if s.tiny_frames < 10_000 {
            bail!("VSTREAMD_BENCH_TINY_FRAMES must be at least 10000 (the TTFT@10k point)");
        }
        if s.asks == 0 {
            bail!("VSTREAMD_BENCH_ASKS must be at least 1");
        }
        if s.big_frames < 10 {
            bail!(
                "VSTREAMD_BENCH_BIG_FRAMES must be at least 10 (first/last 10%, past the window)"
            );
        }
        if s.threads.is_some_and(|t| t < 1) {
            bail!("VSTREAMD_BENCH_THREADS must be at least 1");
        }
        if !(s.big_prefill_s.is_finite() && s.big_prefill_s > 0.0) {
            bail!("VSTREAMD_BENCH_BIG_PREFILL_S must be positive");
        }
        Ok(s)
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------
// Results

/// One line of the final table.
struct Row {
    part: &'static str,
    what: String,
    value: String,
    target: &'static str,
    /// `None`: not judged (skipped or informational).
    pass: Option<bool>,
}

impl Row {
    fn judged(
        part: &'static str,
        what: String,
        value: String,
        target: &'static str,
        pass: bool,
    ) -> Self {
        Self {
            part,
            what,
            value,
            target,
            pass: Some(pass),
        }
    }

    fn note(part: &'static str, what: String, value: String) -> Self {
        Self {
            part,
            what,
            value,
            target: "-",
            pass: None,
        }
    }
}

fn print_table(rows: &[Row]) {
    let w_part = rows.iter().map(|r| r.part.len()).max().unwrap_or(4).max(4);
    let w_what = rows
        .iter()
        .map(|r| r.what.chars().count())
        .max()
        .unwrap_or(4)
        .max(11);
    let w_value = rows
        .iter()
        .map(|r| r.value.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let w_target = rows
        .iter()
        .map(|r| r.target.chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    let pad = |s: &str, w: usize| format!("{s}{}", " ".repeat(w.saturating_sub(s.chars().count())));
    println!();
    println!("== summary ==");
    println!(
        "{} | {} | {} | {} | result",
        pad("part", w_part),
        pad("measurement", w_what),
        pad("value", w_value),
        pad("target", w_target)
    );
    println!("{}", "-".repeat(w_part + w_what + w_value + w_target + 18));
    for r in rows {
        let result = match r.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "-",
        };
        println!(
            "{} | {} | {} | {} | {result}",
            pad(r.part, w_part),
            pad(&r.what, w_what),
            pad(&r.value, w_value),
            pad(r.target, w_target)
        );
    }
}

// ---------------------------------------------------------------------------------
// Small helpers

fn ms(seconds: f64) -> String {
    format!("{:.2} ms", seconds * 1e3)
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1 << 20) as f64)
}

/// A field of /proc/self/status, in bytes.
fn proc_status_bytes(field: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/self/status"))?;
    Ok(kb * 1024)
}

/// (VmRSS, RssAnon, RssFile) in bytes.
fn rss() -> Result<(u64, u64, u64)> {
    Ok((
        proc_status_bytes("VmRSS:")?,
        proc_status_bytes("RssAnon:")?,
        proc_status_bytes("RssFile:")?,
    ))
}

/// Packed RGB (`h·w·3` bytes) of synthetic frame `i`:
/// `v = (7x + 5y + 60c + 40i + 3⌊i/32⌋ + (x·y mod 31)) mod 256` — the formula of
/// `benches/encode.rs` with a slow drift so that frames do not repeat every 32.
fn frame_rgb(i: u64, h: u32, w: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(h as usize * w as usize * 3);
    let shift = 40 * i + 3 * (i / 32);
    for y in 0..u64::from(h) {
        for x in 0..u64::from(w) {
            for c in 0..3u64 {
                out.push(((7 * x + 5 * y + 60 * c + shift + (x * y) % 31) % 256) as u8);
            }
        }
    }
    out
}

/// Frames `first..first+n` as uint8 [n, 3, h, w] (the same pixels as [`frame_rgb`]).
fn frames_tensor(first: u64, n: u64, h: u32, w: u32) -> Result<Tensor> {
    let mut bytes = Vec::with_capacity(n as usize * h as usize * w as usize * 3);
    for i in first..first + n {
        bytes.extend_from_slice(&frame_rgb(i, h, w));
    }
    Ok(Tensor::from_slice(&bytes)
        .f_view([n as i64, i64::from(h), i64::from(w), 3])?
        .f_permute([0, 3, 1, 2])?
        .f_contiguous()?)
}

/// Frame embeddings [n, tokens_per_frame, hidden] of frames `0..n`, `batch` at a time.
fn embed_frames(model: &dyn VideoLlm, n: u64, batch: u64) -> Result<Tensor> {
    let size = square_frames(model)?;
    let mut parts = Vec::new();
    let mut first = 0;
    while first < n {
        let len = batch.min(n - first);
        let pixels = model.preprocess(&frames_tensor(first, len, size, size)?)?;
        parts.push(model.encode_frames(&pixels)?);
        first += len;
    }
    Ok(Tensor::f_cat(&parts, 0)?)
}

/// Seconds of a full re-prefill: `embeds` [T, hidden] at positions 0..T from an empty
/// context, then the first token (logits of the last position, greedy).
fn full_prefill(model: &dyn VideoLlm, prompt: &Reprefill) -> Result<f64> {
    let embeds = &prompt.embeds;
    let t = embeds.size()[0];
    let dec = model.decoder();
    let start = Instant::now();
    let mut ctx = AttnContext::new(dec.num_layers());
    let out = dec.forward(
        embeds,
        &prompt.positions,
        &mut ctx,
        ForwardOptions::default(),
    )?;
    let last = out.hidden.f_narrow(0, t - 1, 1)?;
    let token = dec.logits(&last)?.f_argmax(-1, false)?.int64_value(&[0]);
    std::hint::black_box(token);
    Ok(start.elapsed().as_secs_f64())
}

/// A re-prefill prompt: input embeddings [T, hidden] and their positions.
struct Reprefill {
    embeds: Tensor,
    positions: Tensor,
}

impl Reprefill {
    fn tokens(&self) -> i64 {
        self.embeds.size()[0]
    }
}

/// The re-prefill prompt for block embeddings [B, tokens_per_frame, hidden]: the
/// family's streaming layout in one piece (sinks, every block's chunk at one frame a
/// second, the question's chunk) at the family's positions, which the equivalence tests
/// show is the prompt `transformers` builds for the same frames.
fn reprefill_embeddings(
    model: &dyn VideoLlm,
    frames: &Tensor,
    question: &str,
) -> Result<Reprefill> {
    let mut cursor = Cursor::new(1.0);
    let sink_ids = model.sink_ids()?;
    let sinks = Tensor::from_slice(&sink_ids).f_to_device(model.device())?;
    let mut parts = vec![model.decoder().embed(&sinks)?];
    let mut positions = vec![model.text_positions(&mut cursor, sink_ids.len() as i64)?];
    let layout = model.block_layout();
    let per = model.frames_per_block() as u64;
    let mut planned = Vec::new();
    for i in 0..frames.size()[0] {
        let time = Duration::from_secs(i as u64 * per);
        let chunk = model.frame_chunk(&frames.f_get(i)?, time)?;
        planned.push((chunk.size()[0], layout));
        parts.push(chunk);
    }
    positions.push(model.block_positions(&mut cursor, &planned)?);
    let question = model.question_chunk(question)?;
    positions.push(model.text_positions(&mut cursor, question.size()[0])?);
    parts.push(question);
    // One axis, or three where any part has three (text sits on all alike).
    let axes = positions.iter().map(|p| p.dim()).max().unwrap_or(1);
    let positions = positions
        .iter()
        .map(|p| {
            if axes == 2 && p.dim() == 1 {
                p.f_unsqueeze(0)?.f_expand([3, -1], false)
            } else {
                Ok(p.shallow_clone())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Reprefill {
        embeds: Tensor::f_cat(&parts, 0)?,
        positions: Tensor::f_cat(&positions, -1)?,
    })
}

/// The side of the square frames `model` takes.
fn square_frames(model: &dyn VideoLlm) -> Result<u32> {
    match model.frame_size() {
        (h, w) if h == w => Ok(h),
        (h, w) => bail!("this bench feeds square frames; the model takes {w}x{h}"),
    }
}

/// What the asks at one point took.
#[derive(Default)]
struct AskStats {
    ttft: Vec<f64>,
    retrieval: Vec<f64>,
    last: Figures,
}

impl AskStats {
    fn push(&mut self, ttft: f64, figures: Figures) {
        self.ttft.push(ttft);
        self.retrieval.push(figures.retrieval.as_secs_f64());
        self.last = figures;
    }

    fn line(&self, label: &str) -> String {
        let min = self.ttft.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.ttft.iter().copied().fold(0.0, f64::max);
        let f = &self.last;
        format!(
            "  TTFT {label}: median {} (min {}, max {}, {} asks); retrieval median {}; last ask: {} blocks scanned, {} from RAM, {} from disk, window {}, context {} tokens",
            ms(median(&self.ttft)),
            ms(min),
            ms(max),
            self.ttft.len(),
            ms(median(&self.retrieval)),
            f.blocks_scanned,
            f.blocks_from_ram,
            f.blocks_from_disk,
            f.window_frames,
            f.context_tokens
        )
    }
}

// ---------------------------------------------------------------------------------
// Tiny checkpoint, through the engine

/// Frames per timed chunk of the long stream.
const CHUNK: u64 = 500;

fn stream_info(engine: &Engine, id: &str) -> Result<StreamInfo> {
    engine
        .info(Some(id))
        .wait()?
        .pop()
        .ok_or_else(|| anyhow!("the engine lists no stream `{id}`"))
}

/// A caller-fed stream of the engine.
struct Feed {
    id: Arc<str>,
    tx: crossbeam::channel::Sender<Frame>,
    /// Seq of the next frame to send.
    next: u64,
    size: u32,
}

impl Feed {
    fn open(engine: &Engine, id: &str, size: u32) -> Result<Self> {
        let (tx, rx) = crossbeam::channel::bounded::<Frame>(16);
        engine
            .add_stream(StreamSpec {
                id: id.into(),
                input: FrameInput::Frames(rx),
                store: None,
            })
            .wait()?;
        Ok(Self {
            id: Arc::from(id),
            tx,
            next: 0,
            size,
        })
    }

    /// Sends frames up to `end` (exclusive) and waits until the engine has encoded them
    /// all; returns the seconds from the first send.
    fn run_to(&mut self, engine: &Engine, end: u64) -> Result<(f64, StreamInfo)> {
        let start = Instant::now();
        for i in self.next..end {
            let frame = Frame::from_rgb(
                self.id.clone(),
                i,
                Duration::from_millis(50 * i),
                SystemTime::now(),
                (self.size, self.size),
                frame_rgb(i, self.size, self.size),
            )?;
            self.tx
                .send(frame)
                .map_err(|_| anyhow!("the engine dropped the input of `{}`", self.id))?;
        }
        self.next = self.next.max(end);
        let mut progress = (0, Instant::now());
        loop {
            let info = stream_info(engine, &self.id)?;
            if info.frames_encoded >= end {
                return Ok((start.elapsed().as_secs_f64(), info));
            }
            if let Some(e) = &info.last_error {
                bail!("the engine failed to encode `{}`: {e}", self.id);
            }
            if info.frames_encoded != progress.0 {
                progress = (info.frames_encoded, Instant::now());
            } else if progress.1.elapsed() > Duration::from_secs(120) {
                bail!("no encode progress for 2 minutes: {info:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// One question through the engine: (TTFT seconds, figures).
fn engine_ask(engine: &Engine, id: &str, question: &str) -> Result<(f64, Figures)> {
    let answer = engine
        .ask(AskRequest {
            stream: id.into(),
            question: question.into(),
            mode: AskMode::Retrieve,
            max_new_tokens: Some(1),
            ..Default::default()
        })?
        .wait()?;
    let f = answer.figures;
    Ok((f.time_to_first_token.as_secs_f64(), f))
}

fn tiny(s: &Settings, rows: &mut Vec<Row>) -> Result<()> {
    let started = Instant::now();
    // One libtorch thread: the tiny model's ops are far too small to split, and on a
    // busy 2-core machine a second OpenMP thread makes every op wait for a descheduled
    // thread (TTFTs of hundreds of ms).
    let threads_before = tch::get_num_threads();
    tch::set_num_threads(s.threads.unwrap_or(1));
    let model_dir = repo().join("tests/fixtures/llava_ov/tiny_a");
    let model = vmodel::load(&model_dir, ModelOptions::cpu(Precision::F32))
        .with_context(|| format!("loading {}", model_dir.display()))?;
    let size = square_frames(model.as_ref())?;
    let tpf = model.tokens_per_frame();
    let shape = KvShape::of(model.as_ref());
    let rep_per_block = shape.rep_key_bytes();
    // Under target/ rather than /tmp: a tmpfs would put the mapped segments in RSS.
    std::fs::create_dir_all(repo().join("target"))?;
    let tmp = tempfile::tempdir_in(repo().join("target"))?;
    let store = StoreConfig {
        quant: Quant::Int8,
        ram_budget_bytes: 64 << 10,
        rep_key_budget_bytes: 256 << 20,
        dedup_threshold: None,
        disk: Some(DiskConfig {
            segment_bytes: 8 << 20,
            sync: SyncPolicy::Interval(Duration::from_secs(1)),
            ..DiskConfig::default()
        }),
    };
    let config = EngineConfig::new(tmp.path().join("state"), store.clone());
    let (window, batch, top_k) = (config.window_frames, config.batch_frames, config.top_k);
    let store_dir = config.state_dir.join("kv").join("cam");
    let frames = s.tiny_frames;
    let tenth = frames / 10;
    println!(
        "\n== tiny ({}): {size}x{size} frames, {tpf} tokens/frame, f32, libtorch threads {}; engine: window {window}, batch {batch}, top-{top_k}; int8 blocks, RAM tier 64 KiB + disk ==",
        model_dir.display(),
        tch::get_num_threads()
    );

    let engine = Engine::start(model, config)?;
    // Streams holding 100 and 1,000 blocks, asked alongside the long stream at 10,000
    // so that the three TTFT points share the machine's state of the moment.
    let mut b100 = Feed::open(&engine, "b100", size)?;
    b100.run_to(&engine, 100)?;
    let mut b1k = Feed::open(&engine, "b1000", size)?;
    b1k.run_to(&engine, 1_000)?;
    for id in ["b100", "b1000"] {
        engine_ask(&engine, id, QUESTIONS[0])?;
    }

    // The long stream, timed in chunks; asks stop the clock.
    let mut cam = Feed::open(&engine, "cam", size)?;
    let mut chunks: Vec<(u64, u64, f64)> = Vec::new();
    let mut ttft: BTreeMap<usize, AskStats> = BTreeMap::new();
    let mut rss_1k = None;
    let mut since_print = (0u64, 0.0f64);
    while cam.next < frames {
        let from = cam.next;
        let end = ((from / CHUNK + 1) * CHUNK).min(frames);
        let (secs, info) = cam.run_to(&engine, end)?;
        chunks.push((from, end, secs));
        since_print = (since_print.0 + end - from, since_print.1 + secs);
        if end % tenth == 0 || end == frames {
            println!(
                "  frames {}..{end}: {:.0} frames/s; stream: {} blocks, {} in RAM ({}), disk {}",
                end - since_print.0,
                since_print.0 as f64 / since_print.1,
                info.blocks,
                info.blocks_in_ram,
                mib(info.ram_bytes as f64),
                mib(info.disk_bytes as f64)
            );
            since_print = (0, 0.0);
        }
        if end == REPREFILL_FRAMES as u64 {
            rss_1k = Some(rss()?);
        }
        if end == 10_000 {
            for round in 0..s.asks {
                let q = QUESTIONS[round % QUESTIONS.len()];
                for (level, id) in [(100, "b100"), (1_000, "b1000"), (10_000, "cam")] {
                    let (t, f) = engine_ask(&engine, id, q)?;
                    ttft.entry(level).or_default().push(t, f);
                }
            }
            for (level, stats) in &ttft {
                println!("{}", stats.line(&format!("@{level}")));
            }
        }
    }
    let rss_end = rss()?;

    // Same-time control for (1): a fresh stream's first frames and this stream's
    // latest, in alternating chunks, so that a drift of the machine hits both alike.
    let mut fresh = Feed::open(&engine, "fresh", size)?;
    let (mut ctl_fresh, mut ctl_cam) = (Vec::new(), Vec::new());
    for _ in 0..(tenth / CHUNK).max(1) {
        let end = fresh.next + CHUNK;
        ctl_fresh.push(CHUNK as f64 / fresh.run_to(&engine, end)?.0);
        let end = cam.next + CHUNK;
        ctl_cam.push(CHUNK as f64 / cam.run_to(&engine, end)?.0);
    }
    // What a poll of the engine costs by stream length (the feeds poll while waiting).
    let info_cost = |id: &str| -> Result<f64> {
        let runs: Vec<f64> = (0..51)
            .map(|_| {
                let start = Instant::now();
                stream_info(&engine, id).map(|_| start.elapsed().as_secs_f64())
            })
            .collect::<Result<_>>()?;
        Ok(median(&runs))
    };
    let (info_small, info_large) = (info_cost("b100")?, info_cost("cam")?);
    println!(
        "  engine.info() round trip: {} for a stream of 100 blocks, {} for one of {} blocks",
        ms(info_small),
        ms(info_large),
        cam.next
    );
    engine.shutdown();
    drop((b100, b1k, fresh));
    let stream_s = started.elapsed().as_secs_f64();

    // (1) encode rate, last 10% against first 10%.
    let rates = |from: u64, to: u64| -> Vec<f64> {
        chunks
            .iter()
            .filter(|(a, b, _)| *a >= from && *b <= to)
            .map(|(a, b, secs)| (b - a) as f64 / secs)
            .collect()
    };
    let (first, last) = (
        median(&rates(0, tenth)),
        median(&rates(frames - tenth, frames)),
    );
    let ratio = last / first;
    let (cf, cc) = (median(&ctl_fresh), median(&ctl_cam));
    let control = cc / cf;
    println!(
        "  (1) encode, median of {CHUNK}-frame chunks: first 10% {first:.0} frames/s, last 10% {last:.0} frames/s: ratio {ratio:.3}; same-time control (alternating chunks): frames {}..{} {cc:.0} frames/s against a fresh stream's 0..{} {cf:.0} frames/s: ratio {control:.3}",
        frames,
        cam.next,
        fresh_end(tenth),
    );
    rows.push(Row::judged(
        "tiny",
        format!("(1) encode frames/s, last/first 10% of {frames}"),
        format!("{ratio:.3}"),
        ">= 0.9",
        ratio >= 0.9,
    ));
    rows.push(Row::judged(
        "tiny",
        "(1) same, same-time control (alternating chunks)".into(),
        format!("{control:.3}"),
        ">= 0.9",
        control >= 0.9,
    ));

    // (2) TTFT against the number of stored blocks.
    let med = |level: usize| ttft.get(&level).map(|s| median(&s.ttft));
    let (Some(t100), Some(t1k), Some(t10k)) = (med(100), med(1_000), med(10_000)) else {
        bail!("a TTFT point is missing");
    };
    let r = t10k / t100;
    // What grows with the store: the block-count-dependent part of answering alone.
    let (nd, loads) = nd_curve(&tmp.path().join("scan"), store.clone(), shape, tpf, top_k)?;
    println!(
        "  (2) TTFT @100 {}, @1000 {}, @10000 {}: @10k/@100 = {r:.3} (@1000/@100 = {:.3}); the block-count-dependent part alone (candidates, rep keys, scoring, top-{top_k}; {tpf}-token blocks): {}; {loads}",
        ms(t100),
        ms(t1k),
        ms(t10k),
        t1k / t100,
        NdPoint::describe(&nd)
    );
    rows.push(Row::judged(
        "tiny",
        "(2) TTFT@10k / TTFT@100".into(),
        format!("{r:.3}"),
        "<= 1.3",
        r <= 1.3,
    ));

    // (4) memory.
    let (rss1, anon1, file1) = rss_1k.ok_or_else(|| anyhow!("no RSS at 1000 frames"))?;
    let (rss2, anon2, file2) = rss_end;
    let (reopened, _) = KvStore::open(&store_dir, "cam", store)?;
    let (rep_reopened, blocks_reopened) = (reopened.rep_key_bytes() as u64, reopened.len() as u64);
    drop(reopened);
    if rep_reopened != blocks_reopened * rep_per_block {
        bail!(
            "the reopened store holds {rep_reopened} bytes of rep keys for {blocks_reopened} blocks, not {rep_per_block} a block: keys left RAM"
        );
    }
    let rep_1k = REPREFILL_FRAMES as u64 * rep_per_block;
    let rep_end = frames * rep_per_block;
    let growth = rss2 as f64 - rss1 as f64;
    let net = growth - (rep_end - rep_1k) as f64;
    let share = net / rss1 as f64;
    println!(
        "  (4) VmRSS @1000 {} (anon {}, file {}), @{frames} {} (anon {}, file {}): growth {}; rep-key index {} -> {} ({rep_per_block} B a block, as a store reopened after the run holds: {rep_reopened} B over {blocks_reopened} blocks); growth minus rep keys {} = {:.2}% of RSS@1000 ({:.0} B a block)",
        mib(rss1 as f64),
        mib(anon1 as f64),
        mib(file1 as f64),
        mib(rss2 as f64),
        mib(anon2 as f64),
        mib(file2 as f64),
        mib(growth),
        mib(rep_1k as f64),
        mib(rep_end as f64),
        mib(net),
        100.0 * share,
        net / (frames - REPREFILL_FRAMES as u64) as f64
    );
    rows.push(Row::note(
        "tiny",
        format!("(4) VmRSS growth 1k -> {frames} frames"),
        format!(
            "{} ({:.1}% of {})",
            mib(growth),
            100.0 * growth / rss1 as f64,
            mib(rss1 as f64)
        ),
    ));
    rows.push(Row::judged(
        "tiny",
        "(4) growth minus rep-key index / RSS@1k".into(),
        format!("{:.2}% ({})", 100.0 * share, mib(net)),
        "<= 10%",
        share <= 0.10,
    ));

    // (3) re-prefill of the same 1,000 frames, on a second copy of the model (after the
    // memory readings, which it would disturb).
    let model = vmodel::load(&model_dir, ModelOptions::cpu(Precision::F32))?;
    let frames_1k = embed_frames(model.as_ref(), REPREFILL_FRAMES as u64, 100)?;
    let embeds = reprefill_embeddings(model.as_ref(), &frames_1k, QUESTIONS[0])?;
    let tokens = embeds.tokens();
    full_prefill(model.as_ref(), &embeds)?;
    let runs: Vec<f64> = (0..3)
        .map(|_| full_prefill(model.as_ref(), &embeds))
        .collect::<Result<_>>()?;
    let full = median(&runs);
    let r = full / t1k;
    println!(
        "  (3) re-prefill of {REPREFILL_FRAMES} frames ({tokens} tokens, empty context): median {} of 3 against TTFT@1000 {}: {r:.1}x",
        ms(full),
        ms(t1k)
    );
    rows.push(Row::judged(
        "tiny",
        format!("(3) re-prefill({REPREFILL_FRAMES} frames) / TTFT@1000"),
        format!("{r:.1}x"),
        ">= 10x",
        r >= 10.0,
    ));
    println!(
        "  tiny part: {:.0} s (streams and asks {stream_s:.0} s)",
        started.elapsed().as_secs_f64()
    );
    if s.threads.is_none() {
        tch::set_num_threads(threads_before);
    }
    Ok(())
}

/// Frames the control's fresh stream receives.
fn fresh_end(tenth: u64) -> u64 {
    (tenth / CHUNK).max(1) * CHUNK
}

// ---------------------------------------------------------------------------------
// The 0.5B-shaped checkpoint, library-level

/// The KV shape of a model's blocks.
#[derive(Clone, Copy)]
struct KvShape {
    layers: i64,
    heads: i64,
    dim: i64,
    dtype: Kind,
    /// How the family's blocks lay their tokens out (what placing them needs).
    layout: BlockLayout,
}

impl KvShape {
    fn of(model: &dyn VideoLlm) -> Self {
        let t = model.decoder().config();
        Self {
            layers: t.num_hidden_layers,
            heads: t.kv_heads(),
            dim: t.head_dim(),
            dtype: model.dtype(),
            layout: model.block_layout(),
        }
    }

    /// Bytes of one block's representative keys (fp32, every layer).
    fn rep_key_bytes(&self) -> u64 {
        (self.layers * self.heads * self.dim * 4) as u64
    }
}

/// Random KV of one frame: `tokens` tokens in every layer.
fn random_kv(shape: KvShape, tokens: i64) -> Result<KvSegment> {
    let all = Tensor::f_randn(
        [shape.layers, 2, shape.heads, tokens, shape.dim],
        (Kind::Float, Device::Cpu),
    )?
    .f_to_kind(shape.dtype)?;
    let layers = (0..shape.layers)
        .map(|l| {
            Ok(LayerKv {
                keys: all.f_get(l)?.f_get(0)?,
                values: all.f_get(l)?.f_get(1)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(KvSegment { layers })
}

fn synthetic_block(shape: KvShape, seq: u64, tokens: i64) -> Result<Block> {
    let pts = Duration::from_millis(500 * seq);
    let wall = UNIX_EPOCH + Duration::from_secs(1_700_000_000) + pts;
    Ok(Block::new(seq, pts, wall, random_kv(shape, tokens)?)?.with_layout(shape.layout))
}

/// The part of answering whose cost depends on the number of stored blocks, as
/// `answer::prepare` runs it for retrieve mode, in four steps: list the candidates
/// (and map seqs to them), fetch their representative keys (`KvStore::rep_keys`),
/// score them per layer, take each layer's top-k. Seconds of each step.
fn n_dependent(store: &KvStore, queries: &[f32], layers: usize, k: usize) -> Result<[f64; 4]> {
    let t0 = Instant::now();
    let candidates: Vec<BlockMeta> = store.metas().copied().collect();
    let wanted: HashMap<u64, usize> = candidates
        .iter()
        .enumerate()
        .map(|(i, m)| (m.seq, i))
        .collect();
    let t1 = Instant::now();
    let mut keys: Vec<Arc<[f32]>> = vec![Arc::from(Vec::new()); candidates.len()];
    for (seq, key) in store.rep_keys()? {
        if let Some(&i) = wanted.get(&seq) {
            keys[i] = key;
        }
    }
    let t2 = Instant::now();
    let scores = retrieval::score_blocks(queries, layers, &keys);
    let t3 = Instant::now();
    let selection = retrieval::select_top_k(&scores, k, LayerSelection::PerLayer);
    let t4 = Instant::now();
    std::hint::black_box(&selection);
    Ok([t1 - t0, t2 - t1, t3 - t2, t4 - t3].map(|d| d.as_secs_f64()))
}

/// [`n_dependent`] at one block count: the median total and each step's median.
struct NdPoint {
    blocks: usize,
    total: f64,
    steps: [f64; 4],
}

impl NdPoint {
    fn describe(points: &[NdPoint]) -> String {
        let totals = points
            .iter()
            .map(|p| format!("@{} {}", p.blocks, ms(p.total)))
            .collect::<Vec<_>>()
            .join(", ");
        match points.last() {
            Some(p) => format!(
                "{totals} (@{}: candidates and seq map {}, KvStore::rep_keys {}, score_blocks {}, select_top_k {})",
                p.blocks,
                ms(p.steps[0]),
                ms(p.steps[1]),
                ms(p.steps[2]),
                ms(p.steps[3])
            ),
            None => totals,
        }
    }
}

/// [`n_dependent`] at each of [`LEVELS`] blocks (median of 5 after a warm-up), over a
/// store in `dir` of random `tokens`-token blocks of `shape`; and a line on loading
/// `k` blocks from the disk tier and from RAM (`KvStore::get_many`).
fn nd_curve(
    dir: &Path,
    config: StoreConfig,
    shape: KvShape,
    tokens: i64,
    k: usize,
) -> Result<(Vec<NdPoint>, String)> {
    let (mut store, _) = KvStore::open(dir, "scan", config)?;
    let dim = shape.layers * shape.heads * shape.dim;
    let queries = Vec::<f32>::try_from(&Tensor::f_randn([dim], (Kind::Float, Device::Cpu))?)?;
    let layers = shape.layers as usize;
    let mut out = Vec::new();
    let mut seq = 0u64;
    for &level in &LEVELS {
        while store.len() < level {
            store.append(&synthetic_block(shape, seq, tokens)?)?;
            seq += 1;
        }
        n_dependent(&store, &queries, layers, k)?;
        let runs: Vec<[f64; 4]> = (0..5)
            .map(|_| n_dependent(&store, &queries, layers, k))
            .collect::<Result<_>>()?;
        let totals: Vec<f64> = runs.iter().map(|r| r.iter().sum()).collect();
        let steps = [0, 1, 2, 3].map(|i| median(&runs.iter().map(|r| r[i]).collect::<Vec<_>>()));
        out.push(NdPoint {
            blocks: level,
            total: median(&totals),
            steps,
        });
    }
    // Loading: `k` old blocks (evicted from the RAM tier, so read from disk), then the
    // same again (now in RAM).
    let n = store.len() as u64;
    let seqs: Vec<u64> = (0..k as u64).map(|i| i * (n / 2) / k as u64).collect();
    let start = Instant::now();
    let cold = store.get_many(&seqs)?;
    let disk = start.elapsed().as_secs_f64();
    let from_disk = cold.iter().filter(|(_, t)| *t == Tier::Disk).count();
    let start = Instant::now();
    store.get_many(&seqs)?;
    let ram = start.elapsed().as_secs_f64();
    Ok((
        out,
        format!(
            "KvStore::get_many of {k} blocks: {} ({from_disk} from disk), again {} (from RAM)",
            ms(disk),
            ms(ram)
        ),
    ))
}

/// FLOP/s of a decoder-MLP-sized product ([196 × 896] × [896 × 4864]) in `kind`.
fn matmul_rate(kind: Kind) -> Result<f64> {
    let x = Tensor::f_randn([196, 896], (Kind::Float, Device::Cpu))?.f_to_kind(kind)?;
    let w = Tensor::f_randn([4864, 896], (Kind::Float, Device::Cpu))?.f_to_kind(kind)?;
    let _ = x.f_linear::<Tensor>(&w, None)?;
    let runs: Vec<f64> = (0..3)
        .map(|_| {
            let start = Instant::now();
            x.f_linear::<Tensor>(&w, None)
                .map(|_| start.elapsed().as_secs_f64())
        })
        .collect::<Result<_, _>>()?;
    Ok(2.0 * 196.0 * 896.0 * 4864.0 / median(&runs))
}

/// Analytic FLOPs of a decoder prefill of `t` tokens from an empty context (matmuls
/// and causal attention; see `vstreamd::model::family::prefill_flops`).
fn prefill_flops(model: &dyn VideoLlm, t: f64) -> f64 {
    vmodel::family::prefill_flops(model.decoder().config(), t)
}

/// One question, library-level, as the engine thread answers it: (TTFT seconds from
/// the start of `prepare` to the first token, figures).
fn library_ask(
    model: &dyn VideoLlm,
    layout: &PromptLayout,
    ctx: &mut StreamCtx,
    top_k: usize,
    question: &str,
) -> Result<(f64, Figures)> {
    let req = AskRequest {
        stream: ctx.id.to_string(),
        question: question.into(),
        mode: AskMode::Retrieve,
        max_new_tokens: Some(1),
        ..Default::default()
    };
    let start = Instant::now();
    let mut prepared = answer::prepare(
        model,
        layout,
        ctx,
        &req,
        AskDefaults {
            top_k,
            layer_selection: LayerSelection::PerLayer,
            recent_frames: None,
        },
        SystemTime::now(),
    )?;
    let mut ttft = None;
    answer::generate(
        model,
        &mut prepared,
        1,
        Sampling::default(),
        &[],
        || ttft = Some(start.elapsed()),
        |_, _| true,
    )?;
    let ttft = ttft.ok_or_else(|| anyhow!("no first token"))?;
    Ok((ttft.as_secs_f64(), prepared.figures.clone()))
}

fn big(s: &Settings, rows: &mut Vec<Row>) -> Result<()> {
    let started = Instant::now();
    // The summary's label: the default checkpoint's shape, or any other checkpoint.
    let label = if s.big_model.is_some() { "big" } else { "0.5B" };
    let dir = match &s.big_model {
        Some(dir) => {
            println!(
                "\n== {} (VSTREAMD_BENCH_BIG_MODEL, library-level) ==",
                dir.display()
            );
            dir.clone()
        }
        None => {
            println!("\n== 0.5B-shaped checkpoint (random weights, library-level) ==");
            checkpoint::ensure(
                &repo().join("target/bench-checkpoints/llava_ov_0p5b_shape_rs"),
                &checkpoint::LLAVA_OV_0P5B,
            )?
        }
    };
    let (f32_rate, bf16_rate) = (matmul_rate(Kind::Float)?, matmul_rate(Kind::BFloat16)?);
    let precision = s.big_dtype.unwrap_or(if bf16_rate > f32_rate {
        Precision::Bf16
    } else {
        Precision::F32
    });
    println!(
        "  a [196 x 896] x [896 x 4864] product runs at {:.1} GFLOP/s in f32 and {:.1} GFLOP/s in bf16 here: running {precision:?}{}",
        f32_rate / 1e9,
        bf16_rate / 1e9,
        if s.big_dtype.is_some() {
            " (VSTREAMD_BENCH_BIG_DTYPE)"
        } else {
            " (the faster)"
        }
    );
    let load_start = Instant::now();
    let model = vmodel::load(&dir, ModelOptions::cpu(precision))
        .with_context(|| format!("loading {}", dir.display()))?;
    let model = model.as_ref();
    let summary = model.summary();
    println!(
        "  model: {} family, {:.0}M parameters, tower {} layers, decoder {} layers x {} hidden, {} KV heads x {}, {} tokens/frame; loaded in {:.1} s",
        summary.family,
        summary.parameters as f64 / 1e6,
        summary.vision_layers,
        summary.layers,
        summary.hidden_size,
        summary.kv_heads,
        summary.head_dim,
        summary.tokens_per_frame,
        load_start.elapsed().as_secs_f64()
    );
    let layout = PromptLayout::new(model)?;
    let defaults = EngineConfig::new(PathBuf::new(), store_config(s.big_quant));
    let (window, top_k) = (defaults.window_frames, defaults.top_k);
    let tpf = model.tokens_per_frame();
    let size = square_frames(model)?;
    let shape = KvShape::of(model);
    // Under target/ rather than /tmp, which may be RAM.
    std::fs::create_dir_all(repo().join("target"))?;
    let tmp = tempfile::tempdir_in(repo().join("target"))?;

    // (1) encode rate. The tower sees one frame at a time, so its cost cannot depend
    // on the stream: it is timed on a few frames. What could grow — the windowed
    // prefill and the store — is timed on every frame of a longer stream fed with
    // those frames' embeddings in turn. A frame's encode time is the tower's median
    // plus its own prefill and store.
    let part = Instant::now();
    let n = s.big_frames;
    let mut tower = Vec::new();
    let mut kept = Vec::new();
    // Frame 0 warms libtorch up and is not counted.
    let per = model.frames_per_block() as u64;
    for i in 0..=BIG_TOWER_FRAMES {
        // One block: a frame, or a family's group of frames.
        let raw = frames_tensor(i * per, per, size, size)?;
        let t0 = Instant::now();
        let pixels = model.preprocess(&raw)?;
        let embeds = model.encode_frames(&pixels)?;
        if i > 0 {
            tower.push(t0.elapsed().as_secs_f64());
        }
        kept.push(embeds);
    }
    let tower_s = median(&tower);
    let open = |name: &str| {
        StreamCtx::open(
            model,
            &layout,
            &tmp.path().join(name),
            name,
            store_config(s.big_quant),
            window,
        )
        .map(|(ctx, _)| ctx)
    };
    // Encodes block `i` of `ctx` (embeddings taken in turn); seconds.
    let stamps_of = |first: u64, blocks: u64| -> Vec<FrameStamp> {
        (first * per..(first + blocks) * per)
            .map(|f| FrameStamp {
                pts: Duration::from_millis(500 * f),
                wall: SystemTime::now(),
            })
            .collect()
    };
    let encode = |ctx: &mut StreamCtx, i: usize| -> Result<f64> {
        let stamps = stamps_of(i as u64, 1);
        let start = Instant::now();
        ctx.encode(model, &kept[i % kept.len()], &stamps)?;
        Ok(start.elapsed().as_secs_f64())
    };
    let mut long = open("encode")?;
    // Frame 0 is a warm-up again.
    encode(&mut long, 0)?;
    let prefill: Vec<f64> = (1..=n)
        .map(|i| encode(&mut long, i))
        .collect::<Result<_>>()?;
    // Same-time control: a fresh stream's first frames and this stream's next ones,
    // alternating frame by frame, so that a drift of the machine hits both alike.
    let tenth = (n / 10).max(1);
    let rounds = tenth.max(3);
    let mut fresh = open("fresh")?;
    encode(&mut fresh, 0)?;
    let (mut ctl_fresh, mut ctl_long) = (Vec::new(), Vec::new());
    for r in 1..=rounds {
        ctl_fresh.push(encode(&mut fresh, r)?);
        ctl_long.push(encode(&mut long, n + r)?);
    }
    drop((long, fresh));
    let (p_first, p_last) = (median(&prefill[..tenth]), median(&prefill[n - tenth..]));
    let ratio = (tower_s + p_first) / (tower_s + p_last);
    let (c_fresh, c_long) = (median(&ctl_fresh), median(&ctl_long));
    let control = (tower_s + c_fresh) / (tower_s + c_long);
    let frame_s = tower_s + p_last;
    println!(
        "  (1) tower {:.2} s/frame (median of {BIG_TOWER_FRAMES}); prefill+store over {n} frames, window {window}, s/frame: {}; first {tenth} {:.2} s, last {tenth} {:.2} s: encode frames/s last/first 10% = {ratio:.3} (prefill+store alone {:.3}); same-time control, frames {}..={} against a fresh stream's 1..={rounds}, alternating: {:.2} s and {:.2} s, ratio {control:.3} (alone {:.3}); {:.0} s",
        tower_s,
        prefill
            .iter()
            .map(|p| format!("{p:.1}"))
            .collect::<Vec<_>>()
            .join(" "),
        p_first,
        p_last,
        p_first / p_last,
        n + 1,
        n + rounds,
        c_long,
        c_fresh,
        c_fresh / c_long,
        part.elapsed().as_secs_f64()
    );
    rows.push(Row::judged(
        label,
        format!("(1) encode frames/s, last/first 10% of {n}"),
        format!("{ratio:.3}"),
        ">= 0.9",
        ratio >= 0.9,
    ));
    rows.push(Row::judged(
        label,
        "(1) same, same-time control (alternating frames)".into(),
        format!("{control:.3}"),
        ">= 0.9",
        control >= 0.9,
    ));

    // (2) TTFT with synthesised stored blocks: one stream per level, asked in turns.
    let part = Instant::now();
    // The embeddings of the last `window` frames encoded in (1).
    let last_frames: Vec<&Tensor> = (n + 1 - window.min(n)..=n)
        .map(|i| &kept[i % kept.len()])
        .collect();
    let window_embeds = Tensor::f_cat(&last_frames, 0)?;
    let probe = CompressedBlock::compress(&synthetic_block(shape, 0, tpf)?, s.big_quant)?;
    // A record's header and checksums on top of the payload.
    let block_bytes = probe.stored_len() as u64 + 64;
    let free = checkpoint::free_bytes(tmp.path())?;
    let allowed = s.big_disk_bytes.min(free.saturating_sub(1 << 30));
    let mut used = 0u64;
    let mut streams: Vec<(usize, StreamCtx)> = Vec::new();
    for &level in &LEVELS {
        let need = (level + window) as u64 * block_bytes;
        if used + need > allowed {
            break;
        }
        used += need;
        let fill = Instant::now();
        let dir = tmp.path().join(format!("r{level}"));
        let id = format!("r{level}");
        {
            let (mut ctx, _) =
                StreamCtx::open(model, &layout, &dir, &id, store_config(s.big_quant), window)?;
            for seq in 0..level as u64 {
                ctx.store.append(&synthetic_block(shape, seq, tpf)?)?;
            }
            ctx.store.sync()?;
        }
        let fill_s = fill.elapsed().as_secs_f64();
        // Reopened: the store recovered from disk, then a real window on top.
        let reopen = Instant::now();
        let (mut ctx, _) =
            StreamCtx::open(model, &layout, &dir, &id, store_config(s.big_quant), window)?;
        let reopen_s = reopen.elapsed().as_secs_f64();
        ctx.encode(model, &window_embeds, &stamps_of(0, window as u64))?;
        println!(
            "  (2) {level} blocks of {} ({:?}) written in {fill_s:.1} s, recovered in {reopen_s:.1} s; disk {}",
            mib(block_bytes as f64),
            s.big_quant,
            mib(ctx.store.disk_bytes() as f64)
        );
        streams.push((level, ctx));
    }
    let real: Vec<usize> = streams.iter().map(|(l, _)| *l).collect();
    println!(
        "  (2) disk allowed for blocks {} (VSTREAMD_BENCH_BIG_DISK_GB; free {}): levels measured for real {real:?}",
        mib(allowed as f64),
        mib(free as f64)
    );
    let mut stats: BTreeMap<usize, AskStats> = BTreeMap::new();
    for ctx in streams.iter_mut().map(|(_, c)| c) {
        library_ask(model, &layout, ctx, top_k, QUESTIONS[0])?;
    }
    for round in 0..s.asks {
        let q = QUESTIONS[round % QUESTIONS.len()];
        for (level, ctx) in &mut streams {
            let (t, f) = library_ask(model, &layout, ctx, top_k, q)?;
            stats.entry(*level).or_default().push(t, f);
        }
    }
    for (level, st) in &stats {
        println!("{}", st.line(&format!("@{level}")));
    }
    let ttft: BTreeMap<usize, f64> = stats.iter().map(|(l, s)| (*l, median(&s.ttft))).collect();
    let t100 = ttft.get(&100).copied();
    let t1k = ttft.get(&1_000).copied();
    if let (Some(a), Some(b)) = (t100, t1k) {
        rows.push(Row::judged(
            label,
            "(2) TTFT@1000 / TTFT@100 (measured)".into(),
            format!("{:.3}", b / a),
            "<= 1.3",
            b / a <= 1.3,
        ));
    }
    if let (Some(a), Some(b)) = (t100, ttft.get(&10_000)) {
        rows.push(Row::judged(
            label,
            "(2) TTFT@10k / TTFT@100 (measured)".into(),
            format!("{:.3}", b / a),
            "<= 1.3",
            b / a <= 1.3,
        ));
    } else if let (Some(a), Some(b)) = (t100, t1k) {
        // 10,000 real blocks do not fit: the block-count-dependent part alone, over
        // one-token blocks with representative keys of the real shape.
        let (nd, loads) = nd_curve(
            &tmp.path().join("scan"),
            store_config(s.big_quant),
            shape,
            1,
            top_k,
        )?;
        let at = |l: usize| nd.iter().find(|p| p.blocks == l).map(|p| p.total);
        let (Some(n1k), Some(n10k)) = (at(1_000), at(10_000)) else {
            bail!("a point of the block-count-dependent part is missing");
        };
        let estimate = b + (n10k - n1k);
        println!(
            "  (2) 10,000 blocks of {} do not fit the disk allowance: the block-count-dependent part of answering (candidates, rep keys, scoring, top-{top_k}) measured alone over one-token blocks: {}; TTFT@10k ESTIMATED as TTFT@1000 + ({} - {}) = {}; ({loads}, one-token blocks)",
            mib(block_bytes as f64),
            NdPoint::describe(&nd),
            ms(n10k),
            ms(n1k),
            ms(estimate)
        );
        rows.push(Row::judged(
            label,
            "(2) TTFT@10k (ESTIMATED) / TTFT@100".into(),
            format!("{:.3}", estimate / a),
            "<= 1.3",
            estimate / a <= 1.3,
        ));
    }
    println!("  (2) took {:.0} s", part.elapsed().as_secs_f64());

    // (3) re-prefill of as many frames as fit the time allowance, against TTFT@1000.
    let part = Instant::now();
    let kept = Tensor::f_cat(&kept, 0)?;
    let cycled = |frames: usize| -> Result<Tensor> {
        let idx: Vec<i64> = (0..frames as i64).map(|i| i % kept.size()[0]).collect();
        Ok(kept.f_index_select(0, &Tensor::from_slice(&idx))?)
    };
    let prompt_extra = reprefill_embeddings(model, &cycled(1)?, QUESTIONS[0])?.tokens() - tpf;
    let tokens = |frames: usize| frames as f64 * tpf as f64 + prompt_extra as f64;
    full_prefill(
        model,
        &reprefill_embeddings(model, &cycled(1)?, QUESTIONS[0])?,
    )?;
    let calib_frames = 2;
    let calib = full_prefill(
        model,
        &reprefill_embeddings(model, &cycled(calib_frames)?, QUESTIONS[0])?,
    )?;
    let flop_rate = prefill_flops(model, tokens(calib_frames)) / calib;
    let predict = |frames: usize| prefill_flops(model, tokens(frames)) / flop_rate;
    let mut frames = calib_frames;
    while frames < REPREFILL_FRAMES && predict(frames + 1) <= s.big_prefill_s {
        frames += 1;
    }
    let embeds = reprefill_embeddings(model, &cycled(frames)?, QUESTIONS[0])?;
    // TTFT@1000 again, right before and after the re-prefill, so that both sides of
    // the ratio see the machine in the same state.
    let mut around = Vec::new();
    let mut ask_1k = |round: usize| -> Result<()> {
        if let Some((_, ctx)) = streams.iter_mut().find(|(l, _)| *l == 1_000) {
            let q = QUESTIONS[round % QUESTIONS.len()];
            around.push(library_ask(model, &layout, ctx, top_k, q)?.0);
        }
        Ok(())
    };
    for round in 0..3 {
        ask_1k(round)?;
    }
    let full = if frames == calib_frames {
        calib
    } else {
        full_prefill(model, &embeds)?
    };
    for round in 3..6 {
        ask_1k(round)?;
    }
    drop(streams);
    let t1k = t1k.map(|_| median(&around));
    let full_1k = predict(REPREFILL_FRAMES) * full / predict(frames);
    println!(
        "  (3) re-prefill calibration: {calib_frames} frames in {calib:.2} s ({:.0} GFLOP/s); {frames} frames ({} tokens) predicted {:.0} s, took {full:.1} s",
        flop_rate / 1e9,
        embeds.tokens(),
        predict(frames)
    );
    if let Some(t1k) = t1k {
        let r = full / t1k;
        println!(
            "  (3) re-prefill of {frames} frames (NOT 1,000: time allowance) {full:.1} s against TTFT@1000 {} (median of 3 asks just before and 3 just after): {r:.1}x, a lower bound on the 1,000-frame ratio; 1,000 frames extrapolated by FLOPs: {:.0} s, {:.0}x (estimate)",
            ms(t1k),
            full_1k,
            full_1k / t1k
        );
        rows.push(Row::judged(
            label,
            format!("(3) re-prefill({frames} frames) / TTFT@1000 (lower bound)"),
            format!("{r:.1}x"),
            ">= 10x",
            r >= 10.0,
        ));
        rows.push(Row::note(
            label,
            "(3) re-prefill(1000, extrapolated) / TTFT@1000".into(),
            format!("{:.0}x (estimate)", full_1k / t1k),
        ));
    } else {
        println!(
            "  (3) no TTFT@1000 to compare with (1,000 blocks did not fit the disk allowance)"
        );
    }
    println!("  (3) took {:.0} s", part.elapsed().as_secs_f64());

    // (4) skipped.
    let hours = 50_000.0 * frame_s / 3600.0;
    println!(
        "  (4) skipped: 50,000 frames of this model at {frame_s:.0} s each would take {hours:.0} h here"
    );
    rows.push(Row::note(
        label,
        "(4) memory at 1k / 50k frames".into(),
        format!("skipped (50k frames ~ {hours:.0} h here)"),
    ));
    println!("  {label} part: {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The 0.5B part's store: a RAM tier of 32 MiB (≈ 45 int4 blocks) over the disk tier.
fn store_config(quant: Quant) -> StoreConfig {
    StoreConfig {
        quant,
        ram_budget_bytes: 32 << 20,
        rep_key_budget_bytes: 512 << 20,
        dedup_threshold: None,
        disk: Some(DiskConfig {
            segment_bytes: 64 << 20,
            sync: SyncPolicy::Interval(Duration::from_secs(1)),
            ..DiskConfig::default()
        }),
    }
}

fn main() -> Result<()> {
    let s = Settings::from_env()?;
    if let Some(n) = s.threads {
        tch::set_num_threads(n);
    }
    let _no_grad = tch::no_grad_guard();
    let started = Instant::now();
    println!(
        "vstreamd engine bench: libtorch threads {}, {} asks per TTFT point",
        tch::get_num_threads(),
        s.asks
    );
    let mut rows = Vec::new();
    if s.tiny {
        tiny(&s, &mut rows)?;
    } else {
        println!("\n== tiny: skipped (VSTREAMD_BENCH_TINY=0) ==");
    }
    if s.big {
        big(&s, &mut rows)?;
    } else {
        println!("\n== 0.5B-shaped: skipped (VSTREAMD_BENCH_BIG=0) ==");
    }
    print_table(&rows);
    println!("\ntotal {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

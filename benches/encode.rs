//! Frame-encoding throughput of the model runtime: how many video frames per second
//! vstreamd turns into stored key/value blocks, and how close that comes to the
//! machine's matmul ceiling.
//!
//! Encoding one frame is what the streaming engine does with every frame it keeps, for
//! any family ([`vstreamd::model::load`]): `preprocess` (uint8 → normalised pixels) →
//! `encode_frames` (the family's tower and projector or connector; frames go through the
//! tower `batch` at a time) → one decoder prefill of each block's chunk (a block is a
//! frame, or Qwen2.5-VL's temporal patch of two frames; its chunk: 196 tokens for
//! LLaVA-OneVision-0.5B; for SmolVLM2 its timestamp line, wrapper tokens and 64 visual
//! tokens; for Qwen2.5-VL-3B at 448 px 256 merged tokens) at the family's positions of
//! a first block ([`VideoLlm::block_positions`]) against an *empty* context, returning
//! the block's KV (`append: false, return_kv: true`). Every block is prefilled on its
//! own, as a store of per-block KV needs; no growing context, so the cost per frame
//! does not depend on how many frames came before.
//!
//! Measured, in one process and one run:
//! - frames/s: a warm-up pass, then `iters` passes over `frames` synthetic frames; the
//!   median pass (also split into preprocess / tower / prefill);
//! - achieved FLOP/s: analytic FLOPs per frame (the family's
//!   [`VideoLlm::encode_flops`]) × frames/s,
//!   against a ceiling measured here, a 2048³ product `a · bᵀ` (a linear layer's
//!   layout) in the model dtype through libtorch. Shared machines drift (this 2-core one
//!   by up to 2× within seconds), so the ceiling is sampled right before and after
//!   every pass, each pass is divided by the samples next to it, and the median of
//!   those shares is the figure reported
//!   (the share of the overall median ceiling is printed too);
//! - memory: VmHWM from /proc/self/status over the whole process, and again for the
//!   encode passes alone (the high-water mark reset through /proc/self/clear_refs after
//!   loading).
//!
//! The frames are made from a formula (see [`synthetic_frames`]) that
//! `scripts/bench_encode.py` reproduces, so `transformers` encodes the very same pixels;
//! both print a checksum of them.
//!
//! Configured by environment variables (`cargo bench` passes `--bench` as the only
//! argument, which is ignored):
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `VSTREAMD_BENCH_MODEL` | `tests/fixtures/llava_ov/tiny_a` | checkpoint directory |
//! | `VSTREAMD_BENCH_DTYPE` | `bf16` | `f32`, `bf16` or `f16` |
//! | `VSTREAMD_BENCH_FRAMES` | 8 | frames per timed pass |
//! | `VSTREAMD_BENCH_BATCH` | 4 | frames per vision-tower call |
//! | `VSTREAMD_BENCH_ITERS` | 5 | timed passes (after one warm-up pass) |
//! | `VSTREAMD_BENCH_FRAME_SIZE` | the tower's input size | `HxW` of the raw frames |
//! | `VSTREAMD_BENCH_THREADS` | libtorch's default (all cores) | `tch::set_num_threads` |
//! | `VSTREAMD_BENCH_DUMP` | unset | write the first pass's outputs here (safetensors) |
//!
//! Besides the human-readable report, the last line is `BENCH_JSON {...}` for
//! `scripts/bench_encode.py --compare`, which runs this bench and `transformers` side
//! by side and prints the ratios.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use support::{env_or, median};
use tch::{Kind, Tensor};
use vstreamd::model::{AttnContext, Cursor, ForwardOptions, ModelOptions, Precision, VideoLlm};

/// Side of the square matmul that gives the ceiling.
const CEILING_N: i64 = 2048;
/// Ceiling samples taken before the first encode pass and after each.
const CEILING_SAMPLES: usize = 10;

struct Settings {
    model: PathBuf,
    precision: Precision,
    dtype_name: String,
    frames: i64,
    batch: i64,
    iters: usize,
    frame_size: Option<(i64, i64)>,
    threads: Option<i32>,
    dump: Option<PathBuf>,
}

impl Settings {
    fn from_env() -> Result<Self> {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let model = std::env::var_os("VSTREAMD_BENCH_MODEL")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join("tests/fixtures/llava_ov/tiny_a"));
        let dtype_name: String = env_or("VSTREAMD_BENCH_DTYPE", "bf16".to_string())?;
        let precision: Precision = dtype_name.parse()?;
        let frame_size = match std::env::var("VSTREAMD_BENCH_FRAME_SIZE") {
            Ok(s) => {
                let (h, w) = s
                    .split_once('x')
                    .context("VSTREAMD_BENCH_FRAME_SIZE is HxW")?;
                Some((h.parse()?, w.parse()?))
            }
            Err(_) => None,
        };
        let threads = match std::env::var("VSTREAMD_BENCH_THREADS") {
            Ok(s) => Some(s.parse()?),
            Err(_) => None,
        };
        let s = Self {
            model,
            precision,
            dtype_name,
            frames: env_or("VSTREAMD_BENCH_FRAMES", 8)?,
            batch: env_or("VSTREAMD_BENCH_BATCH", 4)?,
            iters: env_or("VSTREAMD_BENCH_ITERS", 5)?,
            frame_size,
            threads,
            dump: std::env::var_os("VSTREAMD_BENCH_DUMP").map(PathBuf::from),
        };
        if s.frames < 1 || s.batch < 1 || s.iters < 1 {
            bail!("frames, batch and iters must be positive");
        }
        Ok(s)
    }
}

/// Frames `first..first+n` as uint8 [n, 3, h, w]:
/// `v = (7x + 5y + 60c + 40i + (x·y mod 31)) mod 256`, which `bench_encode.py` repeats.
fn synthetic_frames(first: i64, n: i64, h: i64, w: i64) -> Result<Tensor> {
    let opts = (Kind::Int64, tch::Device::Cpu);
    let x = Tensor::f_arange(w, opts)?.f_view([1, 1, 1, w])?;
    let y = Tensor::f_arange(h, opts)?.f_view([1, 1, h, 1])?;
    let c = Tensor::f_arange(3, opts)?.f_view([1, 3, 1, 1])?;
    let i = Tensor::f_arange_start(first, first + n, opts)?.f_view([n, 1, 1, 1])?;
    let xy = x.f_mul(&y)?.f_remainder(31)?;
    let v = x
        .f_mul_scalar(7)?
        .f_add(&y.f_mul_scalar(5)?)?
        .f_add(&c.f_mul_scalar(60)?)?
        .f_add(&i.f_mul_scalar(40)?)?
        .f_add(&xy)?
        .f_remainder(256)?;
    Ok(v.f_to_kind(Kind::Uint8)?.f_contiguous()?)
}

/// kB values of `VmHWM` and `VmRSS`.
fn memory_kb() -> (i64, i64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> i64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(-1)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0); false where that is refused.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The matmul ceiling: an N³ product `a · bᵀ` of two random [N, N] matrices in the model dtype.
struct Ceiling {
    a: Tensor,
    b: Tensor,
    /// Every sample taken, FLOP/s.
    samples: Vec<f64>,
}

impl Ceiling {
    fn new(kind: Kind) -> Result<Self> {
        let opts = (kind, tch::Device::Cpu);
        let c = Self {
            a: Tensor::f_randn([CEILING_N, CEILING_N], opts)?,
            b: Tensor::f_randn([CEILING_N, CEILING_N], opts)?,
            samples: Vec::new(),
        };
        for _ in 0..3 {
            let _ = c.product()?;
        }
        Ok(c)
    }

    /// `a · bᵀ`: the layout of a linear layer (weights stored `[out, in]`), which is what
    /// the model's matmuls are. libtorch picks its kernel by layout, and on CPUs without
    /// native bf16 the plain `a · b` bf16 kernel is several times slower still than this
    /// one (measured on an AVX2 machine: 0.2–1.4 vs 10 GFLOP/s), so `a · b` would
    /// understate the ceiling the model could reach.
    fn product(&self) -> Result<Tensor> {
        Ok(self.a.f_matmul(&self.b.f_tr()?)?)
    }

    /// Takes `n` timed samples; returns them (and keeps them).
    fn sample(&mut self, n: usize) -> Result<Vec<f64>> {
        let flops = 2.0 * (CEILING_N as f64).powi(3);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let start = Instant::now();
            let c = self.product()?;
            out.push(flops / start.elapsed().as_secs_f64());
            drop(c);
        }
        self.samples.extend_from_slice(&out);
        Ok(out)
    }
}

/// Seconds spent in each stage of one pass over all frames.
#[derive(Default, Clone, Copy)]
struct PassTimes {
    preprocess: f64,
    tower: f64,
    prefill: f64,
}

impl PassTimes {
    fn total(&self) -> f64 {
        self.preprocess + self.tower + self.prefill
    }
}

/// What the first pass produced, for `VSTREAMD_BENCH_DUMP`.
struct FirstOutputs {
    frame_embeddings: Tensor,
    hidden0: Tensor,
    values0: Tensor,
}

fn encode_pass(
    model: &dyn VideoLlm,
    frames: &Tensor,
    batch: i64,
    keep: bool,
) -> Result<(PassTimes, Option<FirstOutputs>)> {
    let n = frames.size()[0];
    let opts = ForwardOptions {
        return_kv: true,
        ..Default::default()
    };
    let mut times = PassTimes::default();
    let mut first = None;
    let mut start = 0;
    while start < n {
        let len = batch.min(n - start);
        let chunk = frames.f_narrow(0, start, len)?;
        let t0 = Instant::now();
        let pixels = model.preprocess(&chunk)?;
        let t1 = Instant::now();
        let embeddings = model.encode_frames(&pixels)?;
        let t2 = Instant::now();
        for f in 0..embeddings.size()[0] {
            let embeds = model.frame_chunk(&embeddings.f_get(f)?, Duration::ZERO)?;
            let positions = model.block_positions(
                &mut Cursor::new(1.0),
                &[(embeds.size()[0], model.block_layout())],
            )?;
            let mut ctx = AttnContext::new(model.decoder().num_layers());
            let out = model
                .decoder()
                .forward(&embeds, &positions, &mut ctx, opts)?;
            if keep && start == 0 && f == 0 {
                let kv = out.kv.context("prefill returned no KV")?;
                first = Some(FirstOutputs {
                    frame_embeddings: embeddings.f_to_kind(Kind::Float)?.f_contiguous()?,
                    hidden0: out.hidden.f_to_kind(Kind::Float)?.f_contiguous()?,
                    values0: kv.layers[0].values.f_to_kind(Kind::Float)?.f_contiguous()?,
                });
            }
        }
        let t3 = Instant::now();
        times.preprocess += (t1 - t0).as_secs_f64();
        times.tower += (t2 - t1).as_secs_f64();
        times.prefill += (t3 - t2).as_secs_f64();
        start += len;
    }
    Ok((times, first))
}

fn main() -> Result<()> {
    let s = Settings::from_env()?;
    if let Some(n) = s.threads {
        tch::set_num_threads(n);
    }
    let _no_grad = tch::no_grad_guard();
    let kind = s.precision.kind();

    let load_start = Instant::now();
    let model = vstreamd::model::load(&s.model, ModelOptions::cpu(s.precision))
        .with_context(|| format!("loading {}", s.model.display()))?;
    let model: &dyn VideoLlm = &*model;
    let load_s = load_start.elapsed().as_secs_f64();
    let (hwm_load_kb, rss_loaded_kb) = memory_kb();

    let per = model.frames_per_block() as i64;
    if s.batch % per != 0 || s.frames % per != 0 {
        bail!(
            "{} blocks hold {per} frames: VSTREAMD_BENCH_BATCH ({}) and VSTREAMD_BENCH_FRAMES ({}) must be multiples of it",
            model.family(),
            s.batch,
            s.frames
        );
    }
    let (th, tw) = model.frame_size();
    let (fh, fw) = s.frame_size.unwrap_or((i64::from(th), i64::from(tw)));
    let frames = synthetic_frames(0, s.frames, fh, fw)?;
    let checksum = frames
        .f_to_kind(Kind::Int64)?
        .f_sum(Kind::Int64)?
        .int64_value(&[]);
    let tokens = model.tokens_per_frame();
    let flops = model.encode_flops();
    let threads = tch::get_num_threads();
    let summary = model.summary();

    println!(
        "vstreamd encode bench: {} ({})",
        s.model.display(),
        model.family()
    );
    println!(
        "  model: {:.1}M parameters, vision {} layers, decoder {} layers x {} hidden, {} tokens a block of {per} frame(s)",
        summary.parameters as f64 / 1e6,
        summary.vision_layers,
        summary.layers,
        summary.hidden_size,
        tokens
    );
    println!(
        "  dtype {}, libtorch threads {threads} (interop {}), {} frames {fh}x{fw} (checksum {checksum}) per pass, tower batch {}, {} passes after 1 warm-up",
        s.dtype_name,
        tch::get_num_interop_threads(),
        s.frames,
        s.batch,
        s.iters
    );
    println!("  load: {load_s:.2} s, VmHWM {hwm_load_kb} kB, VmRSS after load {rss_loaded_kb} kB");

    let mut ceiling = Ceiling::new(kind)?;
    // Peak so far (load, frames, ceiling), then a fresh high-water mark for encoding.
    let (hwm_pre_kb, _) = memory_kb();
    let peak_reset = reset_peak_rss();

    let (_, first) = encode_pass(model, &frames, s.batch, s.dump.is_some())?;
    if let (Some(path), Some(first)) = (&s.dump, first) {
        Tensor::write_safetensors(
            &[
                ("frame_embeddings", &first.frame_embeddings),
                ("hidden0", &first.hidden0),
                ("values0", &first.values0),
            ],
            path,
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    // The machine's speed can drift by 2x within seconds (shared hosts), so each pass is
    // compared with ceiling samples taken right before and right after it.
    let mut passes = Vec::with_capacity(s.iters);
    let mut local_ceiling = Vec::with_capacity(s.iters);
    let mut around = ceiling.sample(CEILING_SAMPLES)?;
    for _ in 0..s.iters {
        passes.push(encode_pass(model, &frames, s.batch, false)?.0);
        let after = ceiling.sample(CEILING_SAMPLES)?;
        local_ceiling.push(median(&[around.as_slice(), after.as_slice()].concat()));
        around = after;
    }
    let (hwm_encode_kb, rss_end_kb) = memory_kb();
    // The whole process's peak: the larger of the two phases'.
    let hwm_total_kb = if peak_reset {
        hwm_pre_kb.max(hwm_encode_kb)
    } else {
        hwm_encode_kb
    };

    let totals: Vec<f64> = passes.iter().map(PassTimes::total).collect();
    let per_frame = |f: fn(&PassTimes) -> f64| {
        median(&passes.iter().map(f).collect::<Vec<_>>()) / s.frames as f64
    };
    let pass_s = median(&totals);
    let fps = s.frames as f64 / pass_s;
    let achieved = flops * fps;
    let ceiling_median = median(&ceiling.samples);
    let ceiling_best = ceiling.samples.iter().copied().fold(0.0, f64::max);
    // Primary figure: median over passes of (pass FLOP/s / its local ceiling).
    let pass_pct: Vec<f64> = totals
        .iter()
        .zip(&local_ceiling)
        .map(|(t, c)| 100.0 * flops * s.frames as f64 / t / c)
        .collect();
    let pct = median(&pass_pct);
    let pct_global = 100.0 * achieved / ceiling_median;
    let (pre, tow, pref) = (
        per_frame(|p| p.preprocess),
        per_frame(|p| p.tower),
        per_frame(|p| p.prefill),
    );

    println!(
        "  encode: {fps:.3} frames/s ({:.1} ms/frame; preprocess {:.1}, tower+projector+pool {:.1}, prefill {:.1} ms/frame; passes {})",
        1e3 / fps,
        1e3 * pre,
        1e3 * tow,
        1e3 * pref,
        totals
            .iter()
            .map(|t| format!("{t:.3}s"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "  FLOPs/frame {:.2} GFLOP -> achieved {:.1} GFLOP/s; {CEILING_N}^3 {} matmul ceiling {:.1} GFLOP/s (median of {} samples around the passes, best {:.1})",
        flops / 1e9,
        achieved / 1e9,
        s.dtype_name,
        ceiling_median / 1e9,
        ceiling.samples.len(),
        ceiling_best / 1e9
    );
    println!(
        "  share of the ceiling: {pct:.1}% (median over passes, each against the samples next to it: {}); {pct_global:.1}% of the overall median",
        pass_pct
            .iter()
            .map(|p| format!("{p:.0}%"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "  memory: VmHWM {hwm_total_kb} kB (whole process), {hwm_encode_kb} kB during encode passes{}; VmRSS at end {rss_end_kb} kB",
        if peak_reset { "" } else { " (reset refused: same as whole)" }
    );
    let result = json!({
        "side": "vstreamd",
        "family": model.family(),
        "model": s.model.display().to_string(),
        "dtype": s.dtype_name,
        "threads": threads,
        "frames": s.frames,
        "frame_size": [fh, fw],
        "checksum": checksum,
        "batch": s.batch,
        "iters": s.iters,
        "tokens_per_frame": tokens / per,
        "frames_per_block": per,
        "parameters": summary.parameters,
        "load_s": load_s,
        "pass_s": totals,
        "fps": fps,
        "ms_per_frame": {"preprocess": 1e3 * pre, "tower": 1e3 * tow, "prefill": 1e3 * pref},
        "flops_per_frame": flops,
        "achieved_flops": achieved,
        "ceiling_flops": ceiling_median,
        "ceiling_best_flops": ceiling_best,
        "ceiling_pct": pct,
        "ceiling_pct_global": pct_global,
        "pass_ceiling_flops": local_ceiling,
        "vmhwm_kb": hwm_total_kb,
        "vmhwm_encode_kb": hwm_encode_kb,
        "vmrss_loaded_kb": rss_loaded_kb,
    });
    println!("BENCH_JSON {result}");
    Ok(())
}

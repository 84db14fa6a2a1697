//! Needle benchmark (issue 7; the VideoNIAH construction of Zhao et al. 2024, as ReKV
//! uses it): long streams of distractor scenes (circles and squares coming and going,
//! [`Script::needle`]) with needles — a triangle and a star, each visible for a few
//! frames somewhere before the last 10% of the stream — and one question per needle
//! asked at the end: "what colour was the triangle ?". Only the needle's frames hold
//! the answer, and by the time it is asked they have long left the recent window.
//!
//! Every stream runs through the real engine ([`Engine`], [`FrameInput::Frames`]) on
//! the shipped checkpoint `models/synth-tiny`, with a disk-backed store whose RAM tier
//! is a few KiB (so retrieved blocks come back from disk), once per KV format: f32
//! (lossless), int8 and int4. Each question is asked three ways at the same frame
//! budget — the model attends to the sinks, `K` past frames and the last `R` frames:
//!
//! - **retrieve** (ReKV): each layer's top-`K` stored blocks by relevance to the
//!   question, plus the last `R` frames of the window;
//! - **shared-l0**: the same, but every layer takes layer 0's top-`K`
//!   ([`LayerSelection::Shared`]), so all layers see the same frames as in training;
//! - **uniform**: `K` stored blocks spread evenly over the stream, plus the last `R`;
//! - **recent**: the last `K + R` frames of the window only.
//!
//! It prints, per stream length, mode and format: recall@K (a block the answer attended
//! to lies in the needle's span; for retrieve, the union over layers) and answer
//! accuracy (the first word of the greedy answer is the needle's colour). Targets: with
//! retrieval on 1,000-frame streams, accuracy ≥ 90% and ≥ 2× uniform's (printed for
//! both retrieval variants).
//!
//! Settings (environment variables; `cargo bench` passes `--bench`, ignored):
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `VSTREAMD_NEEDLE_MODEL` | `models/synth-tiny` | checkpoint |
//! | `VSTREAMD_NEEDLE_STREAMS` | 12 | 1,000-frame streams (2 needles each) |
//! | `VSTREAMD_NEEDLE_LONG_STREAMS` | 3 | 5,000-frame streams (0: skip) |
//! | `VSTREAMD_NEEDLE_K` | 4 | past frames per layer (`K`) |
//! | `VSTREAMD_NEEDLE_RECENT` | 2 | recent frames (`R`) |
//! | `VSTREAMD_NEEDLE_THREADS` | 1 | libtorch threads |
//!
//! About 3 minutes on this 2-core machine (`cargo bench --bench needle`, build excluded).

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use support::env_or;
use vstreamd::engine::{AskMode, AskRequest, Engine, EngineConfig, FrameInput, StreamSpec};
use vstreamd::ingest::Frame;
use vstreamd::kv::disk::{DiskConfig, SyncPolicy};
use vstreamd::kv::{Quant, StoreConfig};
use vstreamd::model::{self, ModelOptions, Precision};
use vstreamd::retrieval::LayerSelection;
use vstreamd::synth::script::{NeedleSpec, Script, NEEDLE_SHAPES};

const QUANTS: [Quant; 3] = [Quant::F32, Quant::Int8, Quant::Int4];
/// (label, mode, layer selection): retrieval both as ReKV does it (each layer its own
/// top-K) and with layer 0's top-K shared by every layer.
const MODES: [(&str, AskMode, LayerSelection); 4] = [
    ("retrieve", AskMode::Retrieve, LayerSelection::PerLayer),
    ("shared-l0", AskMode::Retrieve, LayerSelection::Shared(0)),
    ("uniform", AskMode::Uniform, LayerSelection::PerLayer),
    ("recent", AskMode::Recent, LayerSelection::PerLayer),
];
const SHORT_FRAMES: usize = 1_000;
const LONG_FRAMES: usize = 5_000;
/// Seeds of the long streams start here, so they never repeat a short one.
const LONG_SEED_BASE: u64 = 10_000;

struct Settings {
    model: PathBuf,
    streams: usize,
    long_streams: usize,
    k: usize,
    recent: usize,
    threads: i32,
}

impl Settings {
    fn from_env() -> Result<Self> {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let s = Self {
            model: env_or("VSTREAMD_NEEDLE_MODEL", repo.join("models/synth-tiny"))?,
            streams: env_or("VSTREAMD_NEEDLE_STREAMS", 12)?,
            long_streams: env_or("VSTREAMD_NEEDLE_LONG_STREAMS", 3)?,
            k: env_or("VSTREAMD_NEEDLE_K", 4)?,
            recent: env_or("VSTREAMD_NEEDLE_RECENT", 2)?,
            threads: env_or("VSTREAMD_NEEDLE_THREADS", 1)?,
        };
        if s.k == 0 || s.streams == 0 {
            bail!("VSTREAMD_NEEDLE_K and VSTREAMD_NEEDLE_STREAMS must be positive");
        }
        Ok(s)
    }
}

/// Hits over asks, for one (length, mode, quant) cell.
#[derive(Default, Clone, Copy)]
struct Tally {
    asked: usize,
    recalled: usize,
    correct: usize,
}

impl Tally {
    fn recall(&self) -> f64 {
        self.recalled as f64 / self.asked.max(1) as f64
    }

    fn accuracy(&self) -> f64 {
        self.correct as f64 / self.asked.max(1) as f64
    }
}

type Key = (usize, &'static str, &'static str);

fn quant_name(q: Quant) -> &'static str {
    match q {
        Quant::F32 => "f32",
        Quant::F16 => "f16",
        Quant::Bf16 => "bf16",
        Quant::Int8 => "int8",
        Quant::Int4 => "int4",
    }
}

fn frames_encoded(engine: &Engine, id: &str) -> Result<u64> {
    let info = engine
        .info(Some(id))
        .wait()?
        .pop()
        .ok_or_else(|| anyhow!("the engine lists no stream `{id}`"))?;
    if let Some(e) = info.last_error {
        bail!("stream `{id}` failed: {e}");
    }
    Ok(info.frames_encoded)
}

/// One needle stream, fed to one engine stream per KV format, every question asked in
/// every mode; tallies into `out`.
fn run_stream(
    engine: &Engine,
    s: &Settings,
    frames: usize,
    seed: u64,
    out: &mut BTreeMap<Key, Tally>,
) -> Result<()> {
    let script = Script::needle(&NeedleSpec {
        frames,
        shapes: NEEDLE_SHAPES.to_vec(),
        seed,
        ..NeedleSpec::default()
    });
    let mut feeds = Vec::new();
    for quant in QUANTS {
        let id = format!("n{frames}-{seed}-{}", quant_name(quant));
        let (tx, rx) = crossbeam::channel::bounded::<Frame>(32);
        let store = StoreConfig {
            quant,
            ..engine.config().store.clone()
        };
        engine
            .add_stream(StreamSpec {
                id: id.clone(),
                input: FrameInput::Frames(rx),
                store: Some(store),
            })
            .wait()?;
        feeds.push((id, quant, tx));
    }
    let (w, h) = (script.scene.width, script.scene.height);
    for i in 0..frames {
        let t = i as f64 / script.fps;
        let rgb = script.scene.render(t).rgb;
        for (id, _, tx) in &feeds {
            let frame = Frame::from_rgb(
                Arc::from(id.as_str()),
                i as u64,
                Duration::from_secs_f64(t),
                SystemTime::now(),
                (w, h),
                rgb.clone(),
            )?;
            tx.send(frame)
                .map_err(|_| anyhow!("the engine dropped the input of `{id}`"))?;
        }
    }
    for (id, _, _) in &feeds {
        let waited = Instant::now();
        while frames_encoded(engine, id)? < frames as u64 {
            if waited.elapsed() > Duration::from_secs(300) {
                bail!("`{id}` did not finish encoding in 5 minutes");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    for (id, quant, _) in &feeds {
        for q in &script.questions {
            for (label, mode, selection) in MODES {
                let (top_k, recent) = match mode {
                    AskMode::Recent => (None, s.k + s.recent),
                    AskMode::Retrieve | AskMode::Uniform => (Some(s.k), s.recent),
                };
                let answer = engine
                    .ask(AskRequest {
                        stream: id.clone(),
                        question: q.question.clone(),
                        mode,
                        top_k,
                        layer_selection: Some(selection),
                        recent_frames: Some(recent),
                        max_new_tokens: Some(2),
                        ..Default::default()
                    })?
                    .wait()
                    .with_context(|| format!("asking `{id}` ({label})"))?;
                let said = answer.text.split_whitespace().next().unwrap_or("");
                let recalled = answer.citations.iter().any(|c| {
                    let t = c.pts.as_secs_f64();
                    q.evidence
                        .iter()
                        .any(|&(since, until)| t >= since - 1e-6 && t < until - 1e-6)
                });
                let tally = out.entry((frames, label, quant_name(*quant))).or_default();
                tally.asked += 1;
                tally.recalled += usize::from(recalled);
                tally.correct += usize::from(said == q.answer);
            }
        }
    }
    for (id, _, tx) in feeds {
        drop(tx);
        engine.remove_stream(&id).wait()?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let s = Settings::from_env()?;
    tch::set_num_threads(s.threads);
    let model = model::load(&s.model, ModelOptions::cpu(Precision::F32))
        .with_context(|| format!("loading {}", s.model.display()))?;
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(repo.join("target"))?;
    let tmp = tempfile::tempdir_in(repo.join("target"))?;
    let store = StoreConfig {
        quant: Quant::Int8,
        ram_budget_bytes: 16 << 10,
        rep_key_budget_bytes: 256 << 20,
        dedup_threshold: None,
        disk: Some(DiskConfig {
            segment_bytes: 4 << 20,
            sync: SyncPolicy::Interval(Duration::from_secs(1)),
            ..DiskConfig::default()
        }),
    };
    let mut config = EngineConfig::new(tmp.path().join("state"), store);
    config.top_k = s.k;
    let window = config.window_frames;
    if s.k + s.recent > window {
        bail!(
            "K + R = {} exceeds the window of {window} frames",
            s.k + s.recent
        );
    }
    let engine = Engine::start(model, config)?;
    println!(
        "needle benchmark: {} ({} libtorch thread(s)); K = {} past frames, R = {} recent \
         (window {window}); 2 needles per stream, 3 frames each; RAM tier 16 KiB + disk",
        s.model.display(),
        s.threads,
        s.k,
        s.recent
    );
    let started = Instant::now();
    let mut tallies: BTreeMap<Key, Tally> = BTreeMap::new();
    let plan: Vec<(usize, u64)> = (0..s.streams as u64)
        .map(|i| (SHORT_FRAMES, i + 1))
        .chain((0..s.long_streams as u64).map(|i| (LONG_FRAMES, LONG_SEED_BASE + i)))
        .collect();
    for (n, &(frames, seed)) in plan.iter().enumerate() {
        run_stream(&engine, &s, frames, seed, &mut tallies)?;
        let done = |mode| {
            tallies
                .get(&(frames, mode, "int8"))
                .copied()
                .unwrap_or_default()
        };
        let (per_layer, shared) = (done("retrieve"), done("shared-l0"));
        println!(
            "  stream {}/{} ({frames} frames, seed {seed}) done after {:.0} s; int8 so far: \
             retrieve {}/{} right, shared-l0 {}/{}",
            n + 1,
            plan.len(),
            started.elapsed().as_secs_f64(),
            per_layer.correct,
            per_layer.asked,
            shared.correct,
            shared.asked
        );
    }
    engine.shutdown();

    println!(
        "\n{:>7} {:<10} {:<5} {:>6} {:>10} {:>9}",
        "frames", "mode", "KV", "asked", "recall@K", "accuracy"
    );
    for ((frames, mode, quant), t) in &tallies {
        println!(
            "{frames:>7} {mode:<10} {quant:<5} {:>6} {:>9.1}% {:>8.1}%",
            t.asked,
            100.0 * t.recall(),
            100.0 * t.accuracy()
        );
    }
    println!();
    let mut missed = Vec::new();
    for quant in QUANTS.map(quant_name) {
        for retrieval in ["retrieve", "shared-l0"] {
            let get = |mode| tallies.get(&(SHORT_FRAMES, mode, quant)).copied();
            let (Some(r), Some(u)) = (get(retrieval), get("uniform")) else {
                continue;
            };
            let ratio = r.accuracy() / u.accuracy().max(1e-9);
            println!(
                "1,000 frames, {quant}, {retrieval}: accuracy {:.1}% (target ≥ 90%), {:.2}× \
                 uniform's {:.1}% (target ≥ 2×)",
                100.0 * r.accuracy(),
                ratio,
                100.0 * u.accuracy()
            );
            if r.accuracy() < 0.9 {
                missed.push(format!(
                    "{quant}/{retrieval}: accuracy {:.1}% < 90% (by {:.1} points)",
                    100.0 * r.accuracy(),
                    90.0 - 100.0 * r.accuracy()
                ));
            }
            if ratio < 2.0 {
                missed.push(format!("{quant}/{retrieval}: {ratio:.2}× uniform < 2×"));
            }
        }
    }
    if missed.is_empty() {
        println!("targets met");
    } else {
        println!("targets missed: {}", missed.join("; "));
    }
    println!("took {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

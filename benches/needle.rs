//! Needle benchmark (issues 7 and 19; the VideoNIAH construction of Zhao et al. 2024,
//! as ReKV uses it), at the daemon's own defaults: long streams of distractor scenes
//! (circles and squares coming and going, [`Script::needle`]) with two needles — a
//! triangle and, the frame after it shows, a star (`chained`), each visible for 3
//! frames somewhere before the last 10% of the stream — and every question kind the
//! stream's ground truth holds about them, asked at the end: the colour of each, which
//! shape appeared after the triangle, how many of each there were, whether each is
//! there. Only the needles' frames hold the answers, and by the time they are asked
//! those frames have long left the recent window.
//!
//! Every stream runs through the real engine ([`Engine`], [`FrameInput::Frames`]) on
//! the shipped checkpoint `models/synth-tiny`, with the `[engine]` settings of the
//! daemon's configuration file (`configs/vstreamd.toml`: window, top_k,
//! recent_frames, shared_retrieval_layer) and a disk-backed store whose RAM tier is a
//! few KiB (so retrieved blocks come back from disk), once per KV format: f32
//! (lossless), int8 (the default) and int4. Each question is asked:
//!
//! - **default**: as `vstreamd ask` asks without flags — nothing set, the engine's
//!   defaults decide (`K` = top_k blocks, `R` = recent_frames of the window, per-layer
//!   or shared selection as configured);
//! - **retrieve** (ReKV): each layer's own top-`K` blocks plus the last `R` frames;
//! - **shared-l0**: the same with layer 0's top-`K` for every layer;
//! - **uniform**: `K` blocks spread evenly over the stream plus the last `R`;
//! - **recent**: the last `K + R` frames of the window only (when the window holds
//!   them).
//!
//! It prints, per stream length, mode and format: recall@K (a block the answer attended
//! to lies in an evidence span, over questions that have one) and answer accuracy (the
//! first word of the greedy answer is the truth), and per question kind for the
//! default mode; then the targets: default ≥ 90% on 1,000-frame streams and ≥ 85% on
//! 5,000-frame streams, for every kind; per-layer retrieval ≥ 85% on 1,000 frames;
//! default ≥ 2× uniform; int4 within 3 points of f32. The seeds are printed.
//!
//! Settings (environment variables; `cargo bench` passes `--bench`, ignored):
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `VSTREAMD_NEEDLE_MODEL` | `models/synth-tiny` | checkpoint |
//! | `VSTREAMD_NEEDLE_CONFIG` | `configs/vstreamd.toml` | whose `[engine]` defaults apply |
//! | `VSTREAMD_NEEDLE_STREAMS` | 12 | 1,000-frame streams (seeds 1..) |
//! | `VSTREAMD_NEEDLE_LONG_STREAMS` | 3 | 5,000-frame streams (seeds 10000..; 0: skip) |
//! | `VSTREAMD_NEEDLE_K` | the config's top_k | `K` of the fixed-budget modes |
//! | `VSTREAMD_NEEDLE_RECENT` | the config's recent_frames (else the window) | `R` |
//! | `VSTREAMD_NEEDLE_THREADS` | 1 | libtorch threads |
//!
//! About 6 minutes on this 2-core machine (`cargo bench --bench needle`, build excluded).

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use support::env_or;
use vstreamd::config::Config;
use vstreamd::engine::{AskMode, AskRequest, Engine, FrameInput, StreamSpec};
use vstreamd::ingest::Frame;
use vstreamd::kv::disk::{DiskConfig, SyncPolicy};
use vstreamd::kv::{Quant, StoreConfig};
use vstreamd::model::{self, ModelOptions, Precision};
use vstreamd::retrieval::LayerSelection;
use vstreamd::synth::qa::QuestionKind;
use vstreamd::synth::script::{NeedleSpec, Script, NEEDLE_SHAPES};

const QUANTS: [Quant; 3] = [Quant::F32, Quant::Int8, Quant::Int4];
const SHORT_FRAMES: usize = 1_000;
const LONG_FRAMES: usize = 5_000;
/// Seeds of the long streams start here, so they never repeat a short one.
const LONG_SEED_BASE: u64 = 10_000;

/// How a question is asked: `None` fields are left to the engine's defaults.
#[derive(Clone, Copy)]
struct Mode {
    label: &'static str,
    mode: AskMode,
    top_k: Option<usize>,
    selection: Option<LayerSelection>,
    recent: Option<usize>,
}

struct Settings {
    model: PathBuf,
    config: PathBuf,
    streams: usize,
    long_streams: usize,
    k: Option<usize>,
    recent: Option<usize>,
    threads: i32,
}

impl Settings {
    fn from_env() -> Result<Self> {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let optional = |name: &str| -> Result<Option<usize>> {
            match std::env::var(name) {
                Ok(v) => Ok(Some(
                    v.trim()
                        .parse()
                        .map_err(|_| anyhow!("{name}={v:?} does not parse"))?,
                )),
                Err(_) => Ok(None),
            }
        };
        let s = Self {
            model: env_or("VSTREAMD_NEEDLE_MODEL", repo.join("models/synth-tiny"))?,
            config: env_or("VSTREAMD_NEEDLE_CONFIG", repo.join("configs/vstreamd.toml"))?,
            streams: env_or("VSTREAMD_NEEDLE_STREAMS", 12)?,
            long_streams: env_or("VSTREAMD_NEEDLE_LONG_STREAMS", 3)?,
            k: optional("VSTREAMD_NEEDLE_K")?,
            recent: optional("VSTREAMD_NEEDLE_RECENT")?,
            threads: env_or("VSTREAMD_NEEDLE_THREADS", 1)?,
        };
        if s.k == Some(0) || s.streams == 0 {
            bail!("VSTREAMD_NEEDLE_K and VSTREAMD_NEEDLE_STREAMS must be positive");
        }
        Ok(s)
    }
}

/// Hits over asks, for one (length, mode, quant, kind) cell.
#[derive(Default, Clone, Copy)]
struct Tally {
    asked: usize,
    /// Questions with evidence spans, and those whose answer cited one.
    with_evidence: usize,
    recalled: usize,
    correct: usize,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.asked += other.asked;
        self.with_evidence += other.with_evidence;
        self.recalled += other.recalled;
        self.correct += other.correct;
    }

    fn recall(&self) -> f64 {
        self.recalled as f64 / self.with_evidence.max(1) as f64
    }

    fn accuracy(&self) -> f64 {
        self.correct as f64 / self.asked.max(1) as f64
    }
}

type Key = (usize, &'static str, &'static str, &'static str);

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

/// The needle stream of `seed`: both needles, chained, every question kind.
fn script(frames: usize, seed: u64) -> Script {
    Script::needle(&NeedleSpec {
        frames,
        shapes: NEEDLE_SHAPES.to_vec(),
        chained: true,
        kinds: QuestionKind::ALL.to_vec(),
        seed,
        ..NeedleSpec::default()
    })
}

/// One needle stream, fed to one engine stream per KV format, every question asked in
/// every mode; tallies into `out`.
fn run_stream(
    engine: &Engine,
    modes: &[Mode],
    frames: usize,
    seed: u64,
    out: &mut BTreeMap<Key, Tally>,
) -> Result<()> {
    let script = script(frames, seed);
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
            for m in modes {
                let answer = engine
                    .ask(AskRequest {
                        stream: id.clone(),
                        question: q.question.clone(),
                        mode: m.mode,
                        top_k: m.top_k,
                        layer_selection: m.selection,
                        recent_frames: m.recent,
                        max_new_tokens: Some(2),
                        ..Default::default()
                    })?
                    .wait()
                    .with_context(|| format!("asking `{id}` ({})", m.label))?;
                let said = answer.text.split_whitespace().next().unwrap_or("");
                let recalled = answer.citations.iter().any(|c| {
                    let t = c.pts.as_secs_f64();
                    q.evidence
                        .iter()
                        .any(|&(since, until)| t >= since - 1e-6 && t < until - 1e-6)
                });
                let tally = out
                    .entry((frames, m.label, quant_name(*quant), q.kind.name()))
                    .or_default();
                tally.asked += 1;
                if !q.evidence.is_empty() {
                    tally.with_evidence += 1;
                    tally.recalled += usize::from(recalled);
                }
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

/// The tallies of (frames, mode, quant) summed over kinds (`kind` None) or of one kind.
fn total(
    tallies: &BTreeMap<Key, Tally>,
    frames: usize,
    mode: &str,
    quant: &str,
    kind: Option<&str>,
) -> Tally {
    let mut t = Tally::default();
    for ((f, m, q, k), v) in tallies {
        if *f == frames && *m == mode && *q == quant && kind.is_none_or(|kind| kind == *k) {
            t.add(v);
        }
    }
    t
}

fn main() -> Result<()> {
    let s = Settings::from_env()?;
    tch::set_num_threads(s.threads);
    let text = std::fs::read_to_string(&s.config)
        .with_context(|| format!("reading {}", s.config.display()))?;
    let daemon = Config::parse(&text).with_context(|| format!("parsing {}", s.config.display()))?;
    let defaults = daemon.engine_config();
    let model = model::load(&s.model, ModelOptions::cpu(Precision::F32))
        .with_context(|| format!("loading {}", s.model.display()))?;
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(repo.join("target"))?;
    let tmp = tempfile::tempdir_in(repo.join("target"))?;
    let store = StoreConfig {
        quant: defaults.store.quant,
        ram_budget_bytes: 16 << 10,
        rep_key_budget_bytes: 256 << 20,
        dedup_threshold: None,
        disk: Some(DiskConfig {
            segment_bytes: 4 << 20,
            sync: SyncPolicy::Interval(Duration::from_secs(1)),
            ..DiskConfig::default()
        }),
    };
    let mut config = defaults.clone();
    config.state_dir = tmp.path().join("state");
    config.store = store;
    let window = config.window_frames;
    let k = s.k.unwrap_or(config.top_k);
    let r = s
        .recent
        .or(config.recent_frames)
        .unwrap_or(window)
        .min(window);
    let mut modes = vec![
        Mode {
            label: "default",
            mode: AskMode::Retrieve,
            top_k: None,
            selection: None,
            recent: None,
        },
        Mode {
            label: "retrieve",
            mode: AskMode::Retrieve,
            top_k: Some(k),
            selection: Some(LayerSelection::PerLayer),
            recent: Some(r),
        },
        Mode {
            label: "shared-l0",
            mode: AskMode::Retrieve,
            top_k: Some(k),
            selection: Some(LayerSelection::Shared(0)),
            recent: Some(r),
        },
        Mode {
            label: "uniform",
            mode: AskMode::Uniform,
            top_k: Some(k),
            selection: None,
            recent: Some(r),
        },
    ];
    if k + r <= window {
        modes.push(Mode {
            label: "recent",
            mode: AskMode::Recent,
            top_k: None,
            selection: None,
            recent: Some(k + r),
        });
    }
    let plan: Vec<(usize, u64)> = (0..s.streams as u64)
        .map(|i| (SHORT_FRAMES, i + 1))
        .chain((0..s.long_streams as u64).map(|i| (LONG_FRAMES, LONG_SEED_BASE + i)))
        .collect();
    let seeds = |frames: usize| -> String {
        let list: Vec<String> = plan
            .iter()
            .filter(|p| p.0 == frames)
            .map(|p| p.1.to_string())
            .collect();
        list.join(",")
    };
    println!("CPU: {}; model dtype f32", support::cpu_flags());
    println!(
        "needle benchmark: {} ({} libtorch thread(s)) with the [engine] defaults of {}: \
         window {window}, top_k {}, recent_frames {}, {}; fixed-budget modes at K = {k}, \
         R = {r}{}; RAM tier 16 KiB + disk",
        s.model.display(),
        s.threads,
        s.config.display(),
        config.top_k,
        config
            .recent_frames
            .map_or("unset (the window)".to_string(), |n| n.to_string()),
        match config.layer_selection {
            LayerSelection::PerLayer => "per-layer retrieval".to_string(),
            LayerSelection::Shared(l) => format!("layer {l}'s top-k shared"),
        },
        if k + r > window {
            " (recent mode skipped: K + R exceeds the window)"
        } else {
            ""
        }
    );
    println!(
        "streams: synth://needle?seed=S&frames=N&needles=triangle,star&chained=1&questions=all; \
         {SHORT_FRAMES} frames: seeds {}; {LONG_FRAMES} frames: seeds {}",
        seeds(SHORT_FRAMES),
        seeds(LONG_FRAMES)
    );
    let engine = Engine::start(model, config)?;
    let started = Instant::now();
    let mut tallies: BTreeMap<Key, Tally> = BTreeMap::new();
    for (n, &(frames, seed)) in plan.iter().enumerate() {
        run_stream(&engine, &modes, frames, seed, &mut tallies)?;
        let so_far = |mode| total(&tallies, frames, mode, "int8", None);
        let (d, p) = (so_far("default"), so_far("retrieve"));
        println!(
            "  stream {}/{} ({frames} frames, seed {seed}) done after {:.0} s; int8 so far: \
             default {}/{} right, retrieve {}/{}",
            n + 1,
            plan.len(),
            started.elapsed().as_secs_f64(),
            d.correct,
            d.asked,
            p.correct,
            p.asked
        );
    }
    engine.shutdown();

    println!(
        "\n{:>7} {:<10} {:<5} {:>6} {:>10} {:>9}",
        "frames", "mode", "KV", "asked", "recall@K", "accuracy"
    );
    let lengths: Vec<usize> = [SHORT_FRAMES, LONG_FRAMES]
        .into_iter()
        .filter(|f| plan.iter().any(|p| p.0 == *f))
        .collect();
    for &frames in &lengths {
        for m in &modes {
            for quant in QUANTS.map(quant_name) {
                let t = total(&tallies, frames, m.label, quant, None);
                println!(
                    "{frames:>7} {:<10} {quant:<5} {:>6} {:>9.1}% {:>8.1}%",
                    m.label,
                    t.asked,
                    100.0 * t.recall(),
                    100.0 * t.accuracy()
                );
            }
        }
    }
    println!("\ndefault mode by question kind (accuracy, f32 / int8 / int4):");
    for &frames in &lengths {
        for kind in QuestionKind::ALL.map(|k| k.name()) {
            let cells: Vec<String> = QUANTS
                .map(quant_name)
                .iter()
                .map(|q| {
                    let t = total(&tallies, frames, "default", q, Some(kind));
                    format!("{:.1}% ({}/{})", 100.0 * t.accuracy(), t.correct, t.asked)
                })
                .collect();
            println!("{frames:>7} {kind:<7} {}", cells.join("  "));
        }
    }

    println!();
    let mut missed = Vec::new();
    let mut judge = |what: String, ok: bool| {
        println!("{what}: {}", if ok { "met" } else { "MISSED" });
        if !ok {
            missed.push(what);
        }
    };
    for (frames, bar) in [(SHORT_FRAMES, 0.90), (LONG_FRAMES, 0.85)] {
        if !lengths.contains(&frames) {
            continue;
        }
        for quant in QUANTS.map(quant_name) {
            let all = total(&tallies, frames, "default", quant, None);
            judge(
                format!(
                    "{frames} frames, {quant}, default: {:.1}% (≥ {:.0}%)",
                    100.0 * all.accuracy(),
                    100.0 * bar
                ),
                all.accuracy() >= bar,
            );
            for kind in QuestionKind::ALL.map(|k| k.name()) {
                let t = total(&tallies, frames, "default", quant, Some(kind));
                if t.asked > 0 && t.accuracy() < bar {
                    judge(
                        format!(
                            "{frames} frames, {quant}, default, {kind}: {:.1}% (≥ {:.0}%)",
                            100.0 * t.accuracy(),
                            100.0 * bar
                        ),
                        false,
                    );
                }
            }
        }
    }
    for quant in QUANTS.map(quant_name) {
        let per_layer = total(&tallies, SHORT_FRAMES, "retrieve", quant, None);
        judge(
            format!(
                "{SHORT_FRAMES} frames, {quant}, per-layer retrieval: {:.1}% (≥ 85%)",
                100.0 * per_layer.accuracy()
            ),
            per_layer.accuracy() >= 0.85,
        );
        let d = total(&tallies, SHORT_FRAMES, "default", quant, None);
        let u = total(&tallies, SHORT_FRAMES, "uniform", quant, None);
        let ratio = d.accuracy() / u.accuracy().max(1e-9);
        judge(
            format!(
                "{SHORT_FRAMES} frames, {quant}: default {:.1}% = {ratio:.2}× uniform's {:.1}% \
                 at K = {k}, R = {r} (≥ 2×)",
                100.0 * d.accuracy(),
                100.0 * u.accuracy()
            ),
            ratio >= 2.0,
        );
    }
    for &frames in &lengths {
        let f32 = total(&tallies, frames, "default", "f32", None).accuracy();
        let int4 = total(&tallies, frames, "default", "int4", None).accuracy();
        judge(
            format!(
                "{frames} frames, default: int4 {:.1}% vs f32 {:.1}% (within 3 points)",
                100.0 * int4,
                100.0 * f32
            ),
            int4 >= f32 - 0.03,
        );
    }
    if missed.is_empty() {
        println!("targets met");
    } else {
        println!("targets missed: {}", missed.len());
    }
    println!("took {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

//! `vstreamd train`, `vstreamd eval` and `vstreamd synth`: the tiny model of the
//! synthetic world ([`crate::synth`]) trained, evaluated, and its clips written out.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use crate::ingest::{RtspTransport, Source};
use crate::model::{LlavaOnevision, ModelOptions, Precision};
use crate::synth::eval::{self, EvalReport, HELD_OUT_SEED};
use crate::synth::script::Script;
use crate::synth::train::{self, Progress, TrainOptions};
use crate::synth::world::{clip_seed, mix, Clip};
use crate::synth::{qa, ClipSpec};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Checkpoint directory to write (created; its files are replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// Seeds the initial weights and the training clips.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Optimiser steps (the learning-rate schedule spans them).
    #[arg(long, default_value_t = 2000)]
    pub steps: usize,
    /// Wall-clock budget in minutes: training stops early when it runs out.
    #[arg(long, default_value_t = 40.0)]
    pub minutes: f64,
    /// Clips per step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Shortest training clip, in frames (each step draws its length uniformly).
    #[arg(long, default_value_t = 6)]
    pub min_frames: usize,
    /// Longest training clip, in frames.
    #[arg(long, default_value_t = 6)]
    pub max_frames: usize,
    /// Share of steps (0..=1) that train on retrieval-like contexts (frames picked from
    /// long needle streams with gaps, distractors and a recent run) instead of clips.
    #[arg(long, default_value_t = 0.0)]
    pub contexts: f64,
    /// Longest context, in frames (each context step draws 2..=this).
    #[arg(long, default_value_t = 32)]
    pub max_context_frames: usize,
    /// Weight of the retrieval objective (0: off): every layer's question query must
    /// score the frames showing what it asks about above the others.
    #[arg(long, default_value_t = 0.0)]
    pub retrieval_weight: f64,
    /// Intra-op threads for libtorch.
    #[arg(long, default_value_t = 2)]
    pub threads: i32,
    /// Held-out clips evaluated at the end (0: none).
    #[arg(long, default_value_t = 200)]
    pub eval_clips: usize,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint directory trained on the synthetic world.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/models/synth-tiny"))]
    pub model: PathBuf,
    #[arg(long, default_value_t = 200)]
    pub clips: usize,
    /// Clip stream to evaluate on (the default is the held-out one).
    #[arg(long, default_value_t = HELD_OUT_SEED)]
    pub seed: u64,
    #[arg(long, default_value_t = 2)]
    pub threads: i32,
    /// Print the wrong answers.
    #[arg(long)]
    pub mistakes: bool,
}

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Directory to write the frames (NN.png) and the questions (qa.txt, or with
    /// --script truth.json) to.
    #[arg(long, required_unless_present = "truth")]
    pub out: Option<PathBuf>,
    /// A scripted stream instead of a training clip, as a `synth://` source names it:
    /// `needle?seed=3&frames=1000&needles=triangle,star&questions=all` (see the README).
    #[arg(long, conflicts_with = "index")]
    pub script: Option<String>,
    /// With --script: print the stream's ground truth (needles, questions, answers,
    /// evidence spans) as JSON on stdout, without rendering frames.
    #[arg(long, requires = "script")]
    pub truth: bool,
    /// Frame size of a --script stream.
    #[arg(long, default_value_t = 48)]
    pub width: u32,
    #[arg(long, default_value_t = 48)]
    pub height: u32,
    /// Clip stream.
    #[arg(long, default_value_t = HELD_OUT_SEED)]
    pub seed: u64,
    /// Clip index within the stream.
    #[arg(long, default_value_t = 0)]
    pub index: u64,
}

fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

pub fn train(args: &TrainArgs) -> anyhow::Result<()> {
    if !(args.minutes > 0.0 && args.minutes.is_finite()) {
        bail!("--minutes must be positive");
    }
    tch::set_num_threads(args.threads);
    let mut opts = TrainOptions::new(args.out.clone());
    opts.seed = args.seed;
    opts.steps = args.steps;
    opts.max_time = Duration::from_secs_f64(args.minutes * 60.0);
    opts.batch = args.batch;
    opts.lr = args.lr;
    opts.frames = (args.min_frames, args.max_frames);
    opts.contexts = args.contexts;
    opts.retrieval_weight = args.retrieval_weight;
    opts.context_frames = (2.min(args.max_context_frames), args.max_context_frames);
    let terminal = std::io::stderr().is_terminal();
    let mut last_print: Option<Instant> = None;
    let mut show = |p: &Progress| {
        let due = last_print.is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
        if !(due || p.step == p.steps || p.step <= 3) {
            return;
        }
        last_print = Some(Instant::now());
        let line = format!(
            "step {:>5}/{} loss {:.4} (cells {:.3}{}) answers {:5.1}% lr {:.2e} {:.2} step/s elapsed {} ETA {}",
            p.step,
            p.steps,
            p.loss,
            p.probe_loss,
            if p.retrieval_loss.is_finite() {
                format!(", retrieval {:.3}", p.retrieval_loss)
            } else {
                String::new()
            },
            100.0 * p.answer_accuracy,
            p.lr,
            p.rate,
            minutes(p.elapsed),
            minutes(p.eta)
        );
        if terminal {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
    };
    let report = train::train(&opts, &mut show)?;
    if terminal {
        eprintln!();
    }
    println!(
        "trained {} steps in {} ({} parameters, final loss {:.4}){}; checkpoint in {}",
        report.steps,
        minutes(report.elapsed),
        report.parameters,
        report.final_loss,
        if report.stopped_early {
            " — stopped early by --minutes"
        } else {
            ""
        },
        args.out.display()
    );
    if args.eval_clips > 0 {
        let _guard = tch::no_grad_guard();
        let model = LlavaOnevision::load(&args.out, ModelOptions::cpu(Precision::F32))?;
        let start = Instant::now();
        let report = eval::evaluate(&model, &opts.clip, args.eval_clips, HELD_OUT_SEED)?;
        print_report(
            &report,
            args.eval_clips,
            HELD_OUT_SEED,
            start.elapsed(),
            false,
        );
    }
    Ok(())
}

fn print_report(report: &EvalReport, clips: usize, seed: u64, took: Duration, mistakes: bool) {
    println!(
        "held-out accuracy (greedy, {clips} clips of stream {seed}, {:.1} s):\n{}",
        took.as_secs_f64(),
        report.table()
    );
    if mistakes {
        for m in &report.mistakes {
            println!(
                "  clip {:#018x} {:?}: expected `{}`, got `{}`",
                m.clip_seed, m.qa.question, m.qa.answer, m.got
            );
        }
    }
}

pub fn evaluate(args: &EvalArgs) -> anyhow::Result<()> {
    tch::set_num_threads(args.threads);
    let _guard = tch::no_grad_guard();
    let model = LlavaOnevision::load(&args.model, ModelOptions::cpu(Precision::F32))
        .with_context(|| format!("loading {}", args.model.display()))?;
    let spec = eval::clip_spec_for(&args.model, &model)?;
    let start = Instant::now();
    let report = eval::evaluate(&model, &spec, args.clips, args.seed)?;
    print_report(
        &report,
        args.clips,
        args.seed,
        start.elapsed(),
        args.mistakes,
    );
    Ok(())
}

pub fn synth(args: &SynthArgs) -> anyhow::Result<()> {
    if let Some(spec) = &args.script {
        return synth_script(args, spec);
    }
    let Some(out) = &args.out else {
        bail!("--out is required");
    };
    let spec = ClipSpec::default();
    let seed = clip_seed(args.seed, args.index);
    let clip = Clip::random(&spec, seed);
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for (i, &t) in clip.times.iter().enumerate() {
        let path = out.join(format!("{i:02}.png"));
        let Some(image) = clip.scene.render(t).to_image() else {
            bail!("frame {i} has the wrong size");
        };
        image
            .save(&path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let mut rng = fastrand::Rng::with_seed(mix(seed));
    let mut lines = String::new();
    for kind in qa::QuestionKind::ALL {
        if let Some(q) = qa::sample_of_kind(&clip, kind, &mut rng) {
            lines.push_str(&format!("{}\t{}\n", q.question, q.answer));
        }
    }
    let path = out.join("qa.txt");
    std::fs::write(&path, &lines).with_context(|| format!("writing {}", path.display()))?;
    print!("{lines}");
    Ok(())
}

/// `--script`: the scripted stream a `synth://SPEC` source plays (same parser, same
/// defaults), its truth as JSON, and unless `--truth`, its frames as PNGs.
fn synth_script(args: &SynthArgs, spec: &str) -> anyhow::Result<()> {
    let spec = spec.strip_prefix("synth://").unwrap_or(spec);
    let source = Source::parse(&format!("synth://{spec}"), RtspTransport::Tcp, None)?;
    let Source::Synth {
        script,
        seed,
        options,
        ..
    } = source
    else {
        bail!("`{spec}` is not a synthetic script");
    };
    if !(16..=4096).contains(&args.width) || !(16..=4096).contains(&args.height) {
        bail!("--width and --height must be in 16..=4096");
    }
    let script = Script::from_name(&script, seed, &options, args.width, args.height)?;
    let truth = serde_json::to_string_pretty(&script.truth())?;
    if args.truth {
        println!("{truth}");
        return Ok(());
    }
    let Some(out) = &args.out else {
        bail!("--out is required to write frames (or ask for --truth)");
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let frames = script.frames();
    for i in 0..frames {
        let path = out.join(format!("{i:06}.png"));
        let Some(image) = script.scene.render(script.frame_time(i)).to_image() else {
            bail!("frame {i} has the wrong size");
        };
        image
            .save(&path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let path = out.join("truth.json");
    std::fs::write(&path, truth).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("{frames} frames and truth.json in {}", out.display());
    Ok(())
}

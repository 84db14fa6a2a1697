//! The `vstreamd` command line. `main.rs` parses nothing itself: it calls [`run`].
//!
//! - `vstreamd model inspect --model DIR`: JSON summary of a checkpoint, any family.
//! - `vstreamd model run --model DIR --frames F1.png ... --fps F --prompt TEXT`: the
//!   frames as one video sampled at F frames per second (frame i at i/F s), the prompt
//!   templated as the family's `transformers` processor does for a user turn holding one
//!   video then the text; prints the greedy answer, optionally dumps the prefill logits
//!   and input ids (the contract independent parity checks call).
//! - `vstreamd demo [--model DIR] [--speed X]`: the daemon on the built-in synthetic
//!   live stream with the trained model, scripted questions beside their ground truth
//!   ([`demo`]).
//! - `vstreamd serve --config FILE` / `vstreamd check-config --config FILE`: the daemon
//!   ([`serve`]).
//! - `vstreamd ask|streams|watch|summarize`: the daemon's gRPC API from the shell
//!   ([`client`]).
//! - `vstreamd train|eval|synth`: the tiny model of the synthetic world trained,
//!   evaluated, and its clips written as PNG frames ([`train`]).

mod client;
mod demo;
mod serve;
mod train;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use tch::{Kind, Tensor};

use crate::model::preprocess::load_rgb;
use crate::model::{ModelOptions, Precision, VideoLlm};

#[derive(Parser, Debug)]
#[command(
    name = "vstreamd",
    version,
    about = "Streaming video understanding daemon"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon.
    Serve(serve::ServeArgs),
    /// Validate a configuration and the files it names, without starting.
    CheckConfig(serve::CheckConfigArgs),
    /// Ask a running daemon a question about a stream.
    Ask(client::AskArgs),
    /// List, add or remove a running daemon's streams.
    #[command(subcommand)]
    Streams(client::StreamsCommand),
    /// A standing yes/no question: prints alerts as they come.
    Watch(client::WatchArgs),
    /// Summarise a time range of a stream.
    Summarize(client::SummarizeArgs),
    /// Encode a video source with the engine and ask questions about it as it runs.
    Demo(demo::DemoArgs),
    /// Check and run a model checkpoint.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Train the tiny model of the synthetic world from scratch (CPU).
    Train(train::TrainArgs),
    /// Held-out accuracy of a synthetic-world checkpoint.
    Eval(train::EvalArgs),
    /// Write one synthetic training clip as PNG frames with its questions and answers,
    /// or a scripted stream's frames and ground truth (`--script needle?… --truth`).
    Synth(train::SynthArgs),
}

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Print a checkpoint's shape as JSON.
    Inspect(InspectArgs),
    /// Answer a prompt about a video given as frames.
    Run(RunArgs),
}

#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llava_ov/tiny_a"))]
    pub model: PathBuf,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Frames of one video, in order (PNG or JPEG).
    #[arg(long, num_args = 1.., required = true)]
    pub frames: Vec<PathBuf>,
    /// Frames per second the frames were sampled at: frame i has timestamp i/F and the
    /// video lasts N/F seconds (the families that show time in the prompt use it).
    #[arg(long, default_value_t = 1.0)]
    pub fps: f64,
    /// The question or instruction.
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Write `logits` (f32 [prompt tokens, vocab]) and `input_ids` (i64) here.
    #[arg(long)]
    pub dump_logits: Option<PathBuf>,
}

/// Parses the command line and runs it.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::serve(&args),
        Command::CheckConfig(args) => serve::check_config(&args),
        Command::Ask(args) => client::ask(&args),
        Command::Streams(command) => client::streams(&command),
        Command::Watch(args) => client::watch(&args),
        Command::Summarize(args) => client::summarize(&args),
        Command::Demo(args) => {
            let _guard = tch::no_grad_guard();
            demo::run(&args)
        }
        Command::Model(ModelCommand::Inspect(args)) => inspect(&args),
        Command::Model(ModelCommand::Run(args)) => run_model(&args),
        Command::Train(args) => train::train(&args),
        Command::Eval(args) => train::evaluate(&args),
        Command::Synth(args) => train::synth(&args),
    }
}

fn load_model(args: &ModelArgs) -> anyhow::Result<Box<dyn VideoLlm>> {
    let precision: Precision = args.dtype.parse()?;
    let opts = ModelOptions::parse(&args.device, precision)?;
    let start = Instant::now();
    tracing::info!(model = %args.model.display(), device = %args.device, dtype = %args.dtype, "loading model");
    let model = crate::model::load(&args.model, opts)
        .with_context(|| format!("loading checkpoint {}", args.model.display()))?;
    tracing::info!(
        seconds = start.elapsed().as_secs_f64(),
        family = model.family(),
        "model loaded"
    );
    Ok(model)
}

fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let _guard = tch::no_grad_guard();
    let model = load_model(&args.model)?;
    println!("{}", serde_json::to_string_pretty(&model.summary())?);
    Ok(())
}

fn run_model(args: &RunArgs) -> anyhow::Result<()> {
    let _guard = tch::no_grad_guard();
    if args.prompt.trim().is_empty() {
        bail!("--prompt is empty");
    }
    if !(args.fps.is_finite() && args.fps > 0.0) {
        bail!("--fps must be a positive number, got {}", args.fps);
    }
    let model = load_model(&args.model)?;
    let frames = read_frames(&args.frames)?;
    let start = Instant::now();
    let prompt = model.video_prompt(&frames, args.fps, &args.prompt)?;
    let (tokens, logits) = model.generate_greedy(&prompt, args.max_new_tokens)?;
    tracing::info!(
        frames = frames.size()[0],
        prompt_tokens = prompt.ids.len(),
        new_tokens = tokens.len(),
        seconds = start.elapsed().as_secs_f64(),
        "answered"
    );
    println!("{}", model.detokenize(&tokens)?);
    if let Some(out) = &args.dump_logits {
        let input_ids = Tensor::from_slice(&prompt.ids);
        let logits = logits.to_kind(Kind::Float).to_device(tch::Device::Cpu);
        Tensor::write_safetensors(&[("logits", &logits), ("input_ids", &input_ids)], out)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// Frames as one uint8 [N, 3, H, W] tensor; all frames must share a size.
pub fn read_frames(paths: &[PathBuf]) -> anyhow::Result<Tensor> {
    let frames = paths
        .iter()
        .map(|p: &PathBuf| load_rgb(Path::new(p)))
        .collect::<Result<Vec<_>, _>>()?;
    let first = frames[0].size();
    if let Some((i, f)) = frames.iter().enumerate().find(|(_, f)| f.size() != first) {
        bail!(
            "frame {} is {:?}, frame 0 is {:?}: frames of one video share a size",
            paths[i].display(),
            f.size(),
            first
        );
    }
    Ok(Tensor::f_stack(&frames, 0)?)
}

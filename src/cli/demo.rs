//! `vstreamd demo`: the engine end to end in one process, on a video source of the
//! user's choice (a built-in `test://` pattern by default) and a checkpoint (the bundled
//! tiny one by default): GStreamer ingest → windowed encoding → KV blocks in a small RAM
//! tier and the disk tier → questions at set moments, answered over retrieved blocks and
//! printed with their citations and figures.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use crate::engine::{
    AskEvent, AskMode, AskRequest, Engine, EngineConfig, FrameInput, StreamInfo, StreamSpec,
};
use crate::ingest::{RtspTransport, Source, StreamConfig};
use crate::kv::disk::DiskConfig;
use crate::kv::{Quant, StoreConfig};

#[derive(Args, Debug)]
pub struct DemoArgs {
    #[command(flatten)]
    pub model: super::ModelArgs,
    /// Video source: rtsp://, file://, a path, v4l2:///dev/videoN or test://PATTERN.
    #[arg(long, default_value = "test://ball")]
    pub source: String,
    /// How long to run.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Frames sampled per second of video.
    #[arg(long, default_value_t = 4.0)]
    pub sample_fps: f64,
    /// Ask the questions every this many seconds.
    #[arg(long, default_value_t = 10)]
    pub ask_every: u64,
    /// A question to ask (repeatable).
    #[arg(long = "question", default_value = "what colour is the circle ?")]
    pub questions: Vec<String>,
    /// Recent window, in frames.
    #[arg(long, default_value_t = 8)]
    pub window_frames: usize,
    /// Blocks each layer retrieves.
    #[arg(long, default_value_t = 8)]
    pub top_k: usize,
    #[arg(long, default_value_t = 16)]
    pub max_new_tokens: usize,
    /// Block format: f32, f16, bf16, int8, int4.
    #[arg(long, default_value = "int8")]
    pub quant: String,
    /// RAM tier budget in KiB (small, so older blocks are read back from disk).
    #[arg(long, default_value_t = 64)]
    pub ram_budget_kib: usize,
    /// Where the KV store lives; a temporary directory (removed at exit) if unset.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

fn parse_quant(name: &str) -> anyhow::Result<Quant> {
    Ok(match name {
        "f32" => Quant::F32,
        "f16" => Quant::F16,
        "bf16" => Quant::Bf16,
        "int8" => Quant::Int8,
        "int4" => Quant::Int4,
        other => bail!("unknown --quant `{other}` (f32, f16, bf16, int8, int4)"),
    })
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    if args.ask_every == 0 || args.seconds == 0 {
        bail!("--seconds and --ask-every must be at least 1");
    }
    if args.questions.iter().any(|q| q.trim().is_empty()) {
        bail!("a --question is empty");
    }
    let source = Source::parse(&args.source, RtspTransport::Tcp, None)?;
    // Removed at exit when the user gave no directory.
    let temp = match &args.state_dir {
        Some(_) => None,
        None => Some(tempfile::tempdir().context("creating a temporary state directory")?),
    };
    let state_dir = match (&args.state_dir, &temp) {
        (Some(dir), _) => dir.clone(),
        (None, Some(t)) => t.path().to_owned(),
        (None, None) => bail!("no state directory"),
    };
    let model = super::load_model(&args.model)?;
    let size = model.config.vision_config.image_size as u32;
    let store = StoreConfig {
        quant: parse_quant(&args.quant)?,
        ram_budget_bytes: args.ram_budget_kib << 10,
        rep_key_budget_bytes: 64 << 20,
        dedup_threshold: None,
        disk: Some(DiskConfig::default()),
    };
    let mut config = EngineConfig::new(&state_dir, store);
    config.window_frames = args.window_frames;
    config.top_k = args.top_k;
    config.max_new_tokens = args.max_new_tokens;
    let engine = Engine::start(model, config)?;
    let mut ingest = StreamConfig::new("demo", source);
    ingest.sample_fps = args.sample_fps;
    ingest.width = size;
    ingest.height = size;
    let info = engine
        .add_stream(StreamSpec {
            id: "demo".into(),
            input: FrameInput::Ingest(ingest),
            store: None,
        })
        .wait()?;
    println!(
        "stream `demo` from {} ({} blocks already stored in {})",
        args.source,
        info.blocks,
        state_dir.display()
    );
    let start = Instant::now();
    let end = start + Duration::from_secs(args.seconds);
    let mut next_ask = start + Duration::from_secs(args.ask_every);
    let mut last_progress = start;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
        if last_progress.elapsed() >= Duration::from_secs(2) {
            last_progress = Instant::now();
            print_progress(&engine, start)?;
        }
        if Instant::now() >= next_ask {
            next_ask += Duration::from_secs(args.ask_every);
            for q in &args.questions {
                ask(&engine, q)?;
            }
        }
    }
    print_progress(&engine, start)?;
    engine.shutdown();
    Ok(())
}

fn print_progress(engine: &Engine, start: Instant) -> anyhow::Result<()> {
    let info: StreamInfo = engine
        .info(Some("demo"))
        .wait()?
        .pop()
        .context("the demo stream is gone")?;
    let state = info.state.as_ref().map_or("-", |s| s.label());
    println!(
        "[{:>5.1}s] source {state}: {} frames encoded, {} dropped; {} blocks ({} in RAM, {} KiB RAM, {} KiB disk){}",
        start.elapsed().as_secs_f64(),
        info.frames_encoded,
        info.frames_dropped,
        info.blocks,
        info.blocks_in_ram,
        info.ram_bytes >> 10,
        info.disk_bytes >> 10,
        info.last_error
            .as_ref()
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default(),
    );
    Ok(())
}

fn ask(engine: &Engine, question: &str) -> anyhow::Result<()> {
    let mut handle = engine.ask(AskRequest {
        stream: "demo".into(),
        question: question.into(),
        mode: AskMode::Retrieve,
        ..Default::default()
    })?;
    print!("  Q: {question}\n  A: ");
    let answer = loop {
        match handle.events.blocking_recv() {
            Some(AskEvent::Token { text, .. }) => print!("{text}"),
            Some(AskEvent::Done(answer)) => break answer,
            Some(AskEvent::Failed(e)) => {
                println!("(no answer: {e})");
                return Ok(());
            }
            None => bail!("the engine stopped"),
        }
    };
    let f = &answer.figures;
    println!(
        "\n     {} blocks scanned, {} from RAM, {} from disk, {} window frames; first token after {:.0} ms",
        f.blocks_scanned,
        f.blocks_from_ram,
        f.blocks_from_disk,
        f.window_frames,
        f.time_to_first_token.as_secs_f64() * 1e3
    );
    let cited: Vec<String> = answer
        .citations
        .iter()
        .filter(|c| c.score.is_some())
        .map(|c| format!("{:.2}s ({:?})", c.pts.as_secs_f64(), c.source))
        .collect();
    println!("     retrieved frames at: {}", cited.join(", "));
    Ok(())
}

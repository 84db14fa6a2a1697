//! `vstreamd demo`: the README's first command. The daemon, in this process, on the
//! built-in synthetic live stream (`synth://demo`, [`crate::synth::script`]: circles
//! and squares coming and going, a green triangle early on, a yellow star later) with
//! the bundled trained model; the scripted questions asked over gRPC at their moments
//! — some about events minutes earlier, long gone from the recent window and read
//! back from the disk tier — each answer printed with the stream-time spans it cites,
//! beside the ground truth.
//!
//! Everything goes through the real daemon: the TOML config it writes and loads, the
//! GStreamer `appsrc` ingest, the engine, the tiered store (a RAM tier of a few KiB,
//! so older blocks are evicted to disk), retrieval and the gRPC API.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

use crate::config::Config;
use crate::serve::proto::video_streams_client::VideoStreamsClient;
use crate::serve::{self, proto as pb, Control};
use crate::synth::script::{Script, ScriptedQuestion};

/// The trained checkpoint shipped with the repository (issue 7).
pub const TRAINED_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/synth-tiny");

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Checkpoint directory; the bundled model trained on the synthetic world.
    #[arg(long, default_value = TRAINED_MODEL)]
    pub model: PathBuf,
    /// Script seed (the layout of the distractors).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Stream seconds per wall-clock second (the script is 240 s of stream); 0: as fast
    /// as the engine encodes.
    #[arg(long, default_value_t = 4.0)]
    pub speed: f64,
    /// Recent window, in frames.
    #[arg(long, default_value_t = 8)]
    pub window_frames: usize,
    /// Frames each layer retrieves.
    #[arg(long, default_value_t = 4)]
    pub top_k: usize,
    /// Block format: f32, f16, bf16, int8, int4.
    #[arg(long, default_value = "int8")]
    pub quant: String,
    /// RAM tier in KiB (small, so older blocks are read back from disk).
    #[arg(long, default_value_t = 64)]
    pub ram_budget_kib: u64,
    /// Where the daemon keeps its state; a temporary directory (removed at exit) if unset.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

/// How one scripted question went.
struct Outcome {
    correct: bool,
    evidence_cited: bool,
    from_disk: bool,
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    if !args.model.join("config.json").exists() {
        bail!("no checkpoint at {}", args.model.display());
    }
    if !(args.speed.is_finite() && args.speed >= 0.0) {
        bail!("--speed must be ≥ 0");
    }
    let tmp = tempfile::tempdir().context("making a temporary state directory")?;
    let dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let config_path = dir.join("vstreamd-demo.toml");
    std::fs::write(&config_path, config_text(args, &dir))
        .with_context(|| format!("writing {}", config_path.display()))?;
    let config = Config::load(&config_path)?;
    config.check_files()?;
    let script = Script::demo(48, 48, args.seed);
    println!(
        "vstreamd demo: a synthetic live stream ({} s of stream time at {}), the model at {},\n\
         state and config in {}",
        script.duration,
        if args.speed > 0.0 {
            format!("{}x real time", args.speed)
        } else {
            "full speed".to_owned()
        },
        args.model.display(),
        dir.display()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a loopback port")?;
        let (control, control_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        println!("starting the daemon (loading the model, recovering the store)…");
        let started = Instant::now();
        let daemon = tokio::spawn(serve::run(
            config,
            Some(config_path.clone()),
            listener,
            None,
            control_rx,
            move |bound| {
                let _ = ready_tx.send(bound);
            },
        ));
        let bound = match ready_rx.await {
            Ok(b) => b,
            Err(_) => {
                // The daemon ended before serving: its error says why.
                daemon.await.context("the daemon task")??;
                bail!("the daemon stopped before serving");
            }
        };
        println!(
            "serving gRPC on {} after {:.1} s; streaming `demo`",
            bound.grpc,
            started.elapsed().as_secs_f64()
        );
        let result = ask_script(&format!("http://{}", bound.grpc), &script).await;
        let _ = control.send(Control::Shutdown);
        daemon.await.context("the daemon task")??;
        let outcomes = result?;
        let correct = outcomes.iter().filter(|o| o.correct).count();
        let cited = outcomes.iter().filter(|o| o.evidence_cited).count();
        let disk = outcomes.iter().filter(|o| o.from_disk).count();
        println!(
            "\n{correct}/{} answers right; the evidence cited in {cited}/{}; {disk} answers used blocks read back from disk.",
            outcomes.len(),
            outcomes.len(),
        );
        Ok(())
    })
}

fn config_text(args: &DemoArgs, dir: &std::path::Path) -> String {
    let speed = args.speed;
    format!(
        r#"# Written by `vstreamd demo`.
state_dir = "{state}"

[model]
path = "{model}"

[server]
listen = "127.0.0.1:0"

[metrics]
enabled = false

[engine]
window_frames = {window}
top_k = {top_k}
# The bundled model reads frames as it was trained: the same ones in every layer.
shared_retrieval_layer = 0
max_new_tokens = 4

[store]
quant = "{quant}"
ram_budget_mib = {ram}

[[streams]]
id = "demo"
uri = "synth://demo?seed={seed}&speed={speed}"
sample_fps = 1.0
"#,
        state = dir.join("state").display(),
        model = args.model.display(),
        window = args.window_frames,
        top_k = args.top_k,
        quant = args.quant,
        ram = args.ram_budget_kib as f64 / 1024.0,
        seed = args.seed,
    )
}

/// Waits for each scripted moment and asks its question.
async fn ask_script(url: &str, script: &Script) -> anyhow::Result<Vec<Outcome>> {
    let channel = Channel::from_shared(url.to_owned())?
        .connect()
        .await
        .context("connecting to the daemon")?;
    let mut client = VideoStreamsClient::new(channel);
    let mut questions: Vec<&ScriptedQuestion> = script.questions.iter().collect();
    questions.sort_by(|a, b| a.at.total_cmp(&b.at));
    let mut outcomes = Vec::new();
    let mut last_progress = Instant::now();
    for q in questions {
        loop {
            let s = client
                .get_stream(pb::GetStreamRequest { id: "demo".into() })
                .await?
                .into_inner();
            let st = s.status.unwrap_or_default();
            let now = st.last.as_ref().map_or(0.0, |m| m.stream_seconds);
            if now + 1e-6 >= q.at || st.input_ended {
                break;
            }
            if last_progress.elapsed() >= Duration::from_secs(5) {
                println!(
                    "  … stream at {now:.0} s: {} frames encoded, {} blocks ({} in RAM, {:.0} KiB on disk)",
                    st.frames_encoded,
                    st.blocks,
                    st.blocks_in_ram,
                    st.disk_bytes as f64 / 1024.0
                );
                last_progress = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        outcomes.push(ask_one(&mut client, q).await?);
    }
    Ok(outcomes)
}

async fn ask_one(
    client: &mut VideoStreamsClient<Channel>,
    q: &ScriptedQuestion,
) -> anyhow::Result<Outcome> {
    let request = pb::AskRequest {
        stream: "demo".into(),
        question: q.question.clone(),
        // Up to the scripted moment, however late the question is sent.
        range: Some(pb::TimeRange {
            since: None,
            until: Some(pb::TimePoint {
                point: Some(pb::time_point::Point::StreamSeconds(q.at)),
            }),
        }),
        options: Some(pb::AskOptions {
            max_new_tokens: 3,
            ..Default::default()
        }),
    };
    let mut stream = client.ask(request).await?.into_inner();
    let mut answer = None;
    while let Some(event) = stream.message().await? {
        if let Some(pb::ask_event::Event::Answer(a)) = event.event {
            answer = Some(a);
        }
    }
    let Some(answer) = answer else {
        bail!("no answer to `{}`", q.question);
    };
    let said = answer
        .text
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_lowercase();
    let correct = said == q.answer;
    let cites = |since: f64, until: f64| {
        answer.citations.iter().any(|c| {
            let t = c.at.as_ref().map_or(-1.0, |m| m.stream_seconds);
            t >= since - 1e-6 && t < until
        })
    };
    let evidence_cited = q.evidence.is_empty() || q.evidence.iter().any(|&(a, b)| cites(a, b));
    let from_disk = answer
        .citations
        .iter()
        .any(|c| c.source == pb::BlockSource::Disk as i32);
    println!("\n[stream {:>3.0} s] Q: {}", q.at, q.question);
    println!(
        "               A: {:<8} truth: {:<8} {}",
        said,
        q.answer,
        if correct { "right" } else { "WRONG" }
    );
    println!("               cited: {}", spans(&answer.citations));
    if !q.evidence.is_empty() {
        let ev: Vec<String> = q
            .evidence
            .iter()
            .map(|(a, b)| format!("{a:.0}–{:.0} s", b - 1.0))
            .collect();
        println!(
            "               evidence at {} {}",
            ev.join(", "),
            if evidence_cited {
                "(cited)"
            } else {
                "(not cited)"
            }
        );
    }
    if let Some(f) = &answer.figures {
        println!(
            "               {} blocks scanned, {} read from RAM, {} from disk, first token after {:.0} ms",
            f.blocks_scanned,
            f.blocks_from_ram,
            f.blocks_from_disk,
            f.time_to_first_token_seconds * 1e3
        );
    }
    Ok(Outcome {
        correct,
        evidence_cited,
        from_disk,
    })
}

/// Citations as runs of consecutive frames: `24–27 s (disk)`.
fn spans(citations: &[pb::Citation]) -> String {
    let name = |s: i32| match pb::BlockSource::try_from(s) {
        Ok(pb::BlockSource::Window) => "window",
        Ok(pb::BlockSource::Ram) => "RAM",
        Ok(pb::BlockSource::Disk) => "disk",
        _ => "?",
    };
    let mut out: Vec<String> = Vec::new();
    // (last seq, first time, last time, source) of the current run.
    let mut run: Option<(u64, f64, f64, i32)> = None;
    let flush = |(_, a, b, s): (u64, f64, f64, i32), out: &mut Vec<String>| {
        out.push(if (b - a).abs() < 1e-6 {
            format!("{a:.0} s ({})", name(s))
        } else {
            format!("{a:.0}–{b:.0} s ({})", name(s))
        });
    };
    for c in citations {
        let t = c.at.as_ref().map_or(0.0, |m| m.stream_seconds);
        run = match run {
            Some((last, a, _, s)) if c.seq == last + 1 && c.source == s => Some((c.seq, a, t, s)),
            Some(r) => {
                flush(r, &mut out);
                Some((c.seq, t, t, c.source))
            }
            None => Some((c.seq, t, t, c.source)),
        };
    }
    if let Some(r) = run {
        flush(r, &mut out);
    }
    if out.is_empty() {
        "nothing".to_owned()
    } else {
        out.join(", ")
    }
}

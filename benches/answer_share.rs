//! Answering vs encoding (issue 16): does a daemon busy answering still keep up with its
//! cameras? The real daemon (`vstreamd serve`, the binary cargo built) on 127.0.0.1
//! with a random checkpoint of [`checkpoint::SERVE_SMALL`]'s shape (written here,
//! ~2.5 GFLOP a frame), measured in one run:
//!
//! 1. capacity: two unpaced synthetic streams (`synth://needle?speed=0`, queues that
//!    wait) show how many frames a second the engine encodes when it does nothing else;
//! 2. two live streams (`test://ball`, queues that drop their oldest frame when the
//!    engine falls behind) sampled at 45% of that capacity each, so that the engine
//!    just sustains them: `VSTREAMD_SHARE_SECONDS` (default 60) idle, then unloaded
//!    time-to-first-token from a few sequential short asks, then the same window with
//!    `VSTREAMD_SHARE_CLIENTS` (default 4) clients asking continuously for
//!    `VSTREAMD_SHARE_TOKENS`-token answers (default 1,024) and a probe asking short
//!    questions one after another, so that time to first token under that load is
//!    sampled more often than long answers end.
//!
//! Printed: the CPU's flags that matter and the dtype (f32); encode frames/s under asking
//! as a fraction of idle (target ≥ 0.5 with the default policy), frames
//! dropped by ingest in each window, TTFT p50/p99 under load against the unloaded asks,
//! answer tokens/s, the engine's time split (from its histograms), and the longest gap
//! between engine heartbeats over the run (target < 10 s). Checks print PASS/FAIL and a
//! FAIL exits non-zero.

#[path = "../tests/common/client.rs"]
mod client;
#[path = "../tests/common/daemon.rs"]
mod daemon;
mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use support::{checkpoint, env_or, median, ms, percentile};
use tonic::Code;
use vstreamd::serve::proto as pb;

const QUESTIONS: [&str; 4] = [
    "what colour is the ball ?",
    "where is the ball ?",
    "is the ball moving ?",
    "describe the scene .",
];

/// Frames encoded and dropped over both streams, now.
async fn totals(c: &mut client::Client) -> Result<(u64, u64)> {
    let list = c
        .list_streams(pb::ListStreamsRequest {})
        .await
        .context("ListStreams")?
        .into_inner();
    Ok(list
        .streams
        .iter()
        .filter_map(|s| s.status.as_ref())
        .fold((0, 0), |(e, d), s| {
            (e + s.frames_encoded, d + s.frames_dropped)
        }))
}

fn start_daemon(dir: &Path, model: &Path, streams: &str) -> daemon::Daemon {
    let config = daemon::config_text_for(
        model,
        &dir.join("state"),
        "max_concurrent_asks = 8\nmax_concurrent_asks_per_client = 8\n",
        streams,
    );
    daemon::Daemon::start_with(dir, &config, Duration::from_secs(300))
}

/// Frames/s the engine encodes for two streams with nothing else to do.
fn capacity(model: &Path, seconds: u64) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let streams: String = (0..2)
        .map(|i| {
            format!(
                "[[streams]]\nid = \"cap{i}\"\nuri = \"synth://needle?seed={i}&frames=1000000&speed=0\"\nsample_fps = 1.0\n\n"
            )
        })
        .collect();
    let d = start_daemon(dir.path(), model, &streams);
    let rate = client::runtime().block_on(async {
        let mut c = client::connect(&d.grpc_url, None).await;
        // Warm up: past the first window of each stream.
        let warm = Instant::now() + Duration::from_secs(300);
        while totals(&mut c).await?.0 < 24 {
            if Instant::now() > warm {
                bail!("the capacity streams encode nothing");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (e0, _) = totals(&mut c).await?;
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let (e1, _) = totals(&mut c).await?;
        Ok((e1 - e0) as f64 / t0.elapsed().as_secs_f64())
    })?;
    d.stop(Duration::from_secs(60));
    Ok(rate)
}

#[derive(Default)]
struct Tally {
    /// Asks read to their end (OK).
    answers: u64,
    /// Answer tokens received, from every ask, finished or not.
    tokens: u64,
    /// Codes of asks that ended otherwise.
    other: Vec<String>,
    ttfts: Vec<Duration>,
}

/// One ask read to its end, recording into `tally` as it goes (its TTFT at the first
/// token, each token), so that an ask cut at the end of the window still counts.
async fn ask(
    c: &mut client::Client,
    stream: &str,
    question: &str,
    max_new_tokens: u32,
    tally: &Mutex<Tally>,
) -> Code {
    let start = Instant::now();
    let mut events = match c.ask(client::ask(stream, question, max_new_tokens)).await {
        Ok(r) => r.into_inner(),
        Err(s) => return s.code(),
    };
    let mut first = true;
    loop {
        match events.message().await {
            Ok(Some(pb::AskEvent {
                event: Some(pb::ask_event::Event::Token(_)),
            })) => {
                let mut t = tally.lock().expect("tally");
                if first {
                    t.ttfts.push(start.elapsed());
                    first = false;
                }
                t.tokens += 1;
            }
            Ok(Some(_)) => {}
            Ok(None) => return Code::Ok,
            Err(s) => return s.code(),
        }
    }
}

/// `clients` tasks asking for `tokens`-token answers until `until` (an ask still open
/// then is dropped), and one probe asking for 8-token answers one after another.
async fn ask_continuously(url: &str, clients: usize, tokens: u32, until: Instant) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut tasks = Vec::new();
    for i in 0..=clients {
        let url = url.to_owned();
        let tally = tally.clone();
        let tokens = if i == clients { 8 } else { tokens };
        tasks.push(tokio::spawn(async move {
            let mut c = client::connect(&url, None).await;
            let mut n = i;
            loop {
                let stream = format!("live{}", n % 2);
                let question = QUESTIONS[n % QUESTIONS.len()];
                let left = until.saturating_duration_since(Instant::now());
                let asked = ask(&mut c, &stream, question, tokens, &tally);
                let Ok(code) = tokio::time::timeout(left, asked).await else {
                    return;
                };
                n += 1;
                let mut t = tally.lock().expect("tally");
                if code == Code::Ok {
                    t.answers += 1;
                } else {
                    t.other.push(format!("{code:?}"));
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut t = tally.lock().expect("tally");
    std::mem::take(&mut *t)
}

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    daemon::metric_value(text, name, labels).unwrap_or(0.0)
}

fn main() -> Result<()> {
    let seconds: u64 = env_or("VSTREAMD_SHARE_SECONDS", 60)?;
    let clients: usize = env_or("VSTREAMD_SHARE_CLIENTS", 4)?;
    let tokens: u32 = env_or("VSTREAMD_SHARE_TOKENS", 1024)?;
    let calibration: u64 = env_or("VSTREAMD_SHARE_CALIBRATION_SECONDS", 15)?;
    if seconds == 0 || clients == 0 || tokens == 0 {
        bail!("VSTREAMD_SHARE_SECONDS, _CLIENTS and _TOKENS must be at least 1");
    }
    println!("answer_share: {}", support::cpu_flags());
    let engine = vstreamd::engine::EngineConfig::new(
        "",
        vstreamd::config::StoreSection::default().store_config(),
    );
    println!(
        "dtype f32 (the daemon's default); answer_share {}, decode_batch {}, batch_frames {} (defaults)",
        engine.answer_share, engine.decode_batch, engine.batch_frames
    );
    let model = checkpoint::ensure(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-checkpoints/serve_small"),
        &checkpoint::SERVE_SMALL,
    )?;

    let cap = capacity(&model, calibration)?;
    // Each live stream at 45% of capacity: the engine just sustains both.
    let fps = ((0.45 * cap * 2.0).round() / 2.0).clamp(0.5, 30.0);
    println!(
        "capacity: {cap:.2} frames/s for two streams with nothing else to do; live streams at {fps} frames/s each ({:.0}% of it)",
        200.0 * fps / cap
    );

    let dir = tempfile::tempdir()?;
    let streams: String = (0..2)
        .map(|i| {
            format!("[[streams]]\nid = \"live{i}\"\nuri = \"test://ball\"\nsample_fps = {fps}\n\n")
        })
        .collect();
    let d = start_daemon(dir.path(), &model, &streams);
    let rt = client::runtime();
    let report = rt.block_on(async {
        let mut c = client::connect(&d.grpc_url, None).await;
        // Warm-up: both streams encoding, past their first windows.
        tokio::time::sleep(Duration::from_secs(10)).await;

        let (e0, d0) = totals(&mut c).await?;
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let (e1, d1) = totals(&mut c).await?;
        let idle_time = t0.elapsed().as_secs_f64();
        let idle_fps = (e1 - e0) as f64 / idle_time;

        let quiet = Mutex::new(Tally::default());
        for n in 0..2 * QUESTIONS.len() {
            let question = QUESTIONS[n % QUESTIONS.len()];
            let code = ask(&mut c, &format!("live{}", n % 2), question, 8, &quiet).await;
            if code != Code::Ok {
                bail!("an unloaded ask ended with {code:?}");
            }
        }
        let mut unloaded = quiet.into_inner().expect("tally").ttfts;
        unloaded.sort();

        let (e2, d2) = totals(&mut c).await?;
        let before = d.scrape();
        let t2 = Instant::now();
        let tally = ask_continuously(
            &d.grpc_url,
            clients,
            tokens,
            t2 + Duration::from_secs(seconds),
        )
        .await;
        let (e3, d3) = totals(&mut c).await?;
        let load_time = t2.elapsed().as_secs_f64();
        let after = d.scrape();
        let loaded_fps = (e3 - e2) as f64 / load_time;
        Ok::<_, anyhow::Error>((
            idle_fps,
            d1 - d0,
            loaded_fps,
            d3 - d2,
            unloaded,
            tally,
            load_time,
            before,
            after,
        ))
    });
    let (
        idle_fps,
        idle_dropped,
        loaded_fps,
        loaded_dropped,
        unloaded,
        mut tally,
        load_time,
        before,
        after,
    ) = report?;
    d.stop(Duration::from_secs(60));

    tally.ttfts.sort();
    let ratio = loaded_fps / idle_fps.max(1e-9);
    let gap = metric(&after, "vstreamd_engine_heartbeat_gap_max_seconds", &[]);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        metric(&after, name, labels) - metric(&before, name, labels)
    };
    let encode_s = delta("vstreamd_engine_encode_batch_seconds_sum", &[]);
    let first_s = delta(
        "vstreamd_engine_answer_step_seconds_sum",
        &[("step", "first")],
    );
    let decode_s = delta(
        "vstreamd_engine_answer_step_seconds_sum",
        &[("step", "decode")],
    );
    let busy = (encode_s + first_s + decode_s).max(1e-9);
    let (u50, u99) = (percentile(&unloaded, 0.5), percentile(&unloaded, 0.99));
    let (l50, l99) = (
        percentile(&tally.ttfts, 0.5),
        percentile(&tally.ttfts, 0.99),
    );
    let step_ms: Vec<f64> = [decode_s
        / delta(
            "vstreamd_engine_answer_step_seconds_count",
            &[("step", "decode")],
        )
        .max(1.0)]
    .iter()
    .map(|s| s * 1e3)
    .collect();

    println!();
    println!(
        "| window ({seconds} s) | encode frames/s | frames dropped | answers | answer tokens/s |"
    );
    println!("|---|---|---|---|---|");
    println!("| idle | {idle_fps:.2} | {idle_dropped} | – | – |");
    println!(
        "| {clients} clients asking ({tokens}-token answers) + a probe (8) | {loaded_fps:.2} | {loaded_dropped} | {} finished, {} asked | {:.1} |",
        tally.answers,
        tally.ttfts.len(),
        tally.tokens as f64 / load_time
    );
    println!();
    println!("encode rate under asking / idle: {ratio:.2} (target >= 0.5)");
    println!(
        "TTFT unloaded p50 {:.0} ms, p99 {:.0} ms ({} asks); under load p50 {:.0} ms ({:.1}x), p99 {:.0} ms ({:.1}x) over {} asks",
        ms(u50),
        ms(u99),
        unloaded.len(),
        ms(l50),
        ms(l50) / ms(u50).max(1e-9),
        ms(l99),
        ms(l99) / ms(u99).max(1e-9),
        tally.ttfts.len()
    );
    println!(
        "engine time under load: encoding {:.0}%, first steps {:.0}%, decode steps {:.0}% (median decode step {:.1} ms; idle {:.0}%)",
        100.0 * encode_s / busy,
        100.0 * first_s / busy,
        100.0 * decode_s / busy,
        median(&step_ms),
        100.0 * (1.0 - busy / load_time).max(0.0)
    );
    println!("longest gap between engine heartbeats over the run: {gap:.2} s (target < 10 s)");
    if !tally.other.is_empty() {
        println!("asks ending other than OK: {:?}", tally.other);
    }
    let checks = [
        ("encode rate under asking >= 0.5 x idle", ratio >= 0.5),
        ("longest heartbeat gap < 10 s", gap < 10.0),
        (
            "every ask answered (none refused or failed)",
            tally.other.is_empty(),
        ),
        ("answers progressed under load", tally.tokens > 0),
    ];
    let mut all = true;
    for (what, pass) in checks {
        println!("{}: {what}", if pass { "PASS" } else { "FAIL" });
        all &= pass;
    }
    if !all {
        std::process::exit(1);
    }
    Ok(())
}

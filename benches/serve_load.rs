//! Service load benchmark (issue 6): N concurrent clients asking for M seconds against
//! the real daemon with the tiny model.
//!
//! The daemon (`vstreamd serve`, the binary cargo built) runs on 127.0.0.1 port 0 with
//! bearer tokens for `VSTREAMD_LOAD_CLIENTS` clients (default 8), a limit of 4 asks in
//! flight overall and 2 per client, over one stream made from a finite generated H.264
//! clip, asked once it has ended — the store is then fixed, so any memory growth is the
//! service's own. Each client has its own channel and token and asks in a loop for
//! `VSTREAMD_LOAD_SECONDS` (default 30); a RESOURCE_EXHAUSTED answer is counted and
//! retried after 50 ms. Time to first token (TTFT) is measured by the client from
//! sending the request to the first token event.
//!
//! Printed, in one run:
//! - unloaded TTFT (p50/p99 of sequential asks before the load) — the baseline;
//! - under load: asks started, answered, refused (RESOURCE_EXHAUSTED), any other code;
//!   success rate over admitted asks and over all; answers/s; TTFT p50/p99 and their
//!   ratio to the baseline (admitted asks share the engine's decode steps, so TTFT and
//!   answer time grow with the number in flight);
//! - daemon VmRSS after a warm-up load of 5 s, sampled every second through the run,
//!   and its growth (target ≤ 10%).
//!
//! Checks (printed PASS/FAIL, and the bench exits non-zero on a FAIL): no code but OK
//! and RESOURCE_EXHAUSTED; RSS growth ≤ 10%. Answers per client are printed but not
//! checked: admission is refuse-and-retry, not a fair queue, so a client that keeps
//! retrying at an unlucky moment can go unanswered for a while.

#[path = "../tests/common/client.rs"]
mod client;
#[path = "../tests/common/daemon.rs"]
mod daemon;
#[path = "../tests/support/media.rs"]
mod media;
mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{env_or, ms, percentile};
use tonic::Code;
use vstreamd::serve::proto as pb;

const LIMIT: usize = 4;
const PER_CLIENT: usize = 2;
const MAX_NEW_TOKENS: u32 = 6;
const QUESTIONS: [&str; 4] = [
    "what colour is the ball ?",
    "where is the ball ?",
    "is the ball moving ?",
    "how many balls are there ?",
];

fn token(i: usize) -> String {
    format!("load-client-token-{i:04}-abcdef")
}

/// How one ask ended, and its TTFT when it produced a token.
struct Outcome {
    code: Code,
    ttft: Option<Duration>,
}

async fn ask_once(c: &mut client::Client, question: &str) -> Outcome {
    let start = Instant::now();
    let req = client::ask("clip", question, MAX_NEW_TOKENS);
    let mut stream = match c.ask(req).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            return Outcome {
                code: s.code(),
                ttft: None,
            }
        }
    };
    let mut ttft = None;
    loop {
        match stream.message().await {
            Ok(Some(event)) => {
                if ttft.is_none() && matches!(event.event, Some(pb::ask_event::Event::Token(_))) {
                    ttft = Some(start.elapsed());
                }
            }
            Ok(None) => {
                return Outcome {
                    code: Code::Ok,
                    ttft,
                }
            }
            Err(s) => {
                return Outcome {
                    code: s.code(),
                    ttft,
                }
            }
        }
    }
}

#[derive(Default)]
struct Tally {
    codes: BTreeMap<String, u64>,
    ttfts: Vec<Duration>,
    answered_by_client: BTreeMap<usize, u64>,
}

/// `clients` tasks asking in a loop until `until`; outcomes go to `tally` when `record`.
async fn load(url: &str, clients: usize, until: Instant, tally: Arc<Mutex<Tally>>, record: bool) {
    let mut tasks = Vec::new();
    for i in 0..clients {
        let url = url.to_owned();
        let tally = tally.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = client::connect(&url, Some(&token(i))).await;
            let mut n = i;
            while Instant::now() < until {
                let o = ask_once(&mut c, QUESTIONS[n % QUESTIONS.len()]).await;
                n += 1;
                if o.code == Code::ResourceExhausted {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if !record {
                    continue;
                }
                let mut t = tally.lock().expect("tally");
                *t.codes.entry(format!("{:?}", o.code)).or_default() += 1;
                if o.code == Code::Ok {
                    *t.answered_by_client.entry(i).or_default() += 1;
                    if let Some(d) = o.ttft {
                        t.ttfts.push(d);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
}

fn main() -> anyhow::Result<()> {
    let clients = env_or("VSTREAMD_LOAD_CLIENTS", 8usize)?.max(1);
    let seconds = env_or("VSTREAMD_LOAD_SECONDS", 30u64)?.max(1);
    let baseline_asks = env_or("VSTREAMD_LOAD_BASELINE_ASKS", 20usize)?.max(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = dir.path().join("clip.mp4");
    media::h264_file(&clip, 8, 10, 160, 120, "mp4mux");
    let tokens: String = (0..clients)
        .map(|i| format!("client{i}:{}\n", token(i)))
        .collect();
    let tokens_path = dir.path().join("tokens");
    std::fs::write(&tokens_path, tokens).expect("tokens file");
    let server = format!(
        "auth_tokens_file = \"{}\"\nmax_concurrent_asks = {LIMIT}\nmax_concurrent_asks_per_client = {PER_CLIENT}\n",
        tokens_path.display()
    );
    let extra = format!(
        "[engine]\nwindow_frames = 4\ntop_k = 4\n\n[[streams]]\nid = \"clip\"\nuri = \"{}\"\nsample_fps = 4.0\n",
        clip.display()
    );
    let state = dir.path().join("state");
    let d = daemon::Daemon::start_with(
        dir.path(),
        &daemon::config_text(&state, &server, &extra),
        Duration::from_secs(180),
    );
    let pid = d.child.id();
    println!("serve_load: {clients} clients, {seconds} s, limit {LIMIT} overall / {PER_CLIENT} per client, max_new_tokens {MAX_NEW_TOKENS}, tiny model, daemon pid {pid}");

    let rt = client::runtime();
    let ok = rt.block_on(async {
        let mut c = client::connect(&d.grpc_url, Some(&token(0))).await;
        let s = client::wait_stream(&mut c, "clip", Duration::from_secs(180), |s| {
            s.input_ended && s.frames_encoded >= 16
        })
        .await;
        let st = s.status.expect("status");
        println!(
            "stream: {} frames encoded, {} blocks, state {}",
            st.frames_encoded, st.blocks, st.state
        );

        // Baseline: sequential asks, nothing else running.
        let mut base = Vec::new();
        for n in 0..baseline_asks {
            let o = ask_once(&mut c, QUESTIONS[n % QUESTIONS.len()]).await;
            assert_eq!(o.code, Code::Ok, "baseline ask failed");
            base.push(o.ttft.expect("a token"));
        }
        base.sort();
        let (b50, b99) = (percentile(&base, 0.5), percentile(&base, 0.99));
        println!(
            "unloaded TTFT over {} asks: p50 {:.1} ms, p99 {:.1} ms",
            base.len(),
            ms(b50),
            ms(b99)
        );

        // Warm-up load, not recorded; then the RSS baseline.
        let warm = Arc::new(Mutex::new(Tally::default()));
        load(
            &d.grpc_url,
            clients,
            Instant::now() + Duration::from_secs(5),
            warm,
            false,
        )
        .await;
        let rss_warm = daemon::rss_kib(pid);

        let tally = Arc::new(Mutex::new(Tally::default()));
        let start = Instant::now();
        let until = start + Duration::from_secs(seconds);
        let sampler = tokio::spawn(async move {
            let mut samples = Vec::new();
            while Instant::now() < until {
                tokio::time::sleep(Duration::from_secs(1)).await;
                samples.push(daemon::rss_kib(pid));
            }
            samples
        });
        load(&d.grpc_url, clients, until, tally.clone(), true).await;
        let elapsed = start.elapsed();
        let samples = sampler.await.expect("sampler");
        let rss_end = daemon::rss_kib(pid);

        let t = tally.lock().expect("tally");
        let count = |code: &str| t.codes.get(code).copied().unwrap_or(0);
        let total: u64 = t.codes.values().sum();
        let answered = count("Ok");
        let refused = count("ResourceExhausted");
        let other: u64 = total - answered - refused;
        let mut ttfts = t.ttfts.clone();
        ttfts.sort();
        let (l50, l99) = (percentile(&ttfts, 0.5), percentile(&ttfts, 0.99));
        println!("asks under load: {total} ({:?})", t.codes);
        println!(
            "success rate: {:.1}% of admitted asks, {:.1}% of all (refusals are the limit at work)",
            100.0 * answered as f64 / (answered + other).max(1) as f64,
            100.0 * answered as f64 / total.max(1) as f64
        );
        println!(
            "answers/s: {:.2}; per client: {:?}",
            answered as f64 / elapsed.as_secs_f64(),
            (0..clients)
                .map(|i| t.answered_by_client.get(&i).copied().unwrap_or(0))
                .collect::<Vec<_>>()
        );
        println!(
            "loaded TTFT: p50 {:.1} ms ({:.2}x unloaded), p99 {:.1} ms ({:.2}x unloaded)",
            ms(l50),
            ms(l50) / ms(b50).max(1e-9),
            ms(l99),
            ms(l99) / ms(b99).max(1e-9)
        );
        let rss_max = samples.iter().copied().max().unwrap_or(rss_end).max(rss_end);
        let growth = (rss_end as f64 - rss_warm as f64) / rss_warm.max(1) as f64;
        println!(
            "daemon VmRSS: {:.1} MiB after warm-up, {:.1} MiB at the end, {:.1} MiB peak; growth {:+.1}%",
            rss_warm as f64 / 1024.0,
            rss_end as f64 / 1024.0,
            rss_max as f64 / 1024.0,
            100.0 * growth
        );
        let checks = [
            ("no code but OK and RESOURCE_EXHAUSTED", other == 0),
            ("RSS growth <= 10% after warm-up", growth <= 0.10),
        ];
        let mut all = true;
        for (what, pass) in checks {
            println!("{}: {what}", if pass { "PASS" } else { "FAIL" });
            all &= pass;
        }
        all
    });
    let status = d.stop(Duration::from_secs(60));
    println!("daemon exit: {status}");
    if !ok || !status.success() {
        std::process::exit(1);
    }
    Ok(())
}

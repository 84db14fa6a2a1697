//! A needle in a stream, end to end through the real daemon (issue 7): the bundled
//! trained model, a `synth://needle` stream (distractor circles and squares, one
//! triangle visible for 3 frames somewhere in the first 90%: the default needle) rendered into
//! GStreamer's `appsrc`, ingest → engine → a RAM tier of 16 KiB (about 4 blocks), so
//! blocks spill to the disk tier → retrieval → the gRPC Ask of the Rust client. Asked
//! once the stream has ended and every frame is encoded (so the store is the same on
//! every run and greedy answers are deterministic), "what colour was the triangle ?"
//! must get the needle's colour and cite a frame of the needle's span, read back from
//! disk.

#[path = "common/client.rs"]
mod client;
#[path = "common/daemon.rs"]
mod daemon;

use std::path::Path;
use std::time::Duration;

use tonic::Code;
use vstreamd::serve::proto as pb;
use vstreamd::synth::script::{Script, ScriptOptions};

const FRAMES: usize = 300;
const SEED: u64 = 1;

#[test]
fn needle_through_the_daemon_is_answered_and_cited() {
    let model = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/models/synth-tiny"));
    let options = ScriptOptions {
        frames: Some(FRAMES),
        ..Default::default()
    };
    let script = Script::from_name("needle", SEED, &options, 48, 48).unwrap();
    assert_eq!(script.frames(), FRAMES);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let extra = format!(
        r#"[engine]
window_frames = 8
top_k = 4
shared_retrieval_layer = 0

[store]
quant = "int8"
ram_budget_mib = 0.015625

[[streams]]
id = "needle"
uri = "synth://needle?seed={SEED}&frames={FRAMES}&speed=0"
sample_fps = 1.0
"#
    );
    let d = daemon::Daemon::start_with(
        dir.path(),
        &daemon::config_text_for(model, &state, "", &extra),
        Duration::from_secs(120),
    );

    client::runtime().block_on(async {
        let mut c = client::connect(&d.grpc_url, None).await;
        let s = client::wait_stream(&mut c, "needle", Duration::from_secs(300), |s| {
            s.input_ended && s.frames_encoded >= FRAMES as u64
        })
        .await;
        let status = s.status.unwrap();
        assert_eq!(status.frames_encoded, FRAMES as u64, "{status:?}");
        assert_eq!(status.frames_dropped, 0, "{status:?}");
        assert!(status.disk_bytes > 0, "nothing spilled to disk: {status:?}");

        for q in &script.questions {
            let (since, until) = q.evidence[0];
            let mut req = client::ask("needle", &q.question, 3);
            req.options = Some(pb::AskOptions {
                mode: pb::AskMode::Retrieve as i32,
                top_k: 4,
                recent_frames: Some(2),
                max_new_tokens: 3,
                ..Default::default()
            });
            let asked = client::collect(c.ask(req).await.unwrap().into_inner()).await;
            assert_eq!(asked.code, Some(Code::Ok), "{}", asked.message);
            let answer = asked.answer.expect("answer event");
            let cited: Vec<(f64, i32)> = answer
                .citations
                .iter()
                .map(|c| (c.at.as_ref().map_or(-1.0, |m| m.stream_seconds), c.source))
                .collect();
            println!(
                "{:?} (needle at {since}..{until} s): {:?}, cited {cited:?}",
                q.question, answer.text
            );
            assert_eq!(
                answer.text.split_whitespace().next(),
                Some(q.answer.as_str()),
                "{:?}: cited {cited:?}",
                q.question
            );
            assert!(
                cited.iter().any(|&(t, source)| t >= since - 1e-6
                    && t < until - 1e-6
                    && source == pb::BlockSource::Disk as i32),
                "{:?}: the needle's span {since}..{until} s is not cited from disk: {cited:?}",
                q.question
            );
        }
    });
    assert!(d.stop(Duration::from_secs(60)).success());
}

/// Issue 19: the daemon at its own defaults — the minimal config (model, state, ports,
/// one stream; every `[engine]` and `[store]` key at its default) and `vstreamd ask`
/// with no tuning flag — answers both needles of a 1,000-frame stream (a triangle and,
/// the frame after it, a star) and cites their frames.
#[test]
#[ignore = "issue 19 open: the shipped model answers 9% of needle questions at the defaults (cargo bench --bench needle); run with --ignored once it does"]
fn both_needles_answered_at_the_daemons_defaults_through_the_cli() {
    const LONG: usize = 1_000;
    const SEED: u64 = 101;
    let model = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/models/synth-tiny"));
    let query = format!("seed={SEED}&frames={LONG}&needles=triangle,star&chained=1");
    let source = vstreamd::ingest::Source::parse(
        &format!("synth://needle?{query}"),
        vstreamd::ingest::RtspTransport::Tcp,
        None,
    )
    .unwrap();
    let vstreamd::ingest::Source::Synth { options, .. } = source else {
        panic!("not a synth source");
    };
    let script = Script::from_name("needle", SEED, &options, 48, 48).unwrap();
    assert_eq!(script.questions.len(), 2, "{:?}", script.questions);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let extra = format!(
        r#"[[streams]]
id = "needles"
uri = "synth://needle?{query}&speed=0"
"#
    );
    let d = daemon::Daemon::start_with(
        dir.path(),
        &daemon::config_text_for(model, &state, "", &extra),
        Duration::from_secs(120),
    );
    client::runtime().block_on(async {
        let mut c = client::connect(&d.grpc_url, None).await;
        client::wait_stream(&mut c, "needles", Duration::from_secs(600), |s| {
            s.input_ended && s.frames_encoded >= LONG as u64
        })
        .await;
    });
    for q in &script.questions {
        let out = std::process::Command::new(daemon::binary())
            .args([
                "ask",
                "--addr",
                &d.grpc_url,
                "--stream",
                "needles",
                &q.question,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{:?} (evidence {:?}):\n{text}", q.question, q.evidence);
        assert_eq!(
            text.split_whitespace().next(),
            Some(q.answer.as_str()),
            "{:?}: {text}",
            q.question
        );
        // Citation lines: "   frame N at T s (wall ...) [source]".
        let cited: Vec<f64> = text
            .lines()
            .filter_map(|l| {
                let rest = l.trim_start().strip_prefix("frame ")?;
                let at = rest.split(" at ").nth(1)?;
                at.split('s').next()?.trim().parse().ok()
            })
            .collect();
        assert!(
            cited.iter().any(|&t| q
                .evidence
                .iter()
                .any(|&(since, until)| t >= since - 1e-6 && t < until - 1e-6)),
            "{:?}: no citation in {:?}: {cited:?}",
            q.question,
            q.evidence
        );
    }
    assert!(d.stop(Duration::from_secs(60)).success());
}

//! The daemon end to end on a SmolVLM checkpoint (the tiny fixture): the family picked
//! from `config.json`, a stream encoded at the model's frame size, a question answered
//! with citations (some from disk), and after a restart the same store recovered and
//! asked again, the frames from before the restart still cited.

#[path = "common/client.rs"]
mod client;
#[path = "common/daemon.rs"]
mod daemon;

use std::path::Path;
use std::time::Duration;

use tonic::Code;
use vstreamd::serve::proto as pb;

const FRAMES: u64 = 24;

fn model() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smolvlm/tiny_s")
}

fn ask_all(stream: &str) -> pb::AskRequest {
    let mut req = client::ask(stream, "what colour is the circle ?", 6);
    req.options = Some(pb::AskOptions {
        mode: pb::AskMode::Uniform as i32,
        top_k: FRAMES as u32 * 2,
        max_new_tokens: 6,
        ..Default::default()
    });
    req
}

#[test]
fn smolvlm_streams_answers_with_citations_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = daemon::config_text_for(
        &model(),
        &state,
        "",
        &format!(
            "[store]\nram_budget_mib = 0.015625\n\n[[streams]]\nid = \"clip\"\n\
             uri = \"synth://needle?seed=9&frames={FRAMES}&speed=0\"\nsample_fps = 1.0\n"
        ),
    );
    let d = daemon::Daemon::start_with(dir.path(), &config, Duration::from_secs(120));
    let first = client::runtime().block_on(async {
        let mut c = client::connect(&d.grpc_url, None).await;
        client::wait_stream(&mut c, "clip", Duration::from_secs(300), |s| {
            s.input_ended && s.frames_encoded >= FRAMES
        })
        .await;
        let got = client::collect(c.ask(ask_all("clip")).await.unwrap().into_inner()).await;
        assert_eq!(got.code, Some(Code::Ok), "{got:?}");
        let answer = got.answer.expect("an answer");
        assert_eq!(answer.citations.len() as u64, FRAMES, "{answer:?}");
        assert!(
            answer
                .citations
                .iter()
                .any(|c| c.source == pb::BlockSource::Disk as i32),
            "a 16 KiB RAM tier spills blocks to disk: {answer:?}"
        );
        // Retrieval (the default mode) too.
        let got = client::collect(
            c.ask(client::ask("clip", "what colour is the circle ?", 4))
                .await
                .unwrap()
                .into_inner(),
        )
        .await;
        assert_eq!(got.code, Some(Code::Ok), "{got:?}");
        assert!(!got.answer.unwrap().citations.is_empty());
        answer
    });
    assert!(!d.log().contains("panicked"), "{}", d.log());
    assert!(d.log().contains("family=\"smolvlm\""), "{}", d.log());
    assert!(d.stop(Duration::from_secs(60)).success());

    // After a restart: the blocks from before are recovered and cited again.
    let d = daemon::Daemon::start_with(dir.path(), &config, Duration::from_secs(120));
    client::runtime().block_on(async {
        let mut c = client::connect(&d.grpc_url, None).await;
        let s = client::wait_stream(&mut c, "clip", Duration::from_secs(300), |s| {
            s.input_ended && s.frames_encoded >= FRAMES
        })
        .await;
        assert_eq!(s.status.unwrap().blocks, 2 * FRAMES);
        let got = client::collect(c.ask(ask_all("clip")).await.unwrap().into_inner()).await;
        assert_eq!(got.code, Some(Code::Ok), "{got:?}");
        let seqs: Vec<u64> = got
            .answer
            .unwrap()
            .citations
            .iter()
            .map(|c| c.seq)
            .collect();
        let before: Vec<u64> = first.citations.iter().map(|c| c.seq).collect();
        assert!(
            before.iter().all(|s| seqs.contains(s)),
            "the frames from before the restart are still there: {seqs:?}"
        );
    });
    assert!(!d.log().contains("panicked"), "{}", d.log());
}

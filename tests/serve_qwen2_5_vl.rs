//! The daemon end to end on a Qwen2.5-VL checkpoint (the tiny fixture): the family
//! picked from `config.json`, a stream of an odd number of frames encoded two frames a
//! block (the last block filled when the stream ends), a question answered with
//! citations (some from disk), and after a restart the same store recovered and asked
//! again, the blocks from before the restart still cited.

#[path = "common/client.rs"]
mod client;
#[path = "common/daemon.rs"]
mod daemon;

use std::path::Path;
use std::time::Duration;

use tonic::Code;
use vstreamd::serve::proto as pb;

const FRAMES: u64 = 23;
/// Two frames a block, the last one alone.
const BLOCKS: u64 = FRAMES.div_ceil(2);

fn model() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2_5_vl/tiny_q")
}

fn ask_all(stream: &str) -> pb::AskRequest {
    let mut req = client::ask(stream, "what colour is the circle ?", 6);
    req.options = Some(pb::AskOptions {
        mode: pb::AskMode::Uniform as i32,
        top_k: BLOCKS as u32 * 2,
        max_new_tokens: 6,
        ..Default::default()
    });
    req
}

#[test]
fn qwen2_5_vl_streams_answers_with_citations_and_survives_a_restart() {
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
        assert_eq!(answer.citations.len() as u64, BLOCKS, "{answer:?}");
        // Each block starts at its first frame's time: 2 s apart at 1 fps.
        let starts: Vec<u64> = answer
            .citations
            .iter()
            .map(|c| c.at.as_ref().map_or(0, |m| m.stream_seconds.round() as u64))
            .collect();
        assert_eq!(
            starts,
            (0..BLOCKS).map(|b| 2 * b).collect::<Vec<_>>(),
            "{answer:?}"
        );
        let frames: Vec<u32> = answer.citations.iter().map(|c| c.frames).collect();
        let mut expected = vec![2; BLOCKS as usize];
        expected[BLOCKS as usize - 1] = 1;
        assert_eq!(frames, expected, "the last block holds the odd frame alone");
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
    assert!(d.log().contains("family=\"qwen2_5_vl\""), "{}", d.log());
    assert!(d.stop(Duration::from_secs(60)).success());

    // After a restart: the blocks from before are recovered and cited again.
    let d = daemon::Daemon::start_with(dir.path(), &config, Duration::from_secs(120));
    client::runtime().block_on(async {
        let mut c = client::connect(&d.grpc_url, None).await;
        let s = client::wait_stream(&mut c, "clip", Duration::from_secs(300), |s| {
            s.input_ended && s.frames_encoded >= FRAMES
        })
        .await;
        assert_eq!(s.status.unwrap().blocks, 2 * BLOCKS);
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
            "the blocks from before the restart are still there: {seqs:?}"
        );
    });
    assert!(!d.log().contains("panicked"), "{}", d.log());
}

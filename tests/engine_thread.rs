//! The engine thread end to end on the tiny checkpoints: frames in through a queue,
//! questions answered with streamed tokens equal to one-shot greedy generation, typed
//! errors, cancellation, and a restart on the same state directory.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use common::*;
use crossbeam::channel::{self, Sender};
use vstreamd::engine::{
    AskEvent, AskMode, AskRequest, BlockSource, Engine, EngineConfig, FinishReason, FrameInput,
    StreamInfo, StreamSpec,
};
use vstreamd::ingest::Frame;
use vstreamd::kv::disk::DiskConfig;
use vstreamd::kv::{Quant, StoreConfig};
use vstreamd::model::Precision;
use vstreamd::retrieval::LayerSelection;

const NAME: &str = "tiny_a";

fn engine(dir: &std::path::Path, quant: Quant) -> Engine {
    let store = StoreConfig {
        quant,
        ram_budget_bytes: 64 << 20,
        rep_key_budget_bytes: 64 << 20,
        dedup_threshold: None,
        disk: Some(DiskConfig::default()),
    };
    let mut config = EngineConfig::new(dir, store);
    config.window_frames = 100;
    Engine::start(load(NAME, Precision::F32), config).expect("engine")
}

/// The fixture's frames as packed RGB frames with pts 2·i s and wall 1000+i s.
fn fixture_frames(stream: &str, first_seq: u64) -> Vec<Frame> {
    let video = frames(NAME, "frames");
    let (n, _, h, w) = video.size4().unwrap();
    (0..n)
        .map(|i| {
            let hwc = video.get(i).permute([1, 2, 0]).contiguous().reshape([-1]);
            let rgb = Vec::<u8>::try_from(&hwc).unwrap();
            let seq = first_seq + i as u64;
            Frame::from_rgb(
                Arc::from(stream),
                seq,
                Duration::from_secs(2 * seq),
                UNIX_EPOCH + Duration::from_secs(1_000 + seq),
                (w as u32, h as u32),
                rgb,
            )
            .unwrap()
        })
        .collect()
}

fn add(engine: &Engine, id: &str) -> (Sender<Frame>, StreamInfo) {
    let (tx, rx) = channel::unbounded();
    let info = engine
        .add_stream(StreamSpec {
            id: id.into(),
            input: FrameInput::Frames(rx),
            store: None,
        })
        .wait()
        .expect("add stream");
    (tx, info)
}

fn wait_encoded(engine: &Engine, id: &str, frames: u64) -> StreamInfo {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let info = engine.info(Some(id)).wait().unwrap().remove(0);
        if info.frames_encoded >= frames {
            return info;
        }
        assert!(Instant::now() < deadline, "stuck at {info:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ask_all(stream: &str, max_new_tokens: usize) -> AskRequest {
    AskRequest {
        stream: stream.into(),
        question: PROMPT.into(),
        mode: AskMode::Retrieve,
        top_k: Some(64),
        recent_frames: Some(0),
        max_new_tokens: Some(max_new_tokens),
        ..Default::default()
    }
}

/// Greedy tokens of the one-shot prompt over the whole video, the stop token dropped.
fn one_shot_tokens(max_new: usize) -> Vec<i64> {
    let _g = tch::no_grad_guard();
    let model = load(NAME, Precision::F32);
    let (_, embeds) = prompt_embeddings(&model, &frames(NAME, "frames"));
    let (mut tokens, _) = model
        .generate_greedy(&embeds, max_new, &model.stop_tokens())
        .unwrap();
    if tokens
        .last()
        .is_some_and(|t| model.stop_tokens().contains(t))
    {
        tokens.pop();
    }
    tokens
}

#[test]
fn answers_stream_tokens_equal_to_one_shot_greedy_generation() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), Quant::F32);
    let (tx, info) = add(&engine, "cam");
    assert_eq!(info.blocks, 0);
    for f in fixture_frames("cam", 0) {
        tx.send(f).unwrap();
    }
    let info = wait_encoded(&engine, "cam", 4);
    assert_eq!(info.blocks, 4);
    assert_eq!(info.first.unwrap().0, Duration::ZERO);
    assert_eq!(info.last.unwrap().0, Duration::from_secs(6));

    let mut handle = engine.ask(ask_all("cam", 20)).unwrap();
    let mut streamed = String::new();
    let mut streamed_ids = Vec::new();
    let answer = loop {
        match handle.events.blocking_recv().expect("events") {
            AskEvent::Token { id, text } => {
                streamed_ids.push(id);
                streamed.push_str(&text);
            }
            AskEvent::Done(a) => break a,
            AskEvent::Failed(e) => panic!("ask failed: {e}"),
        }
    };
    assert_eq!(answer.tokens, one_shot_tokens(20));
    assert_eq!(streamed_ids, answer.tokens);
    assert_eq!(streamed, answer.text);
    assert!(matches!(
        answer.finish,
        FinishReason::Length | FinishReason::Stop
    ));
    assert_eq!(answer.citations.len(), 4);
    for (i, c) in answer.citations.iter().enumerate() {
        assert_eq!(c.seq, i as u64);
        assert_eq!(c.pts, Duration::from_secs(2 * i as u64));
        assert_eq!(c.wall, UNIX_EPOCH + Duration::from_secs(1_000 + i as u64));
        assert_eq!(c.source, BlockSource::Ram);
    }
    let f = &answer.figures;
    assert_eq!(
        (f.blocks_scanned, f.blocks_from_ram, f.blocks_from_disk),
        (4, 4, 0)
    );
    assert!(f.time_to_first_token > Duration::ZERO && f.time_to_first_token <= f.total);

    // Recent-window mode over the same stream gives the same answer (window ⊇ stream).
    let mut recent = ask_all("cam", 20);
    recent.mode = AskMode::Recent;
    recent.recent_frames = None;
    let answer = engine.ask(recent).unwrap().wait().unwrap();
    assert_eq!(answer.tokens, one_shot_tokens(20));
    assert!(answer
        .citations
        .iter()
        .all(|c| c.source == BlockSource::Window));
}

#[test]
fn bad_requests_get_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), Quant::Int8);
    fn err<T>(r: Result<T, vstreamd::error::EngineError>) -> &'static str {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.error_type(),
        }
    }

    let mut empty = ask_all("cam", 4);
    empty.question = "   ".into();
    assert_eq!(err(engine.ask(empty)), "invalid_request");
    let mut long = ask_all("cam", 4);
    long.question = "x".repeat(10_000);
    assert_eq!(err(engine.ask(long)), "invalid_request");
    let mut zero_k = ask_all("cam", 4);
    zero_k.top_k = Some(0);
    assert_eq!(err(engine.ask(zero_k)), "invalid_request");
    let mut top_p = ask_all("cam", 4);
    top_p.sampling.top_p = 0.0;
    assert_eq!(err(engine.ask(top_p)), "invalid_request");

    // Unknown stream, then a stream with nothing encoded yet.
    let unknown = engine.ask(ask_all("nope", 4)).unwrap().wait();
    assert_eq!(err(unknown), "unknown_stream");
    let (_tx, _) = add(&engine, "cam");
    assert_eq!(
        err(engine.ask(ask_all("cam", 4)).unwrap().wait()),
        "no_content"
    );

    // Stream ids name directories; duplicates are refused.
    for bad in ["", "../up", ".hidden", "a/b", &"x".repeat(65)] {
        let (_t, rx) = channel::unbounded();
        let spec = StreamSpec {
            id: bad.to_string(),
            input: FrameInput::Frames(rx),
            store: None,
        };
        assert_eq!(
            err(engine.add_stream(spec).wait()),
            "invalid_request",
            "{bad}"
        );
    }
    let (_t, rx) = channel::unbounded();
    let dup = StreamSpec {
        id: "cam".into(),
        input: FrameInput::Frames(rx),
        store: None,
    };
    assert_eq!(err(engine.add_stream(dup).wait()), "stream_exists");
    assert_eq!(err(engine.remove_stream("nope").wait()), "unknown_stream");
    assert_eq!(err(engine.info(Some("nope")).wait()), "unknown_stream");
    engine.remove_stream("cam").wait().unwrap();
    assert!(engine.info(None).wait().unwrap().is_empty());
}

#[test]
fn cancelling_stops_generation_at_the_next_token() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), Quant::F32);
    let (tx, _) = add(&engine, "cam");
    for f in fixture_frames("cam", 0) {
        tx.send(f).unwrap();
    }
    wait_encoded(&engine, "cam", 4);
    // Sampling at a high temperature rarely hits a stop token.
    let mut req = ask_all("cam", 1024);
    req.sampling.temperature = 5.0;
    req.sampling.seed = 7;
    let full = engine.ask(req.clone()).unwrap().wait().unwrap();
    let mut handle = engine.ask(req).unwrap();
    let mut received = 0;
    let answer = loop {
        match handle.events.blocking_recv().expect("events") {
            AskEvent::Token { .. } => {
                received += 1;
                if received == 3 {
                    handle.cancel();
                }
            }
            AskEvent::Done(a) => break a,
            AskEvent::Failed(e) => panic!("{e}"),
        }
    };
    // The seeded sampler makes the uncancelled run long (deterministic for this seed).
    assert!(full.tokens.len() > 4, "{:?}", full.finish);
    // How many tokens the engine makes between the cancel and its next check depends
    // on thread scheduling; it is far fewer than the uncancelled answer.
    assert_eq!(answer.finish, FinishReason::Cancelled);
    assert!(
        answer.tokens.len() < full.tokens.len() / 2,
        "{} of {} tokens after cancel",
        answer.tokens.len(),
        full.tokens.len()
    );
    assert_eq!(
        answer.tokens[..],
        full.tokens[..answer.tokens.len()],
        "same seed"
    );

    // Cancelled while still queued behind another question: a final Cancelled event.
    let running = engine.ask(ask_all("cam", 200)).unwrap();
    let queued = engine.ask(ask_all("cam", 5)).unwrap();
    queued.cancel();
    assert_eq!(queued.wait().err().unwrap().error_type(), "cancelled");
    running.wait().unwrap();
    // A dropped handle cancels too; the engine stays healthy.
    drop(engine.ask(ask_all("cam", 1024)).unwrap());
    let again = engine.ask(ask_all("cam", 5)).unwrap().wait().unwrap();
    assert_eq!(again.tokens, one_shot_tokens(5));
}

/// Stop the engine, start a new one on the same state directory: the blocks from
/// before are found, cited from disk, and give the same answer; new frames continue
/// the sequence and the stream time.
#[test]
fn blocks_survive_an_engine_restart() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let engine = engine(dir.path(), Quant::F32);
        let (tx, _) = add(&engine, "cam");
        for f in fixture_frames("cam", 0) {
            tx.send(f).unwrap();
        }
        wait_encoded(&engine, "cam", 4);
        let answer = engine.ask(ask_all("cam", 10)).unwrap().wait().unwrap();
        engine.shutdown();
        answer
    };
    let engine = engine(dir.path(), Quant::F32);
    let (tx, info) = add(&engine, "cam");
    assert_eq!(info.blocks, 4, "{info:?}");
    assert_eq!(info.blocks_in_ram, 0);
    let after = engine.ask(ask_all("cam", 10)).unwrap().wait().unwrap();
    assert_eq!(after.tokens, before.tokens);
    assert_eq!(after.citations.len(), 4);
    for (a, b) in after.citations.iter().zip(&before.citations) {
        assert_eq!((a.seq, a.pts, a.wall), (b.seq, b.pts, b.wall));
        assert_eq!(a.source, BlockSource::Disk);
    }
    assert_eq!(after.figures.blocks_from_disk, 4);

    // Ingest restarts its counters; the stream goes on after the stored blocks.
    for f in fixture_frames("cam", 0).into_iter().take(2) {
        tx.send(f).unwrap();
    }
    let info = wait_encoded(&engine, "cam", 2);
    assert_eq!(info.blocks, 6);
    assert!(info.last.unwrap().0 > Duration::from_secs(6), "{info:?}");
    let all = engine.ask(ask_all("cam", 2)).unwrap().wait().unwrap();
    let seqs: Vec<u64> = all.citations.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, (0..6).collect::<Vec<u64>>());
    assert!(all.citations.windows(2).all(|w| w[0].pts < w[1].pts));
}

/// `[engine] recent_frames` is what a question that does not say gets: the last r
/// frames of the window; a question that says wins; more than the window is refused.
#[test]
fn the_engine_default_of_recent_frames_applies_when_a_question_is_silent() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreConfig {
        quant: Quant::F32,
        ram_budget_bytes: 64 << 20,
        rep_key_budget_bytes: 64 << 20,
        dedup_threshold: None,
        disk: None,
    };
    let mut config = EngineConfig::new(dir.path(), store);
    config.window_frames = 9;
    config.recent_frames = Some(10);
    assert!(
        config.validate().is_err(),
        "recent_frames beyond the window"
    );
    config.recent_frames = Some(2);
    let engine = Engine::start(load(NAME, Precision::F32), config).expect("engine");
    let (tx, _) = add(&engine, "cam");
    let frames = fixture_frames("cam", 0);
    let n = frames.len() as u64;
    for f in frames {
        tx.send(f).unwrap();
    }
    wait_encoded(&engine, "cam", n);
    let window = |req: AskRequest| -> Vec<Duration> {
        let answer = engine.ask(req).unwrap().wait().unwrap();
        answer
            .citations
            .iter()
            .filter(|c| c.source == BlockSource::Window)
            .map(|c| c.pts)
            .collect()
    };
    let last =
        |k: u64| -> Vec<Duration> { (n - k..n).map(|i| Duration::from_secs(2 * i)).collect() };
    let mut recent = ask_all("cam", 1);
    recent.mode = AskMode::Recent;
    recent.recent_frames = None;
    assert_eq!(window(recent.clone()), last(2));
    recent.recent_frames = Some(3);
    assert_eq!(window(recent), last(3));
    let mut retrieve = ask_all("cam", 1);
    retrieve.top_k = Some(1);
    retrieve.recent_frames = None;
    assert_eq!(window(retrieve), last(2));
    drop(tx);
    engine.shutdown();
}

#[test]
fn a_shared_retrieval_layer_beyond_the_model_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let model = load(NAME, Precision::F32);
    let layers = model.decoder().num_layers();
    let store = StoreConfig {
        quant: Quant::Int8,
        ram_budget_bytes: 1 << 20,
        rep_key_budget_bytes: 1 << 20,
        dedup_threshold: None,
        disk: None,
    };
    let mut config = EngineConfig::new(dir.path(), store);
    config.layer_selection = LayerSelection::Shared(layers);
    let err = Engine::start(model, config).err().expect("refused");
    assert!(err.to_string().contains("shared retrieval layer"), "{err}");
}

/// Answering and encoding share the engine (issue 16): while eight answers decode
/// (hundreds of tokens each), frames that arrive are encoded beside them, not after
/// them, and the heartbeat keeps moving.
#[test]
fn answers_do_not_stall_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreConfig {
        quant: Quant::Int8,
        ram_budget_bytes: 64 << 20,
        rep_key_budget_bytes: 64 << 20,
        dedup_threshold: None,
        disk: None,
    };
    let mut config = EngineConfig::new(dir.path(), store);
    config.batch_frames = 2;
    let engine = Engine::start(load(NAME, Precision::F32), config).expect("engine");
    let (tx, _) = add(&engine, "cam");
    let first = fixture_frames("cam", 0);
    let n = first.len() as u64;
    for f in first {
        tx.send(f).unwrap();
    }
    wait_encoded(&engine, "cam", n);
    // Greedy answers over the recent window: a few hundred tokens each on this
    // checkpoint (about 2,000 in all), 400 at most (a window that changed under one may
    // keep it from its stop token).
    let req = AskRequest {
        stream: "cam".into(),
        question: PROMPT.into(),
        mode: AskMode::Recent,
        max_new_tokens: Some(400),
        ..Default::default()
    };
    let mut handles: Vec<_> = (0..8).map(|_| engine.ask(req.clone()).unwrap()).collect();
    match handles[0].events.blocking_recv() {
        Some(AskEvent::Token { .. }) => {}
        other => panic!("expected a first token, got {other:?}"),
    }
    // Frames arrive while the answers decode.
    let rounds = 40 / n;
    for round in 0..rounds {
        for f in fixture_frames("cam", n * (round + 1)) {
            tx.send(f).unwrap();
        }
    }
    let target = n * (rounds + 1);
    let mut beats = std::collections::BTreeSet::new();
    let mut answers = vec![None; handles.len()];
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        beats.insert(engine.heartbeat_ms());
        for (handle, answer) in handles.iter_mut().zip(answers.iter_mut()) {
            while let Ok(event) = handle.events.try_recv() {
                match event {
                    AskEvent::Token { .. } => {}
                    AskEvent::Done(a) => *answer = Some(a),
                    AskEvent::Failed(e) => panic!("{e}"),
                }
            }
        }
        let info = engine.info(Some("cam")).wait().unwrap().remove(0);
        if info.frames_encoded >= target {
            break;
        }
        assert!(Instant::now() < deadline, "encoding stalled: {info:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    let finished = answers.iter().filter(|a| a.is_some()).count();
    assert!(
        finished < answers.len(),
        "every answer ended before the new frames were encoded: encoding waited for them"
    );
    assert!(
        beats.len() >= 3,
        "the heartbeat moved only {} times while answering and encoding",
        beats.len()
    );
    for (handle, answer) in handles.into_iter().zip(answers) {
        let answer = match answer {
            Some(a) => a,
            None => handle.wait().unwrap(),
        };
        assert!(
            matches!(answer.finish, FinishReason::Stop | FinishReason::Length),
            "{:?}",
            answer.finish
        );
        assert!(answer.tokens.len() > 10, "{} tokens", answer.tokens.len());
    }
}

/// Answers decoded together (their steps batched) are the answers each gets alone.
#[test]
fn answers_decoded_together_equal_answers_alone() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), Quant::F32);
    let (tx, _) = add(&engine, "cam");
    let first = fixture_frames("cam", 0);
    let n = first.len() as u64;
    for f in first {
        tx.send(f).unwrap();
    }
    wait_encoded(&engine, "cam", n);
    let req = |max_new_tokens| AskRequest {
        stream: "cam".into(),
        question: PROMPT.into(),
        mode: AskMode::Recent,
        max_new_tokens: Some(max_new_tokens),
        ..Default::default()
    };
    let alone = engine.ask(req(40)).unwrap().wait().unwrap();
    assert!(alone.tokens.len() > 10, "{:?}", alone.finish);
    // Different lengths, so the batch shrinks as answers end.
    let handles: Vec<_> = [40, 25, 40, 12, 33]
        .iter()
        .map(|&m| engine.ask(req(m)).unwrap())
        .collect();
    for (handle, m) in handles.into_iter().zip([40usize, 25, 40, 12, 33]) {
        let together = handle.wait().unwrap();
        let k = m.min(alone.tokens.len());
        assert_eq!(together.tokens[..], alone.tokens[..k], "max_new_tokens {m}");
    }
}

//! A long stream through the whole path: a generated H.264 file → GStreamer ingest →
//! engine (vision tower, windowed prefill) → KV store with a RAM budget of a few dozen
//! blocks, so nearly everything lives on disk → questions at several points, answered
//! from blocks retrieved from disk, with citations that match the frames' times.

mod common;
#[path = "support/media.rs"]
mod media;

use std::time::{Duration, Instant};

use common::*;
use vstreamd::engine::{
    AskMode, AskRequest, BlockSource, Engine, EngineConfig, FrameInput, StreamInfo, StreamSpec,
};
use vstreamd::ingest::{Source, StreamConfig};
use vstreamd::kv::disk::{DiskConfig, SyncPolicy};
use vstreamd::kv::{Quant, StoreConfig};
use vstreamd::model::Precision;

const FRAMES: u64 = 2_000;
const FPS: u32 = 20;
const RAM_BUDGET: usize = 24 << 10;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn info(engine: &Engine) -> StreamInfo {
    engine.info(Some("cam")).wait().unwrap().remove(0)
}

fn wait_encoded(engine: &Engine, frames: u64) -> StreamInfo {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let info = info(engine);
        if info.frames_encoded >= frames || (info.input_ended && info.frames_encoded > 0) {
            return info;
        }
        assert!(Instant::now() < deadline, "stuck at {info:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_thousand_frames_spill_to_disk_and_questions_cite_disk_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("long.mp4");
    media::h264_file(&video, (FRAMES / FPS as u64) as u32, FPS, 64, 48, "mp4mux");

    let model = load("tiny_a", Precision::F32);
    let size = model.config.vision_config.image_size as u32;
    let store = StoreConfig {
        quant: Quant::Int8,
        ram_budget_bytes: RAM_BUDGET,
        rep_key_budget_bytes: 1 << 20,
        dedup_threshold: None,
        disk: Some(DiskConfig {
            segment_bytes: 256 << 10,
            sync: SyncPolicy::Interval(Duration::from_millis(200)),
            ..DiskConfig::default()
        }),
    };
    let mut config = EngineConfig::new(dir.path().join("state"), store);
    config.window_frames = 8;
    config.top_k = 8;
    let engine = Engine::start(model, config).unwrap();
    let mut ingest = StreamConfig::new("cam", Source::File(video));
    ingest.sample_fps = f64::from(FPS);
    ingest.width = size;
    ingest.height = size;
    engine
        .add_stream(StreamSpec {
            id: "cam".into(),
            input: FrameInput::Ingest(ingest),
            store: None,
        })
        .wait()
        .unwrap();

    let mut rss_at_500 = 0;
    for at in [500, 1_000, 1_500, FRAMES] {
        let before = wait_encoded(&engine, at);
        if at == 500 {
            rss_at_500 = rss_bytes();
        }
        let answer = engine
            .ask(AskRequest {
                stream: "cam".into(),
                question: PROMPT.into(),
                mode: AskMode::Retrieve,
                max_new_tokens: Some(8),
                ..Default::default()
            })
            .unwrap()
            .wait()
            .unwrap_or_else(|e| panic!("ask at {at} frames: {e}"));
        let f = &answer.figures;
        println!(
            "after {} frames: scanned {}, ram {}, disk {}, window {}, ttft {:?}",
            before.frames_encoded,
            f.blocks_scanned,
            f.blocks_from_ram,
            f.blocks_from_disk,
            f.window_frames,
            f.time_to_first_token
        );
        assert!(f.blocks_scanned as u64 >= before.frames_encoded - 8);
        assert_eq!(f.window_frames, 8);
        assert!(f.blocks_from_disk > 0, "nothing came from disk: {f:?}");
        assert!(answer
            .citations
            .iter()
            .any(|c| c.source == BlockSource::Disk));
        // Every citation is a real frame: seq i was sampled at i / FPS seconds.
        for c in &answer.citations {
            let expected = Duration::from_secs_f64(c.seq as f64 / f64::from(FPS));
            assert!(
                c.pts.abs_diff(expected) <= Duration::from_millis(40),
                "block {} at {:?}, expected {:?}",
                c.seq,
                c.pts,
                expected
            );
        }
        assert!(answer.citations.windows(2).all(|w| w[0].seq < w[1].seq));
    }

    let end = info(&engine);
    assert_eq!(end.frames_encoded, FRAMES, "{end:?}");
    assert_eq!(end.blocks, FRAMES as usize);
    assert_eq!(end.frames_dropped, 0, "a file is read at the engine's pace");
    assert!(end.ram_bytes <= RAM_BUDGET, "RAM tier over budget: {end:?}");
    assert!(end.blocks_in_ram < 64, "{end:?}");
    assert!(end.disk_bytes > 0);
    // Past warm-up, resident memory does not grow with the stream: 1,500 more frames
    // (1.5 MB of blocks on disk, 0.2 MB of representative keys) add at most a few MB.
    let growth = rss_bytes().saturating_sub(rss_at_500);
    println!(
        "RSS growth from frame 500 to {FRAMES}: {} KiB",
        growth >> 10
    );
    assert!(growth <= 16 << 20, "RSS grew by {growth} bytes");
}

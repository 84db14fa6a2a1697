//! The synthetic source: a scripted scene rendered into an `appsrc` enters through the
//! real GStreamer ingest path and comes out frame for frame as rendered, stamped with
//! the script's stream times, paced by `speed`, ending with the script.

#[path = "support/media.rs"]
mod media;

use std::time::{Duration, Instant};

use media::ingest_to_end;
use vstreamd::ingest::{self, Frame, RtspTransport, Source, StreamConfig, StreamState};
use vstreamd::synth::script::{Script, ScriptOptions};

fn ingest_all(uri: &str, fps: f64, w: u32, h: u32) -> (Vec<Frame>, ingest::StreamStatus) {
    let source = Source::parse(uri, RtspTransport::Tcp, None).expect("synth URI");
    let mut config = StreamConfig::new("synth", source);
    config.sample_fps = fps;
    config.width = w;
    config.height = h;
    ingest_to_end(config)
}

#[test]
fn needle_script_arrives_exactly_as_rendered() {
    // 50 px wide: rows of 150 bytes are padded to a 152-byte stride inside GStreamer.
    for (w, h) in [(48, 48), (50, 30)] {
        let (frames, status) = ingest_all("synth://needle?seed=5&speed=0&frames=40", 1.0, w, h);
        assert_eq!(status.state, StreamState::Ended);
        let options = ScriptOptions {
            frames: Some(40),
            ..Default::default()
        };
        let script = Script::from_name("needle", 5, &options, w, h).unwrap();
        assert_eq!(frames.len(), 40);
        assert_eq!(status.frames_dropped, 0);
        for (i, f) in frames.iter().enumerate() {
            let t = script.frame_time(i);
            assert_eq!(f.seq, i as u64);
            assert_eq!(f.pts, Duration::from_secs_f64(t), "frame {i}");
            assert_eq!((f.width, f.height), (w, h));
            assert!(
                f.rgb() == script.scene.render(t).rgb.as_slice(),
                "frame {i} differs from the rendered scene at {w}x{h}"
            );
        }
    }
}

#[test]
fn sampling_and_pacing_apply_to_the_synthetic_source() {
    // The demo script runs at 1 frame/s of stream time; at speed 40, its first 240
    // frames take ≥ 6 s of wall time. Sampling at 0.5 fps keeps every other frame.
    let start = Instant::now();
    let (frames, status) = ingest_all("synth://demo?seed=2&speed=40", 0.5, 48, 48);
    let took = start.elapsed();
    assert_eq!(status.state, StreamState::Ended);
    assert_eq!(frames.len(), 120);
    assert!(took >= Duration::from_secs_f64(239.0 / 40.0), "{took:?}");
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.pts, Duration::from_secs(2 * i as u64));
    }
}

/// `vstreamd synth --script … --truth` prints the ground truth of the stream a
/// `synth://` source with the same query plays: needles and every question's answer.
#[test]
fn synth_cli_prints_the_truth_the_source_plays() {
    let query = "needle?seed=7&frames=300&needles=triangle,star&chained=1&questions=all";
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vstreamd"))
        .args(["synth", "--script", query, "--truth"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let truth: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let source = Source::parse(&format!("synth://{query}"), RtspTransport::Tcp, None).unwrap();
    let Source::Synth { seed, options, .. } = source else {
        panic!("not a synth source");
    };
    let script = Script::from_name("needle", seed, &options, 48, 48).unwrap();
    assert_eq!(truth["frames"], 300);
    assert_eq!(truth["needles"].as_array().unwrap().len(), 2);
    let questions = truth["questions"].as_array().unwrap();
    assert_eq!(questions.len(), script.questions.len());
    for (q, want) in questions.iter().zip(&script.questions) {
        assert_eq!(q["question"], want.question.as_str());
        assert_eq!(q["answer"], want.answer.as_str());
        assert_eq!(q["kind"], want.kind.name());
    }
    // Every kind has a question with a true answer.
    for kind in ["colour", "after", "count", "exists"] {
        assert!(
            questions.iter().any(|q| q["kind"] == kind),
            "no {kind} question"
        );
    }
    // A bad query is a clear error, not a panic.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_vstreamd"))
        .args(["synth", "--script", "needle?copies=99", "--truth"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("copies"));
}

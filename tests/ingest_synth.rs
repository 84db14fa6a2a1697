//! The synthetic source: a scripted scene rendered into an `appsrc` enters through the
//! real GStreamer ingest path and comes out frame for frame as rendered, stamped with
//! the script's stream times, paced by `speed`, ending with the script.

#[path = "support/media.rs"]
mod media;

use std::time::{Duration, Instant};

use media::ingest_to_end;
use vstreamd::ingest::{self, Frame, RtspTransport, Source, StreamConfig, StreamState};
use vstreamd::synth::script::Script;

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
        let script = Script::from_name("needle", 5, Some(40), w, h).unwrap();
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

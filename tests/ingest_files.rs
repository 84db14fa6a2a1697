//! Ingest of real media files made in the test: exact sampled-frame counts, monotonic
//! timestamps, output sizes and resize modes, and typed errors for bad files.

#[path = "support/media.rs"]
mod media;

use std::time::Duration;

use media::*;
use vstreamd::error::IngestError;
use vstreamd::ingest::{self, Frame, ResizeMode, Source, StreamConfig, StreamState};

fn file_config(path: &std::path::Path, fps: f64, w: u32, h: u32) -> StreamConfig {
    let mut c = StreamConfig::new("test", Source::File(path.to_owned()));
    c.sample_fps = fps;
    c.width = w;
    c.height = h;
    c
}

fn assert_timeline(frames: &[Frame], fps: f64) {
    let step = Duration::from_secs_f64(1.0 / fps);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.seq, i as u64, "sequence numbers");
        let expected = step * i as u32;
        let off = f.pts.abs_diff(expected);
        assert!(
            off <= Duration::from_millis(40),
            "frame {i} at {:?}, expected {:?}",
            f.pts,
            expected
        );
    }
    assert!(
        frames.windows(2).all(|w| w[0].pts < w[1].pts),
        "timestamps not increasing"
    );
}

#[test]
fn h264_mp4_is_sampled_to_exact_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ten_seconds.mp4");
    h264_file(&path, 10, 30, 320, 240, "mp4mux");
    for (fps, expected) in [(1.0, 10), (2.0, 20), (0.5, 5)] {
        let (frames, status) = ingest_to_end(file_config(&path, fps, 64, 48));
        assert_eq!(status.state, StreamState::Ended);
        assert_eq!(frames.len(), expected, "{fps} fps over 10 s");
        assert_eq!(status.frames_sampled, expected as u64);
        assert_eq!(status.frames_decoded, 300, "every frame is decoded once");
        assert_eq!(status.frames_dropped, 0, "files block rather than drop");
        assert_timeline(&frames, fps);
        for f in &frames {
            assert_eq!((f.width, f.height), (64, 48));
            assert_eq!(f.rgb().len(), 64 * 48 * 3);
            assert_eq!(&*f.stream_id, "test");
        }
    }
}

#[test]
fn h264_mkv_and_mjpeg_avi_are_ingested() {
    let dir = tempfile::tempdir().unwrap();
    let mkv = dir.path().join("three.mkv");
    h264_file(&mkv, 3, 25, 160, 120, "matroskamux");
    let (frames, status) = ingest_to_end(file_config(&mkv, 1.0, 32, 32));
    assert_eq!(status.state, StreamState::Ended);
    assert_eq!(frames.len(), 3);
    assert_timeline(&frames, 1.0);

    let avi = dir.path().join("four.avi");
    mjpeg_avi(&avi, 4, 25, 160, 120);
    let (frames, status) = ingest_to_end(file_config(&avi, 2.0, 32, 32));
    assert_eq!(status.state, StreamState::Ended);
    assert_eq!(frames.len(), 8);
    assert_eq!(status.frames_decoded, 100);
    assert_timeline(&frames, 2.0);
}

/// A red 16:9 picture into a square: letterbox pads top and bottom with black, crop and
/// stretch fill the square with red. Odd output widths exercise row padding.
#[test]
fn resize_modes_fit_the_output_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("red.mp4");
    solid_mp4(&path, 2, 320, 180, 0xffff0000);
    let pixel = |f: &Frame, x: u32, y: u32| {
        let i = ((y * f.width + x) * 3) as usize;
        [f.rgb()[i], f.rgb()[i + 1], f.rgb()[i + 2]]
    };
    let is_red = |p: [u8; 3]| p[0] > 200 && p[1] < 60 && p[2] < 60;
    let is_black = |p: [u8; 3]| p.iter().all(|&c| c < 30);
    for (mode, w) in [
        (ResizeMode::Letterbox, 64),
        (ResizeMode::Crop, 63),
        (ResizeMode::Stretch, 63),
    ] {
        let mut c = file_config(&path, 1.0, w, 64);
        c.resize = mode;
        let (frames, status) = ingest_to_end(c);
        assert_eq!(
            status.state,
            StreamState::Ended,
            "{mode:?}: {:?}",
            status.last_error
        );
        let f = &frames[0];
        assert_eq!((f.width, f.height), (w, 64));
        assert_eq!(f.rgb().len(), (w * 64 * 3) as usize);
        assert!(
            is_red(pixel(f, w / 2, 32)),
            "{mode:?}: centre {:?}",
            pixel(f, w / 2, 32)
        );
        let top = pixel(f, w / 2, 1);
        match mode {
            ResizeMode::Letterbox => assert!(is_black(top), "letterbox top {top:?}"),
            _ => assert!(is_red(top), "{mode:?} top {top:?}"),
        }
    }
}

fn wait_failed(mut config: StreamConfig) -> IngestError {
    config.stall_timeout = Duration::from_secs(5);
    let handle = ingest::spawn(config).unwrap();
    let status = handle
        .wait_for(GENEROUS, |s| s.state.is_final())
        .unwrap_or_else(|s| panic!("no final state: {s:?}"));
    match status.state {
        StreamState::Failed(e) => e,
        other => panic!("expected failure, got {other:?}"),
    }
}

#[test]
fn bad_files_give_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.mp4");
    assert_eq!(
        wait_failed(file_config(&missing, 1.0, 32, 32)),
        IngestError::NotFound(missing)
    );

    let garbage = dir.path().join("garbage.mp4");
    std::fs::write(
        &garbage,
        (0..200_000u32)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let e = wait_failed(file_config(&garbage, 1.0, 32, 32));
    println!("garbage: {e}");
    assert!(matches!(e, IngestError::Decode(_)), "garbage: {e:?}");

    // mp4mux writes the index at the end: a file cut short has none.
    let whole = dir.path().join("whole.mp4");
    h264_file(&whole, 4, 25, 160, 120, "mp4mux");
    let bytes = std::fs::read(&whole).unwrap();
    let truncated = dir.path().join("truncated.mp4");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let e = wait_failed(file_config(&truncated, 1.0, 32, 32));
    println!("truncated: {e}");
    assert!(matches!(e, IngestError::Decode(_)), "truncated: {e:?}");
}

#[test]
fn invalid_configs_are_refused_before_starting() {
    let mut c = file_config(std::path::Path::new("/x.mp4"), 0.0, 32, 32);
    assert!(matches!(
        ingest::spawn(c.clone()),
        Err(IngestError::InvalidConfig(_))
    ));
    c.sample_fps = 1.0;
    c.width = 0;
    assert!(matches!(
        ingest::spawn(c.clone()),
        Err(IngestError::InvalidConfig(_))
    ));
    c.width = 32;
    c.queue_capacity = 0;
    assert!(matches!(
        ingest::spawn(c),
        Err(IngestError::InvalidConfig(_))
    ));
}

/// A consumer that does not keep up with a live source loses the oldest frames, counted.
#[test]
fn a_slow_consumer_drops_the_oldest_frames_of_a_live_source() {
    let mut c = StreamConfig::new(
        "live",
        Source::Test {
            pattern: "ball".into(),
        },
    );
    c.sample_fps = 30.0;
    c.width = 32;
    c.height = 32;
    c.queue_capacity = 2;
    let handle = ingest::spawn(c).unwrap();
    let status = handle
        .wait_for(GENEROUS, |s| s.frames_dropped >= 5)
        .unwrap_or_else(|s| panic!("nothing dropped: {s:?}"));
    assert_eq!(status.state, StreamState::Live);
    let queued: Vec<Frame> = handle.frames.try_iter().collect();
    assert!(queued.len() <= 2);
    // What is left is the newest: consecutive sequence numbers at the end.
    assert!(queued.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert!(queued[0].seq >= 5);
    handle.stop();
}

//! Test media made with GStreamer in the test itself.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;

/// Runs `launch` (a gst-launch description) to end of stream.
pub fn run_to_eos(launch: &str) {
    gst::init().unwrap();
    let pipeline = gst::parse::launch(launch).unwrap();
    let bus = pipeline.bus().unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(300)) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("making media with `{launch}`: {}", e.error()),
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
}

/// `seconds` of `fps` H.264 in `container` ("mp4mux", "matroskamux") at w×h.
pub fn h264_file(path: &Path, seconds: u32, fps: u32, w: u32, h: u32, container: &str) {
    run_to_eos(&format!(
        "videotestsrc num-buffers={n} pattern=ball ! video/x-raw,format=I420,width={w},height={h},framerate={fps}/1 \
         ! x264enc speed-preset=ultrafast key-int-max={fps} ! h264parse ! {container} ! filesink location={p}",
        n = seconds * fps,
        p = path.display()
    ));
}

/// `seconds` of `fps` MJPEG in AVI at w×h.
pub fn mjpeg_avi(path: &Path, seconds: u32, fps: u32, w: u32, h: u32) {
    run_to_eos(&format!(
        "videotestsrc num-buffers={n} pattern=smpte ! video/x-raw,width={w},height={h},framerate={fps}/1 \
         ! jpegenc ! avimux ! filesink location={p}",
        n = seconds * fps,
        p = path.display()
    ));
}

/// A solid-colour (ARGB `color`) H.264 MP4.
pub fn solid_mp4(path: &Path, seconds: u32, w: u32, h: u32, color: u32) {
    run_to_eos(&format!(
        "videotestsrc num-buffers={n} pattern=solid-color foreground-color={color} \
         ! video/x-raw,format=I420,width={w},height={h},framerate=10/1 \
         ! x264enc speed-preset=ultrafast ! h264parse ! mp4mux ! filesink location={p}",
        n = seconds * 10,
        p = path.display()
    ));
}

pub const GENEROUS: Duration = Duration::from_secs(120);

/// Runs an ingest stream until it reaches a final state and returns every frame it
/// delivered, with its last status.
pub fn ingest_to_end(
    config: vstreamd::ingest::StreamConfig,
) -> (Vec<vstreamd::ingest::Frame>, vstreamd::ingest::StreamStatus) {
    let handle = vstreamd::ingest::spawn(config).unwrap();
    let mut frames = Vec::new();
    loop {
        match handle.frames.recv_timeout(Duration::from_millis(200)) {
            Ok(f) => frames.push(f),
            Err(_) if handle.status().state.is_final() => break,
            Err(_) => {}
        }
    }
    frames.extend(handle.frames.try_iter());
    let status = handle.status();
    (frames, status)
}

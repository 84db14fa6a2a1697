//! Ingest cost benchmark: CPU seconds spent per second of video when vstreamd ingests
//! a generated 1080p30 H.264 file sampled at 1 fps to 384×384 RGB, as ratios against,
//! in the same run and on the same file:
//! - a bare decode (`filesrc ! decodebin ! fakesink`): the floor any ingest pays
//!   (target: vstreamd ≤ 1.1× of it);
//! - a naive pipeline that converts and scales every frame and drops afterwards.
//!
//! CPU time is the process's user + system time (`getrusage`), which covers every
//! GStreamer streaming thread since they all run in this process. Each pipeline runs
//! `RUNS` times; the median is reported.
//!
//! Run: `cargo bench --bench ingest` (set `VSTREAMD_BENCH_SECONDS` for another length).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use vstreamd::ingest::{self, Overflow, ResizeMode, Source, StreamConfig};

const RUNS: usize = 3;

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn run_launch(launch: &str) {
    let pipeline = gst::parse::launch(launch).expect("pipeline");
    let bus = pipeline.bus().expect("bus");
    pipeline.set_state(gst::State::Playing).expect("play");
    for msg in bus.iter_timed(gst::ClockTime::NONE) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("{launch}: {}", e.error()),
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).expect("stop");
}

fn make_video(path: &Path, seconds: u32) {
    if path.exists() {
        return;
    }
    eprintln!(
        "generating {seconds} s of 1080p30 H.264 at {} ...",
        path.display()
    );
    let partial = path.with_extension("partial.mp4");
    run_launch(&format!(
        "videotestsrc num-buffers={} pattern=ball ! video/x-raw,format=I420,width=1920,height=1080,framerate=30/1 \
         ! x264enc speed-preset=ultrafast key-int-max=60 ! h264parse ! mp4mux ! filesink location={}",
        seconds * 30,
        partial.display()
    ));
    std::fs::rename(&partial, path).expect("rename");
}

/// Median CPU seconds of `f` over `RUNS` runs.
fn measure(name: &str, mut f: impl FnMut()) -> f64 {
    let mut samples: Vec<f64> = (0..RUNS)
        .map(|_| {
            let (cpu, wall) = (cpu_seconds(), Instant::now());
            f();
            let used = cpu_seconds() - cpu;
            eprintln!(
                "  {name}: {used:.2} CPU s in {:.2} s",
                wall.elapsed().as_secs_f64()
            );
            used
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[RUNS / 2]
}

fn ingest_file(path: &Path) -> usize {
    let mut config = StreamConfig::new("bench", Source::File(path.to_owned()));
    config.sample_fps = 1.0;
    config.width = 384;
    config.height = 384;
    config.resize = ResizeMode::Letterbox;
    config.overflow = Overflow::Block;
    let handle = ingest::spawn(config).expect("spawn");
    let mut frames = 0;
    loop {
        match handle.frames.recv_timeout(Duration::from_millis(100)) {
            Ok(_) => frames += 1,
            Err(_) if handle.status().state.is_final() => break,
            Err(_) => {}
        }
    }
    frames + handle.frames.try_iter().count()
}

fn main() {
    gst::init().expect("gstreamer");
    let seconds: u32 = std::env::var("VSTREAMD_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-media");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let video = dir.join(format!("ball_1080p30_{seconds}s.mp4"));
    make_video(&video, seconds);
    let location = video.display();

    let bare = measure("bare decode", || {
        run_launch(&format!(
            "filesrc location={location} ! decodebin ! fakesink sync=false"
        ))
    });
    let naive = measure("naive convert-all", || {
        run_launch(&format!(
            "filesrc location={location} ! decodebin ! videoconvert ! videoscale add-borders=true \
             ! video/x-raw,format=RGB,width=384,height=384,pixel-aspect-ratio=1/1 \
             ! videorate drop-only=true ! video/x-raw,framerate=1/1 ! fakesink sync=false"
        ))
    });
    let mut frames = 0;
    let ours = measure("vstreamd ingest", || frames = ingest_file(&video));
    assert_eq!(frames as u32, seconds, "1 fps over {seconds} s");

    let per = |cpu: f64| cpu / seconds as f64;
    println!();
    println!("ingest of {seconds} s of 1080p30 H.264, sampled at 1 fps to 384x384 RGB ({RUNS} runs, median)");
    println!(
        "{:<28}{:>22}{:>16}",
        "pipeline", "CPU s / video s", "vs bare decode"
    );
    for (name, cpu) in [
        ("bare decode (floor)", bare),
        ("naive: convert every frame", naive),
        ("vstreamd ingest", ours),
    ] {
        println!("{name:<28}{:>22.4}{:>15.3}x", per(cpu), cpu / bare);
    }
    println!(
        "vstreamd / bare decode = {:.3}x (target <= 1.1x); vstreamd / naive = {:.3}x",
        ours / bare,
        ours / naive
    );
}

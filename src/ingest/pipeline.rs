//! Building a stream's GStreamer pipeline and running one session of it: from
//! `Playing` until end of stream, an error, a stall, or a stop request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use super::queue::{Pushed, QueueSender};
use super::{Frame, FrameData, ResizeMode, Shared, Source, StreamConfig, StreamState};
use crate::error::IngestError;
use crate::ingest::RtspTransport;
use crate::metrics as names;
use crate::synth::script::Script;

/// How one session ended.
#[derive(Debug)]
pub(crate) enum SessionEnd {
    Eos,
    Error(IngestError),
    Stopped,
}

pub(crate) struct SessionOutcome {
    pub end: SessionEnd,
    /// Frames this session delivered.
    pub frames: u64,
}

/// Keeps frame numbers and stream times monotonic across sessions.
pub(crate) struct StreamClock {
    started: Instant,
    next_seq: u64,
    /// Stream time of the last frame delivered.
    last_pts: Option<Duration>,
}

impl StreamClock {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            next_seq: 0,
            last_pts: None,
        }
    }
}

/// Per-session state the appsink callback works on.
struct SessionClock {
    seq: u64,
    /// Added to this session's stream times; fixed at its first frame.
    offset: Option<Duration>,
    last_pts: Option<Duration>,
    started: Instant,
    live: bool,
}

fn err(e: impl std::fmt::Display) -> IngestError {
    IngestError::Pipeline(e.to_string())
}

fn make(factory: &str) -> Result<gst::Element, IngestError> {
    make_with(factory, &[])
}

/// An element with properties set from strings (enums, flags) — an error, never a panic,
/// when a value is not one the element takes.
fn make_with(factory: &str, properties: &[(&str, &str)]) -> Result<gst::Element, IngestError> {
    if gst::ElementFactory::find(factory).is_none() {
        return Err(IngestError::Pipeline(format!(
            "GStreamer element `{factory}` is not installed"
        )));
    }
    let element = gst::ElementFactory::make(factory)
        .build()
        .map_err(|e| IngestError::Pipeline(format!("creating `{factory}`: {e}")))?;
    for (name, value) in properties {
        // gstreamer-rs's own from-string setters panic on a bad value: parse first.
        let bad = || {
            IngestError::InvalidConfig(format!(
                "{factory}: `{}` is not a value of `{name}`",
                crate::error::excerpt(value)
            ))
        };
        let pspec = element.find_property(name).ok_or_else(bad)?;
        let parsed = gst::glib::Value::deserialize_with_pspec(value, &pspec).map_err(|_| bad())?;
        element.set_property_from_value(name, &parsed);
    }
    Ok(element)
}

/// The live `videotestsrc` of `test://PATTERN`; an unknown pattern is an invalid URI.
pub(crate) fn test_source(pattern: &str) -> Result<gst::Element, IngestError> {
    let src = make_with("videotestsrc", &[("pattern", pattern)]).map_err(|e| match e {
        IngestError::InvalidConfig(_) => IngestError::InvalidUri(format!(
            "unknown test pattern `{}` (videotestsrc's, e.g. smpte, ball, snow)",
            crate::error::excerpt(pattern)
        )),
        other => other,
    })?;
    src.set_property("is-live", true);
    Ok(src)
}

/// The sampling and conversion chain, from `videorate` to the appsink.
fn build_chain(
    pipeline: &gst::Pipeline,
    config: &StreamConfig,
) -> Result<(gst::Element, gst_app::AppSink), IngestError> {
    let rate = make("videorate")?;
    rate.set_property("drop-only", true);
    rate.set_property("skip-to-first", true);
    let fps = gst::Fraction::approximate_f64(config.sample_fps)
        .ok_or_else(|| IngestError::InvalidConfig(format!("sample_fps {}", config.sample_fps)))?;
    let rate_caps = gst::Caps::builder("video/x-raw")
        .field("framerate", fps)
        .build();
    let rate_filter = make("capsfilter")?;
    rate_filter.set_property("caps", &rate_caps);
    slow_sources_keep_their_rate(&rate, &rate_filter, fps);
    let scale = make("videoscale")?;
    scale.set_property("add-borders", config.resize == ResizeMode::Letterbox);
    let convert = make("videoconvert")?;
    let out_caps = gst_video::VideoCapsBuilder::new()
        .format(gst_video::VideoFormat::Rgb)
        .width(config.width as i32)
        .height(config.height as i32)
        .pixel_aspect_ratio(gst::Fraction::new(1, 1))
        .build();
    let sink = gst_app::AppSink::builder()
        .caps(&out_caps)
        .sync(false)
        .max_buffers(1)
        .enable_last_sample(false)
        .build();
    let mut chain = vec![rate.clone(), rate_filter];
    if config.resize == ResizeMode::Crop {
        let crop = make("aspectratiocrop")?;
        crop.set_property(
            "aspect-ratio",
            gst::Fraction::new(config.width as i32, config.height as i32),
        );
        chain.push(crop);
    }
    chain.extend([scale, convert, sink.clone().upcast()]);
    pipeline.add_many(&chain).map_err(err)?;
    gst::Element::link_many(&chain).map_err(err)?;
    Ok((rate, sink))
}

/// Sampling drops frames, never invents them: a source slower than the sampling rate
/// (3 fps asked of a 1 fps camera) would fail to negotiate a fixed higher rate. When the
/// decoded caps arrive at `rate`, `filter` is set to the source's own rate where that is
/// lower; the rate delivered shows in the stream's status.
fn slow_sources_keep_their_rate(rate: &gst::Element, filter: &gst::Element, asked: gst::Fraction) {
    let Some(pad) = rate.static_pad("sink") else {
        return;
    };
    let filter = filter.downgrade();
    let as_f64 = |f: gst::Fraction| f64::from(f.numer()) / f64::from(f.denom().max(1));
    pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        let Some(gst::PadProbeData::Event(event)) = &info.data else {
            return gst::PadProbeReturn::Ok;
        };
        let gst::EventView::Caps(caps) = event.view() else {
            return gst::PadProbeReturn::Ok;
        };
        let source = caps
            .caps()
            .structure(0)
            .and_then(|s| s.get::<gst::Fraction>("framerate").ok());
        let wanted = match source {
            Some(f) if f.numer() > 0 && as_f64(f) < as_f64(asked) => f,
            _ => asked,
        };
        if let Some(filter) = filter.upgrade() {
            let caps = gst::Caps::builder("video/x-raw")
                .field("framerate", wanted)
                .build();
            filter.set_property("caps", &caps);
        }
        gst::PadProbeReturn::Ok
    });
}

/// Links a decoder's video pad to the chain's first element, ignoring audio.
fn link_video_pads(element: &gst::Element, chain_head: &gst::Element) {
    let sink_pad = chain_head.static_pad("sink");
    element.connect_pad_added(move |_, pad| {
        let Some(sink_pad) = sink_pad.as_ref() else {
            return;
        };
        let is_video = pad
            .current_caps()
            .or_else(|| Some(pad.query_caps(None)))
            .and_then(|caps| caps.structure(0).map(|s| s.name().starts_with("video/")))
            .unwrap_or(false);
        if is_video && !sink_pad.is_linked() {
            if let Err(e) = pad.link(sink_pad) {
                tracing::warn!(error = ?e, "linking the decoded video pad failed");
            }
        }
    });
}

/// The source part, linked (now or when its pads appear) to `head`.
fn build_source(
    pipeline: &gst::Pipeline,
    config: &StreamConfig,
    head: &gst::Element,
) -> Result<(), IngestError> {
    match &config.source {
        Source::Synth {
            script,
            seed,
            speed,
            options,
        } => {
            let script = Script::from_name(script, *seed, options, config.width, config.height)
                .map_err(|e| IngestError::InvalidUri(e.to_string()))?;
            let src = synth_appsrc(script, *speed)?;
            pipeline.add(&src).map_err(err)?;
            src.link(head).map_err(err)?;
        }
        Source::Test { pattern } => {
            let src = test_source(pattern)?;
            pipeline.add(&src).map_err(err)?;
            src.link(head).map_err(err)?;
        }
        Source::V4l2(device) => {
            let src = make("v4l2src")?;
            src.set_property("device", device.to_string_lossy().as_ref());
            let decode = make("decodebin")?;
            pipeline.add_many([&src, &decode]).map_err(err)?;
            src.link(&decode).map_err(err)?;
            link_video_pads(&decode, head);
        }
        Source::File(path) => {
            if !path.exists() {
                return Err(IngestError::NotFound(path.clone()));
            }
            let absolute =
                std::fs::canonicalize(path).map_err(|_| IngestError::NotFound(path.clone()))?;
            let uri = glib_uri(&absolute)?;
            let decode = make("uridecodebin")?;
            decode.set_property("uri", uri);
            pipeline.add(&decode).map_err(err)?;
            link_video_pads(&decode, head);
        }
        Source::Rtsp {
            location,
            transport,
            credentials,
        } => {
            let protocols = match transport {
                RtspTransport::Tcp => "tcp",
                RtspTransport::Udp => "udp",
            };
            let src = make_with("rtspsrc", &[("protocols", protocols)])?;
            src.set_property("location", location);
            src.set_property("latency", 200u32);
            if let Some(c) = credentials {
                src.set_property("user-id", &c.user);
                src.set_property("user-pw", &c.password);
            }
            let decode = make("decodebin")?;
            pipeline.add_many([&src, &decode]).map_err(err)?;
            let decode_sink = decode.static_pad("sink");
            src.connect_pad_added(move |_, pad| {
                if let Some(sink) = decode_sink.as_ref() {
                    if !sink.is_linked() {
                        if let Err(e) = pad.link(sink) {
                            tracing::warn!(error = ?e, "linking the RTSP pad failed");
                        }
                    }
                }
            });
            link_video_pads(&decode, head);
        }
    }
    Ok(())
}

/// An `appsrc` playing `script`: frame `i` rendered at stream time `i / fps` when the
/// pipeline asks for data, stamped with that time, no earlier than `t / speed` after
/// the first (unpaced when `speed` is 0); end of stream after the last frame.
fn synth_appsrc(script: Script, speed: f64) -> Result<gst::Element, IngestError> {
    let (w, h) = (script.scene.width, script.scene.height);
    let fps = gst::Fraction::approximate_f64(script.fps)
        .ok_or_else(|| IngestError::InvalidConfig(format!("script fps {}", script.fps)))?;
    let caps = gst_video::VideoCapsBuilder::new()
        .format(gst_video::VideoFormat::Rgb)
        .width(w as i32)
        .height(h as i32)
        .framerate(fps)
        .pixel_aspect_ratio(gst::Fraction::new(1, 1))
        .build();
    let info = gst_video::VideoInfo::from_caps(&caps).map_err(err)?;
    let stride = info.stride()[0] as usize;
    let row = w as usize * 3;
    let src = gst_app::AppSrc::builder()
        .caps(&caps)
        .format(gst::Format::Time)
        .is_live(false)
        .build();
    let total = script.frames();
    let frame_ns = (1e9 / script.fps) as u64;
    let mut next = 0usize;
    let mut started: Option<Instant> = None;
    src.set_callbacks(
        gst_app::AppSrcCallbacks::builder()
            .need_data(move |appsrc, _| {
                if next >= total {
                    let _ = appsrc.end_of_stream();
                    return;
                }
                let t = script.frame_time(next);
                let start = *started.get_or_insert_with(Instant::now);
                if speed > 0.0 {
                    let due = start + Duration::from_secs_f64(t / speed);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                let frame = script.scene.render(t);
                // Rows are handed over as rendered unless GStreamer pads them.
                let data = if stride == row {
                    frame.rgb
                } else {
                    let mut padded = vec![0u8; stride * h as usize];
                    for (dst, src) in padded.chunks_mut(stride).zip(frame.rgb.chunks(row)) {
                        dst[..row].copy_from_slice(src);
                    }
                    padded
                };
                let mut buffer = gst::Buffer::from_mut_slice(data);
                if let Some(b) = buffer.get_mut() {
                    b.set_pts(gst::ClockTime::from_nseconds((t * 1e9).round() as u64));
                    b.set_duration(gst::ClockTime::from_nseconds(frame_ns));
                }
                next += 1;
                if appsrc.push_buffer(buffer).is_err() {
                    // Flushing: the session is stopping.
                    next = total;
                }
            })
            .build(),
    );
    Ok(src.upcast())
}

fn glib_uri(path: &std::path::Path) -> Result<String, IngestError> {
    gst::glib::filename_to_uri(path, None)
        .map(|u| u.to_string())
        .map_err(|e| IngestError::InvalidUri(format!("{}: {e}", path.display())))
}

/// Maps a bus error onto the typed error of its GStreamer domain.
pub(crate) fn map_bus_error(source: &Source, msg: &gst::message::Error) -> IngestError {
    let error = msg.error();
    let text = match msg.debug() {
        Some(debug) => format!("{} ({debug})", error.message()),
        None => error.message().to_string(),
    };
    // Never let a URI with credentials into an error text.
    let text = redact(&text);
    if let Some(kind) = error.kind::<gst::ResourceError>() {
        return match (kind, source) {
            (gst::ResourceError::NotAuthorized, _) => IngestError::Unauthorized(text),
            (gst::ResourceError::NotFound, Source::File(p)) => IngestError::NotFound(p.clone()),
            (
                gst::ResourceError::NotFound
                | gst::ResourceError::OpenRead
                | gst::ResourceError::OpenReadWrite
                | gst::ResourceError::Read
                | gst::ResourceError::Busy,
                Source::Rtsp { .. } | Source::V4l2(_),
            ) => IngestError::Unreachable(text),
            _ => IngestError::Pipeline(text),
        };
    }
    if error.kind::<gst::StreamError>().is_some() {
        return IngestError::Decode(text);
    }
    IngestError::Pipeline(text)
}

/// Removes `user:pass@` from any URI in `text`.
fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace())
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("<redacted>@");
                rest = &tail[at + 1..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// Turns a sample into a [`Frame`] (zero copy when rows are tightly packed).
fn to_frame(
    sample: &gst::Sample,
    shared: &Shared,
    clock: &mut SessionClock,
    base_time: Option<gst::ClockTime>,
    pipeline_clock: Option<gst::Clock>,
) -> Result<Frame, IngestError> {
    let caps = sample.caps().ok_or_else(|| err("sample without caps"))?;
    let info = gst_video::VideoInfo::from_caps(caps).map_err(err)?;
    let buffer = sample
        .buffer_owned()
        .ok_or_else(|| err("sample without buffer"))?;
    let (width, height) = (info.width(), info.height());
    let row = width as usize * 3;
    let stride = info.stride()[0] as usize;
    let segment = sample
        .segment()
        .and_then(|s| s.downcast_ref::<gst::ClockTime>().cloned());
    let pts = buffer.pts();
    let stream_time = match (&segment, pts) {
        (Some(seg), Some(pts)) => seg.to_stream_time(pts).unwrap_or(pts),
        (None, Some(pts)) => pts,
        _ => gst::ClockTime::ZERO,
    };
    let running = match (&segment, pts) {
        (Some(seg), Some(pts)) => seg.to_running_time(pts),
        _ => None,
    };
    let data = if stride == row {
        FrameData::Mapped(
            buffer
                .into_mapped_buffer_readable()
                .map_err(|_| err("mapping a frame"))?,
        )
    } else {
        let map = buffer.map_readable().map_err(|_| err("mapping a frame"))?;
        let mut packed = Vec::with_capacity(row * height as usize);
        for y in 0..height as usize {
            let start = y * stride;
            packed.extend_from_slice(
                map.get(start..start + row)
                    .ok_or_else(|| err("short frame"))?,
            );
        }
        FrameData::Owned(packed)
    };
    // Live sources: capture time from the pipeline clock; files: now.
    let now = SystemTime::now();
    let mut captured_at = now;
    if clock.live {
        if let (Some(base), Some(running), Some(c)) = (base_time, running, pipeline_clock) {
            let now_clock = c.time();
            let capture = base + running;
            if now_clock > capture {
                let latency = Duration::from_nanos((now_clock - capture).nseconds());
                captured_at = now - latency;
                metrics::histogram!(names::INGEST_ENQUEUE_LATENCY, "stream" => shared.id.to_string())
                    .record(latency.as_secs_f64());
            }
        }
    }
    let session_pts = Duration::from_nanos(stream_time.nseconds());
    let offset = *clock.offset.get_or_insert_with(|| match clock.last_pts {
        // Live sessions after the first continue from wall-clock time since the start.
        Some(last) if clock.live => clock
            .started
            .elapsed()
            .saturating_sub(session_pts)
            .max(last),
        Some(last) => last,
        None => Duration::ZERO,
    });
    let mut frame_pts = offset + session_pts;
    if let Some(last) = clock.last_pts {
        if frame_pts <= last {
            frame_pts = last + Duration::from_micros(1);
        }
    }
    clock.last_pts = Some(frame_pts);
    let seq = clock.seq;
    clock.seq += 1;
    Ok(Frame {
        stream_id: shared.id.clone(),
        seq,
        pts: frame_pts,
        captured_at,
        width,
        height,
        data,
    })
}

/// Runs one session of `config`'s pipeline.
pub(crate) fn run_session(
    config: &StreamConfig,
    tx: &QueueSender<Frame>,
    shared: &Arc<Shared>,
    stream_clock: &mut StreamClock,
) -> SessionOutcome {
    let fail = |e: IngestError| SessionOutcome {
        end: SessionEnd::Error(e),
        frames: 0,
    };
    let pipeline = gst::Pipeline::with_name(&format!("ingest-{}", config.id));
    let (rate, sink) = match build_chain(&pipeline, config) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    if let Err(e) = build_source(&pipeline, config, &rate) {
        return fail(e);
    }

    // Decoded frames, counted where they enter sampling.
    let decoded = Arc::new(AtomicU64::new(0));
    if let Some(pad) = rate.static_pad("sink") {
        let decoded = decoded.clone();
        let shared = shared.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            decoded.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(names::INGEST_FRAMES_DECODED, "stream" => shared.id.to_string())
                .increment(1);
            shared.update(|s| s.frames_decoded += 1);
            gst::PadProbeReturn::Ok
        });
    }

    let session_clock = Arc::new(Mutex::new(SessionClock {
        seq: stream_clock.next_seq,
        offset: None,
        last_pts: stream_clock.last_pts,
        started: stream_clock.started,
        live: config.source.is_live(),
    }));
    let last_frame_at = Arc::new(Mutex::new(Instant::now()));
    let delivered = Arc::new(AtomicU64::new(0));
    {
        let shared = shared.clone();
        let session_clock = session_clock.clone();
        let last_frame_at = last_frame_at.clone();
        let delivered = delivered.clone();
        let tx = tx.clone_sender();
        let pipeline_weak = pipeline.downgrade();
        let asked_fps = config.sample_fps;
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let (base, clock) = match pipeline_weak.upgrade() {
                        Some(p) => (p.base_time(), p.clock()),
                        None => (None, None),
                    };
                    let frame = {
                        let mut c = session_clock.lock().unwrap_or_else(|p| p.into_inner());
                        match to_frame(&sample, &shared, &mut c, base, clock) {
                            Ok(f) => f,
                            Err(e) => {
                                shared.record_error(&e);
                                return Ok(gst::FlowSuccess::Ok);
                            }
                        }
                    };
                    *last_frame_at.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                    let first = delivered.fetch_add(1, Ordering::Relaxed) == 0;
                    if first {
                        let fps = sample
                            .caps()
                            .and_then(|c| gst_video::VideoInfo::from_caps(c).ok())
                            .map(|i| i.fps())
                            .filter(|f| f.numer() > 0)
                            .map(|f| f64::from(f.numer()) / f64::from(f.denom().max(1)));
                        if let Some(fps) = fps.filter(|&f| f < asked_fps * 0.999) {
                            tracing::info!(stream = %shared.id, delivered_fps = fps, sample_fps = asked_fps, "the source is slower than the sampling rate: frames come at its own rate");
                        }
                        shared.update(|s| s.delivered_fps = fps);
                        shared.set_state(StreamState::Live);
                    }
                    // Counted once queued, so a status never promises a frame the
                    // queue does not hold yet.
                    let dropped = match tx.push(frame, || !shared.stopping()) {
                        Pushed::Queued => 0,
                        Pushed::DroppedOldest(n) => n as u64,
                        Pushed::Closed => return Err(gst::FlowError::Flushing),
                    };
                    let stream = shared.id.to_string();
                    metrics::counter!(names::INGEST_FRAMES_SAMPLED, "stream" => stream.clone())
                        .increment(1);
                    if dropped > 0 {
                        metrics::counter!(names::INGEST_FRAMES_DROPPED, "stream" => stream)
                            .increment(dropped);
                    }
                    shared.update(|s| {
                        s.frames_sampled += 1;
                        s.frames_dropped += dropped;
                    });
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
    }

    let end = drive(
        &pipeline,
        config,
        shared,
        &last_frame_at,
        &delivered,
        &decoded,
    );
    if let Err(e) = pipeline.set_state(gst::State::Null) {
        tracing::warn!(stream = %shared.id, error = ?e, "stopping the pipeline");
    }
    let c = session_clock.lock().unwrap_or_else(|p| p.into_inner());
    stream_clock.next_seq = c.seq;
    stream_clock.last_pts = c.last_pts;
    SessionOutcome {
        end,
        frames: delivered.load(Ordering::Relaxed),
    }
}

/// Plays the pipeline and watches its bus until the session ends.
fn drive(
    pipeline: &gst::Pipeline,
    config: &StreamConfig,
    shared: &Shared,
    last_frame_at: &Mutex<Instant>,
    delivered: &AtomicU64,
    decoded: &AtomicU64,
) -> SessionEnd {
    let Some(bus) = pipeline.bus() else {
        return SessionEnd::Error(err("pipeline without a bus"));
    };
    if pipeline.set_state(gst::State::Playing).is_err() {
        // The reason is on the bus.
        while let Some(msg) = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(500),
            &[gst::MessageType::Error],
        ) {
            if let gst::MessageView::Error(e) = msg.view() {
                return SessionEnd::Error(map_bus_error(&config.source, e));
            }
        }
        return SessionEnd::Error(err("the pipeline refused to start"));
    }
    let live = config.source.is_live();
    loop {
        if shared.stopping() {
            return SessionEnd::Stopped;
        }
        if let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) {
            match msg.view() {
                gst::MessageView::Eos(_) => return SessionEnd::Eos,
                gst::MessageView::Error(e) => {
                    return SessionEnd::Error(map_bus_error(&config.source, e))
                }
                gst::MessageView::Warning(w) => {
                    tracing::debug!(stream = %shared.id, warning = %redact(&w.error().to_string()), "pipeline warning");
                }
                _ => {}
            }
        }
        let since = last_frame_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        // Live sources that go quiet (a dead UDP feed, a hung camera) are restarted.
        // Before the first frame the timeout is doubled to allow for slow connections.
        let limit = if delivered.load(Ordering::Relaxed) == 0 {
            config.stall_timeout * 2
        } else {
            config.stall_timeout
        };
        if live && since > limit {
            return SessionEnd::Error(IngestError::Stalled(since));
        }
        // A file that yields no video at all (a container whose demuxer neither errors
        // nor ends) fails instead of hanging; once frames flow, a slow consumer may
        // legitimately hold a file back for as long as it likes.
        if !live
            && delivered.load(Ordering::Relaxed) == 0
            && decoded.load(Ordering::Relaxed) == 0
            && since > limit
        {
            return SessionEnd::Error(IngestError::Decode(format!(
                "no video decoded in {since:?}"
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn credentials_are_redacted_from_messages() {
        assert_eq!(
            redact("Could not open rtsp://bob:pw@host:554/x for reading"),
            "Could not open rtsp://<redacted>@host:554/x for reading"
        );
        assert_eq!(redact("plain text"), "plain text");
        assert_eq!(redact("rtsp://host/x"), "rtsp://host/x");
    }
}

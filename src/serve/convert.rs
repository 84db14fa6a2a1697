//! Between the wire and the engine: proto messages → engine requests (validated against
//! [`super::bounds`], with INVALID_ARGUMENT naming the field and its bound), engine
//! results → proto messages, engine errors → gRPC status codes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::Status;

use super::bounds::{self, invalid, AskBounds, MAX_DISK_BYTES, MAX_WALL_UNIX_MS};
use super::proto as pb;
use crate::config::streams::MAX_AGE_SECONDS;
use crate::config::{RtspTransportName, StreamEntry};
use crate::engine::{
    Answer, AskMode, AskRequest, BlockSource, Citation, Figures, FinishReason, Sampling, StreamInfo,
};
use crate::error::{excerpt, EngineError, IngestError};
use crate::kv::Quant;
use crate::retrieval::{TimePoint, TimeRange};

/// The status an engine error answers with. Internal errors (the daemon's fault) are
/// INTERNAL, never a client rejection; they were logged and counted by the engine.
pub fn status(e: &EngineError) -> Status {
    let message = e.to_string();
    match e {
        EngineError::Internal(_) => Status::internal(message),
        EngineError::UnknownStream(_) => Status::not_found(message),
        EngineError::StreamExists(_) => Status::already_exists(message),
        EngineError::InvalidRequest(_) => invalid(message),
        EngineError::NoContent(_) => Status::failed_precondition(message),
        EngineError::Cancelled => Status::cancelled(message),
        EngineError::ShuttingDown => Status::unavailable(message),
        EngineError::Ingest(i) => match i {
            IngestError::UnknownScheme(_)
            | IngestError::InvalidUri(_)
            | IngestError::InvalidConfig(_) => invalid(message),
            IngestError::NotFound(_) => Status::not_found(message),
            _ => Status::unavailable(message),
        },
        EngineError::Model(_) | EngineError::Kv(_) | EngineError::Torch(_) => {
            Status::internal(message)
        }
    }
}

fn time_point(p: &pb::TimePoint, field: &str) -> Result<Option<TimePoint>, Status> {
    use pb::time_point::Point;
    Ok(match p.point {
        None => None,
        Some(Point::WallUnixMs(ms)) => {
            if !(0..=MAX_WALL_UNIX_MS).contains(&ms) {
                return Err(invalid(format!(
                    "{field}.wall_unix_ms must be in [0, {MAX_WALL_UNIX_MS}]"
                )));
            }
            Some(TimePoint::Wall(
                UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs()),
            ))
        }
        Some(Point::StreamSeconds(s)) => Some(TimePoint::Stream(bounds::seconds(
            s,
            &format!("{field}.stream_seconds"),
            false,
        )?)),
        Some(Point::AgoSeconds(s)) => Some(TimePoint::Ago(bounds::seconds(
            s,
            &format!("{field}.ago_seconds"),
            true,
        )?)),
    })
}

/// A wire range → an engine range; an inverted range is INVALID_ARGUMENT.
pub fn time_range(r: Option<&pb::TimeRange>) -> Result<TimeRange, Status> {
    let Some(r) = r else {
        return Ok(TimeRange::all());
    };
    let range = TimeRange {
        since: r
            .since
            .as_ref()
            .map(|p| time_point(p, "range.since"))
            .transpose()?
            .flatten(),
        until: r
            .until
            .as_ref()
            .map(|p| time_point(p, "range.until"))
            .transpose()?
            .flatten(),
    };
    if range.is_inverted(SystemTime::now()) {
        return Err(invalid("range: `until` is before `since`"));
    }
    Ok(range)
}

/// Checks a question against the server's limit.
pub fn question(text: &str, max_bytes: usize) -> Result<String, Status> {
    if text.len() > max_bytes {
        return Err(invalid(format!(
            "question is {} bytes, the limit is {max_bytes}",
            text.len()
        )));
    }
    if text.trim().is_empty() {
        return Err(invalid("question is empty"));
    }
    Ok(text.to_owned())
}

fn max_new_tokens(value: u32, bounds: &AskBounds) -> Result<Option<usize>, Status> {
    bounds::count(value, "max_new_tokens", bounds.max_new_tokens)
}

/// An Ask → the engine's request.
pub fn ask_request(req: &pb::AskRequest, limits: &AskBounds) -> Result<AskRequest, Status> {
    use crate::engine::config::{MAX_STOP_BYTES, MAX_STOP_STRINGS, MAX_TEMPERATURE};
    bounds::stream_id(&req.stream, "stream")?;
    let o = req.options.clone().unwrap_or_default();
    let mode = match pb::AskMode::try_from(o.mode) {
        Ok(pb::AskMode::Unspecified | pb::AskMode::Retrieve) => AskMode::Retrieve,
        Ok(pb::AskMode::Recent) => AskMode::Recent,
        Ok(pb::AskMode::Uniform) => AskMode::Uniform,
        Err(_) => return Err(invalid(format!("options.mode {} is unknown", o.mode))),
    };
    if !(o.temperature.is_finite() && (0.0..=MAX_TEMPERATURE).contains(&o.temperature)) {
        return Err(invalid(format!(
            "options.temperature must be in [0, {MAX_TEMPERATURE}]"
        )));
    }
    if !(o.top_p.is_finite() && (0.0..=1.0).contains(&o.top_p)) {
        return Err(invalid("options.top_p must be in (0, 1] (0: 1)"));
    }
    if o.stop.len() > MAX_STOP_STRINGS {
        return Err(invalid(format!(
            "options.stop holds {} strings, at most {MAX_STOP_STRINGS}",
            o.stop.len()
        )));
    }
    if o.stop
        .iter()
        .any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return Err(invalid(format!(
            "options.stop strings must be 1..={MAX_STOP_BYTES} bytes"
        )));
    }
    Ok(AskRequest {
        stream: req.stream.clone(),
        question: question(&req.question, limits.max_question_bytes)?,
        mode,
        range: time_range(req.range.as_ref())?,
        top_k: bounds::count(o.top_k, "options.top_k", limits.max_top_k)?,
        // The daemon's `[engine] shared_retrieval_layer` decides.
        layer_selection: None,
        // More than the window holds means the whole window (documented clamp).
        recent_frames: o.recent_frames.map(|n| n as usize),
        max_new_tokens: max_new_tokens(o.max_new_tokens, limits)?,
        sampling: Sampling {
            temperature: o.temperature,
            top_p: if o.top_p == 0.0 { 1.0 } else { o.top_p },
            seed: o.seed,
        },
        stop: o.stop,
    })
}

/// Default instruction of a summary.
pub const SUMMARY_INSTRUCTION: &str = "Describe what happens in this video.";

/// A Summarize → the engine's request (uniform frames over the range, no window).
pub fn summarize_request(
    req: &pb::SummarizeRequest,
    limits: &AskBounds,
) -> Result<AskRequest, Status> {
    bounds::stream_id(&req.stream, "stream")?;
    let instruction = if req.instruction.is_empty() {
        SUMMARY_INSTRUCTION
    } else {
        &req.instruction
    };
    Ok(AskRequest {
        stream: req.stream.clone(),
        question: question(instruction, limits.max_question_bytes)?,
        mode: AskMode::Uniform,
        range: time_range(req.range.as_ref())?,
        top_k: bounds::count(req.frames, "frames", limits.max_top_k)?,
        recent_frames: None,
        max_new_tokens: max_new_tokens(req.max_new_tokens, limits)?,
        ..Default::default()
    })
}

/// A CreateStream's spec → a stream entry (checked like a config entry).
pub fn stream_entry(spec: Option<&pb::StreamSpec>) -> Result<StreamEntry, Status> {
    let spec = spec.ok_or_else(|| invalid("stream is unset"))?;
    let mut entry = StreamEntry::new(spec.id.clone(), spec.uri.clone());
    if spec.sample_fps != 0.0 {
        entry.sample_fps = Some(spec.sample_fps);
    }
    if spec.width != 0 || spec.height != 0 {
        entry.width = Some(spec.width);
        entry.height = Some(spec.height);
    }
    if let Some(r) = &spec.retention {
        if r.max_disk_bytes > MAX_DISK_BYTES {
            return Err(invalid(format!(
                "stream.retention.max_disk_bytes must be at most {MAX_DISK_BYTES} (0: default)"
            )));
        }
        if r.max_age_seconds > MAX_AGE_SECONDS {
            return Err(invalid(format!(
                "stream.retention.max_age_seconds must be at most {MAX_AGE_SECONDS} (0: default)"
            )));
        }
        entry.disk_max_mib = (r.max_disk_bytes > 0).then(|| r.max_disk_bytes.div_ceil(1 << 20));
        entry.max_age_seconds = (r.max_age_seconds > 0).then_some(r.max_age_seconds);
    }
    if let Some(o) = &spec.options {
        entry.rtsp_transport = match o.rtsp_transport.as_str() {
            "" | "tcp" => RtspTransportName::Tcp,
            "udp" => RtspTransportName::Udp,
            other => {
                return Err(invalid(format!(
                    "stream.options.rtsp_transport `{}` (tcp, udp)",
                    excerpt(other)
                )))
            }
        };
        if !o.quant.is_empty() {
            entry.quant = Some(
                serde_json::from_value::<Quant>(serde_json::Value::String(o.quant.clone()))
                    .map_err(|_| {
                        invalid(format!(
                            "stream.options.quant `{}` (f32, f16, bf16, int8, int4)",
                            excerpt(&o.quant)
                        ))
                    })?,
            );
        }
        entry.ram_budget_mib =
            (o.ram_budget_bytes > 0).then(|| o.ram_budget_bytes as f64 / (1u64 << 20) as f64);
    }
    entry
        .validate()
        .map_err(|(field, m)| invalid(format!("stream.{field}: {m}")))?;
    Ok(entry)
}

/// A stream entry → its wire spec (password redacted).
pub fn stream_spec(entry: &StreamEntry) -> pb::StreamSpec {
    pb::StreamSpec {
        id: entry.id.clone(),
        uri: entry.redacted_uri(),
        sample_fps: entry.sample_fps.unwrap_or(0.0),
        width: entry.width.unwrap_or(0),
        height: entry.height.unwrap_or(0),
        retention: Some(pb::Retention {
            max_disk_bytes: entry.disk_max_mib.map_or(0, |m| m.saturating_mul(1 << 20)),
            max_age_seconds: entry.max_age_seconds.unwrap_or(0),
        }),
        options: Some(pb::StreamOptions {
            rtsp_transport: match entry.rtsp_transport {
                RtspTransportName::Tcp => "tcp".into(),
                RtspTransportName::Udp => "udp".into(),
            },
            quant: entry
                .quant
                .and_then(|q| serde_json::to_value(q).ok())
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            ram_budget_bytes: entry.ram_budget_mib.map_or(0, crate::config::mib_to_bytes),
        }),
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn moment(pts: Duration, wall: SystemTime) -> pb::Moment {
    pb::Moment {
        stream_seconds: pts.as_secs_f64(),
        wall_unix_ms: unix_ms(wall),
    }
}

pub fn stream_status(info: &StreamInfo) -> pb::StreamStatus {
    pb::StreamStatus {
        state: info
            .state
            .as_ref()
            .map_or("external", |s| s.label())
            .to_owned(),
        frames_encoded: info.frames_encoded,
        frames_dropped: info.frames_dropped,
        blocks: info.blocks as u64,
        blocks_in_ram: info.blocks_in_ram as u64,
        ram_bytes: info.ram_bytes as u64,
        disk_bytes: info.disk_bytes,
        first: info.first.map(|(p, w)| moment(p, w)),
        last: info.last.map(|(p, w)| moment(p, w)),
        ram_only: info.ram_only,
        last_error: info.last_error.clone().unwrap_or_default(),
        input_ended: info.input_ended,
        delivered_fps: info.delivered_fps.unwrap_or(0.0),
    }
}

pub fn citation(c: &Citation) -> pb::Citation {
    pb::Citation {
        seq: c.seq,
        at: Some(moment(c.pts, c.wall)),
        score: c.score,
        layers: c.layers,
        frames: c.frames,
        source: match c.source {
            BlockSource::Window => pb::BlockSource::Window,
            BlockSource::Ram => pb::BlockSource::Ram,
            BlockSource::Disk => pb::BlockSource::Disk,
        } as i32,
    }
}

pub fn figures(f: &Figures) -> pb::Figures {
    pb::Figures {
        blocks_scanned: f.blocks_scanned as u64,
        blocks_from_ram: f.blocks_from_ram as u64,
        blocks_from_disk: f.blocks_from_disk as u64,
        window_frames: f.window_frames as u64,
        context_tokens: f.context_tokens.max(0) as u64,
        retrieval_seconds: f.retrieval.as_secs_f64(),
        queued_seconds: f.queued.as_secs_f64(),
        time_to_first_token_seconds: f.time_to_first_token.as_secs_f64(),
        total_seconds: f.total.as_secs_f64(),
    }
}

pub fn finish(f: FinishReason) -> pb::FinishReason {
    match f {
        FinishReason::Stop => pb::FinishReason::Stop,
        FinishReason::StopString => pb::FinishReason::StopString,
        FinishReason::Length => pb::FinishReason::Length,
        FinishReason::Cancelled => pb::FinishReason::Cancelled,
    }
}

pub fn answer(a: &Answer) -> pb::Answer {
    pb::Answer {
        text: a.text.clone(),
        finish: finish(a.finish) as i32,
        citations: a.citations.iter().map(citation).collect(),
        figures: Some(figures(&a.figures)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(question: &str) -> pb::AskRequest {
        pb::AskRequest {
            stream: "cam".into(),
            question: question.into(),
            ..Default::default()
        }
    }

    #[test]
    fn bad_questions_are_invalid_argument() {
        for q in ["", "   ", &"x".repeat(101)] {
            let limits = AskBounds {
                max_question_bytes: 100,
                ..Default::default()
            };
            let e = ask_request(&ask(q), &limits).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{q:?}");
        }
        let r = ask_request(&ask("what?"), &AskBounds::default()).unwrap();
        assert_eq!(r.mode, AskMode::Retrieve);
        assert_eq!(r.sampling.top_p, 1.0);
    }

    #[test]
    fn ranges_are_checked() {
        use pb::time_point::Point;
        let point = |p| pb::TimePoint { point: Some(p) };
        let inverted = pb::TimeRange {
            since: Some(point(Point::StreamSeconds(10.0))),
            until: Some(point(Point::StreamSeconds(5.0))),
        };
        assert_eq!(
            time_range(Some(&inverted)).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let negative = pb::TimeRange {
            since: Some(point(Point::AgoSeconds(-1.0))),
            until: None,
        };
        assert_eq!(
            time_range(Some(&negative)).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let ok = pb::TimeRange {
            since: Some(point(Point::AgoSeconds(60.0))),
            until: None,
        };
        assert_eq!(
            time_range(Some(&ok)).unwrap().since,
            Some(TimePoint::Ago(Duration::from_secs(60)))
        );
    }

    #[test]
    fn huge_numbers_are_refused_not_panicking() {
        use pb::time_point::Point;
        let point = |p| pb::TimePoint { point: Some(p) };
        for p in [
            Point::StreamSeconds(1e30),
            Point::StreamSeconds(1e300),
            Point::AgoSeconds(1e30),
            Point::WallUnixMs(i64::MAX),
            Point::WallUnixMs(-1),
        ] {
            let r = pb::TimeRange {
                since: Some(point(p)),
                until: None,
            };
            assert_eq!(
                time_range(Some(&r)).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{p:?}"
            );
        }
        let limits = AskBounds::default();
        let with = |o: pb::AskOptions| pb::AskRequest {
            options: Some(o),
            ..ask("what?")
        };
        for o in [
            pb::AskOptions {
                top_k: 4_000_000_000,
                ..Default::default()
            },
            pb::AskOptions {
                top_k: u32::MAX,
                ..Default::default()
            },
            pb::AskOptions {
                max_new_tokens: 4_000_000_000,
                ..Default::default()
            },
            pb::AskOptions {
                temperature: 1e30,
                ..Default::default()
            },
            pb::AskOptions {
                stop: vec!["x".repeat(100_000)],
                ..Default::default()
            },
            pb::AskOptions {
                stop: vec!["x".into(); 1000],
                ..Default::default()
            },
        ] {
            let e = ask_request(&with(o.clone()), &limits).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{o:?}");
        }
        let summary = pb::SummarizeRequest {
            stream: "cam".into(),
            frames: 4_000_000_000,
            ..Default::default()
        };
        assert_eq!(
            summarize_request(&summary, &limits).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let spec = |max_disk_bytes, max_age_seconds| pb::StreamSpec {
            id: "x".into(),
            uri: "test://ball".into(),
            retention: Some(pb::Retention {
                max_disk_bytes,
                max_age_seconds,
            }),
            ..Default::default()
        };
        for bad in [spec(u64::MAX, 0), spec(0, u64::MAX)] {
            assert_eq!(
                stream_entry(Some(&bad)).unwrap_err().code(),
                tonic::Code::InvalidArgument
            );
        }
        // The largest accepted size round trips without overflow.
        let entry = stream_entry(Some(&spec(MAX_DISK_BYTES, 1))).unwrap();
        assert_eq!(
            stream_spec(&entry).retention.unwrap().max_disk_bytes,
            MAX_DISK_BYTES
        );
    }

    #[test]
    fn stream_specs_round_trip_and_redact() {
        let spec = pb::StreamSpec {
            id: "door".into(),
            uri: "rtsp://admin:pw@cam/live".into(),
            sample_fps: 2.0,
            options: Some(pb::StreamOptions {
                quant: "int4".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let entry = stream_entry(Some(&spec)).unwrap();
        assert_eq!(entry.quant, Some(Quant::Int4));
        let back = stream_spec(&entry);
        assert_eq!(back.uri, "rtsp://admin:***@cam/live");
        assert_eq!(back.options.unwrap().quant, "int4");
        for bad in [
            pb::StreamSpec {
                id: "x".into(),
                uri: "gopher://a".into(),
                ..Default::default()
            },
            pb::StreamSpec {
                id: "".into(),
                uri: "test://ball".into(),
                ..Default::default()
            },
            pb::StreamSpec {
                id: "x".into(),
                uri: "test://ball".into(),
                sample_fps: -1.0,
                ..Default::default()
            },
        ] {
            assert_eq!(
                stream_entry(Some(&bad)).unwrap_err().code(),
                tonic::Code::InvalidArgument
            );
        }
    }
}

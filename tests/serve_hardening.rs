//! What a client the project did not write found (issue 16), each against the real
//! daemon over gRPC: huge numbers refused instead of panicking a handler, counts capped
//! by configuration and by the model's context, sources checked at creation, a source
//! slower than its sampling rate delivered at its own rate, ids and messages bounded,
//! the code label of every request the code its client saw, and metric values equal to
//! ground truth (blocks stored, records corrupted).

#[path = "common/client.rs"]
mod client;
#[path = "common/daemon.rs"]
mod daemon;
#[path = "support/media.rs"]
mod media;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tonic::{Code, Request};
use vstreamd::serve::proto as pb;

/// Frames of the finite synthetic stream the ground-truth test stores.
const FRAMES: u64 = 40;

fn point(p: pb::time_point::Point) -> Option<pb::TimePoint> {
    Some(pb::TimePoint { point: Some(p) })
}

fn assert_clean_log(d: &daemon::Daemon) {
    let log = d.log();
    assert!(
        !log.contains("panicked"),
        "a panic in the daemon's log:\n{log}"
    );
}

/// Requests sent by this test, by (method, code label): what the daemon must count.
#[derive(Default)]
struct Tally(BTreeMap<(&'static str, &'static str), u64>);

impl Tally {
    fn add(&mut self, method: &'static str, code: Code) {
        let label = vstreamd::serve::telemetry::code_label(code);
        *self.0.entry((method, label)).or_default() += 1;
    }

    /// Every (method, code) counted by the daemon equals ours, and it counted no other.
    fn check(&self, d: &daemon::Daemon) {
        let text = d.scrape();
        for ((method, code), n) in &self.0 {
            let got = daemon::metric_value(
                &text,
                "vstreamd_grpc_requests_total",
                &[("method", method), ("code", code)],
            )
            .unwrap_or(0.0);
            assert_eq!(got, *n as f64, "{method} {code}: {text}");
        }
        for line in text
            .lines()
            .filter(|l| l.starts_with("vstreamd_grpc_requests_total{"))
        {
            let known = self.0.keys().any(|(m, c)| {
                line.contains(&format!("method=\"{m}\"")) && line.contains(&format!("code=\"{c}\""))
            });
            assert!(known, "counted, but not sent by this test: {line}");
        }
    }
}

#[test]
fn every_bad_request_is_refused_with_its_code_and_counted_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon::Daemon::start_with(
        dir.path(),
        &daemon::config_text(
            &dir.path().join("state"),
            "",
            "[engine]\nmax_top_k = 1000\n\n[[streams]]\nid = \"clip\"\n\
             uri = \"synth://needle?seed=3&frames=600&speed=0\"\nsample_fps = 1.0\n",
        ),
        Duration::from_secs(120),
    );
    let mut tally = Tally::default();
    client::runtime().block_on(async {
        let mut c = client::connect(&d.grpc_url, None).await;
        let mut polls = 0;
        client::wait_stream(&mut c, "clip", Duration::from_secs(300), |s| {
            polls += 1;
            s.input_ended && s.frames_encoded >= 600
        })
        .await;
        for _ in 0..polls {
            tally.add("GetStream", Code::Ok);
        }

        // Finite but huge times: refused, not a panicked handler (CANCELLED).
        use pb::time_point::Point;
        for (since, until) in [
            (point(Point::StreamSeconds(1e30)), None),
            (point(Point::StreamSeconds(1e300)), None),
            (None, point(Point::StreamSeconds(1e30))),
            (point(Point::AgoSeconds(1e30)), None),
            (point(Point::WallUnixMs(i64::MAX)), None),
        ] {
            let mut req = client::ask("clip", "what colour was the triangle ?", 4);
            req.range = Some(pb::TimeRange { since, until });
            let code = client::ask_code(&mut c, Request::new(req.clone())).await;
            assert_eq!(code, Code::InvalidArgument, "{:?}", req.range);
            tally.add("Ask", code);
        }

        // Counts: top_k and frames beyond `[engine] max_top_k`, new tokens beyond the
        // limit, and a context larger than the model's positions.
        for options in [
            pb::AskOptions {
                top_k: 4_000_000_000,
                ..Default::default()
            },
            pb::AskOptions {
                top_k: u32::MAX,
                mode: pb::AskMode::Uniform as i32,
                ..Default::default()
            },
            pb::AskOptions {
                max_new_tokens: 4_000_000_000,
                ..Default::default()
            },
        ] {
            let mut req = client::ask("clip", "what colour was the triangle ?", 4);
            req.options = Some(options);
            let code = client::ask_code(&mut c, Request::new(req)).await;
            assert_eq!(code, Code::InvalidArgument);
            tally.add("Ask", code);
        }
        let e = c
            .summarize(pb::SummarizeRequest {
                stream: "clip".into(),
                frames: 4_000_000_000,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        tally.add("Summarize", e.code());
        // 600 frames allowed by the config, but not by the model's 4,096 positions.
        let mut req = client::ask("clip", "what colour was the triangle ?", 4);
        req.options = Some(pb::AskOptions {
            top_k: 600,
            mode: pb::AskMode::Uniform as i32,
            max_new_tokens: 4,
            ..Default::default()
        });
        let response = c.ask(Request::new(req)).await.unwrap();
        let collected = client::collect(response.into_inner()).await;
        assert_eq!(collected.code, Some(Code::InvalidArgument), "{collected:?}");
        assert!(
            collected.message.contains("positions"),
            "{}",
            collected.message
        );
        tally.add("Ask", Code::InvalidArgument);
        // Within both: answered.
        let mut req = client::ask("clip", "what colour was the triangle ?", 4);
        req.options = Some(pb::AskOptions {
            top_k: 64,
            mode: pb::AskMode::Uniform as i32,
            max_new_tokens: 4,
            ..Default::default()
        });
        let ok = client::collect(c.ask(Request::new(req)).await.unwrap().into_inner()).await;
        assert_eq!(ok.code, Some(Code::Ok), "{ok:?}");
        assert_eq!(ok.answer.unwrap().citations.len(), 64);
        tally.add("Ask", Code::Ok);

        // Unbounded strings are never echoed: a 100 KB id gets a short message.
        let huge = "x".repeat(100_000);
        let e = c
            .get_stream(pb::GetStreamRequest { id: huge.clone() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().len() < 512, "{} bytes", e.message().len());
        tally.add("GetStream", e.code());
        let e = c
            .delete_stream(pb::DeleteStreamRequest {
                id: huge.clone(),
                purge: true,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().len() < 512, "{} bytes", e.message().len());
        tally.add("DeleteStream", e.code());
        let code = client::ask_code(&mut c, Request::new(client::ask(&huge, "q", 2))).await;
        assert_eq!(code, Code::InvalidArgument);
        tally.add("Ask", code);

        // Sources are checked at creation; sizes are checked, never wrapped.
        let spec = |id: &str, uri: &str| pb::StreamSpec {
            id: id.into(),
            uri: uri.into(),
            ..Default::default()
        };
        for bad in [
            spec("bad-pattern", "test://nosuchpattern"),
            spec("long-uri", &format!("test://{huge}")),
            pb::StreamSpec {
                retention: Some(pb::Retention {
                    max_disk_bytes: u64::MAX,
                    max_age_seconds: 0,
                }),
                ..spec("huge-disk", "test://ball")
            },
            pb::StreamSpec {
                retention: Some(pb::Retention {
                    max_disk_bytes: 0,
                    max_age_seconds: u64::MAX,
                }),
                ..spec("huge-age", "test://ball")
            },
            pb::StreamSpec {
                options: Some(pb::StreamOptions {
                    ram_budget_bytes: u64::MAX,
                    ..Default::default()
                }),
                ..spec("huge-ram", "test://ball")
            },
            spec("slow-synth", "synth://needle?speed=1e-300"),
        ] {
            let e = c
                .create_stream(pb::CreateStreamRequest {
                    stream: Some(bad.clone()),
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{}", bad.id);
            assert!(e.message().len() < 512, "{} bytes", e.message().len());
            tally.add("CreateStream", e.code());
        }
        let list = c
            .list_streams(pb::ListStreamsRequest {})
            .await
            .unwrap()
            .into_inner();
        tally.add("ListStreams", Code::Ok);
        let ids: Vec<&str> = list
            .streams
            .iter()
            .map(|s| s.spec.as_ref().unwrap().id.as_str())
            .collect();
        assert_eq!(ids, ["clip"], "refused streams were not created");
    });
    assert_clean_log(&d);
    tally.check(&d);
}

/// The disk tier's counters equal what was stored and what was damaged.
#[test]
fn kv_counters_equal_ground_truth_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = daemon::config_text(
        &state,
        "",
        &format!(
            "[store]\nsync_interval_ms = 0\n\n[[streams]]\nid = \"clip\"\n\
             uri = \"synth://needle?seed=5&frames={FRAMES}&speed=0\"\nsample_fps = 1.0\n"
        ),
    );
    let (d, status) = run_to_end(dir.path(), &config);
    assert_eq!(status.blocks, FRAMES);
    let text = d.scrape();
    let value = |name: &str| daemon::metric_value(&text, name, &[("stream", "clip")]);
    assert_eq!(
        value("vstreamd_kv_disk_appends_total"),
        Some(FRAMES as f64),
        "one append counted per block stored"
    );
    assert_eq!(
        value("vstreamd_engine_frames_encoded_total"),
        Some(FRAMES as f64)
    );
    assert_eq!(
        value("vstreamd_kv_corrupt_records_total").unwrap_or(0.0),
        0.0
    );
    assert_eq!(value("vstreamd_kv_write_errors_total").unwrap_or(0.0), 0.0);
    assert_clean_log(&d);
    assert!(d.stop(Duration::from_secs(60)).success());

    // Damage one record's payload in the middle of the first segment.
    damage_second_record(&state.join("kv").join("clip"));
    let (d, status) = run_to_end(dir.path(), &config);
    // The synthetic script starts again after a restart: the recovered blocks (one
    // fewer) plus the replayed ones.
    assert_eq!(status.blocks, 2 * FRAMES - 1, "{status:?}");
    let text = d.scrape();
    let value = |name: &str| daemon::metric_value(&text, name, &[("stream", "clip")]);
    assert_eq!(
        value("vstreamd_kv_corrupt_records_total"),
        Some(1.0),
        "one record damaged, counted once"
    );
    assert_eq!(value("vstreamd_kv_disk_appends_total"), Some(FRAMES as f64));
    assert_clean_log(&d);
}

/// Starts the daemon on `config` and waits for its `clip` stream to play to its end.
fn run_to_end(dir: &Path, config: &str) -> (daemon::Daemon, pb::StreamStatus) {
    let d = daemon::Daemon::start_with(dir, config, Duration::from_secs(120));
    let status = client::runtime().block_on(async {
        let mut c = client::connect(&d.grpc_url, None).await;
        let s = client::wait_stream(&mut c, "clip", Duration::from_secs(300), |s| {
            s.input_ended && s.frames_encoded >= FRAMES
        })
        .await;
        s.status.expect("status")
    });
    (d, status)
}

/// Flips a payload byte of the second record of the oldest segment in `dir`.
fn damage_second_record(dir: &Path) {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let first = files.first().expect("a segment");
    let mut bytes = std::fs::read(first).unwrap();
    let starts: Vec<usize> = (0..bytes.len().saturating_sub(4))
        .step_by(8)
        .filter(|&i| &bytes[i..i + 4] == b"VKVR")
        .collect();
    assert!(
        starts.len() >= 3,
        "{} records in {}",
        starts.len(),
        first.display()
    );
    let at = starts[1] + 56 + 3;
    bytes[at] ^= 0x5A;
    std::fs::write(first, bytes).unwrap();
}

/// A source slower than the sampling rate: delivered at its own rate, said in status.
#[test]
fn a_slow_source_is_delivered_at_its_own_rate() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("slow.mp4");
    media::h264_file(&video, 8, 1, 64, 48, "mp4mux");
    let d = daemon::Daemon::start_with(
        dir.path(),
        &daemon::config_text(&dir.path().join("state"), "", ""),
        Duration::from_secs(120),
    );
    client::runtime().block_on(async {
        let mut c = client::connect(&d.grpc_url, None).await;
        let created = c
            .create_stream(pb::CreateStreamRequest {
                stream: Some(pb::StreamSpec {
                    id: "slow".into(),
                    uri: video.display().to_string(),
                    sample_fps: 3.0,
                    ..Default::default()
                }),
            })
            .await
            .expect("3 fps asked of a 1 fps file is accepted");
        assert_eq!(created.get_ref().spec.as_ref().unwrap().sample_fps, 3.0);
        let s =
            client::wait_stream(&mut c, "slow", Duration::from_secs(120), |s| s.input_ended).await;
        let status = s.status.unwrap();
        assert_eq!(status.state, "ended", "{status:?}");
        assert_eq!(status.last_error, "", "{status:?}");
        assert_eq!(status.delivered_fps, 1.0, "{status:?}");
        assert!(
            (7..=8).contains(&status.frames_encoded),
            "every frame of the 8 s file, once: {status:?}"
        );
    });
    assert_clean_log(&d);
}

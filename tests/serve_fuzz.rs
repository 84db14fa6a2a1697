//! The service against anything a client can send (issue 16): 10,000 generated requests
//! over every method of `vstream.v1.VideoStreams`, from 8 concurrent clients, against
//! the real daemon over gRPC — random and boundary numbers, huge, empty and odd unicode
//! strings, random bytes as the message body, random deadlines, streams cancelled
//! mid-way. Deterministic: each client draws from its own seeded generator (the order
//! in which the daemon interleaves them varies, the requests do not).
//!
//! Asserted: every request ends with a code documented for its method (never INTERNAL,
//! UNKNOWN or a reset stream); no panic in the daemon's log; health SERVING afterwards
//! and the daemon still answering; resident memory after the run at most
//! [`RSS_GROWTH_BOUND_MIB`] above what it was after the first 1,000 requests.

#[path = "common/client.rs"]
mod client;
#[path = "common/daemon.rs"]
mod daemon;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use vstreamd::serve::proto as pb;

const SEED: u64 = 0x5EED_2026_1201;
const CLIENTS: usize = 8;
const REQUESTS: usize = 10_000;
const WARM_UP: usize = 1_000;
/// Resident memory may grow this much from the warm-up to the end.
const RSS_GROWTH_BOUND_MIB: u64 = 96;

const METHODS: [&str; 7] = [
    "CreateStream",
    "DeleteStream",
    "ListStreams",
    "GetStream",
    "Ask",
    "Watch",
    "Summarize",
];

/// The codes the API documents for `method` (proto/vstream/v1/vstream.proto): what a
/// client may see. INTERNAL, UNKNOWN, UNAVAILABLE (while serving), DATA_LOSS never.
fn documented(method: &str, code: Code) -> bool {
    use Code::*;
    let common = [Ok, InvalidArgument, DeadlineExceeded, Cancelled, NotFound];
    if common.contains(&code) {
        return true;
    }
    match method {
        "CreateStream" => code == AlreadyExists,
        "DeleteStream" => code == FailedPrecondition,
        "Ask" | "Summarize" | "Watch" => matches!(code, ResourceExhausted | FailedPrecondition),
        _ => false,
    }
}

/// Sends and receives message bodies as raw bytes.
#[derive(Clone, Copy, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(bytes.to_vec()))
    }
}

/// Strings a client might send: empty, blank, ordinary, huge, odd unicode, control
/// characters, the model's own special tokens.
fn text(rng: &mut fastrand::Rng) -> String {
    match rng.u8(0..12) {
        0 => String::new(),
        1 => " \t\n ".into(),
        2 => "what colour is the ball ?".into(),
        3 => "x".repeat(rng.usize(1..200_000)),
        4 => "é∑😀\u{202e}ﷺ\u{0}".repeat(rng.usize(1..50)),
        5 => "<video><image><|im_end|><|im_start|>".into(),
        6 => (0..rng.usize(1..64)).map(|_| rng.char(..)).collect(),
        7 => "is the ball red ?".into(),
        8 => "\u{feff}\u{200b}".into(),
        9 => "a".repeat(4096),
        10 => "a".repeat(4097),
        _ => "describe the scene".into(),
    }
}

fn id(rng: &mut fastrand::Rng) -> String {
    match rng.u8(0..10) {
        0..=2 => "cam".into(),
        3..=5 => format!("f{}", rng.u8(0..3)),
        6 => String::new(),
        7 => ".hidden".into(),
        8 => "a/b".into(),
        _ => text(rng),
    }
}

/// One of `items`.
fn pick<T: Copy>(rng: &mut fastrand::Rng, items: &[T]) -> T {
    items[rng.usize(..items.len())]
}

fn u32_edge(rng: &mut fastrand::Rng) -> u32 {
    let any = rng.u32(..);
    pick(
        rng,
        &[
            0,
            1,
            2,
            3,
            8,
            16,
            17,
            64,
            65,
            1024,
            4096,
            u32::MAX - 1,
            u32::MAX,
            any,
        ],
    )
}

fn u64_edge(rng: &mut fastrand::Rng) -> u64 {
    let any = rng.u64(..);
    pick(rng, &[0, 1, 1 << 20, 1 << 50, (1 << 50) + 1, u64::MAX, any])
}

fn f64_edge(rng: &mut fastrand::Rng) -> f64 {
    let any = rng.f64() * 100.0;
    pick(
        rng,
        &[
            0.0,
            -0.0,
            -1.0,
            0.05,
            0.1,
            0.5,
            1.0,
            2.0,
            30.0,
            30.5,
            86_400.0,
            1e9,
            1e30,
            1e300,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            any,
        ],
    )
}

fn f32_edge(rng: &mut fastrand::Rng) -> f32 {
    f64_edge(rng) as f32
}

fn time_point(rng: &mut fastrand::Rng) -> Option<pb::TimePoint> {
    use pb::time_point::Point;
    let point = match rng.u8(0..5) {
        0 => return None,
        1 => None,
        2 => {
            let any = rng.i64(..);
            Some(Point::WallUnixMs(pick(
                rng,
                &[0, -1, i64::MAX, i64::MIN, 1_700_000_000_000, any],
            )))
        }
        3 => Some(Point::StreamSeconds(f64_edge(rng))),
        _ => Some(Point::AgoSeconds(f64_edge(rng))),
    };
    Some(pb::TimePoint { point })
}

fn range(rng: &mut fastrand::Rng) -> Option<pb::TimeRange> {
    rng.bool().then(|| pb::TimeRange {
        since: time_point(rng),
        until: time_point(rng),
    })
}

fn uri(rng: &mut fastrand::Rng) -> String {
    match rng.u8(0..14) {
        0 => "test://ball".into(),
        1 => "test://snow".into(),
        2 => "test://nosuchpattern".into(),
        3 => "synth://needle?seed=2&frames=10&speed=0".into(),
        4 => "synth://needle?speed=1e-300".into(),
        5 => "synth://nope".into(),
        6 => "gopher://x".into(),
        7 => "file:///nonexistent/video.mp4".into(),
        8 => "file://relative".into(),
        9 => "rtsp://".into(),
        10 => format!("test://{}", "b".repeat(rng.usize(1..5000))),
        11 => "v4l2:///dev/nosuchvideo".into(),
        _ => text(rng),
    }
}

fn stream_spec(rng: &mut fastrand::Rng) -> Option<pb::StreamSpec> {
    if rng.u8(0..20) == 0 {
        return None;
    }
    Some(pb::StreamSpec {
        id: id(rng),
        uri: uri(rng),
        sample_fps: if rng.bool() { 0.5 } else { f64_edge(rng) },
        width: if rng.bool() { 0 } else { u32_edge(rng) },
        height: if rng.bool() { 0 } else { u32_edge(rng) },
        retention: rng.bool().then(|| pb::Retention {
            max_disk_bytes: u64_edge(rng),
            max_age_seconds: u64_edge(rng),
        }),
        options: rng.bool().then(|| pb::StreamOptions {
            rtsp_transport: pick(rng, &["", "tcp", "udp", "sctp"]).into(),
            quant: pick(rng, &["", "f32", "int4", "int8", "int3", "F16"]).into(),
            ram_budget_bytes: u64_edge(rng),
        }),
    })
}

fn ask_request(rng: &mut fastrand::Rng) -> pb::AskRequest {
    pb::AskRequest {
        stream: id(rng),
        question: text(rng),
        range: range(rng),
        options: rng.bool().then(|| pb::AskOptions {
            mode: pick(rng, &[0, 1, 2, 3, 4, -1, i32::MAX]),
            top_k: u32_edge(rng),
            recent_frames: rng.bool().then(|| u32_edge(rng)),
            max_new_tokens: u32_edge(rng),
            temperature: f32_edge(rng),
            top_p: f32_edge(rng),
            seed: rng.u64(..),
            stop: (0..pick(rng, &[0usize, 1, 2, 20]))
                .map(|_| text(rng))
                .collect(),
        }),
    }
}

/// How a request ended, as its client saw it.
struct Outcome {
    method: &'static str,
    code: Code,
    message: String,
    /// It carried a deadline (the only way, besides the daemon stopping, to see
    /// DEADLINE_EXCEEDED or CANCELLED: streams cut by the client end without a code).
    deadline: bool,
}

/// Reads up to `keep` messages of a stream (then drops it: a cancellation mid-way).
async fn drain<T>(
    result: Result<tonic::Response<tonic::Streaming<T>>, Status>,
    keep: usize,
) -> (Code, String) {
    let mut stream = match result {
        Ok(r) => r.into_inner(),
        Err(s) => return (s.code(), s.message().to_owned()),
    };
    for _ in 0..keep {
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => return (Code::Ok, String::new()),
            Err(s) => return (s.code(), s.message().to_owned()),
        }
    }
    (Code::Ok, String::new())
}

fn with_deadline<T>(rng: &mut fastrand::Rng, message: T, streaming: bool) -> Request<T> {
    let mut req = Request::new(message);
    // Streaming calls always get one, so none outlives the test for long.
    if streaming || rng.bool() {
        let ms = pick(rng, &[1u64, 5, 50, 200, 800, 2_000]);
        req.set_timeout(Duration::from_millis(ms));
    }
    req
}

fn has_deadline<T>(req: &Request<T>) -> bool {
    req.metadata().contains_key("grpc-timeout")
}

async fn one_request(
    rng: &mut fastrand::Rng,
    c: &mut client::Client,
    channel: &Channel,
) -> Outcome {
    // Streams are read to their end, or cut after a few messages.
    let keep = if rng.u8(0..3) == 0 {
        rng.usize(0..3)
    } else {
        usize::MAX
    };
    let mut deadline = false;
    let (method, (code, message)) = match rng.u8(0..20) {
        0..=2 => {
            let message = pb::CreateStreamRequest {
                stream: stream_spec(rng),
            };
            let req = with_deadline(rng, message, false);
            deadline = has_deadline(&req);
            ("CreateStream", unary(c.create_stream(req).await))
        }
        3..=4 => {
            let message = pb::DeleteStreamRequest {
                id: if rng.u8(0..4) == 0 {
                    "cam".into()
                } else {
                    id(rng)
                },
                purge: rng.bool(),
            };
            let req = with_deadline(rng, message, false);
            deadline = has_deadline(&req);
            ("DeleteStream", unary(c.delete_stream(req).await))
        }
        5 => {
            let req = with_deadline(rng, pb::ListStreamsRequest {}, false);
            deadline = has_deadline(&req);
            ("ListStreams", unary(c.list_streams(req).await))
        }
        6..=7 => {
            let message = pb::GetStreamRequest { id: id(rng) };
            let req = with_deadline(rng, message, false);
            deadline = has_deadline(&req);
            ("GetStream", unary(c.get_stream(req).await))
        }
        8..=12 => {
            let message = ask_request(rng);
            let req = with_deadline(rng, message, true);
            deadline = has_deadline(&req);
            ("Ask", drain(c.ask(req).await, keep).await)
        }
        13..=14 => {
            let message = pb::WatchRequest {
                stream: id(rng),
                question: text(rng),
                interval_seconds: f64_edge(rng),
                cooldown_seconds: f64_edge(rng),
                recent_frames: u32_edge(rng),
                positive: if rng.bool() { String::new() } else { text(rng) },
                report_all: rng.bool(),
            };
            let req = with_deadline(rng, message, true);
            deadline = has_deadline(&req);
            ("Watch", drain(c.watch(req).await, keep.min(2)).await)
        }
        15..=16 => {
            let message = pb::SummarizeRequest {
                stream: id(rng),
                range: range(rng),
                frames: u32_edge(rng),
                instruction: if rng.bool() { String::new() } else { text(rng) },
                max_new_tokens: u32_edge(rng),
            };
            let req = with_deadline(rng, message, true);
            deadline = has_deadline(&req);
            ("Summarize", drain(c.summarize(req).await, keep).await)
        }
        _ => {
            // Random bytes as the body of a random method.
            let method = pick(rng, &METHODS);
            let body: Vec<u8> = (0..rng.usize(0..96)).map(|_| rng.u8(..)).collect();
            let path =
                PathAndQuery::try_from(format!("/vstream.v1.VideoStreams/{method}")).expect("path");
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            let outcome = match grpc.ready().await {
                Err(e) => (Code::Unavailable, e.to_string()),
                Ok(()) => {
                    let req = with_deadline(rng, body, true);
                    deadline = has_deadline(&req);
                    if matches!(method, "Ask" | "Watch" | "Summarize") {
                        drain(
                            grpc.server_streaming(req, path, RawCodec).await,
                            keep.min(2),
                        )
                        .await
                    } else {
                        unary(grpc.unary(req, path, RawCodec).await)
                    }
                }
            };
            (method, outcome)
        }
    };
    Outcome {
        method,
        code,
        message,
        deadline,
    }
}

fn unary<T>(result: Result<tonic::Response<T>, Status>) -> (Code, String) {
    match result {
        Ok(_) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_owned()),
    }
}

#[test]
fn ten_thousand_generated_requests_get_only_documented_codes() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = daemon::Daemon::start_with(
        dir.path(),
        &daemon::config_text(
            &dir.path().join("state"),
            "max_request_seconds = 5.0\nmax_watches = 4\nmax_concurrent_asks = 4\n",
            "[engine]\nmax_new_tokens = 8\nmax_new_tokens_limit = 16\n\n[[streams]]\nid = \"cam\"\n\
             uri = \"test://ball\"\nsample_fps = 4.0\n",
        ),
        Duration::from_secs(120),
    );
    let pid = d.child.id();
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let warm_rss = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let runtime = client::runtime();
    runtime.block_on(async {
        let mut c = client::connect(&d.grpc_url, None).await;
        client::wait_stream(&mut c, "cam", Duration::from_secs(120), |s| {
            s.frames_encoded >= 2
        })
        .await;
        let mut tasks = Vec::new();
        for k in 0..CLIENTS {
            let url = d.grpc_url.clone();
            let outcomes = outcomes.clone();
            let done = done.clone();
            let warm_rss = warm_rss.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(SEED + k as u64);
                let channel = client::channel(&url).await;
                let mut c = client::connect(&url, None).await;
                for _ in 0..REQUESTS / CLIENTS {
                    let outcome = one_request(&mut rng, &mut c, &channel).await;
                    outcomes.lock().unwrap().push(outcome);
                    if done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == WARM_UP {
                        warm_rss.store(daemon::rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("a client task");
        }
    });
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    assert_eq!(outcomes.len(), REQUESTS);

    let mut by_code: BTreeMap<(&str, String), (usize, &str)> = BTreeMap::new();
    for o in &outcomes {
        let entry = by_code
            .entry((o.method, format!("{:?}", o.code)))
            .or_insert((0, &o.message));
        entry.0 += 1;
    }
    eprintln!(
        "fuzz: {} requests in {:?}",
        outcomes.len(),
        started.elapsed()
    );
    for ((method, code), (n, example)) in &by_code {
        let example: String = example.chars().take(90).collect();
        eprintln!("  {method:<13} {code:<18} {n:>5}  {example}");
    }
    let undocumented: Vec<String> = outcomes
        .iter()
        .filter(|o| {
            let timed = matches!(o.code, Code::Cancelled | Code::DeadlineExceeded);
            !documented(o.method, o.code) || (timed && !o.deadline)
        })
        .take(20)
        .map(|o| format!("{} {:?}: {}", o.method, o.code, o.message))
        .collect();
    assert!(
        undocumented.is_empty(),
        "undocumented codes:\n{}\nlog tail:\n{}",
        undocumented.join("\n"),
        tail(&d.log())
    );
    for o in &outcomes {
        assert!(
            o.message.len() <= 1100,
            "{} {:?}: {} bytes",
            o.method,
            o.code,
            o.message.len()
        );
    }
    // Every method was exercised, and some requests of each kind got through.
    for method in METHODS {
        assert!(
            by_code.keys().any(|(m, c)| *m == method && c == "Ok"),
            "{method} never succeeded: {by_code:?}"
        );
    }

    // The daemon is unhurt: no panic, SERVING, still answering, memory bounded.
    let log = d.log();
    assert!(
        !log.contains("panicked"),
        "a panic in the log:\n{}",
        tail(&log)
    );
    runtime.block_on(async {
        let mut health =
            tonic_health::pb::health_client::HealthClient::new(client::channel(&d.grpc_url).await);
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "vstream.v1.VideoStreams".into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
        let mut c = client::connect(&d.grpc_url, None).await;
        let answer = client::collect(
            c.ask(client::ask("cam", "what colour is the ball ?", 4))
                .await
                .expect("an ask after the fuzz")
                .into_inner(),
        )
        .await;
        assert_eq!(answer.code, Some(Code::Ok), "{answer:?}");
    });
    let warm = warm_rss.load(std::sync::atomic::Ordering::Relaxed);
    let end = daemon::rss_kib(pid);
    eprintln!(
        "fuzz: RSS {} MiB after warm-up, {} MiB at the end",
        warm >> 10,
        end >> 10
    );
    assert!(warm > 0, "warm-up RSS not measured");
    assert!(
        end <= warm + (RSS_GROWTH_BOUND_MIB << 10),
        "RSS grew from {} to {} MiB",
        warm >> 10,
        end >> 10
    );
    assert!(d.stop(Duration::from_secs(60)).success());
    eprintln!("fuzz: done in {:?}", started.elapsed());
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

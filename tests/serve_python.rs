//! The same question asked by an independent client: Python `grpcio` (installed by
//! `scripts/setup.sh`, pinned) with stubs generated from `proto/` at test time, against
//! the real daemon. The stream is a finite generated H.264 clip, asked only once it has
//! ended, so both clients see the same store and greedy answers must be identical: same
//! tokens, same text, same cited frames. The Python client also checks the standard
//! health service and that an unknown stream is NOT_FOUND.

#[path = "common/client.rs"]
mod client;
#[path = "common/daemon.rs"]
mod daemon;
#[path = "support/media.rs"]
mod media;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tonic::Code;
use vstreamd::serve::proto as pb;

const QUESTION: &str = "what colour is the ball ?";
/// Must match `GRPC_VERSION` in scripts/setup.sh.
const GRPC_VERSION: &str = "1.85.1";

/// Where setup put the pinned Python gRPC packages.
fn grpc_python_path() -> PathBuf {
    if let Some(p) = std::env::var_os("VSTREAMD_GRPC_PY") {
        return p.into();
    }
    let deps = std::env::var_os("VSTREAMD_DEPS").unwrap_or_else(|| "/opt/vstreamd".into());
    PathBuf::from(deps).join(format!("grpc-py-{GRPC_VERSION}"))
}

#[test]
fn python_grpcio_client_gets_the_same_answer_as_the_rust_client() {
    let py_path = grpc_python_path();
    assert!(
        py_path.join(".complete").exists(),
        "Python gRPC packages missing in {}: run ./scripts/setup.sh",
        py_path.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    media::h264_file(&clip, 4, 10, 160, 120, "mp4mux");
    let state = dir.path().join("state");
    let d = daemon::Daemon::start_with(
        dir.path(),
        &daemon::config_text(&state, "", "[engine]\nwindow_frames = 4\ntop_k = 4\n"),
        Duration::from_secs(120),
    );

    let rust_answer = client::runtime().block_on(async {
        let mut c = client::connect(&d.grpc_url, None).await;
        c.create_stream(pb::CreateStreamRequest {
            stream: Some(pb::StreamSpec {
                id: "clip".into(),
                uri: clip.display().to_string(),
                sample_fps: 4.0,
                ..Default::default()
            }),
        })
        .await
        .expect("CreateStream");
        let s = client::wait_stream(&mut c, "clip", Duration::from_secs(120), |s| {
            s.input_ended && s.frames_encoded >= 12
        })
        .await;
        assert_eq!(s.status.unwrap().state, "ended");
        let asked = client::collect(
            c.ask(client::ask("clip", QUESTION, 6))
                .await
                .unwrap()
                .into_inner(),
        )
        .await;
        assert_eq!(asked.code, Some(Code::Ok), "{}", asked.message);
        (asked.tokens, asked.answer.expect("answer event"))
    });

    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/vstream_client.py"
        ))
        .args([
            "--addr",
            &d.grpc_addr,
            "--stream",
            "clip",
            "--question",
            QUESTION,
        ])
        .args(["--max-new-tokens", "6"])
        .env("PYTHONPATH", &py_path)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "python client failed ({}):\n{}\ndaemon log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    let py: serde_json::Value = serde_json::from_slice(&out.stdout).expect("python JSON");
    eprintln!("python client: {py}");

    assert_eq!(py["grpcio"], GRPC_VERSION);
    assert_eq!(py["health"][""], "SERVING");
    assert_eq!(py["health"]["vstream.v1.VideoStreams"], "SERVING");
    assert_eq!(py["streams"], serde_json::json!(["clip"]));
    assert_eq!(py["unknown_stream"], "NOT_FOUND");
    // grpc-core reads the refusal of a 100 KB id: its message is short.
    assert_eq!(py["huge_id"]["code"], "INVALID_ARGUMENT", "{py}");
    assert!(
        py["huge_id"]["message_bytes"].as_u64().unwrap() < 512,
        "{py}"
    );

    let (rust_tokens, rust_answer) = rust_answer;
    let ask = &py["ask"];
    assert_eq!(ask["text"].as_str(), Some(rust_answer.text.as_str()));
    let py_ids: Vec<i64> = ask["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t["id"].as_i64().expect("token id"))
        .collect();
    let rust_ids: Vec<i64> = rust_tokens.iter().map(|t| t.id).collect();
    assert_eq!(py_ids, rust_ids);
    let py_seqs: Vec<u64> = ask["citations"]
        .as_array()
        .expect("citations")
        .iter()
        .map(|c| c["seq"].as_u64().expect("seq"))
        .collect();
    let rust_seqs: Vec<u64> = rust_answer.citations.iter().map(|c| c.seq).collect();
    assert_eq!(py_seqs, rust_seqs);
    assert!(!rust_seqs.is_empty());
    let finish = pb::FinishReason::try_from(rust_answer.finish)
        .expect("finish")
        .as_str_name();
    assert_eq!(ask["finish"].as_str(), Some(finish));

    let status = d.stop(Duration::from_secs(60));
    assert!(status.success(), "{status}");
}

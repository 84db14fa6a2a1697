//! The `vstreamd model` commands, run as a user runs them.

mod common;

use std::process::Command;

use common::*;
use tch::Tensor;

fn vstreamd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vstreamd"));
    cmd.env("RUST_LOG", "warn");
    cmd
}

#[test]
fn inspect_prints_the_checkpoint_shape() {
    let out = vstreamd()
        .args(["model", "inspect", "--model"])
        .arg(fixture("tiny_b"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["family"], "llava_onevision");
    assert_eq!(json["layers"], 3);
    assert_eq!(json["heads"], 4);
    assert_eq!(json["kv_heads"], 2);
    assert_eq!(json["head_dim"], 16);
    assert_eq!(json["tokens_per_frame"], 4);
    // 3 layers x (K + V) x 2 KV heads x 16 dims x 2 bytes.
    assert_eq!(json["kv_bytes_per_token_fp16"], 384);
    assert_eq!(json["parameters"], 130376);
}

#[test]
fn run_prints_the_answer_and_dumps_the_golden_logits() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("logits.safetensors");
    let frames = fixture("tiny_a").join("frames");
    let mut frame_paths: Vec<_> = std::fs::read_dir(&frames)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    frame_paths.sort();
    let out = vstreamd()
        .args(["model", "run", "--model"])
        .arg(fixture("tiny_a"))
        .arg("--frames")
        .args(&frame_paths)
        .args([
            "--prompt",
            PROMPT,
            "--max-new-tokens",
            "20",
            "--dump-logits",
        ])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let golden_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny_a").join("golden.json")).unwrap(),
    )
    .unwrap();
    // The random model never says EOS in its first 20 tokens, so the CLI's stop rule
    // does not cut it short and the answer is transformers' greedy text.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        golden_json["generated_text"].as_str().unwrap()
    );
    let dumped: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&dump)
        .unwrap()
        .into_iter()
        .collect();
    let gold = golden("tiny_a");
    assert_eq!(dumped["logits"].kind(), tch::Kind::Float);
    assert!(max_abs_diff(&dumped["logits"], &gold["logits"]) <= 1e-4);
    assert_eq!(max_abs_diff(&dumped["input_ids"], &gold["input_ids"]), 0.0);
}

#[test]
fn run_reports_bad_input_without_panicking() {
    let out = vstreamd()
        .args(["model", "run", "--model"])
        .arg(fixture("tiny_a"))
        .args(["--frames", "/nonexistent/frame.png", "--prompt", "hi"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/frame.png"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

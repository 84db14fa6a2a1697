//! `vstreamd demo`, the README's first command, run as a user runs it, at full speed
//! (`--speed 0`: the scripted stream is rendered as fast as the engine encodes, rather
//! than at 4× real time): the daemon in-process on `synth://demo` with the bundled
//! trained model, the five scripted questions asked over gRPC at their moments, each
//! answer printed beside the ground truth with the spans it cites.

use std::process::Command;

#[test]
fn demo_answers_the_scripted_questions_with_citations() {
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vstreamd"))
        .env("RUST_LOG", "warn")
        .args(["demo", "--speed", "0"])
        .arg("--state-dir")
        .arg(state.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let questions = stdout.matches("] Q: ").count();
    assert_eq!(questions, 5, "{stdout}");
    assert_eq!(stdout.matches("truth: ").count(), 5, "{stdout}");
    assert_eq!(stdout.matches("cited: ").count(), 5, "{stdout}");
    // The summary line: "N/5 answers right; the evidence cited in K/5; D answers used
    // blocks read back from disk."
    let summary = stdout
        .lines()
        .find(|l| l.contains("answers right"))
        .unwrap_or_else(|| panic!("no summary line:\n{stdout}"));
    let number_before = |marker: &str| -> usize {
        summary
            .split(marker)
            .next()
            .and_then(|head| head.split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("`{marker}` in {summary:?}"))
    };
    let right = number_before("/5 answers right");
    let disk = number_before(" answers used blocks read back from disk");
    assert!(disk >= 1, "no answer read blocks back from disk: {summary}");
    assert!(right >= 4, "{right}/5 right:\n{stdout}");
    // The config the demo wrote is a valid daemon config.
    let config = state.path().join("vstreamd-demo.toml");
    let check = Command::new(env!("CARGO_BIN_EXE_vstreamd"))
        .arg("check-config")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

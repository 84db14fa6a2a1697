//! `vstreamd demo`, the README's first command, run as a user runs it (shortened): a
//! live `videotestsrc` stream through ingest, the engine and the tiered store, with
//! questions answered over retrieved blocks; and a second run on the same state
//! directory finding the first run's blocks.

use std::process::Command;

fn demo(state: &std::path::Path, seconds: u32) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vstreamd"))
        .env("RUST_LOG", "warn")
        .args(["demo", "--source", "test://ball", "--ask-every", "2"])
        .args(["--seconds", &seconds.to_string(), "--ram-budget-kib", "2"])
        .arg("--state-dir")
        .arg(state)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn demo_encodes_a_live_stream_and_answers_with_citations() {
    let state = tempfile::tempdir().unwrap();
    let first = demo(state.path(), 5);
    println!("{first}");
    assert!(first.contains("0 blocks already stored"), "{first}");
    assert!(
        first.contains("  Q: what colour is the circle ?"),
        "{first}"
    );
    assert!(first.contains("retrieved frames at:"), "{first}");
    assert!(!first.contains("no answer"), "{first}");

    let second = demo(state.path(), 3);
    let stored: usize = second
        .split(" blocks already stored")
        .next()
        .and_then(|head| head.rsplit('(').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{second}"));
    assert!(stored > 0, "{second}");
    assert!(second.contains("from disk"), "{second}");
}

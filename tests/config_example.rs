//! `configs/vstreamd.toml` stays valid: it parses with every key known, validates, and
//! `vstreamd check-config` accepts it once its paths point at this checkout; a typo is
//! refused naming the key.

#[path = "common/daemon.rs"]
mod daemon;

use std::path::Path;

use vstreamd::config::Config;

fn example() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/vstreamd.toml"))
        .expect("configs/vstreamd.toml")
}

#[test]
fn the_documented_config_is_valid() {
    let config = Config::parse(&example()).expect("parses");
    config.validate().expect("validates");
    assert_eq!(config.streams.len(), 1);
    assert_eq!(config.server.listen, "127.0.0.1:50051");
}

fn check_config(text: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    std::process::Command::new(daemon::binary())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap()
}

#[test]
fn check_config_accepts_it_with_local_paths_and_names_bad_keys() {
    let state = tempfile::tempdir().unwrap();
    let local = example()
        .replace(
            "/usr/share/vstreamd/model",
            &daemon::tiny_model().display().to_string(),
        )
        .replace("/var/lib/vstreamd", &state.path().display().to_string());
    let out = check_config(&local);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));

    let typo = local.replace("max_watches = 16", "max_wathces = 16");
    let out = check_config(&typo);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_wathces"));

    let missing_model = example().replace("/var/lib/vstreamd", &state.path().display().to_string());
    let out = check_config(&missing_model);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("model.path"));
}

//! The shipped systemd unit (`systemd/vstreamd.service`) and its sysusers.d file, checked
//! with systemd's own tools: `systemd-analyze verify` must accept the unit without a
//! warning, `systemd-analyze security --offline=true` must rate its sandbox at an overall
//! exposure of at most 2.0, and `systemd-sysusers --dry-run` must parse the user file.
//!
//! None of this needs systemd running as PID 1 (it runs in containers); every check skips,
//! with a note on stderr, where its tool is missing. `verify` checks that the unit's
//! executables exist, so it runs on a copy whose `/usr/bin/vstreamd` is the binary cargo
//! built for this test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Highest overall exposure `systemd-analyze security` may report for the unit.
const MAX_EXPOSURE: f64 = 2.0;
/// Where the unit runs the daemon from once installed.
const INSTALLED_BIN: &str = "/usr/bin/vstreamd";
const UNIT_NAME: &str = "vstreamd.service";

fn manifest_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn unit_text() -> String {
    let path = manifest_path("systemd/vstreamd.service");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `name` found on PATH, if any.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A systemd tool with an environment that makes its output complete and plain: log to
/// the console at info level (a runner whose stderr goes to journald would otherwise send
/// the warnings there), no colours, no pager.
fn systemd_tool(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("SYSTEMD_LOG_LEVEL", "info")
        .env("SYSTEMD_LOG_TARGET", "console")
        .env("SYSTEMD_LOG_COLOR", "0")
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_PAGER", "cat")
        .env_remove("JOURNAL_STREAM");
    cmd
}

fn run(mut cmd: Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("run {:?}: {e}", cmd.get_program()))
}

/// `systemd-analyze` and the major version it reports (`systemd 252 (252.39-1~deb12u2)`),
/// or `None` (after saying why) when the test should skip.
fn systemd_analyze() -> Option<(PathBuf, u32)> {
    let Some(prog) = on_path("systemd-analyze") else {
        eprintln!("SKIP: systemd-analyze is not on PATH");
        return None;
    };
    let out = run({
        let mut c = systemd_tool(&prog);
        c.arg("--version");
        c
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let version = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("unexpected `systemd-analyze --version` output: {stdout}"));
    Some((prog, version))
}

/// Copies the unit into `dir` under its own name, with the daemon's executable in the
/// `Exec*=` lines pointing at the binary cargo built (quoted, `%` escaped, so any build
/// path works).
fn unit_copy(dir: &Path) -> PathBuf {
    let bin = env!("CARGO_BIN_EXE_vstreamd");
    let quoted = format!("\"{}\"", bin.replace('%', "%%"));
    let text = unit_text();
    let mut replaced = 0;
    let copy: String = text
        .lines()
        .map(|line| {
            if line.starts_with("Exec") && line.contains(INSTALLED_BIN) {
                replaced += 1;
                line.replacen(INSTALLED_BIN, &quoted, 1)
            } else {
                line.to_owned()
            }
        })
        .map(|line| line + "\n")
        .collect();
    // ExecStartPre, ExecStart and the validating ExecReload.
    assert!(
        replaced >= 3,
        "expected {INSTALLED_BIN} in at least 3 Exec*= lines, found {replaced}"
    );
    let path = dir.join(UNIT_NAME);
    std::fs::write(&path, copy).unwrap();
    path
}

fn print_output(what: &str, out: &Output) {
    eprintln!("--- {what}: {}", out.status);
    eprintln!("--- stdout:\n{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("--- stderr:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// Lines of `stderr` that are about the unit (systemd prefixes them with the unit's name or
/// file path and line number, e.g. `.../vstreamd.service:12: Unknown key ...`).
fn lines_about_unit(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| l.contains(UNIT_NAME))
        .map(str::to_owned)
        .collect()
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let Some((analyze, version)) = systemd_analyze() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path());

    let mut cmd = systemd_tool(&analyze);
    // No man-page lookup: the unit names none, and it would need man-db installed.
    cmd.args(["verify", "--man=no"]);
    if version >= 250 {
        // Judge this unit only, not whatever state the host's other units are in (in a
        // container without systemd as PID 1 some targets may be missing entirely).
        cmd.arg("--recursive-errors=no");
    }
    cmd.arg(&unit);
    let out = run(cmd);
    print_output("systemd-analyze verify", &out);

    assert!(out.status.success(), "systemd-analyze verify failed");
    let complaints = lines_about_unit(&out.stderr);
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify warned about the unit:\n{}",
        complaints.join("\n")
    );
}

/// The number in `→ Overall exposure level for vstreamd.service: 1.6 OK 🙂`.
fn overall_exposure(table: &str) -> Option<f64> {
    let line = table
        .lines()
        .find(|l| l.contains("Overall exposure level for"))?;
    let (_, rest) = line.rsplit_once(": ")?;
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn unit_sandbox_exposure_is_at_most_2() {
    let Some((analyze, version)) = systemd_analyze() else {
        return;
    };
    if version < 250 {
        eprintln!(
            "SKIP: systemd-analyze {version} has no `security --offline` (added in systemd 250)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path());

    let mut cmd = systemd_tool(&analyze);
    cmd.args(["security", "--offline=true", "--no-pager"])
        .arg(&unit);
    let out = run(cmd);
    let table = String::from_utf8_lossy(&out.stdout);
    // The full table, so that a regression shows which setting moved.
    println!("{table}");
    eprintln!(
        "--- systemd-analyze security --offline=true: {}",
        out.status
    );
    eprintln!("--- stderr:\n{}", String::from_utf8_lossy(&out.stderr));

    assert!(out.status.success(), "systemd-analyze security failed");
    let exposure = overall_exposure(&table)
        .unwrap_or_else(|| panic!("no \"Overall exposure level\" line in:\n{table}"));
    eprintln!("overall exposure: {exposure}");
    assert!(
        exposure <= MAX_EXPOSURE,
        "overall exposure {exposure} > {MAX_EXPOSURE}"
    );
    let complaints = lines_about_unit(&out.stderr);
    assert!(
        complaints.is_empty(),
        "systemd-analyze security warned about the unit:\n{}",
        complaints.join("\n")
    );
}

#[test]
fn sysusers_file_parses() {
    let Some(sysusers) = on_path("systemd-sysusers") else {
        eprintln!("SKIP: systemd-sysusers is not on PATH");
        return;
    };
    // An empty root: nothing of the host's is read or written, and --dry-run writes nothing.
    let root = tempfile::tempdir().unwrap();
    let conf = manifest_path("systemd/sysusers.d/vstreamd.conf");
    let mut cmd = systemd_tool(&sysusers);
    cmd.arg("--dry-run")
        .arg(format!("--root={}", root.path().display()))
        .arg(&conf);
    let out = run(cmd);
    print_output("systemd-sysusers --dry-run", &out);
    assert!(
        out.status.success(),
        "systemd-sysusers rejected {}",
        conf.display()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<_> = stderr
        .lines()
        .filter(|l| l.contains("vstreamd.conf"))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-sysusers warned:\n{}",
        complaints.join("\n")
    );
    for wanted in ["Creating user 'vstreamd'", "'render'"] {
        assert!(stderr.contains(wanted), "no {wanted:?} in:\n{stderr}");
    }
}

/// What the daemon's behaviour relies on, checked without any systemd tool.
#[test]
fn unit_matches_the_daemon_contract() {
    let text = unit_text();
    let settings: Vec<(&str, &str)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect();
    let values = |key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .collect()
    };
    let one = |key: &str| -> &str {
        match values(key).as_slice() {
            [v] => v,
            other => panic!("{key}= set {} times: {other:?}", other.len()),
        }
    };

    let config = "--config /etc/vstreamd/vstreamd.toml";
    assert_eq!(one("Type"), "notify", "READY=1 comes from sd_notify");
    assert_eq!(one("ExecStart"), format!("{INSTALLED_BIN} serve {config}"));
    assert_eq!(
        one("ExecStartPre"),
        format!("{INSTALLED_BIN} check-config {config}")
    );
    assert_eq!(
        values("ExecReload"),
        [
            format!("{INSTALLED_BIN} check-config {config}").as_str(),
            "/bin/kill -HUP $MAINPID"
        ]
    );
    // An encode batch can hold the engine loop ~80 s on CPU.
    assert_eq!(one("WatchdogSec"), "180");
    assert_eq!(one("StateDirectory"), "vstreamd");
    assert!(values("Environment").contains(&"VSTREAMD_STATE_DIR=%S/vstreamd"));
    // /dev/video* and /dev/nvidia* must stay visible.
    assert_eq!(one("PrivateDevices"), "no");
    assert_eq!(one("DevicePolicy"), "closed");
    let allowed = values("DeviceAllow");
    for dev in [
        "char-video4linux rw",
        "char-nvidia-uvm rw",
        "char-nvidiactl rw",
    ] {
        assert!(allowed.contains(&dev), "no DeviceAllow={dev}");
    }
    // oneDNN/fbgemm JIT needs executable mappings.
    assert_eq!(one("MemoryDenyWriteExecute"), "no");
}

#[test]
fn exposure_line_parses() {
    let table = "✗ PrivateNetwork=   Service has access to the host's network   0.5\n\n\
                 → Overall exposure level for vstreamd.service: 1.6 OK 🙂\n";
    assert_eq!(overall_exposure(table), Some(1.6));
    assert_eq!(
        overall_exposure("→ Overall exposure level for a.service: 9.6 UNSAFE 😨"),
        Some(9.6)
    );
    assert_eq!(overall_exposure("nothing here"), None);
}

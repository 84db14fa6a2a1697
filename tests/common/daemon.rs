//! Starts the real `vstreamd` binary for integration tests and benchmarks: a config in
//! a temporary directory (tiny model, ports 0), `serve --ready-file`, the bound addresses
//! read back; SIGTERM/SIGHUP helpers; killed on drop if still running.
//!
//! Include with `#[path = "common/daemon.rs"] mod daemon;` (tests) or
//! `#[path = "../tests/common/daemon.rs"] mod daemon;` (benches).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The bundled tiny checkpoint.
pub fn tiny_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llava_ov/tiny_a")
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vstreamd"))
}

/// A config for `state_dir` with the tiny model, ports 0, and `extra` TOML appended
/// (extra tables such as `[engine]` or `[[streams]]`; not `[server]`/`[metrics]`, which
/// go through `server` instead).
pub fn config_text(state_dir: &Path, server: &str, extra: &str) -> String {
    config_text_for(&tiny_model(), state_dir, server, extra)
}

/// As [`config_text`], with the checkpoint at `model`.
pub fn config_text_for(model: &Path, state_dir: &Path, server: &str, extra: &str) -> String {
    format!(
        r#"state_dir = "{state}"

[model]
path = "{model}"

[server]
listen = "127.0.0.1:0"
{server}

[metrics]
listen = "127.0.0.1:0"

{extra}
"#,
        state = state_dir.display(),
        model = model.display(),
    )
}

pub struct Daemon {
    pub child: Child,
    /// `http://127.0.0.1:PORT`
    pub grpc_url: String,
    pub grpc_addr: String,
    /// `127.0.0.1:PORT`
    pub metrics_addr: String,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

impl Daemon {
    /// Writes `config` to `dir/vstreamd.toml` and starts the daemon; returns once it
    /// serves (ready file written), or panics with its log after `timeout`.
    pub fn start_with(dir: &Path, config: &str, timeout: Duration) -> Daemon {
        std::fs::create_dir_all(dir).expect("test dir");
        let config_path = dir.join("vstreamd.toml");
        std::fs::write(&config_path, config).expect("writing the config");
        let ready = dir.join("ready.json");
        let _ = std::fs::remove_file(&ready);
        let log_path = dir.join("daemon.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(binary())
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--ready-file")
            .arg(&ready)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning vstreamd serve");
        let mut daemon = Daemon {
            child,
            grpc_url: String::new(),
            grpc_addr: String::new(),
            metrics_addr: String::new(),
            dir: dir.to_owned(),
            config_path,
            log_path,
        };
        let start = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let v: serde_json::Value = serde_json::from_str(&text).expect("ready file JSON");
                daemon.grpc_addr = v["grpc"].as_str().expect("grpc").to_owned();
                daemon.grpc_url = format!("http://{}", daemon.grpc_addr);
                daemon.metrics_addr = v["metrics"].as_str().unwrap_or_default().to_owned();
                return daemon;
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!(
                    "vstreamd exited with {status} before serving:\n{}",
                    daemon.log()
                );
            }
            if start.elapsed() > timeout {
                panic!(
                    "vstreamd did not serve within {timeout:?}:\n{}",
                    daemon.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({sig})");
    }

    pub fn sighup(&self) {
        self.signal(libc::SIGHUP);
    }

    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// SIGTERM, then waits for the exit (panics after `timeout`).
    pub fn stop(mut self, timeout: Duration) -> ExitStatus {
        self.sigterm();
        self.wait(timeout)
    }

    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for vstreamd") {
                return status;
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                panic!("vstreamd did not exit within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `/metrics` text.
    pub fn scrape(&self) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.metrics_addr).expect("metrics port");
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.metrics_addr
        )
        .expect("scrape request");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("scrape response");
        text.split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Resident set size of process `pid` in KiB (`VmRSS` in /proc; 0 if unreadable).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A value of `metric` (first series whose labels contain every `labels` pair) in a
/// Prometheus text exposition.
pub fn metric_value(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

//! A real Prometheus server scrapes the daemon: the real binary on 127.0.0.1 with one
//! live stream; `promtool check metrics` accepts its exposition; the Debian `prometheus`
//! (scripts/setup.sh installs it) scrapes it on loopback every second, and a PromQL query
//! over its HTTP API finds the stream's frame counter above 0 and the target up.
//!
//! Skipped (with a note on stderr) where `prometheus` or `promtool` is not on PATH.

#[path = "common/daemon.rs"]
mod daemon;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const JOB: &str = "vstreamd";
const FRAMES: &str = "vstreamd_engine_frames_encoded_total";

#[test]
fn prometheus_scrapes_the_daemon_and_promtool_accepts_the_exposition() {
    let (Some(prometheus), Some(promtool)) = (on_path("prometheus"), on_path("promtool")) else {
        eprintln!(
            "skipping: `prometheus` and `promtool` must be on PATH \
             (scripts/setup.sh installs the Debian package `prometheus`)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let d = daemon::Daemon::start_with(
        dir.path(),
        &daemon::config_text(
            &state,
            "",
            "[[streams]]\nid = \"cam\"\nuri = \"test://ball\"\nsample_fps = 4.0\n",
        ),
        Duration::from_secs(120),
    );

    // The daemon has encoded frames: the counter shows in a direct scrape.
    let exposition = wait_for(Duration::from_secs(180), "frames encoded", || {
        let text = d.scrape();
        (daemon::metric_value(&text, FRAMES, &[("stream", "cam")]).unwrap_or(0.0) > 0.0)
            .then_some(text)
    })
    .unwrap_or_else(|| panic!("no frame encoded:\n{}\n{}", d.scrape(), d.log()));

    // promtool parses and lints the exposition.
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning promtool");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .expect("exposition to promtool");
    let out = check.wait_with_output().expect("promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("promtool check metrics: {}\n{report}", out.status);
    assert!(
        out.status.success(),
        "promtool check metrics: {}\n{report}\nexposition:\n{exposition}",
        out.status
    );

    // Prometheus on a free loopback port, scraping the daemon every second.
    let prom_dir = tempfile::tempdir().unwrap();
    let config = prom_dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: {JOB}\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: ['{}']\n",
            d.metrics_addr
        ),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let server = Prometheus::start(&prometheus, prom_dir.path(), &config, &addr);

    wait_for(Duration::from_secs(60), "prometheus ready", || {
        http_get(&addr, "/-/ready")
            .ok()
            .filter(|(status, _)| *status == 200)
    })
    .unwrap_or_else(|| panic!("prometheus not ready on {addr}:\n{}", server.log()));

    let frames_query = format!("{FRAMES}{{stream=\"cam\"}} > 0");
    let frames = wait_for(Duration::from_secs(60), "PromQL frames > 0", || {
        query(&addr, &frames_query)
    })
    .unwrap_or_else(|| {
        panic!(
            "no result for {frames_query} within 60 s: {:?}\n{}",
            http_get(&addr, "/api/v1/targets"),
            server.log()
        )
    });
    eprintln!("{frames_query} -> {frames:?}");
    assert!(frames.iter().all(|(_, v)| *v > 0.0), "{frames:?}");
    assert!(
        frames.iter().any(|(labels, _)| {
            labels["job"] == JOB && labels["instance"] == d.metrics_addr.as_str()
        }),
        "{frames:?}"
    );

    // The target is up. Polled for `== 1` rather than read once: on a loaded machine one
    // scrape may overrun the 1 s timeout and record a 0.
    let up_query = format!("up{{job=\"{JOB}\"}} == 1");
    let up = wait_for(Duration::from_secs(60), "PromQL up == 1", || {
        query(&addr, &up_query)
    })
    .unwrap_or_else(|| {
        panic!(
            "no result for {up_query} within 60 s: {:?}\n{}",
            http_get(&addr, "/api/v1/targets"),
            server.log()
        )
    });
    eprintln!("{up_query} -> {up:?}");
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0].1, 1.0, "{up:?}");

    drop(server);
    let status = d.stop(Duration::from_secs(60));
    assert!(status.success(), "vstreamd exited with {status}");
}

/// The Prometheus server; killed on drop (also when an assertion fails).
struct Prometheus {
    child: Child,
    log_path: PathBuf,
}

impl Prometheus {
    fn start(binary: &Path, dir: &Path, config: &Path, addr: &str) -> Prometheus {
        let log_path = dir.join("prometheus.log");
        let log = std::fs::File::create(&log_path).expect("prometheus log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("prometheus log"))
            .stderr(log)
            .spawn()
            .expect("spawning prometheus");
        Prometheus { child, log_path }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `name` as an executable file in a PATH directory.
fn on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// Calls `f` every 250 ms until it returns something or `timeout` passes.
fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            eprintln!("{what}: after {:.1} s", start.elapsed().as_secs_f64());
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// An instant query over the HTTP API: the result vector's (labels, value) pairs, or
/// `None` while it is empty (or the server does not answer).
fn query(addr: &str, promql: &str) -> Option<Vec<(serde_json::Value, f64)>> {
    let (status, body) = http_get(addr, &format!("/api/v1/query?query={}", encode(promql))).ok()?;
    let v: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("query response ({status}) not JSON: {e}: {body}"));
    assert_eq!(status, 200, "{promql}: {body}");
    assert_eq!(v["status"], "success", "{promql}: {body}");
    assert_eq!(v["data"]["resultType"], "vector", "{promql}: {body}");
    let result: Vec<_> = v["data"]["result"]
        .as_array()
        .expect("result array")
        .iter()
        .map(|s| {
            let value = s["value"][1]
                .as_str()
                .and_then(|x| x.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("sample value: {s}"));
            (s["metric"].clone(), value)
        })
        .collect();
    (!result.is_empty()).then_some(result)
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET path` over plain HTTP/1.1 with `Connection: close`: the status code and the body
/// (chunked transfer coding undone).
fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let sock: std::net::SocketAddr = addr.parse().expect("socket address");
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut body = &raw[end + 4..];
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    if !chunked {
        return Ok((status, String::from_utf8_lossy(body).into_owned()));
    }
    let mut out = Vec::new();
    loop {
        let line = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("chunk size"))?;
        let size = std::str::from_utf8(&body[..line])
            .ok()
            .and_then(|l| usize::from_str_radix(l.split(';').next()?.trim(), 16).ok())
            .ok_or_else(|| bad("chunk size"))?;
        body = &body[line + 2..];
        if size == 0 {
            return Ok((status, String::from_utf8_lossy(&out).into_owned()));
        }
        out.extend_from_slice(body.get(..size).ok_or_else(|| bad("short chunk"))?);
        body = body[size..]
            .strip_prefix(b"\r\n")
            .ok_or_else(|| bad("chunk end"))?;
    }
}

//! A store whose disk cannot take its blocks keeps running RAM-only and says so in a
//! metric; one whose disk has room again after retention keeps writing. The disk is
//! made "full" with `RLIMIT_FSIZE` in a child process of this test binary.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use tch::Tensor;
use vstreamd::kv::disk::{DiskConfig, SyncPolicy};
use vstreamd::kv::{Block, KvStore, Quant, StoreConfig};
use vstreamd::model::{KvSegment, LayerKv};

const DIR_ENV: &str = "VSTREAMD_TEST_KV_FULL_DIR";
const LIMIT_ENV: &str = "VSTREAMD_TEST_KV_FULL_LIMIT";

/// Records gauges and counters by metric name (labels ignored).
#[derive(Default)]
struct Capture(Mutex<HashMap<String, Arc<AtomicU64>>>);

impl Capture {
    fn cell(&self, key: &Key) -> Arc<AtomicU64> {
        let mut map = self.0.lock().unwrap();
        map.entry(key.name().to_owned()).or_default().clone()
    }
    fn get(&self, name: &str) -> u64 {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

impl Recorder for Capture {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn block(seq: u64) -> Block {
    let v: Vec<f32> = (0..2 * 64 * 8)
        .map(|i| ((i as u64 * 31 + seq * 7) % 97) as f32 / 50.0 - 1.0)
        .collect();
    let kv = KvSegment {
        layers: (0..3)
            .map(|_| LayerKv {
                keys: Tensor::from_slice(&v).reshape([2, 64, 8]),
                values: Tensor::from_slice(&v).reshape([2, 64, 8]) * 0.5,
            })
            .collect(),
    };
    Block::new(
        seq,
        Duration::from_secs(seq),
        UNIX_EPOCH + Duration::from_secs(seq),
        kv,
    )
    .unwrap()
}

/// Runs only when re-executed by the tests below, under a file-size limit.
#[test]
#[ignore = "helper process for the disk-full tests, started by them"]
fn kv_store_full_child() {
    let (Ok(dir), Ok(limit)) = (std::env::var(DIR_ENV), std::env::var(LIMIT_ENV)) else {
        return;
    };
    let limit: u64 = limit.parse().unwrap();
    // SAFETY: plain libc calls before any file is written; with SIGXFSZ ignored, writes
    // past the limit fail with EFBIG, which the store treats as a full disk.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let lim = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }
    let capture = Capture::default();
    metrics::with_local_recorder(&capture, || {
        let config = StoreConfig {
            quant: Quant::Int8,
            ram_budget_bytes: 1 << 30,
            rep_key_budget_bytes: 1 << 20,
            dedup_threshold: None,
            disk: Some(DiskConfig {
                segment_bytes: 1 << 20,
                max_bytes: 1 << 30,
                max_age: None,
                sync: SyncPolicy::EveryRecord,
            }),
        };
        let (mut store, _) = KvStore::open(&PathBuf::from(&dir), "full", config).unwrap();
        let mut durable = 0;
        for seq in 0..20 {
            let done = store
                .append(&block(seq))
                .expect("append never fails for a full disk");
            assert!(done.stored);
            durable += u64::from(done.durable);
        }
        assert_eq!(
            store.len(),
            20,
            "every block is served, from RAM if not from disk"
        );
        for seq in 0..20 {
            store.get(seq).unwrap();
        }
        println!(
            "\nkv-full-child degraded={} durable={durable} ram_only_gauge={} write_errors={}",
            store.is_degraded(),
            f64::from_bits(capture.get("vstreamd_kv_ram_only")),
            capture.get("vstreamd_kv_write_errors_total"),
        );
    });
}

fn run_child(limit: u64) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "kv_store_full_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, tmp.path().join("s"))
        .env(LIMIT_ENV, limit.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find(|l| l.starts_with("kv-full-child"))
        .unwrap_or_else(|| panic!("child did not run: {stdout}"))
        .to_owned()
}

#[test]
fn a_disk_too_small_for_any_block_degrades_to_ram_only_visibly() {
    // Smaller than one record: no segment can take a block.
    let line = run_child(1024);
    assert!(line.contains("degraded=true"), "{line}");
    assert!(line.contains("ram_only_gauge=1"), "{line}");
    assert!(!line.contains("write_errors=0"), "{line}");
}

#[test]
fn a_disk_with_room_per_segment_keeps_every_block_durable() {
    // Room for a few blocks per file: failed writes roll to new segments and go on.
    let line = run_child(32 << 10);
    assert!(line.contains("degraded=false"), "{line}");
    assert!(line.contains("durable=20"), "{line}");
    assert!(
        !line.contains("write_errors=0"),
        "the limit was hit: {line}"
    );
}

//! KV store benchmark, all in one run on LLaVA-OneVision-0.5B-shaped blocks (24 layers ×
//! 2 KV heads × 196 tokens × 64 dims, one frame):
//! - bytes per block in fp16 / bf16 / int8 / int4 (scales included), as a ratio of fp16
//!   (target: int4 ≤ 0.3×), and compression time;
//! - append throughput of the store (compress + RAM tier + disk tier);
//! - reload of 64 random blocks from a cold disk tier, as a ratio of a sequential read
//!   of the same segment files measured cold in the same run (target ≥ 0.5×). "Cold":
//!   the store's mapped pages are released and the page cache is dropped
//!   (`/proc/sys/vm/drop_caches` where allowed, else `posix_fadvise(DONTNEED)`).
//!
//! Run: `cargo bench --bench kv`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use tch::Tensor;
use vstreamd::kv::disk::{DiskConfig, SyncPolicy};
use vstreamd::kv::{Block, CompressedBlock, KvStore, Quant, StoreConfig, Tier};
use vstreamd::model::{KvSegment, LayerKv};

const LAYERS: usize = 24;
const BLOCKS: u64 = 256;
const RELOADS: usize = 64;

fn randn(n: usize, rng: &mut fastrand::Rng) -> Vec<f32> {
    (0..n)
        .map(|_| (0..4).map(|_| rng.f32()).sum::<f32>() - 2.0)
        .collect()
}

fn block(seq: u64, rng: &mut fastrand::Rng) -> Block {
    let shape = [2i64, 196, 64];
    let n = 2 * 196 * 64;
    let kv = KvSegment {
        layers: (0..LAYERS)
            .map(|_| LayerKv {
                keys: Tensor::from_slice(&randn(n, rng)).reshape(shape),
                values: Tensor::from_slice(&randn(n, rng)).reshape(shape),
            })
            .collect(),
    };
    Block::new(
        seq,
        Duration::from_secs(2 * seq),
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seq),
        kv,
    )
    .expect("block")
}

/// Drops the page cache for `files`; says how.
fn drop_page_cache(files: &[PathBuf]) -> &'static str {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    if std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok() {
        return "drop_caches";
    }
    for f in files {
        if let Ok(file) = std::fs::File::open(f) {
            use std::os::fd::AsRawFd;
            // SAFETY: a valid open descriptor; advice only.
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
    }
    "posix_fadvise"
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "vkv"))
        .collect();
    files.sort();
    files
}

fn main() {
    let mut rng = fastrand::Rng::with_seed(7);
    let sample = block(0, &mut rng);
    let fp16 = sample.fp16_bytes() as f64;
    println!(
        "block: {LAYERS} layers x 2 KV heads x 196 tokens x 64 dims; fp16 K+V = {:.0} KiB",
        fp16 / 1024.0
    );
    println!(
        "{:<8}{:>14}{:>12}{:>18}",
        "format", "bytes/block", "vs fp16", "compress ms"
    );
    for quant in [Quant::F16, Quant::Bf16, Quant::Int8, Quant::Int4] {
        let start = Instant::now();
        let c = CompressedBlock::compress(&sample, quant).expect("compress");
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let stored = c.to_bytes().len();
        println!(
            "{:<8}{:>14}{:>11.3}x{:>18.1}",
            format!("{quant:?}"),
            stored,
            stored as f64 / fp16,
            ms
        );
    }

    let dir =
        tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/target")).expect("tempdir");
    let config = StoreConfig {
        quant: Quant::Int8,
        ram_budget_bytes: 4 << 20,
        rep_key_budget_bytes: 64 << 20,
        dedup_threshold: None,
        disk: Some(DiskConfig {
            segment_bytes: 64 << 20,
            max_bytes: 64 << 30,
            max_age: None,
            sync: SyncPolicy::Interval(Duration::from_secs(1)),
        }),
    };
    let (mut store, _) = KvStore::open(dir.path(), "bench", config.clone()).expect("open");
    let blocks: Vec<Block> = (0..16).map(|i| block(i, &mut rng)).collect();
    let start = Instant::now();
    for seq in 0..BLOCKS {
        // Sixteen distinct contents, re-labelled: generation stays out of the timing.
        let b = &blocks[(seq % 16) as usize];
        let relabelled = Block {
            meta: vstreamd::kv::BlockMeta { seq, ..b.meta },
            kv: KvSegment {
                layers: b.kv.layers.iter().map(LayerKv::shallow_clone).collect(),
            },
            rep_keys: b.rep_keys.shallow_clone(),
        };
        store.append(&relabelled).expect("append");
    }
    store.sync().expect("sync");
    let secs = start.elapsed().as_secs_f64();
    let disk_bytes = store.disk_bytes();
    println!();
    println!(
        "append (int8, compress + RAM + disk): {:.1} blocks/s, {:.0} MB/s stored ({} blocks, {:.0} MB)",
        BLOCKS as f64 / secs,
        disk_bytes as f64 / secs / 1e6,
        BLOCKS,
        disk_bytes as f64 / 1e6
    );
    drop(store);

    // Reload from cold: reopen (recovery scans every record), then release and drop.
    let (mut store, _) = KvStore::open(dir.path(), "bench", config).expect("reopen");
    let files = segment_files(dir.path());
    store.release_disk_pages().expect("release");
    let how = drop_page_cache(&files);
    let mut picks: Vec<u64> = (0..BLOCKS).collect();
    rng.shuffle(&mut picks);
    picks.truncate(RELOADS);
    // One at a time (a latency floor), then the 64 together as retrieval asks for them.
    let (single_picks, batch_picks) = picks.split_at(8);
    let mut latencies = Vec::new();
    for &seq in single_picks {
        let t = Instant::now();
        let (_, tier) = store.get(seq).expect("get");
        assert_eq!(tier, Tier::Disk, "block {seq} should come from disk");
        latencies.push(t.elapsed());
    }
    latencies.sort();
    let mut batch: Vec<u64> = batch_picks.to_vec();
    batch.extend(
        (0..BLOCKS)
            .filter(|s| !picks.contains(s))
            .take(RELOADS - batch.len()),
    );
    store.release_disk_pages().expect("release");
    drop_page_cache(&files);
    let start = Instant::now();
    let blocks = store.get_many(&batch).expect("get_many");
    let reload_secs = start.elapsed().as_secs_f64();
    assert!(blocks.iter().all(|(_, t)| *t == Tier::Disk));
    let loaded: usize = blocks.iter().map(|(b, _)| b.stored_len()).sum();
    drop(blocks);
    drop(store);

    drop_page_cache(&files);
    let start = Instant::now();
    let mut buf = vec![0u8; 4 << 20];
    let mut seq_bytes = 0usize;
    for f in &files {
        let mut file = std::fs::File::open(f).expect("segment");
        loop {
            let n = file.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            seq_bytes += n;
        }
    }
    let seq_secs = start.elapsed().as_secs_f64();
    let reload_rate = loaded as f64 / reload_secs;
    let seq_rate = seq_bytes as f64 / seq_secs;
    println!(
        "cold load of one block at a time ({how}): median {:.1} ms, max {:.1} ms",
        latencies[latencies.len() / 2].as_secs_f64() * 1e3,
        latencies[latencies.len() - 1].as_secs_f64() * 1e3
    );
    println!(
        "cold reload of {RELOADS} random blocks together: {:.0} MB/s, {:.1} ms in all",
        reload_rate / 1e6,
        reload_secs * 1e3
    );
    println!(
        "cold sequential read of the same segments: {:.0} MB/s ({:.0} MB)",
        seq_rate / 1e6,
        seq_bytes as f64 / 1e6
    );
    println!(
        "reload / sequential = {:.2}x (target >= 0.5x)",
        reload_rate / seq_rate
    );
}

//! One stream's KV store across tiers: blocks round-trip through RAM and disk, survive
//! a reopen, keep their representative keys, near-duplicates are dropped, and budgets
//! hold.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tch::{Device, Kind, Tensor};
use vstreamd::error::KvError;
use vstreamd::kv::disk::{DiskConfig, SyncPolicy};
use vstreamd::kv::{Block, CompressedBlock, KvStore, Quant, StoreConfig, Tier};
use vstreamd::model::{KvSegment, LayerKv};

fn block(seq: u64, seed: i64) -> Block {
    let mut rng = fastrand::Rng::with_seed(seed as u64);
    let kv = KvSegment {
        layers: (0..3)
            .map(|_| LayerKv {
                keys: randn([2, 6, 8], &mut rng),
                values: randn([2, 6, 8], &mut rng),
            })
            .collect(),
    };
    Block::new(
        seq,
        Duration::from_millis(500 * seq),
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seq),
        kv,
    )
    .unwrap()
}

/// Normal-ish values from a local generator: torch's global RNG is shared by the
/// parallel tests, so seeding it does not make a test deterministic.
fn randn(shape: [i64; 3], rng: &mut fastrand::Rng) -> Tensor {
    let n: i64 = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| (0..4).map(|_| rng.f32()).sum::<f32>() - 2.0)
        .collect();
    Tensor::from_slice(&v).reshape(shape) * 1.7
}

fn config(ram_blocks: usize, disk: bool) -> StoreConfig {
    let one = CompressedBlock::compress(&block(0, 0), Quant::Int8)
        .unwrap()
        .heap_bytes()
        + 96;
    StoreConfig {
        quant: Quant::Int8,
        ram_budget_bytes: ram_blocks * one,
        rep_key_budget_bytes: 1 << 20,
        dedup_threshold: None,
        disk: disk.then_some(DiskConfig {
            segment_bytes: 16 << 10,
            max_bytes: 1 << 30,
            max_age: None,
            sync: SyncPolicy::EveryRecord,
        }),
    }
}

#[test]
fn blocks_round_trip_through_ram_and_disk_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let expected: Vec<CompressedBlock> = (0..40)
        .map(|i| CompressedBlock::compress(&block(i, i as i64), Quant::Int8).unwrap())
        .collect();
    {
        let (mut store, report) = KvStore::open(dir.path(), "cam", config(5, true)).unwrap();
        assert_eq!(report.unwrap().records, 0);
        for i in 0..40 {
            let done = store.append(&block(i, i as i64)).unwrap();
            assert!(done.stored && done.durable);
        }
        assert_eq!(store.len(), 40);
        assert!(store.ram().len() <= 5 && store.ram().bytes() <= store.ram().budget());
        let (old, tier) = store.get(3).unwrap();
        assert_eq!(tier, Tier::Disk);
        assert!(*old == expected[3]);
        let (recent, tier) = store.get(39).unwrap();
        assert_eq!(tier, Tier::Ram);
        assert!(*recent == expected[39]);
        // A reloaded block is cached again.
        assert_eq!(store.get(3).unwrap().1, Tier::Ram);
        assert!(matches!(store.get(1000), Err(KvError::NotFound(1000))));
    }
    let (mut store, report) = KvStore::open(dir.path(), "cam", config(5, true)).unwrap();
    assert_eq!(report.unwrap().records, 40);
    assert_eq!(store.len(), 40);
    let metas: Vec<u64> = store.metas().map(|m| m.seq).collect();
    assert_eq!(metas, (0..40).collect::<Vec<_>>());
    for i in [0u64, 17, 39] {
        let (b, tier) = store.get(i).unwrap();
        assert_eq!(tier, Tier::Disk);
        assert!(*b == expected[i as usize], "block {i}");
        let seg = b.to_segment(Device::Cpu, Kind::Float).unwrap();
        assert_eq!(seg.layers.len(), 3);
        assert_eq!(seg.layers[0].keys.size(), [2, 6, 8]);
    }
    // Batched loads: disk reads in parallel, RAM hits as they are, order kept.
    let many = store.get_many(&[5, 39, 2, 17, 30]).unwrap();
    let seqs: Vec<u64> = many.iter().map(|(b, _)| b.meta.seq).collect();
    assert_eq!(seqs, vec![5, 39, 2, 17, 30]);
    assert_eq!(many[3].1, Tier::Ram, "17 was loaded above");
    assert_eq!(many[0].1, Tier::Disk);
    for (b, _) in &many {
        assert!(**b == expected[b.meta.seq as usize]);
    }
    assert!(matches!(
        store.get_many(&[1, 999]),
        Err(KvError::NotFound(999))
    ));
    let rep = store.rep_keys().unwrap();
    assert_eq!(rep.len(), 40);
    assert_eq!(&*rep[17].1, expected[17].rep_keys.as_slice());
    // Sequence numbers keep increasing across the restart.
    assert!(matches!(
        store.append(&block(39, 1)),
        Err(KvError::InvalidBlock(_))
    ));
    assert!(store.append(&block(40, 40)).unwrap().stored);
}

#[test]
fn representative_keys_past_their_budget_are_read_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(2, true);
    let per_block = 3 * 2 * 8 * 4;
    cfg.rep_key_budget_bytes = 4 * per_block;
    let (mut store, _) = KvStore::open(dir.path(), "cam", cfg).unwrap();
    for i in 0..20 {
        store.append(&block(i, i as i64)).unwrap();
    }
    assert!(store.rep_key_bytes() <= 4 * per_block);
    let rep = store.rep_keys().unwrap();
    assert_eq!(
        rep.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
    let fresh = CompressedBlock::compress(&block(2, 2), Quant::Int8).unwrap();
    assert_eq!(&*rep[2].1, fresh.rep_keys.as_slice());
}

#[test]
fn near_duplicate_blocks_are_dropped_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(10, false);
    cfg.dedup_threshold = Some(0.98);
    let (mut store, _) = KvStore::open(dir.path(), "static", cfg).unwrap();
    assert!(store.append(&block(0, 7)).unwrap().stored);
    assert!(!store.append(&block(1, 7)).unwrap().stored, "same content");
    assert!(store.append(&block(2, 8)).unwrap().stored, "new content");
    assert_eq!(store.metas().map(|m| m.seq).collect::<Vec<_>>(), vec![0, 2]);
}

#[test]
fn ram_only_store_keeps_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, report) = KvStore::open(dir.path(), "ram", config(4, false)).unwrap();
    assert!(report.is_none());
    for i in 0..10 {
        let done = store.append(&block(i, i as i64)).unwrap();
        assert!(done.stored && !done.durable);
    }
    assert_eq!(store.len(), 4, "evicted blocks with no disk copy are gone");
    assert_eq!(
        store.metas().map(|m| m.seq).collect::<Vec<_>>(),
        vec![6, 7, 8, 9]
    );
    assert!(matches!(store.get(0), Err(KvError::NotFound(0))));
    assert_eq!(store.rep_keys().unwrap().len(), 4);
}

#[test]
fn retention_by_bytes_forgets_deleted_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(1, true);
    if let Some(d) = cfg.disk.as_mut() {
        d.segment_bytes = 4 << 10;
        d.max_bytes = 12 << 10;
    }
    let (mut store, _) = KvStore::open(dir.path(), "cam", cfg).unwrap();
    for i in 0..60 {
        store.append(&block(i, i as i64)).unwrap();
    }
    store.enforce_retention(SystemTime::now()).unwrap();
    assert!(
        store.disk_bytes() <= 16 << 10,
        "disk holds {}",
        store.disk_bytes()
    );
    let seqs: Vec<u64> = store.metas().map(|m| m.seq).collect();
    assert!(seqs.len() < 60 && seqs.contains(&59));
    assert!(!seqs.contains(&0));
    for s in seqs {
        store.get(s).unwrap();
    }
}

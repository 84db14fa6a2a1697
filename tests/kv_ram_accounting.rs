//! The RAM tier's byte accounting matches what the allocator really holds, measured by
//! a counting global allocator around the blocks' creation and insertion.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tch::Tensor;
use vstreamd::kv::{Block, CompressedBlock, Quant, RamTier};
use vstreamd::model::{KvSegment, LayerKv};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator, only counting sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn ram_tier_bytes_match_real_allocation_within_a_few_percent() {
    let mut rng = fastrand::Rng::with_seed(3);
    let mut values =
        |n: usize| Tensor::from_slice(&(0..n).map(|_| rng.f32() - 0.5).collect::<Vec<f32>>());
    // Small blocks make the fixed per-entry costs count: a harder test than big ones.
    for (layers, tokens, quant) in [
        (4, 16, Quant::Int8),
        (24, 196, Quant::Int4),
        (2, 4, Quant::F16),
    ] {
        let blocks: Vec<Block> = (0..50)
            .map(|seq| {
                let kv = KvSegment {
                    layers: (0..layers)
                        .map(|_| LayerKv {
                            keys: values(2 * tokens * 64).reshape([2, tokens as i64, 64]),
                            values: values(2 * tokens * 64).reshape([2, tokens as i64, 64]),
                        })
                        .collect(),
                };
                Block::new(seq, Duration::ZERO, UNIX_EPOCH, kv).unwrap()
            })
            .collect();
        let mut ram = RamTier::new(Arc::from("acct"), usize::MAX);
        let before = LIVE.load(Ordering::Relaxed);
        for b in &blocks {
            ram.insert(Arc::new(CompressedBlock::compress(b, quant).unwrap()));
        }
        let real = (LIVE.load(Ordering::Relaxed) - before) as f64;
        let accounted = ram.bytes() as f64;
        let off = (accounted - real).abs() / real;
        println!("{layers} layers x {tokens} tokens {quant:?}: accounted {accounted:.0} B, allocated {real:.0} B ({:.2}% off)", off * 100.0);
        assert!(off <= 0.03, "accounting off by {:.1}%", off * 100.0);
    }
}

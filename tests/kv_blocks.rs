//! Blocks: compression formats, their error and size, serialisation, and the RAM tier.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tch::{Device, Kind, Tensor};
use vstreamd::error::KvError;
use vstreamd::kv::{Block, CompressedBlock, Quant, RamTier};
use vstreamd::model::{KvSegment, LayerKv};

/// A block shaped like LLaVA-OneVision-0.5B's (`layers` × 2 KV heads × 196 tokens × 64),
/// keys with a few outlier channels as real keys have.
fn block(seq: u64, layers: usize, seed: i64) -> Block {
    let mut rng = fastrand::Rng::with_seed(seed as u64);
    let kv = KvSegment {
        layers: (0..layers)
            .map(|_| {
                let keys = randn([2, 196, 64], &mut rng);
                let _ = keys.narrow(2, 5, 2).f_mul_scalar_(12.0).unwrap();
                LayerKv {
                    keys,
                    values: randn([2, 196, 64], &mut rng) * 0.5,
                }
            })
            .collect(),
    };
    Block::new(seq, Duration::from_secs(seq), SystemTime::now(), kv).unwrap()
}

/// Normal-ish values from a local generator: torch's global RNG is shared by the
/// parallel tests, so seeding it does not make a test deterministic.
fn randn(shape: [i64; 3], rng: &mut fastrand::Rng) -> Tensor {
    let n: i64 = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| (0..4).map(|_| rng.f32()).sum::<f32>() - 2.0)
        .collect();
    Tensor::from_slice(&v).reshape(shape)
}

fn max_err(a: &KvSegment, b: &KvSegment) -> (f64, f64) {
    let mut k: f64 = 0.0;
    let mut v: f64 = 0.0;
    for (x, y) in a.layers.iter().zip(&b.layers) {
        k = k.max((&x.keys - &y.keys).abs().max().double_value(&[]));
        v = v.max((&x.values - &y.values).abs().max().double_value(&[]));
    }
    (k, v)
}

#[test]
fn representative_keys_are_per_layer_means_of_keys() {
    let b = block(0, 3, 1);
    assert_eq!(b.rep_keys.size(), [3, 128]);
    let expected = b.kv.layers[1]
        .keys
        .mean_dim(1, false, Kind::Float)
        .reshape([-1]);
    assert!((b.rep_keys.get(1) - expected).abs().max().double_value(&[]) < 1e-6);
}

#[test]
fn each_format_round_trips_within_its_bound_and_size() {
    let b = block(7, 24, 2);
    let fp16 = b.fp16_bytes() as f64;
    // Per-group bounds: scale/2 = range/(2·levels); key ranges reach ~±12·4.5, values ±2.5.
    for (quant, key_tol, value_tol, max_ratio) in [
        (Quant::F32, 0.0, 0.0, 2.0),
        (Quant::F16, 0.02, 2e-3, 1.0),
        (Quant::Bf16, 0.2, 0.01, 1.0),
        (
            Quant::Int8,
            108.0 / 255.0 / 2.0 + 1e-3,
            5.5 / 255.0 / 2.0 + 1e-3,
            0.6,
        ),
        (
            Quant::Int4,
            108.0 / 15.0 / 2.0 + 1e-3,
            5.5 / 15.0 / 2.0 + 1e-3,
            0.3,
        ),
    ] {
        let c = CompressedBlock::compress(&b, quant).unwrap();
        let back = c.to_segment(Device::Cpu, Kind::Float).unwrap();
        let (k, v) = max_err(&b.kv, &back);
        let ratio = c.kv_bytes() as f64 / fp16;
        println!(
            "{quant:?}: {} bytes ({ratio:.3} of fp16), max error keys {k:.4} values {v:.4}",
            c.kv_bytes()
        );
        assert!(k <= key_tol && v <= value_tol, "{quant:?}: errors {k} {v}");
        assert!(ratio <= max_ratio, "{quant:?}: ratio {ratio}");
        assert_eq!(c.meta, b.meta);
        let parsed = CompressedBlock::from_bytes(&c.to_bytes()).unwrap();
        assert!(parsed == c, "{quant:?}: serialisation round trip");
    }
}

#[test]
fn non_finite_kv_is_refused() {
    let b = block(0, 2, 3);
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let _ = b.kv.layers[1].values.get(0).get(3).get(4).fill_(bad);
        for quant in [
            Quant::F32,
            Quant::F16,
            Quant::Bf16,
            Quant::Int8,
            Quant::Int4,
        ] {
            assert!(
                matches!(
                    CompressedBlock::compress(&b, quant),
                    Err(KvError::NonFinite("values"))
                ),
                "{quant:?} with {bad}"
            );
        }
    }
}

#[test]
fn malformed_serialised_blocks_are_errors() {
    let c = CompressedBlock::compress(&block(0, 2, 4), Quant::Int4).unwrap();
    let bytes = c.to_bytes();
    for cut in [0, 10, 41, bytes.len() - 1] {
        assert!(
            matches!(
                CompressedBlock::from_bytes(&bytes[..cut]),
                Err(KvError::InvalidBlock(_))
            ),
            "cut {cut}"
        );
    }
    let mut bad = bytes.clone();
    bad[40] = 9; // unknown quantisation code
    assert!(CompressedBlock::from_bytes(&bad).is_err());
    let mut bad = bytes;
    bad[28] = 200; // layer count that does not match the length
    assert!(CompressedBlock::from_bytes(&bad).is_err());
}

#[test]
fn ram_tier_keeps_the_budget_and_evicts_least_recently_used() {
    let blocks: Vec<Arc<CompressedBlock>> = (0..6)
        .map(|i| Arc::new(CompressedBlock::compress(&block(i, 2, i as i64), Quant::Int8).unwrap()))
        .collect();
    let one = blocks[0].heap_bytes() + 200;
    let mut ram = RamTier::new(Arc::from("s"), 3 * one);
    for b in &blocks[..3] {
        assert!(ram.insert(b.clone()).is_empty());
    }
    assert!(ram.get(0).is_some()); // 0 becomes most recent
    assert_eq!(ram.insert(blocks[3].clone()), vec![1]);
    assert_eq!(ram.insert(blocks[4].clone()), vec![2]);
    assert_eq!(ram.seqs(), vec![4, 3, 0]);
    assert!(ram.bytes() <= ram.budget());
    // Accounting equals the blocks' own heap bytes plus a fixed per-entry overhead.
    let own: usize = [0usize, 3, 4].iter().map(|&i| blocks[i].heap_bytes()).sum();
    assert!(ram.bytes() >= own && ram.bytes() <= own + 3 * 128);
    ram.remove(3);
    assert_eq!(ram.len(), 2);
    // A block larger than the whole budget does not stay.
    let mut tiny = RamTier::new(Arc::from("s"), 10);
    assert_eq!(tiny.insert(blocks[5].clone()), vec![5]);
    assert!(tiny.is_empty());
}

#[test]
fn similarity_flags_near_duplicates() {
    let a = CompressedBlock::compress(&block(0, 2, 11), Quant::Int8).unwrap();
    let same = CompressedBlock::compress(&block(1, 2, 11), Quant::Int8).unwrap();
    let other = CompressedBlock::compress(&block(2, 2, 12), Quant::Int8).unwrap();
    assert!(a.similarity(&same) > 0.999);
    assert!(a.similarity(&other) < 0.9);
}

/// The f32 format is lossless: a round trip through bytes gives the input bit for bit.
#[test]
fn f32_blocks_round_trip_exactly() {
    let b = block(3, 2, 21);
    let c = CompressedBlock::compress(&b, Quant::F32).unwrap();
    assert_eq!(c.kv_bytes(), 2 * 2 * 2 * 196 * 64 * 4);
    let back = CompressedBlock::from_bytes(&c.to_bytes()).unwrap();
    assert_eq!(back, c);
    let seg = back.to_segment(Device::Cpu, Kind::Float).unwrap();
    assert_eq!(max_err(&seg, &b.kv), (0.0, 0.0));

    let bad = block(4, 1, 22);
    let _ = bad.kv.layers[0].values.get(0).get(3).fill_(f64::NAN);
    assert!(matches!(
        CompressedBlock::compress(&bad, Quant::F32),
        Err(KvError::NonFinite("values"))
    ));
}

/// One layer dequantised alone equals that layer of the whole block, in every format;
/// a layer past the block's is an error.
#[test]
fn single_layers_dequantise_like_the_whole_block() {
    let b = block(5, 3, 23);
    for quant in [
        Quant::F32,
        Quant::F16,
        Quant::Bf16,
        Quant::Int8,
        Quant::Int4,
    ] {
        let c = CompressedBlock::compress(&b, quant).unwrap();
        let whole = c.to_segment(Device::Cpu, Kind::Float).unwrap();
        for (l, expected) in whole.layers.iter().enumerate() {
            let one = c.layer_kv(l, Device::Cpu, Kind::Float).unwrap();
            assert!(one.keys.equal(&expected.keys), "{quant:?} layer {l} keys");
            assert!(
                one.values.equal(&expected.values),
                "{quant:?} layer {l} values"
            );
        }
        assert!(matches!(
            c.layer_kv(3, Device::Cpu, Kind::Float),
            Err(KvError::InvalidBlock(_))
        ));
    }
}

/// A block of several frames laid out as a grid (Qwen2.5-VL's temporal patch) keeps its
/// layout through serialisation; a one-frame run is serialised exactly as before layouts
/// existed (no extension: segments written by earlier builds read the same), and a
/// layout that does not fit the block's tokens is refused.
#[test]
fn block_layouts_survive_serialisation_and_old_bytes_read_the_same() {
    use vstreamd::model::BlockLayout;
    let run = CompressedBlock::compress(&block(1, 2, 7), Quant::Int8).unwrap();
    let bytes = run.to_bytes();
    assert_eq!(
        bytes[40] & 0x80,
        0,
        "no layout extension for a one-frame run"
    );
    assert_eq!(bytes.len(), run.stored_len());
    let back = CompressedBlock::from_bytes(&bytes).unwrap();
    assert_eq!(back.meta.layout, BlockLayout::run(1));
    assert_eq!(back, run);

    // 196 tokens as 14 × 14 merged patches covering 2 frames.
    let grid = BlockLayout {
        frames: 2,
        grid: (14, 14),
    };
    let laid = CompressedBlock::compress(&block(2, 2, 8).with_layout(grid), Quant::Int4).unwrap();
    let bytes = laid.to_bytes();
    assert_eq!(bytes.len(), laid.stored_len());
    assert_eq!(
        bytes.len(),
        run.stored_len() - run.kv_bytes() + laid.kv_bytes() + 12
    );
    let back = CompressedBlock::from_bytes(&bytes).unwrap();
    assert_eq!(back.meta.layout, grid);
    assert_eq!(back, laid);

    let misfit = BlockLayout {
        frames: 2,
        grid: (10, 10),
    };
    let bad = CompressedBlock::compress(&block(3, 1, 9).with_layout(misfit), Quant::F16).unwrap();
    assert!(matches!(
        CompressedBlock::from_bytes(&bad.to_bytes()),
        Err(KvError::InvalidBlock(_))
    ));
}

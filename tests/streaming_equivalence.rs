//! The streaming entry points of the decoder give the same results as one-shot
//! prefill: chunked prefill, keys stored before rotary and re-rotated, and contexts
//! assembled from segments at explicit positions.

mod common;

use common::*;
use tch::{Kind, Tensor};
use vstreamd::model::{AttnContext, ForwardOptions, KvSegment, LlavaOnevision, Precision};

const TOL: f64 = 1e-5;

const APPEND: ForwardOptions = ForwardOptions {
    append: true,
    return_kv: true,
};
const QUERY_ONLY: ForwardOptions = ForwardOptions {
    append: false,
    return_kv: false,
};

fn positions(start: i64, len: i64) -> Tensor {
    Tensor::arange_start(start, start + len, (Kind::Int64, tch::Device::Cpu))
}

/// One-shot prefill of `embeds` at 0..T: (hidden [T, H], the context, its KV).
fn one_shot(model: &LlavaOnevision, embeds: &Tensor) -> (Tensor, AttnContext, KvSegment) {
    let t = embeds.size()[0];
    let dec = model.decoder();
    let mut ctx = AttnContext::new(dec.num_layers());
    let out = dec
        .forward(embeds, &positions(0, t), &mut ctx, APPEND)
        .unwrap();
    (out.hidden, ctx, out.kv.unwrap())
}

#[test]
fn chunked_prefill_equals_one_shot_prefill() {
    let _g = tch::no_grad_guard();
    for name in CHECKPOINTS {
        let model = load(name, Precision::F32);
        let (_, embeds) = prompt_embeddings(&model, &frames(name, "frames"));
        let t = embeds.size()[0];
        let (expected, _, _) = one_shot(&model, &embeds);
        let dec = model.decoder();
        let mut ctx = AttnContext::new(dec.num_layers());
        let mut hidden = Vec::new();
        let mut start = 0;
        for size in [1, 7, 5, 11].into_iter().cycle() {
            let len = size.min(t - start);
            let chunk = embeds.narrow(0, start, len);
            let out = dec
                .forward(&chunk, &positions(start, len), &mut ctx, APPEND)
                .unwrap();
            hidden.push(out.hidden);
            start += len;
            if start == t {
                break;
            }
        }
        assert_eq!(ctx.len(), t);
        let diff = max_abs_diff(&Tensor::cat(&hidden, 0), &expected);
        assert!(diff <= TOL, "{name}: chunked prefill differs by {diff}");
    }
}

#[test]
fn keys_stored_before_rotary_and_rerotated_equal_the_in_place_keys() {
    let _g = tch::no_grad_guard();
    for name in CHECKPOINTS {
        let model = load(name, Precision::F32);
        let (_, embeds) = prompt_embeddings(&model, &frames(name, "frames"));
        let t = embeds.size()[0];
        let (_, in_place, raw) = one_shot(&model, &embeds);
        let dec = model.decoder();
        let mut rebuilt = AttnContext::new(dec.num_layers());
        rebuilt
            .push_segment(dec.rotary(), &raw, &positions(0, t))
            .unwrap();
        for layer in 0..dec.num_layers() {
            let diff = max_abs_diff(rebuilt.keys(layer).unwrap(), in_place.keys(layer).unwrap());
            assert!(
                diff <= 1e-6,
                "{name} layer {layer}: re-rotated keys differ by {diff}"
            );
            let diff = max_abs_diff(
                rebuilt.values(layer).unwrap(),
                in_place.values(layer).unwrap(),
            );
            assert_eq!(diff, 0.0, "{name} layer {layer}: values differ");
        }
        // Raw keys are not rotated: at position 0 rotation is the identity, elsewhere not.
        let raw0 = raw.layers[0].keys.narrow(1, 1, 1);
        let rot0 = in_place.keys(0).unwrap().squeeze_dim(0).narrow(1, 1, 1);
        assert!(
            max_abs_diff(&raw0, &rot0) > 1e-4,
            "{name}: stored keys look rotated"
        );
    }
}

/// Sinks (the prompt head) + per-frame blocks + the question tail: the tail's logits
/// over a context assembled from stored segments at explicit positions equal those of
/// the contiguous prefill; placing every segment (and the tail) 1,000 positions later
/// changes nothing either, since rotary attention depends on relative positions only.
#[test]
fn context_of_sinks_and_blocks_at_explicit_positions_equals_contiguous_prefill() {
    let _g = tch::no_grad_guard();
    for name in CHECKPOINTS {
        let model = load(name, Precision::F32);
        let (ids, embeds) = prompt_embeddings(&model, &frames(name, "frames"));
        let t = embeds.size()[0];
        let video = model.config.video_token_index;
        let first = ids.iter().position(|&i| i == video).unwrap() as i64;
        let tail = ids.iter().rposition(|&i| i == video).unwrap() as i64 + 1;
        let per_frame = model.tokens_per_frame();
        let (hidden, _, kv) = one_shot(&model, &embeds);
        let expected = model
            .decoder()
            .logits(&hidden.narrow(0, tail, t - tail))
            .unwrap();

        // Segments: sinks [0, first), one per frame, then the newline token.
        let mut bounds = vec![(0, first)];
        let mut at = first;
        while at + per_frame < tail {
            bounds.push((at, per_frame));
            at += per_frame;
        }
        bounds.push((at, tail - at));
        let segments: Vec<KvSegment> = bounds
            .iter()
            .map(|&(s, l)| kv.narrow(s, l).unwrap())
            .collect();
        for shift in [0, 1000] {
            let dec = model.decoder();
            let mut ctx = AttnContext::new(dec.num_layers());
            for (seg, &(s, l)) in segments.iter().zip(&bounds) {
                ctx.push_segment(dec.rotary(), seg, &positions(s + shift, l))
                    .unwrap();
            }
            assert_eq!(ctx.len(), tail);
            let out = dec
                .forward(
                    &embeds.narrow(0, tail, t - tail),
                    &positions(tail + shift, t - tail),
                    &mut ctx,
                    QUERY_ONLY,
                )
                .unwrap();
            let diff = max_abs_diff(&dec.logits(&out.hidden).unwrap(), &expected);
            assert!(
                diff <= 1e-4,
                "{name}: shift {shift}: assembled context differs by {diff}"
            );
            assert_eq!(
                ctx.len(),
                tail,
                "a query-only forward must not grow the context"
            );
        }
    }
}

/// A segment's KV concatenated from pieces equals the whole.
#[test]
fn segments_concatenate_and_narrow_consistently() {
    let _g = tch::no_grad_guard();
    let model = load("tiny_a", Precision::F32);
    let (_, embeds) = prompt_embeddings(&model, &frames("tiny_a", "frames"));
    let (_, _, kv) = one_shot(&model, &embeds);
    let t = kv.len();
    let a = kv.narrow(0, 10).unwrap();
    let b = kv.narrow(10, t - 10).unwrap();
    let whole = KvSegment::concat(&[&a, &b]).unwrap();
    assert_eq!(whole.len(), t);
    for (x, y) in whole.layers.iter().zip(&kv.layers) {
        assert_eq!(max_abs_diff(&x.keys, &y.keys), 0.0);
        assert_eq!(max_abs_diff(&x.values, &y.values), 0.0);
    }
}

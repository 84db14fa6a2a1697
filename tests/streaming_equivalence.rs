//! The streaming entry points of the decoder give the same results as one-shot
//! prefill: chunked prefill, keys stored before rotary and re-rotated, and contexts
//! assembled from segments at explicit positions; contexts whose layers hold different
//! blocks; training's packed rows; the per-layer question queries retrieval scores blocks with.

mod common;

use common::*;
use tch::{Device, Kind, Tensor};
use vstreamd::model::{AttnContext, ForwardOptions, KvSegment, LayerKv, LlavaOnevision, Precision};

const TOL: f64 = 1e-5;

// Constants cannot use `..Default::default()`, so every field is spelled out.
const APPEND: ForwardOptions = ForwardOptions {
    append: true,
    return_kv: true,
    return_queries: false,
};
const QUERY_ONLY: ForwardOptions = ForwardOptions {
    append: false,
    return_kv: false,
    return_queries: false,
};
const QUERIES: ForwardOptions = ForwardOptions {
    append: false,
    return_kv: false,
    return_queries: true,
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

/// Training's packed rows (`forward_packed`: a shared prefix, then segments that each
/// see the prefix and themselves at the positions they would have alone) give every
/// segment the hidden states of its own one-shot prefill, on both fixtures.
#[test]
fn packed_segments_equal_their_own_one_shot_prefills() {
    let _g = tch::no_grad_guard();
    for name in CHECKPOINTS {
        let model = load(name, Precision::F32);
        let (_, embeds) = prompt_embeddings(&model, &frames(name, "frames"));
        let t = embeds.size()[0];
        // The prompt's first tokens as the prefix; two segments from its end.
        let (p, a, b) = (t - 9, 4, 5);
        let prefix = embeds.narrow(0, 0, p);
        let seg_a = embeds.narrow(0, t - 9, a);
        let seg_b = embeds.narrow(0, t - 5, b);
        let row = Tensor::cat(&[&prefix, &seg_a, &seg_b], 0).unsqueeze(0);
        let n = p + a + b;
        let pos = Tensor::cat(&[positions(0, p), positions(p, a), positions(p, b)], 0);
        let mut mask = vec![false; (n * n) as usize];
        let mut allow = |q: i64, keys: std::ops::Range<i64>| {
            for k in keys {
                mask[(q * n + k) as usize] = true;
            }
        };
        for q in 0..p {
            allow(q, 0..q + 1);
        }
        for (start, len) in [(p, a), (p + a, b)] {
            for q in start..start + len {
                allow(q, 0..p);
                allow(q, start..q + 1);
            }
        }
        let mask = Tensor::from_slice(&mask).view([1, 1, n, n]);
        let packed = model
            .decoder()
            .forward_packed(&row, &pos.unsqueeze(0), &mask)
            .unwrap()
            .squeeze_dim(0);
        for (start, seg) in [(p, &seg_a), (p + a, &seg_b)] {
            let alone = Tensor::cat(&[&prefix, seg], 0);
            let (expected, _, _) = one_shot(&model, &alone);
            let len = seg.size()[0];
            let diff = max_abs_diff(&packed.narrow(0, start, len), &expected.narrow(0, p, len));
            assert!(diff <= TOL, "{name}: packed segment differs by {diff}");
        }
        let diff = max_abs_diff(&packed.narrow(0, 0, p), &one_shot(&model, &prefix).0);
        assert!(diff <= TOL, "{name}: packed prefix differs by {diff}");
    }
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

/// `queries` of a forward over `embeds` at `start..` in a fresh context.
fn queries_at(model: &LlavaOnevision, embeds: &Tensor, start: i64) -> Tensor {
    let dec = model.decoder();
    let mut ctx = AttnContext::new(dec.num_layers());
    let out = dec
        .forward(
            embeds,
            &positions(start, embeds.size()[0]),
            &mut ctx,
            QUERIES,
        )
        .unwrap();
    assert!(out.kv.is_none(), "KV returned unasked");
    out.queries.expect("queries asked for")
}

/// The text decoder's tensor named `suffix` (e.g. `layers.0.self_attn.q_proj.weight`),
/// read straight from the fixture's safetensors files, not through the model.
fn decoder_weight(name: &str, suffix: &str) -> Tensor {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if !file.starts_with("model") || !file.ends_with(".safetensors") {
            continue;
        }
        for (tensor, value) in Tensor::read_safetensors(&path).unwrap() {
            if tensor.ends_with(&format!("model.{suffix}")) && !tensor.contains("vision") {
                found.push(value);
            }
        }
    }
    assert_eq!(
        found.len(),
        1,
        "{name}: {suffix} found {} times",
        found.len()
    );
    found.pop().unwrap().to_kind(Kind::Float)
}

/// Queries are [layers, kv_heads · head_dim], fp32 on the CPU (bf16 model included), and
/// layer 0's equal ReKV's definition computed here from the checkpoint's own weights:
/// RMSNorm → q_proj (before rotary) → mean over tokens → mean over the query heads of
/// each GQA group (heads g·n_rep .. (g+1)·n_rep share KV head g). tiny_a has one KV head
/// (all four query heads averaged), tiny_b two (heads {0,1} and {2,3}).
#[test]
fn queries_have_the_layout_and_values_of_rekv_question_queries() {
    let _g = tch::no_grad_guard();
    for name in CHECKPOINTS {
        let model = load(name, Precision::F32);
        let cfg = &model.config.text_config;
        let (layers, heads, kv_heads, head_dim) = (
            cfg.num_hidden_layers,
            cfg.num_attention_heads,
            cfg.kv_heads(),
            cfg.head_dim(),
        );
        let (_, embeds) = prompt_embeddings(&model, &frames(name, "frames"));
        let t = embeds.size()[0];
        let queries = queries_at(&model, &embeds, 0);
        assert_eq!(queries.size(), [layers, kv_heads * head_dim], "{name}");
        assert_eq!(queries.kind(), Kind::Float, "{name}");
        assert_eq!(queries.device(), Device::Cpu, "{name}");

        let norm = decoder_weight(name, "layers.0.input_layernorm.weight");
        let w = decoder_weight(name, "layers.0.self_attn.q_proj.weight");
        let b = decoder_weight(name, "layers.0.self_attn.q_proj.bias");
        let x = embeds.to_kind(Kind::Float);
        let rms =
            (x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float) + cfg.rms_norm_eps).rsqrt();
        let q = (&x * rms * norm).linear(&w, Some(&b)); // [T, heads · head_dim]
        assert_eq!(q.size(), [t, heads * head_dim]);
        let expected = q
            .mean_dim(0, false, Kind::Float)
            .view([kv_heads, heads / kv_heads, head_dim])
            .mean_dim(1, false, Kind::Float)
            .view([kv_heads * head_dim]);
        let diff = max_abs_diff(&queries.get(0), &expected);
        assert!(diff <= TOL, "{name}: layer-0 queries differ by {diff}");
        if kv_heads > 1 {
            // Grouping by h % kv_heads instead of h / n_rep would give something else.
            let strided = q
                .mean_dim(0, false, Kind::Float)
                .view([heads / kv_heads, kv_heads, head_dim])
                .mean_dim(0, false, Kind::Float)
                .view([kv_heads * head_dim]);
            assert!(
                max_abs_diff(&queries.get(0), &strided) > 1e-3,
                "{name}: the check cannot tell GQA groupings apart"
            );
        }
    }
    let model = load("tiny_a", Precision::Bf16);
    let (_, embeds) = prompt_embeddings(&model, &frames("tiny_a", "frames"));
    let queries = queries_at(&model, &embeds, 0);
    assert_eq!(queries.kind(), Kind::Float, "bf16 model");
    assert_eq!(queries.device(), Device::Cpu, "bf16 model");
}

/// At every layer, a chunk's queries are the mean of its tokens' own: the chunk run at
/// once equals the mean of the queries of its tokens decoded one by one (each attending
/// to those before it, so each layer sees the same hidden states as in the chunk).
#[test]
fn queries_are_the_mean_over_the_chunk_tokens_at_every_layer() {
    let _g = tch::no_grad_guard();
    for name in CHECKPOINTS {
        let model = load(name, Precision::F32);
        let (_, embeds) = prompt_embeddings(&model, &frames(name, "frames"));
        let t = embeds.size()[0];
        let whole = queries_at(&model, &embeds, 0);
        let dec = model.decoder();
        let mut ctx = AttnContext::new(dec.num_layers());
        let step = ForwardOptions {
            append: true,
            return_queries: true,
            ..Default::default()
        };
        let per_token: Vec<Tensor> = (0..t)
            .map(|i| {
                dec.forward(&embeds.narrow(0, i, 1), &positions(i, 1), &mut ctx, step)
                    .unwrap()
                    .queries
                    .unwrap()
            })
            .collect();
        let mean = Tensor::stack(&per_token, 0).mean_dim(0, false, Kind::Float);
        let diff = max_abs_diff(&whole, &mean);
        assert!(
            diff <= TOL,
            "{name}: queries differ from the token mean by {diff}"
        );
        // Not a mean that any token's queries alone would pass for.
        let last = max_abs_diff(&whole, &per_token[t as usize - 1]);
        assert!(last > 1e-3, "{name}: the check cannot tell tokens apart");
    }
}

/// Queries are taken before rotary: the same chunk run 1,000 positions later gives the
/// same queries — exactly in layer 0 (it sees only the embeddings), within rounding in
/// later layers (their inputs depend on relative positions only, as the assembled
/// context test shows for logits; fp32 cos/sin of angles near 1,000 rad round
/// differently, about 2e-6 here, hence `TOL` and not 1e-6).
#[test]
fn queries_do_not_depend_on_positions() {
    let _g = tch::no_grad_guard();
    for name in CHECKPOINTS {
        let model = load(name, Precision::F32);
        let (_, embeds) = prompt_embeddings(&model, &frames(name, "frames"));
        let at0 = queries_at(&model, &embeds, 0);
        let at1000 = queries_at(&model, &embeds, 1000);
        assert_eq!(
            max_abs_diff(&at0.get(0), &at1000.get(0)),
            0.0,
            "{name}: layer-0 queries depend on positions"
        );
        let diff = max_abs_diff(&at0, &at1000);
        assert!(diff <= TOL, "{name}: shifted queries differ by {diff}");
    }
}

#[test]
fn queries_of_an_empty_chunk_are_an_error() {
    let _g = tch::no_grad_guard();
    let model = load("tiny_a", Precision::F32);
    let dec = model.decoder();
    let hidden = model.config.text_config.hidden_size;
    let mut ctx = AttnContext::new(dec.num_layers());
    let empty = Tensor::zeros([0, hidden], (Kind::Float, Device::Cpu));
    assert!(dec
        .forward(&empty, &positions(0, 0), &mut ctx, QUERIES)
        .is_err());
}

/// The KV of frame `i` (its tokens only) of the one-shot prefill, and where it sits.
fn frame_segment(model: &LlavaOnevision, ids: &[i64], kv: &KvSegment, i: i64) -> (KvSegment, i64) {
    let video = model.config.video_token_index;
    let first = ids.iter().position(|&id| id == video).unwrap() as i64;
    let per_frame = model.tokens_per_frame();
    let start = first + i * per_frame;
    (kv.narrow(start, per_frame).unwrap(), start)
}

fn layers_of(segment: &KvSegment) -> Vec<LayerKv> {
    segment.layers.iter().map(LayerKv::shallow_clone).collect()
}

/// `push_layers` with the same tokens in every layer is `push_segment`.
#[test]
fn push_layers_of_one_segment_equals_push_segment() {
    let _g = tch::no_grad_guard();
    for name in CHECKPOINTS {
        let model = load(name, Precision::F32);
        let (ids, embeds) = prompt_embeddings(&model, &frames(name, "frames"));
        let (_, _, kv) = one_shot(&model, &embeds);
        let (frame, start) = frame_segment(&model, &ids, &kv, 1);
        let dec = model.decoder();
        let pos = positions(start + 17, frame.len());
        // After a common head, so appending to non-empty layers is covered too.
        let head = kv.narrow(0, 5).unwrap();
        let mut a = AttnContext::new(dec.num_layers());
        let mut b = AttnContext::new(dec.num_layers());
        a.push_segment(dec.rotary(), &head, &positions(0, 5))
            .unwrap();
        b.push_segment(dec.rotary(), &head, &positions(0, 5))
            .unwrap();
        a.push_segment(dec.rotary(), &frame, &pos).unwrap();
        b.push_layers(dec.rotary(), &layers_of(&frame), &pos)
            .unwrap();
        assert_eq!(a.len(), 5 + frame.len());
        assert_eq!(b.len(), a.len());
        for l in 0..dec.num_layers() {
            assert_eq!(max_abs_diff(a.keys(l).unwrap(), b.keys(l).unwrap()), 0.0);
            assert_eq!(
                max_abs_diff(a.values(l).unwrap(), b.values(l).unwrap()),
                0.0
            );
        }
    }
}

/// A context whose layer 0 holds frame A and whose other layers hold frame B (same
/// token count): each layer holds exactly its own frame's rotated KV, and the decoder
/// attends to each layer's own blocks. Queries show it without looking inside: layer
/// l's queries depend only on the contexts of layers < l, so layers 0 and 1 match a
/// context of A alone, layer 1 does not match a context of B alone, and layer 2 (which
/// sees A in layer 0 and B in layer 1) matches neither.
#[test]
fn push_layers_gives_each_layer_its_own_blocks() {
    let _g = tch::no_grad_guard();
    for name in CHECKPOINTS {
        let model = load(name, Precision::F32);
        let (ids, embeds) = prompt_embeddings(&model, &frames(name, "frames"));
        let t = embeds.size()[0];
        let (_, _, kv) = one_shot(&model, &embeds);
        let (a, _) = frame_segment(&model, &ids, &kv, 0);
        let (b, _) = frame_segment(&model, &ids, &kv, 1);
        let n = a.len();
        let dec = model.decoder();
        let layers = dec.num_layers();
        assert!(layers >= 2);
        let pos = positions(0, n);

        let mut only_a = AttnContext::new(layers);
        only_a.push_segment(dec.rotary(), &a, &pos).unwrap();
        let mut only_b = AttnContext::new(layers);
        only_b.push_segment(dec.rotary(), &b, &pos).unwrap();
        let mut per_layer = layers_of(&b);
        per_layer[0] = a.layers[0].shallow_clone();
        let mut mixed = AttnContext::new(layers);
        mixed.push_layers(dec.rotary(), &per_layer, &pos).unwrap();
        assert_eq!(mixed.len(), n);

        for l in 0..layers {
            let (want, other) = if l == 0 {
                (&only_a, &only_b)
            } else {
                (&only_b, &only_a)
            };
            assert_eq!(
                max_abs_diff(mixed.keys(l).unwrap(), want.keys(l).unwrap()),
                0.0
            );
            assert_eq!(
                max_abs_diff(mixed.values(l).unwrap(), want.values(l).unwrap()),
                0.0
            );
            assert!(
                max_abs_diff(mixed.keys(l).unwrap(), other.keys(l).unwrap()) > 1e-3,
                "{name} layer {l}: frames A and B have the same keys"
            );
        }

        // The question tail at positions after the context, against each context.
        let video = model.config.video_token_index;
        let tail = ids.iter().rposition(|&id| id == video).unwrap() as i64 + 1;
        let question = embeds.narrow(0, tail, t - tail);
        let ask = |ctx: &mut AttnContext| {
            dec.forward(&question, &positions(n, t - tail), ctx, QUERIES)
                .unwrap()
                .queries
                .unwrap()
        };
        let (q_mixed, q_a, q_b) = (ask(&mut mixed), ask(&mut only_a), ask(&mut only_b));
        assert_eq!(mixed.len(), n);
        let diff = max_abs_diff(&q_mixed.narrow(0, 0, 2), &q_a.narrow(0, 0, 2));
        assert!(
            diff <= TOL,
            "{name}: layers 0-1 differ from context A by {diff}"
        );
        let diff = max_abs_diff(&q_mixed.get(1), &q_b.get(1));
        assert!(
            diff > 1e-4,
            "{name}: layer 1 does not see layer 0's own block"
        );
        // Deeper layers (tiny_b's third) see both frames: they match neither context.
        for l in 2..layers as i64 {
            for (other, q) in [("A", &q_a), ("B", &q_b)] {
                let diff = max_abs_diff(&q_mixed.get(l), &q.get(l));
                assert!(
                    diff > 1e-4,
                    "{name} layer {l}: queries as with {other} alone"
                );
            }
        }
    }
}

/// Malformed per-layer KV is an error and leaves the context as it was.
#[test]
fn push_layers_rejects_mismatched_layers() {
    let _g = tch::no_grad_guard();
    let model = load("tiny_b", Precision::F32);
    let (ids, embeds) = prompt_embeddings(&model, &frames("tiny_b", "frames"));
    let (_, _, kv) = one_shot(&model, &embeds);
    let (a, _) = frame_segment(&model, &ids, &kv, 0);
    let n = a.len();
    let dec = model.decoder();
    let layers = dec.num_layers();
    let mut ctx = AttnContext::new(layers);
    ctx.push_segment(dec.rotary(), &kv.narrow(0, 3).unwrap(), &positions(0, 3))
        .unwrap();
    let before: Vec<Tensor> = (0..layers).map(|l| ctx.keys(l).unwrap().copy()).collect();
    let pos = positions(3, n);

    // One layer a token short.
    let mut short = layers_of(&a);
    short[layers - 1] = LayerKv {
        keys: a.layers[layers - 1].keys.narrow(1, 0, n - 1),
        values: a.layers[layers - 1].values.narrow(1, 0, n - 1),
    };
    assert!(ctx.push_layers(dec.rotary(), &short, &pos).is_err());
    // Keys and values of different lengths.
    let mut uneven = layers_of(&a);
    uneven[0].values = a.layers[0].values.narrow(1, 0, n - 1);
    assert!(ctx.push_layers(dec.rotary(), &uneven, &pos).is_err());
    // Too few layers.
    let fewer = &layers_of(&a)[..layers - 1];
    assert!(ctx.push_layers(dec.rotary(), fewer, &pos).is_err());
    // Positions that are not [T].
    assert!(ctx
        .push_layers(dec.rotary(), &layers_of(&a), &positions(3, n + 1))
        .is_err());
    assert!(ctx
        .push_layers(dec.rotary(), &layers_of(&a), &positions(3, n).view([1, n]))
        .is_err());
    // KV of other heads than the context holds.
    let mut heads = layers_of(&a);
    heads[1].keys = a.layers[1].keys.narrow(0, 0, 1);
    heads[1].values = a.layers[1].values.narrow(0, 0, 1);
    assert!(ctx.push_layers(dec.rotary(), &heads, &pos).is_err());

    assert_eq!(ctx.len(), 3);
    for (l, keys) in before.iter().enumerate() {
        assert_eq!(
            max_abs_diff(ctx.keys(l).unwrap(), keys),
            0.0,
            "layer {l} changed"
        );
    }
    // The well-formed push still works.
    ctx.push_layers(dec.rotary(), &layers_of(&a), &pos).unwrap();
    assert_eq!(ctx.len(), 3 + n);
}

/// A batched decode step (several sequences, each against its own context of its own
/// length, at its own position) gives every sequence what its own single-token step
/// gives, and grows every context the same way, on both fixtures.
#[test]
fn batched_decode_steps_equal_single_steps() {
    let _g = tch::no_grad_guard();
    for name in CHECKPOINTS {
        let model = load(name, Precision::F32);
        let dec = model.decoder();
        let (_, embeds) = prompt_embeddings(&model, &frames(name, "frames"));
        let t = embeds.size()[0];
        // Three contexts of different lengths: prefixes of the prompt.
        let lengths = [t, t - 7, t / 2];
        let ids = [3i64, 17, 5];
        let prefill = |len: i64| {
            let mut ctx = AttnContext::new(dec.num_layers());
            dec.forward(
                &embeds.narrow(0, 0, len),
                &positions(0, len),
                &mut ctx,
                APPEND,
            )
            .unwrap();
            ctx
        };
        let tokens = dec.embed(&Tensor::from_slice(&ids)).unwrap();
        let mut singles = Vec::new();
        let mut single_ctxs = Vec::new();
        for (row, &len) in lengths.iter().enumerate() {
            let mut ctx = prefill(len);
            let out = dec
                .forward(
                    &tokens.narrow(0, row as i64, 1),
                    &positions(len, 1),
                    &mut ctx,
                    APPEND,
                )
                .unwrap();
            singles.push(out.hidden);
            single_ctxs.push(ctx);
        }
        let mut ctxs: Vec<AttnContext> = lengths.iter().map(|&len| prefill(len)).collect();
        let mut refs: Vec<&mut AttnContext> = ctxs.iter_mut().collect();
        let batched = dec.decode_batch(&tokens, &lengths, &mut refs).unwrap();
        for (row, (single, ctx)) in singles.iter().zip(&single_ctxs).enumerate() {
            let got = batched.narrow(0, row as i64, 1);
            let diff = max_abs_diff(&got, single);
            assert!(diff <= TOL, "{name} row {row}: {diff}");
            assert_eq!(ctxs[row].len(), ctx.len());
            for l in 0..dec.num_layers() {
                let d = max_abs_diff(ctxs[row].keys(l).unwrap(), ctx.keys(l).unwrap());
                assert!(d <= TOL, "{name} row {row} layer {l} keys: {d}");
                let d = max_abs_diff(ctxs[row].values(l).unwrap(), ctx.values(l).unwrap());
                assert!(d <= TOL, "{name} row {row} layer {l} values: {d}");
            }
        }
        // Mismatched inputs are errors, not panics.
        let mut one = vec![&mut ctxs[0]];
        assert!(dec.decode_batch(&tokens, &lengths, &mut one).is_err());
    }
}

/// Layers holding blocks of different lengths (`push_layers_ragged`): each layer holds
/// its own tokens rotated to the positions that follow the context, as `push_layers`
/// would place them alone, and the context grows by the longest.
#[test]
fn ragged_layers_each_hold_their_own_tokens_at_the_following_positions() {
    let _g = tch::no_grad_guard();
    for name in CHECKPOINTS {
        let model = load(name, Precision::F32);
        let (_, embeds) = prompt_embeddings(&model, &frames(name, "frames"));
        let (_, _, kv) = one_shot(&model, &embeds);
        let dec = model.decoder();
        let head = kv.narrow(0, 5).unwrap();
        let lengths: Vec<i64> = (0..dec.num_layers() as i64).map(|l| 3 + 2 * l).collect();
        let per_layer: Vec<LayerKv> = kv
            .layers
            .iter()
            .zip(&lengths)
            .map(|(layer, &t)| LayerKv {
                keys: layer.keys.narrow(1, 7, t),
                values: layer.values.narrow(1, 7, t),
            })
            .collect();
        let mut ragged = AttnContext::new(dec.num_layers());
        ragged
            .push_segment(dec.rotary(), &head, &positions(0, 5))
            .unwrap();
        let pos: Vec<Tensor> = lengths.iter().map(|&t| positions(5, t)).collect();
        ragged
            .push_layers_ragged(dec.rotary(), &per_layer, &pos)
            .unwrap();
        assert_eq!(ragged.len(), 5 + lengths.iter().max().unwrap());
        for (l, &t) in lengths.iter().enumerate() {
            // Layer l alone, as push_layers places t tokens in every layer.
            let same: Vec<LayerKv> = kv
                .layers
                .iter()
                .map(|layer| LayerKv {
                    keys: layer.keys.narrow(1, 7, t),
                    values: layer.values.narrow(1, 7, t),
                })
                .collect();
            let mut alone = AttnContext::new(dec.num_layers());
            alone
                .push_segment(dec.rotary(), &head, &positions(0, 5))
                .unwrap();
            alone
                .push_layers(dec.rotary(), &same, &positions(5, t))
                .unwrap();
            assert_eq!(
                max_abs_diff(ragged.keys(l).unwrap(), alone.keys(l).unwrap()),
                0.0
            );
            assert_eq!(
                max_abs_diff(ragged.values(l).unwrap(), alone.values(l).unwrap()),
                0.0
            );
        }
        let short: Vec<Tensor> = (0..dec.num_layers()).map(|_| positions(5, 1)).collect();
        assert!(ragged
            .push_layers_ragged(dec.rotary(), &per_layer, &short)
            .is_err());
    }
}

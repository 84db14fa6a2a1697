//! Parity of the LLaVA-OneVision runtime with `transformers` 5.23 on the tiny random
//! checkpoints of tests/fixtures/llava_ov (goldens made by make_fixtures.py).

mod common;

use common::*;
use tch::Kind;
use vstreamd::model::Precision;

/// fp32 logits tolerance at every prefill position (max abs).
const F32_TOL: f64 = 1e-4;
/// bf16 vs the fp32 goldens: bf16 keeps 8 mantissa bits, so each of the ~10 matmul
/// layers adds ~0.4% relative error; logits here reach |4|.
const BF16_TOL: f64 = 0.25;

#[test]
fn pixel_values_match_the_video_processor_at_tower_size() {
    let _g = tch::no_grad_guard();
    for name in CHECKPOINTS {
        let model = load(name, Precision::F32);
        let pixels = model.preprocessor.process(&frames(name, "frames")).unwrap();
        let diff = max_abs_diff(&pixels, &golden(name)["pixel_values_videos"]);
        assert!(diff <= 1e-5, "{name}: pixel values differ by {diff}");
    }
}

#[test]
fn prompt_ids_and_fp32_logits_match_at_every_position() {
    let _g = tch::no_grad_guard();
    for name in CHECKPOINTS {
        let model = load(name, Precision::F32);
        let gold = golden(name);
        let (ids, embeds) = prompt_embeddings(&model, &frames(name, "frames"));
        assert_eq!(
            ids,
            Vec::<i64>::try_from(&gold["input_ids"]).unwrap(),
            "{name}: input ids"
        );
        let (_, logits) = model.generate_greedy(&embeds, 1, &[]).unwrap();
        let diff = max_abs_diff(&logits, &gold["logits"]);
        assert!(diff <= F32_TOL, "{name}: fp32 logits differ by {diff}");
    }
}

#[test]
fn greedy_generation_of_20_tokens_is_identical() {
    let _g = tch::no_grad_guard();
    for name in CHECKPOINTS {
        let model = load(name, Precision::F32);
        let (_, embeds) = prompt_embeddings(&model, &frames(name, "frames"));
        let (tokens, _) = model.generate_greedy(&embeds, 20, &[]).unwrap();
        let expected = Vec::<i64>::try_from(&golden(name)["generated"]).unwrap();
        assert_eq!(tokens, expected, "{name}: greedy tokens");
    }
}

#[test]
fn bf16_logits_stay_within_the_stated_bound() {
    let _g = tch::no_grad_guard();
    for name in CHECKPOINTS {
        let model = load(name, Precision::Bf16);
        let (_, embeds) = prompt_embeddings(&model, &frames(name, "frames"));
        assert_eq!(embeds.kind(), Kind::BFloat16);
        let (_, logits) = model.generate_greedy(&embeds, 1, &[]).unwrap();
        let diff = max_abs_diff(&logits, &golden(name)["logits"]);
        println!("{name}: bf16 max abs logit diff {diff:.4}");
        assert!(diff <= BF16_TOL, "{name}: bf16 logits differ by {diff}");
    }
}

/// Frames of another size go through antialiased bicubic resizing, rounded to uint8 as
/// torchvision does. Rounding of values landing near .5 may differ by one level, so
/// pixels are allowed one uint8 step (1/255/std ≈ 0.015) and logits a bound that such
/// steps can move them by.
#[test]
fn resized_frames_match_within_one_pixel_level() {
    let _g = tch::no_grad_guard();
    for name in CHECKPOINTS {
        let model = load(name, Precision::F32);
        let gold = golden(name);
        let odd = frames(name, "frames_odd");
        let (_, _, h, w) = odd.size4().unwrap();
        assert_ne!(
            (h, w),
            model.preprocessor.size(),
            "fixture frames must need resizing"
        );
        let pixels = model.preprocessor.process(&odd).unwrap();
        let one_level = 1.0 / 255.0 / 0.26130258 + 1e-5;
        let diff = max_abs_diff(&pixels, &gold["pixel_values_videos_odd"]);
        assert!(diff <= one_level, "{name}: resized pixels differ by {diff}");
        let (_, embeds) = prompt_embeddings(&model, &odd);
        let (_, logits) = model.generate_greedy(&embeds, 1, &[]).unwrap();
        let diff = max_abs_diff(&logits, &gold["odd_logits"]);
        assert!(
            diff <= 1e-2,
            "{name}: logits of resized frames differ by {diff}"
        );
    }
}

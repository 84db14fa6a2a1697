//! Qwen2.5-VL against `transformers` on the two tiny fixtures of
//! `tests/fixtures/qwen2_5_vl/make_fixtures.py` (5 frames resized by `smart_resize`,
//! the last repeated to fill a temporal patch, vs 4 frames at their size; windows that
//! do not tile the merged grid vs windows that do; GQA 4:1 vs 2:1; `mrope_section`
//! [2, 2, 2] vs [2, 3, 3]; tied vs untied; a temporal step of 50 (temporal positions
//! past the text after the video) vs 2.4 (truncated); the `save_pretrained` layout vs
//! the hub's), and the streaming engine on the same checkpoints:
//! - temporal patches, video features, input ids, M-RoPE positions, logits at every
//!   prompt position (≤ 1e-4 in fp32) and 20 greedy tokens (generated at the rope
//!   deltas' positions) equal the goldens; bf16 within a stated bound;
//! - the streaming layout (sinks, one temporal patch a block at re-based temporal
//!   positions, the question's chunk) with a window wider than the stream, and with
//!   every block retrieved from an f32 store, equals the one-shot prompt
//!   `transformers` builds for the same frames;
//! - keys stored before rotary and placed again at multi-axis positions equal the keys
//!   computed there.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::engine::{self, prepare, question_logits, store};
use common::{fixture_of, max_abs_diff, read_frames_dir, read_golden};
use tch::Tensor;
use vstreamd::engine::{AskMode, AskRequest};
use vstreamd::kv::Quant;
use vstreamd::model::preprocess::{resize_uint8, Resample};
use vstreamd::model::qwen2_5_vl::preprocess::patchify;
use vstreamd::model::{
    AttnContext, ForwardOptions, ModelOptions, Positions, Precision, Qwen25Vl, VideoLlm,
    VideoPrompt,
};

const CHECKPOINTS: [&str; 2] = ["tiny_q", "tiny_r"];
const PROMPT: &str = "what colour is the circle ?";
const TOL: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    fixture_of("qwen2_5_vl", name)
}

fn load(name: &str, precision: Precision) -> Qwen25Vl {
    Qwen25Vl::load(&fixture(name), ModelOptions::cpu(precision))
        .unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

fn golden(name: &str) -> HashMap<String, Tensor> {
    read_golden(&fixture(name))
}

fn golden_json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("golden.json")).unwrap())
        .unwrap()
}

fn fps(name: &str) -> f64 {
    golden_json(name)["fps"].as_f64().unwrap()
}

fn frames(name: &str) -> Tensor {
    read_frames_dir(&fixture(name).join("frames"))
}

#[test]
fn logits_positions_and_greedy_tokens_match_transformers() {
    let _g = tch::no_grad_guard();
    for name in CHECKPOINTS {
        let model = load(name, Precision::F32);
        let g = golden(name);
        let v = &model.config.vision_config;
        let video = frames(name);
        let pixels = model.preprocessor.process_own_size(&video).unwrap();
        let patches = patchify(
            &pixels,
            v.patch_size,
            v.spatial_merge_size,
            v.temporal_patch_size,
        )
        .unwrap();
        let d = max_abs_diff(
            &patches.reshape([-1, patches.size()[2]]),
            &g["pixel_values_videos"],
        );
        assert!(d <= 1e-5, "{name}: temporal patches differ by {d}");
        let features = model.encode_video(&pixels).unwrap();
        let d = max_abs_diff(
            &features.reshape([-1, features.size()[2]]),
            &g["video_features"],
        );
        assert!(d <= TOL, "{name}: video features differ by {d}");

        let prompt = model.video_prompt(&video, fps(name), PROMPT).unwrap();
        assert_eq!(
            prompt.ids,
            Vec::<i64>::try_from(&g["input_ids"]).unwrap(),
            "{name} ids"
        );
        assert_eq!(
            max_abs_diff(&prompt.positions, &g["position_ids"]),
            0.0,
            "{name} positions"
        );
        let (tokens, logits) = model
            .decoder()
            .generate_greedy_at(&prompt.embeds, &prompt.positions, prompt.next, 20, &[])
            .unwrap();
        let d = max_abs_diff(&logits, &g["logits"]);
        eprintln!(
            "{name}: max |Δlogit| {d:.2e} over {} positions",
            prompt.ids.len()
        );
        assert!(d <= TOL, "{name}: logits differ by {d}");
        assert_eq!(
            tokens,
            Vec::<i64>::try_from(&g["generated"]).unwrap(),
            "{name} greedy"
        );
    }
}

/// bf16 runs the same graph at bf16 precision: its logits stay within 5% of the fp32
/// logits' range (measured: see the message printed).
#[test]
fn bf16_stays_within_a_stated_bound() {
    let _g = tch::no_grad_guard();
    for name in CHECKPOINTS {
        let model = load(name, Precision::Bf16);
        let g = golden(name);
        let prompt = model
            .video_prompt(&frames(name), fps(name), PROMPT)
            .unwrap();
        let (_, logits) = model
            .decoder()
            .generate_greedy_at(&prompt.embeds, &prompt.positions, prompt.next, 1, &[])
            .unwrap();
        let range = g["logits"].abs().max().double_value(&[]);
        let d = max_abs_diff(&logits, &g["logits"]);
        eprintln!("{name}: bf16 max |Δlogit| {d:.4} of a logit range {range:.2}");
        assert!(
            d <= 0.05 * range,
            "{name}: bf16 logits off by {d} of {range}"
        );
    }
}

/// Every word the tokenizer does not know is its `<unk>`, a row of the table; an id
/// past the table (a tokenizer from another checkpoint) is a typed error.
#[test]
fn text_ids_stay_inside_the_embedding_table() {
    let _g = tch::no_grad_guard();
    let model = load("tiny_q", Precision::F32);
    let chunk = model
        .question_chunk("what colour is the zeppelin ?")
        .unwrap();
    assert_eq!(chunk.size()[1], model.summary().hidden_size);
    let rows = model.summary().vocab_size;
    let err = model
        .decoder()
        .embed(&Tensor::from_slice(&[1i64, rows]))
        .unwrap_err();
    assert!(
        matches!(err, vstreamd::error::ModelError::Tokenizer(_)),
        "{err}"
    );
    assert!(model
        .decoder()
        .embed(&Tensor::from_slice(&[-1i64]))
        .is_err());
}

/// The fixture's frames at the size streams are encoded at.
fn stream_frames(model: &Qwen25Vl, name: &str) -> Tensor {
    let (h, w) = model.preprocessor.stream_size();
    resize_uint8(&frames(name), h, w, Resample::Bicubic).unwrap()
}

/// The question chunk's logits in the one-shot prompt `transformers` builds for
/// `video` at the stream's frame rate (frames 2 s apart: 0.5 fps).
fn one_shot_question_logits(model: &Qwen25Vl, video: &Tensor) -> Tensor {
    let prompt = model.video_prompt(video, 0.5, PROMPT).unwrap();
    let (_, logits) = model
        .decoder()
        .generate_greedy_at(&prompt.embeds, &prompt.positions, prompt.next, 1, &[])
        .unwrap();
    let video_token = model.config.video_token_id;
    let tail = prompt.ids.iter().rposition(|&i| i == video_token).unwrap() as i64 + 1;
    let t = prompt.ids.len() as i64;
    logits.narrow(0, tail, t - tail)
}

#[test]
fn the_streaming_layout_equals_the_one_shot_prompt() {
    let _g = tch::no_grad_guard();
    for name in CHECKPOINTS {
        let model = load(name, Precision::F32);
        let video = stream_frames(&model, name);
        let n = video.size()[0];
        let blocks = (n + 1) / 2;
        let expected = one_shot_question_logits(&model, &video);

        // A window wider than the stream: every block from the window.
        let dir = tempfile::tempdir().unwrap();
        let (layout, mut ctx) =
            engine::streamed(&model, &video, name, 100, store(Quant::F32), dir.path());
        assert_eq!(ctx.frames_encoded() as i64, n);
        assert_eq!(ctx.window().len() as i64, blocks);
        let frames: i64 = ctx
            .window()
            .iter()
            .map(|b| i64::from(b.meta.layout.frames))
            .sum();
        assert_eq!(
            frames, n,
            "{name}: blocks of two frames, an odd last one alone"
        );
        let recent = AskRequest {
            stream: "s".into(),
            question: PROMPT.into(),
            mode: AskMode::Recent,
            ..Default::default()
        };
        let mut prepared = prepare(&model, &layout, &mut ctx, &recent);
        assert_eq!(prepared.figures.window_frames as i64, blocks);
        let d = max_abs_diff(&question_logits(&model, &mut prepared), &expected);
        assert!(d <= TOL, "{name} window: {d}");

        // Every block retrieved, unquantised, from the store and placed again (none, or
        // all but the last, from the window).
        for recent in [0, 1] {
            let all = AskRequest {
                stream: "s".into(),
                question: PROMPT.into(),
                mode: AskMode::Retrieve,
                top_k: Some(64),
                recent_frames: Some(recent),
                ..Default::default()
            };
            let mut prepared = prepare(&model, &layout, &mut ctx, &all);
            assert_eq!(prepared.citations.len() as i64, blocks);
            assert_eq!(prepared.figures.window_frames, recent);
            let d = max_abs_diff(&question_logits(&model, &mut prepared), &expected);
            assert!(d <= TOL, "{name} retrieved, {recent} from the window: {d}");
        }
    }
}

#[test]
fn keys_stored_before_rotary_and_placed_again_equal_keys_in_place() {
    let _g = tch::no_grad_guard();
    for name in CHECKPOINTS {
        let model = load(name, Precision::F32);
        let m: &dyn VideoLlm = &model;
        let dec = model.decoder();
        let VideoPrompt {
            embeds, positions, ..
        } = model
            .video_prompt(&frames(name), fps(name), PROMPT)
            .unwrap();
        let opts = ForwardOptions {
            append: true,
            return_kv: true,
            return_queries: false,
        };
        let mut in_place = AttnContext::new(dec.num_layers());
        let out = dec
            .forward(&embeds, &positions, &mut in_place, opts)
            .unwrap();
        let kv = out.kv.unwrap();
        // Placed 1,000 positions further on every axis, then compared with keys
        // computed there.
        let shifted_at = Positions::from_tensor(&*positions + 1_000);
        let mut placed = AttnContext::new(dec.num_layers());
        m.place(&mut placed, &kv.layers, &shifted_at).unwrap();
        let mut shifted = AttnContext::new(dec.num_layers());
        dec.forward(&embeds, &shifted_at, &mut shifted, opts)
            .unwrap();
        for l in 0..dec.num_layers() {
            let d = max_abs_diff(placed.keys(l).unwrap(), shifted.keys(l).unwrap());
            assert!(d <= TOL, "{name} layer {l}: {d}");
        }
    }
}

/// The contract independent parity checks call: `vstreamd model run --model DIR --frames
/// ... --fps F --prompt TEXT --dump-logits OUT` gives the goldens' ids and logits, and
/// `model inspect` names the family.
#[test]
fn the_cli_contract_gives_the_goldens() {
    for name in CHECKPOINTS {
        let dir = tempfile::tempdir().unwrap();
        let dump = dir.path().join("logits.safetensors");
        let mut frame_paths: Vec<PathBuf> = std::fs::read_dir(fixture(name).join("frames"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        frame_paths.sort();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vstreamd"))
            .args(["model", "run", "--model"])
            .arg(fixture(name))
            .arg("--frames")
            .args(&frame_paths)
            .args(["--fps", &fps(name).to_string(), "--prompt", PROMPT])
            .args(["--max-new-tokens", "20", "--dump-logits"])
            .arg(&dump)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let g = golden(name);
        let dumped: HashMap<String, Tensor> = Tensor::read_safetensors(&dump)
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(max_abs_diff(&dumped["input_ids"], &g["input_ids"]), 0.0);
        assert!(max_abs_diff(&dumped["logits"], &g["logits"]) <= TOL);
        let inspect = std::process::Command::new(env!("CARGO_BIN_EXE_vstreamd"))
            .args(["model", "inspect", "--model"])
            .arg(fixture(name))
            .output()
            .unwrap();
        let summary: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
        assert_eq!(summary["family"], "qwen2_5_vl");
    }
}

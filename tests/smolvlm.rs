//! SmolVLM against `transformers` on the two tiny fixtures of
//! `tests/fixtures/smolvlm/make_fixtures.py` (pixel-shuffle scale 2 vs 3, GQA 4:1 vs
//! 2:1, tied vs untied, an even vs an odd vision width, default vs llama3 rotary, 1 vs
//! 0.5 fps, `save_pretrained`'s processor files vs the hub's `preprocessor_config.json`),
//! and the streaming engine on the same checkpoints:
//! - pixel values, image features, input ids, logits at every prompt position (≤ 1e-4
//!   in fp32) and 20 greedy tokens equal the goldens; bf16 within a stated bound;
//! - the streaming layout (sinks, one chunk per frame with its timestamp, the question's
//!   chunk) with a window wider than the stream, and with every block retrieved from an
//!   f32 store, equals the one-shot prefill of that token sequence;
//! - keys stored before rotary and placed again equal the keys computed in place.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::Tensor;
use vstreamd::engine::prompt::PromptLayout;
use vstreamd::engine::stream::StreamCtx;
use vstreamd::engine::{AskMode, AskRequest};
use vstreamd::kv::Quant;
mod common;

use common::engine::{self, prepare, question_logits, stamp, store};
use common::{fixture_of, max_abs_diff, read_frames_dir, read_golden};
use vstreamd::model::{
    AttnContext, ForwardOptions, ModelOptions, Positions, Precision, SmolVlm, VideoLlm, VideoPrompt,
};

const CHECKPOINTS: [&str; 2] = ["tiny_s", "tiny_t"];
const PROMPT: &str = "what colour is the circle ?";
const TOL: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    fixture_of("smolvlm", name)
}

fn load(name: &str, precision: Precision) -> SmolVlm {
    SmolVlm::load(&fixture(name), ModelOptions::cpu(precision))
        .unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

fn golden(name: &str) -> HashMap<String, Tensor> {
    read_golden(&fixture(name))
}

fn fps(name: &str) -> f64 {
    let text = std::fs::read_to_string(fixture(name).join("golden.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["fps"].as_f64().unwrap()
}

fn frames(name: &str) -> Tensor {
    read_frames_dir(&fixture(name).join("frames"))
}

#[test]
fn logits_and_greedy_tokens_match_transformers() {
    let _g = tch::no_grad_guard();
    for name in CHECKPOINTS {
        let model = load(name, Precision::F32);
        let g = golden(name);
        let video = frames(name);
        let pixels = model.preprocessor.process(&video).unwrap();
        let d = max_abs_diff(&pixels, &g["pixel_values"]);
        assert!(d <= 1e-6, "{name}: pixel values differ by {d}");
        let features = model.encode_frames(&pixels).unwrap();
        let d = max_abs_diff(&features, &g["image_features"]);
        assert!(d <= TOL, "{name}: image features differ by {d}");

        let VideoPrompt { ids, embeds, .. } =
            model.video_prompt(&video, fps(name), PROMPT).unwrap();
        assert_eq!(
            ids,
            Vec::<i64>::try_from(&g["input_ids"]).unwrap(),
            "{name} ids"
        );
        let (tokens, logits) = model.decoder().generate_greedy(&embeds, 20, &[]).unwrap();
        let d = max_abs_diff(&logits, &g["logits"]);
        assert!(d <= TOL, "{name}: logits differ by {d}");
        assert_eq!(
            tokens,
            Vec::<i64>::try_from(&g["generated"]).unwrap(),
            "{name} greedy"
        );
    }
}

/// bf16 runs the same graph at bf16 precision: its logits stay within 5% of the fp32
/// logits' range (measured: see the assertion message when it prints).
#[test]
fn bf16_stays_within_a_stated_bound() {
    let _g = tch::no_grad_guard();
    for name in CHECKPOINTS {
        let model = load(name, Precision::Bf16);
        let g = golden(name);
        let VideoPrompt { embeds, .. } = model
            .video_prompt(&frames(name), fps(name), PROMPT)
            .unwrap();
        let (_, logits) = model.decoder().generate_greedy(&embeds, 1, &[]).unwrap();
        let range = g["logits"].abs().max().double_value(&[]);
        let d = max_abs_diff(&logits, &g["logits"]);
        eprintln!("{name}: bf16 max |Δlogit| {d:.4} of a logit range {range:.2}");
        assert!(
            d <= 0.05 * range,
            "{name}: bf16 logits off by {d} of {range}"
        );
    }
}

/// The streaming token sequence as one prefill: sinks, every frame's chunk, the
/// question's chunk; the question chunk's logits.
fn one_shot_streaming_logits(model: &SmolVlm, embeds: &Tensor) -> Tensor {
    let m: &dyn VideoLlm = model;
    let dec = model.decoder();
    let sinks = dec
        .embed(&Tensor::from_slice(&m.sink_ids().unwrap()))
        .unwrap();
    let mut parts = vec![sinks];
    for i in 0..embeds.size()[0] {
        parts.push(m.frame_chunk(&embeds.get(i), stamp(i).pts).unwrap());
    }
    let question = m.question_chunk(PROMPT).unwrap();
    let q = question.size()[0];
    parts.push(question);
    let all = Tensor::cat(&parts, 0);
    let (_, logits) = dec.generate_greedy(&all, 1, &[]).unwrap();
    let t = logits.size()[0];
    logits.narrow(0, t - q, q)
}

fn streamed(model: &SmolVlm, name: &str, window: usize, dir: &Path) -> (PromptLayout, StreamCtx) {
    engine::streamed(model, &frames(name), name, window, store(Quant::F32), dir)
}

#[test]
fn the_streaming_layout_equals_its_one_shot_prefill() {
    let _g = tch::no_grad_guard();
    for name in CHECKPOINTS {
        let model = load(name, Precision::F32);
        let embeds = model
            .encode_frames(&model.preprocessor.process(&frames(name)).unwrap())
            .unwrap();
        let n = embeds.size()[0];
        let expected = one_shot_streaming_logits(&model, &embeds);

        // A window wider than the stream: every frame from the window.
        let dir = tempfile::tempdir().unwrap();
        let (layout, mut ctx) = streamed(&model, name, 100, dir.path());
        let recent = AskRequest {
            stream: "s".into(),
            question: PROMPT.into(),
            mode: AskMode::Recent,
            ..Default::default()
        };
        let mut prepared = prepare(&model, &layout, &mut ctx, &recent);
        assert_eq!(prepared.figures.window_frames as i64, n);
        let d = max_abs_diff(&question_logits(&model, &mut prepared), &expected);
        assert!(d <= TOL, "{name} window: {d}");

        // Every block retrieved, unquantised, from the store and placed again (none, or
        // all but the last frame, from the window).
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
            assert_eq!(prepared.citations.len() as i64, n);
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
        let VideoPrompt { embeds, .. } = model
            .video_prompt(&frames(name), fps(name), PROMPT)
            .unwrap();
        let t = embeds.size()[0];
        let opts = ForwardOptions {
            append: true,
            return_kv: true,
            return_queries: false,
        };
        let mut in_place = AttnContext::new(dec.num_layers());
        let out = dec
            .forward(&embeds, &m.positions(0, t).unwrap(), &mut in_place, opts)
            .unwrap();
        let kv = out.kv.unwrap();
        // Placed 1,000 positions further, then compared with keys computed there.
        let mut placed = AttnContext::new(dec.num_layers());
        m.place(&mut placed, &kv.layers, &m.positions(1_000, t).unwrap())
            .unwrap();
        let mut shifted = AttnContext::new(dec.num_layers());
        dec.forward(
            &embeds,
            &Positions::range(1_000, t, tch::Device::Cpu).unwrap(),
            &mut shifted,
            opts,
        )
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
        let text: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(name).join("golden.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            text["generated_text"].as_str().unwrap().trim(),
            "{name}: the greedy answer"
        );
        let inspect = std::process::Command::new(env!("CARGO_BIN_EXE_vstreamd"))
            .args(["model", "inspect", "--model"])
            .arg(fixture(name))
            .output()
            .unwrap();
        let summary: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
        assert_eq!(summary["family"], "smolvlm");
    }
}

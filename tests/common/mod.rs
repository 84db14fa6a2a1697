//! Shared helpers for the model tests: fixture paths, goldens, model loading.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::Tensor;
use vstreamd::model::{LlavaOnevision, ModelOptions, Precision};

pub const CHECKPOINTS: [&str; 2] = ["tiny_a", "tiny_b"];
/// The prompt the goldens were made with (see make_fixtures.py).
pub const PROMPT: &str = "what colour is the circle ?";

pub mod engine;

/// A LLaVA-OneVision fixture's directory.
pub fn fixture(name: &str) -> PathBuf {
    fixture_of("llava_ov", name)
}

/// Fixture `name` of a family's folder under `tests/fixtures`.
pub fn fixture_of(family: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(family)
        .join(name)
}

pub fn load(name: &str, precision: Precision) -> LlavaOnevision {
    LlavaOnevision::load(&fixture(name), ModelOptions::cpu(precision))
        .unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

pub fn golden(name: &str) -> HashMap<String, Tensor> {
    read_golden(&fixture(name))
}

/// `golden.safetensors` of a fixture directory, by tensor name.
pub fn read_golden(fixture: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixture.join("golden.safetensors"))
        .expect("golden.safetensors")
        .into_iter()
        .collect()
}

/// Frames in `dir` (sorted PNGs) as uint8 [N, 3, H, W].
pub fn frames(name: &str, dir: &str) -> Tensor {
    read_frames_dir(&fixture(name).join(dir))
}

/// The images in `dir`, sorted by name, as uint8 [N, 3, H, W].
pub fn read_frames_dir(dir: &Path) -> Tensor {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("frames dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    paths.sort();
    vstreamd::cli::read_frames(&paths).expect("frames")
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_kind(tch::Kind::Double);
    let b = b.to_kind(tch::Kind::Double);
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a - b).abs().max().double_value(&[])
}

/// Input embeddings [T, hidden] and ids of the golden prompt over `frames`.
pub fn prompt_embeddings(model: &LlavaOnevision, frames: &Tensor) -> (Vec<i64>, Tensor) {
    let pixels = model.preprocessor.process(frames).expect("preprocess");
    let features = model.encode_frames(&pixels).expect("encode");
    let ids = model
        .video_prompt_ids(PROMPT, frames.size()[0])
        .expect("prompt ids");
    let embeds = model.embed_with_video(&ids, &features).expect("embed");
    (ids, embeds)
}

//! A synthetic scene world and a tiny LLaVA-OneVision trained on it, so that the
//! daemon has a model that actually answers (issue 7).
//!
//! - [`world`]: scenes as scripts of timed objects (shapes, colours, straight-line
//!   motion, appear/leave times) over plain or lightly textured backgrounds,
//!   deterministic from a `u64` seed; random training clips.
//! - [`render`]: a scene at time `t` → packed RGB u8 frame, rasterised in plain Rust.
//! - [`qa`]: questions and one-word answers derived from a clip's ground truth.
//! - [`script`]: long scripted streams with ground truth (the demo, needle streams).
//! - [`checkpoint`]: the Hugging Face checkpoint files of a tiny model (config, word
//!   level `tokenizer.json`, Qwen2 chat template, processor config, initial weights).
//! - [`train`]: from-scratch training on the CPU with libtorch autograd through the
//!   model code inference runs.
//! - [`eval`]: held-out accuracy through the real inference path.
//!
//! Design after the synthetic-shape VQA datasets (CLEVR, Johnson et al. 2017; its
//! video successor CLEVRER, Yi et al. 2020) scaled down to what a 2-core CPU trains
//! in minutes: few shapes and colours, short clips, one-word answers.

pub mod checkpoint;
pub mod eval;
pub mod qa;
pub mod render;
pub mod script;
pub mod train;
pub mod world;

pub use world::{Background, Clip, ClipSpec, Colour, Object, Scene, Shape};

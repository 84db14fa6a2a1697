//! Held-out question answering on random clips through the real inference path: frames
//! rendered at the tower's size, the model's own preprocessor, `encode_frames`, the
//! templated prompt with its video placeholders expanded, `generate_greedy` stopping at
//! `<|im_end|>`, the answer decoded and compared word for word with the ground truth.
//!
//! Each clip gets one question of every kind it answers (see [`crate::synth::qa`]), so
//! N clips give up to 4N questions; clips come from the stream `seed`
//! ([`clip_seed`]), which training must not use.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{SynthError, SynthResult};
use crate::model::LlavaOnevision;
use crate::synth::qa::{sample_of_kind, Qa, QuestionKind};
use crate::synth::render::frames_to_tensor;
use crate::synth::world::{clip_seed, mix, Clip, ClipSpec};

/// Seed of the clip stream the shipped checkpoint is tested on.
pub const HELD_OUT_SEED: u64 = 9_000_001;

/// A wrong answer, kept for the report.
#[derive(Debug, Clone)]
pub struct Mistake {
    pub clip_seed: u64,
    pub qa: Qa,
    pub got: String,
}

/// Correct and asked counts per question kind.
#[derive(Debug, Clone, Default)]
pub struct EvalReport {
    pub per_kind: BTreeMap<QuestionKind, (usize, usize)>,
    pub mistakes: Vec<Mistake>,
}

impl EvalReport {
    pub fn correct(&self) -> usize {
        self.per_kind.values().map(|(c, _)| c).sum()
    }

    pub fn total(&self) -> usize {
        self.per_kind.values().map(|(_, t)| t).sum()
    }

    pub fn accuracy(&self) -> f64 {
        self.correct() as f64 / self.total().max(1) as f64
    }

    /// One line per kind and the total, for printing.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for (kind, (c, t)) in &self.per_kind {
            out.push_str(&format!(
                "  {:<8} {:>4}/{:<4} {:6.2}%\n",
                kind.name(),
                c,
                t,
                100.0 * *c as f64 / (*t).max(1) as f64
            ));
        }
        out.push_str(&format!(
            "  {:<8} {:>4}/{:<4} {:6.2}%",
            "all",
            self.correct(),
            self.total(),
            100.0 * self.accuracy()
        ));
        out
    }
}

/// The clip shape a checkpoint was trained on (`synth_world.json`), or the default at
/// the tower's size.
pub fn clip_spec_for(dir: &Path, model: &LlavaOnevision) -> SynthResult<ClipSpec> {
    let path = dir.join("synth_world.json");
    let spec = if path.exists() {
        let text = std::fs::read_to_string(&path).map_err(|e| SynthError::io(&path, e))?;
        serde_json::from_str(&text)?
    } else {
        let size = model.config.vision_config.image_size as u32;
        ClipSpec {
            width: size,
            height: size,
            ..ClipSpec::default()
        }
    };
    Ok(spec)
}

/// The model's greedy answer to `question` about `clip`, decoded without special tokens.
pub fn answer(model: &LlavaOnevision, clip: &Clip, question: &str) -> SynthResult<String> {
    let _guard = tch::no_grad_guard();
    let embeddings = encode_clip(model, clip)?;
    answer_encoded(model, &embeddings, clip.times.len(), question)
}

fn encode_clip(model: &LlavaOnevision, clip: &Clip) -> SynthResult<tch::Tensor> {
    let frames: Vec<_> = clip.times.iter().map(|&t| clip.scene.render(t)).collect();
    let pixels = model.preprocessor.process(&frames_to_tensor(&frames)?)?;
    Ok(model.encode_frames(&pixels)?)
}

fn answer_encoded(
    model: &LlavaOnevision,
    frame_embeddings: &tch::Tensor,
    frames: usize,
    question: &str,
) -> SynthResult<String> {
    let ids = model.video_prompt_ids(question, frames as i64)?;
    let embeds = model.embed_with_video(&ids, frame_embeddings)?;
    let (tokens, _) = model.generate_greedy(&embeds, 4, &model.stop_tokens())?;
    Ok(model.text.decode(&tokens, true)?.trim().to_owned())
}

/// Accuracy over `clips` clips of the stream `seed`.
pub fn evaluate(
    model: &LlavaOnevision,
    spec: &ClipSpec,
    clips: usize,
    seed: u64,
) -> SynthResult<EvalReport> {
    let _guard = tch::no_grad_guard();
    let mut report = EvalReport::default();
    for index in 0..clips as u64 {
        let seed = clip_seed(seed, index);
        let clip = Clip::random(spec, seed);
        let mut rng = fastrand::Rng::with_seed(mix(seed));
        let questions: Vec<Qa> = QuestionKind::ALL
            .iter()
            .filter_map(|&kind| sample_of_kind(&clip, kind, &mut rng))
            .collect();
        let embeddings = encode_clip(model, &clip)?;
        for qa in questions {
            let got = answer_encoded(model, &embeddings, clip.times.len(), &qa.question)?;
            let entry = report.per_kind.entry(qa.kind).or_default();
            entry.1 += 1;
            if got == qa.answer {
                entry.0 += 1;
            } else {
                report.mistakes.push(Mistake {
                    clip_seed: seed,
                    qa,
                    got,
                });
            }
        }
    }
    Ok(report)
}

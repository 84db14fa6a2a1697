//! The streaming prompt layout. `transformers` builds a LLaVA-OneVision video question
//! as `prefix · <video>×(F·tokens_per_frame + 1) · suffix` (the chat template around one
//! user turn holding a video and then the text). Streaming keeps that layout: the
//! prefix (system prompt, user turn opening) is encoded once per stream and acts as the
//! attention sinks; frames follow as they arrive; a question brings the `image_newline`
//! embedding and the suffix (its text, the turn end, the assistant opening). With every
//! frame in the context this is token for token the prompt `transformers` would build.

use tch::Tensor;

use crate::error::{EngineError, EngineResult};
use crate::model::LlavaOnevision;

/// Sink token ids shared by every question of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptLayout {
    /// Ids before the video placeholder.
    pub prefix: Vec<i64>,
}

impl PromptLayout {
    pub fn new(model: &LlavaOnevision) -> EngineResult<Self> {
        let (prefix, _) = split(model, "?")?;
        Ok(Self { prefix })
    }

    /// Ids after the video placeholder for `question`; the template must put the same
    /// prefix before the video for every question (the sinks are shared).
    pub fn suffix(&self, model: &LlavaOnevision, question: &str) -> EngineResult<Vec<i64>> {
        let (prefix, suffix) = split(model, question)?;
        if prefix != self.prefix {
            return Err(EngineError::InvalidRequest(
                "the chat template puts question text before the video; streaming needs the \
                 video first"
                    .into(),
            ));
        }
        Ok(suffix)
    }

    /// The question chunk's input embeddings: `image_newline`, then the suffix tokens.
    pub fn question_embeddings(
        &self,
        model: &LlavaOnevision,
        question: &str,
    ) -> EngineResult<Tensor> {
        let suffix = self.suffix(model, question)?;
        let ids = Tensor::from_slice(&suffix).f_to_device(model.device())?;
        let text = model.decoder().embed(&ids)?;
        Ok(Tensor::f_cat(&[&model.newline()?, &text], 0)?)
    }
}

fn split(model: &LlavaOnevision, question: &str) -> EngineResult<(Vec<i64>, Vec<i64>)> {
    let templated = model.text.video_user_turn(question)?;
    let ids = model.text.encode(&templated)?;
    let video = model.text.video_token_id();
    let mut at = ids
        .iter()
        .enumerate()
        .filter(|(_, &i)| i == video)
        .map(|(p, _)| p);
    match (at.next(), at.next()) {
        (Some(p), None) => Ok((ids[..p].to_vec(), ids[p + 1..].to_vec())),
        _ => Err(EngineError::InvalidRequest(
            "the question must not contain the video placeholder token".into(),
        )),
    }
}

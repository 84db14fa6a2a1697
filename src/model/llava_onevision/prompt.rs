//! LLaVA-OneVision's streaming prompt. `transformers` builds a video question as
//! `prefix · <video>×(F·tokens_per_frame + 1) · suffix` (the chat template around one
//! user turn holding a video and then the text). Streaming keeps that layout: the
//! prefix (system prompt, user turn opening) is the sinks; each frame's chunk is its
//! pooled embeddings alone; a question brings the `image_newline` embedding and the
//! suffix (its text, the turn end, the assistant opening). With every frame in the
//! context this is token for token the prompt `transformers` builds.

use tch::Tensor;

use super::LlavaOnevision;
use crate::error::{ModelError, ModelResult};

impl LlavaOnevision {
    /// The templated ids of a user turn holding a video then `question`, split around
    /// the video placeholder.
    fn split_prompt(&self, question: &str) -> ModelResult<(Vec<i64>, Vec<i64>)> {
        self.text.split_video_turn(question)
    }

    /// Ids before the video placeholder, the same for every question.
    pub(super) fn streaming_sinks(&self) -> ModelResult<Vec<i64>> {
        let (prefix, _) = self.split_prompt("?")?;
        if prefix.is_empty() {
            return Err(ModelError::Unsupported(
                "the chat template puts nothing before the video: streaming needs sink tokens"
                    .into(),
            ));
        }
        Ok(prefix)
    }

    /// `image_newline`, then the ids after the video placeholder for `question`; the
    /// template must put the same prefix before the video for every question.
    pub(super) fn streaming_question(&self, question: &str) -> ModelResult<Tensor> {
        let (prefix, suffix) = self.split_prompt(question)?;
        if prefix != self.streaming_sinks()? {
            return Err(ModelError::Unsupported(
                "the chat template puts question text before the video; streaming needs the \
                 video first"
                    .into(),
            ));
        }
        let ids = Tensor::from_slice(&suffix).f_to_device(self.device())?;
        let text = self.decoder().embed(&ids)?;
        Ok(Tensor::f_cat(&[&self.newline()?, &text], 0)?)
    }
}

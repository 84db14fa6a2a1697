//! The streaming prompt as the engine lays it out: the model's sink ids (its family's
//! prompt up to the first frame, encoded once per stream), then frame chunks as they
//! arrive, then a question's chunk. Each family decides what those hold
//! ([`crate::model::VideoLlm`]); with every frame in the context the layout is the
//! prompt `transformers` builds for the whole video (or the family documents where it
//! differs).

use tch::Tensor;

use crate::error::{EngineError, EngineResult, ModelError};
use crate::model::VideoLlm;

/// Sink token ids shared by every question of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptLayout {
    /// Ids before the first frame.
    pub prefix: Vec<i64>,
}

impl PromptLayout {
    pub fn new(model: &dyn VideoLlm) -> EngineResult<Self> {
        Ok(Self {
            prefix: model.sink_ids()?,
        })
    }

    /// The question chunk's input embeddings; a question the model cannot take is the
    /// asker's error.
    pub fn question_embeddings(
        &self,
        model: &dyn VideoLlm,
        question: &str,
    ) -> EngineResult<Tensor> {
        model.question_chunk(question).map_err(|e| match e {
            ModelError::BadPrompt(m) => EngineError::InvalidRequest(m),
            other => other.into(),
        })
    }
}

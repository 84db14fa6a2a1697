//! What every family's configuration shares: reading `config.json`-style files, rotary
//! parameters as checkpoints write them, token id lists. Each part's config lives with
//! its code (`vision/siglip.rs`, `decoder/llama.rs`, a family's `config.rs`) as a serde
//! mirror of the checkpoint's JSON with the defaults `transformers` 5.x applies to
//! fields checkpoints leave out (candle's `models/llava/config.rs` habit). Fields this
//! runtime does not use are ignored, so configs of older and newer `transformers` load.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::{ModelError, ModelResult};

pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> ModelResult<T> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: path.to_owned(),
        source,
    })
}

/// Rotary parameters: `rope_parameters` (transformers 5) or the older top-level
/// `rope_theta` + `rope_scaling`.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
pub struct RopeParameters {
    #[serde(default)]
    pub rope_type: Option<String>,
    #[serde(default, alias = "type")]
    pub legacy_type: Option<String>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// `linear` and `llama3`: the scaling factor.
    #[serde(default)]
    pub factor: Option<f64>,
    /// `llama3`.
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<f64>,
    /// Multi-axis rotary (Qwen2-VL's `mrope`): frequency pairs per axis.
    #[serde(default)]
    pub mrope_section: Option<Vec<i64>>,
}

/// `eos_token_id`: one id or several.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TokenIds {
    One(i64),
    Many(Vec<i64>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<i64> {
        match self {
            TokenIds::One(i) => vec![*i],
            TokenIds::Many(v) => v.clone(),
        }
    }
}

pub(crate) fn default_true() -> bool {
    true
}

//! What every family's configuration shares: reading `config.json`-style files, rotary
//! parameters as checkpoints write them, token id lists. Each part's config lives with
//! its code (`vision/siglip.rs`, `decoder/llama.rs`, a family's `config.rs`) as a serde
//! mirror of the checkpoint's JSON with the defaults `transformers` 5.x applies to
//! fields checkpoints leave out (candle's `models/llava/config.rs` habit). Fields this
//! runtime does not use are ignored, so configs of older and newer `transformers` load.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{ModelError, ModelResult};

pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> ModelResult<T> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: path.to_owned(),
        source,
    })
}

/// The video processor's settings as `transformers` finds them: the whole of
/// `video_preprocessor_config.json`, else the `video_processor` entry of
/// `processor_config.json`, else the image processor's `preprocessor_config.json` (the
/// hub checkpoints' layout); with `processor_config.json` itself when present.
pub(crate) fn video_processor_section(dir: &Path) -> ModelResult<(Value, Option<Value>)> {
    let processor_path = dir.join("processor_config.json");
    let processor: Option<Value> = if processor_path.exists() {
        Some(read_json(&processor_path)?)
    } else {
        None
    };
    let video_path = dir.join("video_preprocessor_config.json");
    let image_path = dir.join("preprocessor_config.json");
    let section: Value = if video_path.exists() {
        read_json(&video_path)?
    } else if let Some(v) = processor.as_ref().and_then(|p| p.get("video_processor")) {
        v.clone()
    } else if image_path.exists() {
        read_json(&image_path)?
    } else {
        return Err(ModelError::MissingFile {
            dir: dir.to_owned(),
            what: "video processor config (video_preprocessor_config.json, processor_config.json or preprocessor_config.json)",
        });
    };
    Ok((section, processor))
}

/// Three numbers of a processor section (`image_mean`, `image_std`), `default` when
/// absent; one number stands for all three.
pub(crate) fn three_floats(section: &Value, key: &str, default: [f64; 3]) -> ModelResult<Vec<f64>> {
    match section.get(key) {
        None => Ok(default.to_vec()),
        Some(Value::Array(a)) if a.len() == 3 => a
            .iter()
            .map(|x| {
                x.as_f64()
                    .ok_or_else(|| ModelError::InvalidConfig(format!("{key}: not a number")))
            })
            .collect(),
        Some(Value::Number(n)) => Ok(vec![n.as_f64().unwrap_or(0.5); 3]),
        Some(_) => Err(ModelError::InvalidConfig(format!("{key} needs 3 values"))),
    }
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

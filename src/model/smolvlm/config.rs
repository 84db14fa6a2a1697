//! `config.json` of a `smolvlm` checkpoint (SmolVLM / SmolVLM2: a SigLIP-like
//! `vision_config` of model_type `smolvlm_vision`, a Llama `text_config`, the
//! pixel-shuffle `scale_factor`), and its video processor's settings as
//! `SmolVLMVideoProcessor` reads them, with `transformers`' defaults for what a
//! checkpoint leaves out.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ModelError, ModelResult};
use crate::model::config::{read_json, three_floats, video_processor_section};
use crate::model::decoder::llama::LlamaConfig;
use crate::model::vision::siglip::SiglipVisionConfig;

/// Top-level `config.json` of a `smolvlm` checkpoint.
#[derive(Debug, Clone)]
pub struct SmolVlmConfig {
    pub vision_config: SiglipVisionConfig,
    pub text_config: LlamaConfig,
    /// Side of the square of patches folded into one token (pixel shuffle).
    pub scale_factor: i64,
    pub image_token_id: i64,
    pub tie_word_embeddings: bool,
}

/// `vision_config` with `SmolVLMVisionConfig`'s defaults (not SigLIP-so400m's).
#[derive(Debug, Clone, Deserialize)]
struct VisionSection {
    #[serde(default = "d_vision_hidden")]
    hidden_size: i64,
    #[serde(default = "d_vision_intermediate")]
    intermediate_size: i64,
    #[serde(default = "d_vision_layers")]
    num_hidden_layers: i64,
    #[serde(default = "d_vision_heads")]
    num_attention_heads: i64,
    #[serde(default = "d_channels")]
    num_channels: i64,
    #[serde(default = "d_image_size")]
    image_size: i64,
    #[serde(default = "d_patch_size")]
    patch_size: i64,
    #[serde(default = "d_vision_act")]
    hidden_act: String,
    #[serde(default = "d_ln_eps")]
    layer_norm_eps: f64,
}

fn d_vision_hidden() -> i64 {
    1152
}
fn d_vision_intermediate() -> i64 {
    3072
}
fn d_vision_layers() -> i64 {
    12
}
fn d_vision_heads() -> i64 {
    16
}
fn d_channels() -> i64 {
    3
}
fn d_image_size() -> i64 {
    224
}
fn d_patch_size() -> i64 {
    32
}
fn d_vision_act() -> String {
    "gelu_pytorch_tanh".into()
}
fn d_ln_eps() -> f64 {
    1e-6
}

#[derive(Debug, Clone, Deserialize)]
struct Top {
    model_type: String,
    #[serde(default)]
    vision_config: Option<Value>,
    #[serde(default)]
    text_config: Option<Value>,
    #[serde(default = "d_scale")]
    scale_factor: i64,
    #[serde(default = "d_image_token")]
    image_token_id: i64,
    #[serde(default)]
    tie_word_embeddings: bool,
}

fn d_scale() -> i64 {
    2
}
fn d_image_token() -> i64 {
    128257
}

fn parse<T: serde::de::DeserializeOwned>(value: Value, path: &Path) -> ModelResult<T> {
    serde_json::from_value(value).map_err(|source| ModelError::Json {
        path: path.to_owned(),
        source,
    })
}

impl SmolVlmConfig {
    pub fn load(path: &Path) -> ModelResult<Self> {
        let top: Top = read_json(path)?;
        if top.model_type != "smolvlm" {
            return Err(ModelError::Unsupported(format!(
                "model_type `{}` (this family loads `smolvlm`)",
                top.model_type
            )));
        }
        let v: VisionSection = parse(
            top.vision_config
                .unwrap_or_else(|| Value::Object(Default::default())),
            path,
        )?;
        // `SmolVLMConfig`'s text sub-config: a `llama` with RMSNorm eps 1e-5 unless said.
        let mut text = top
            .text_config
            .unwrap_or_else(|| Value::Object(Default::default()));
        if let Value::Object(map) = &mut text {
            map.entry("model_type").or_insert_with(|| "llama".into());
            map.entry("rms_norm_eps").or_insert_with(|| 1e-5.into());
        }
        let text_config: LlamaConfig = parse(text, path)?;
        let config = Self {
            vision_config: SiglipVisionConfig {
                hidden_size: v.hidden_size,
                intermediate_size: v.intermediate_size,
                num_hidden_layers: v.num_hidden_layers,
                num_attention_heads: v.num_attention_heads,
                num_channels: v.num_channels,
                image_size: v.image_size,
                patch_size: v.patch_size,
                hidden_act: v.hidden_act,
                layer_norm_eps: v.layer_norm_eps,
                vision_use_head: false,
            },
            text_config,
            scale_factor: top.scale_factor,
            image_token_id: top.image_token_id,
            tie_word_embeddings: top.tie_word_embeddings,
        };
        config.validate()?;
        Ok(config)
    }

    /// Both flags may carry tying.
    pub fn tied_embeddings(&self) -> bool {
        self.tie_word_embeddings || self.text_config.tie_word_embeddings
    }

    /// Visual tokens per frame: the patch grid folded by `scale_factor` on each side.
    pub fn tokens_per_frame(&self) -> i64 {
        let g = self.vision_config.grid();
        (g / self.scale_factor) * (g / self.scale_factor)
    }

    fn validate(&self) -> ModelResult<()> {
        let v = &self.vision_config;
        v.validate("vision_config")?;
        self.text_config.validate("text_config")?;
        if v.image_size % v.patch_size != 0 {
            return Err(ModelError::InvalidConfig(
                "vision_config.image_size must be a multiple of patch_size (SmolVLM's grid is exact)"
                    .into(),
            ));
        }
        if self.scale_factor < 1 || v.grid() % self.scale_factor != 0 {
            return Err(ModelError::InvalidConfig(format!(
                "scale_factor {} must divide the {}-patch grid side",
                self.scale_factor,
                v.grid()
            )));
        }
        Ok(())
    }
}

pub use crate::model::preprocess::Resample;

/// `SmolVLMVideoProcessor`'s settings: frames resized so their longest edge is
/// `longest_edge` (aspect kept, the other side rounded up to even) or to `size`, then
/// to the square `max_image_size`, then rescaled and normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoProcessing {
    pub do_resize: bool,
    pub longest_edge: Option<i64>,
    /// (height, width) when the config gives them instead of a longest edge.
    pub size: Option<(i64, i64)>,
    pub max_image_size: i64,
    pub resample: Resample,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: Vec<f64>,
    pub image_std: Vec<f64>,
    /// `<image>` tokens per frame the processor writes (`image_seq_len`), if it says.
    pub image_seq_len: Option<i64>,
}

impl VideoProcessing {
    /// Finds the settings as `transformers` does: `video_preprocessor_config.json`, the
    /// `video_processor` entry of `processor_config.json`, or else the image processor's
    /// `preprocessor_config.json` (the hub checkpoints' layout), whose `size` wins over
    /// `video_sampling.video_size` as `SmolVLMVideoProcessor.__init__` has it.
    pub fn load(dir: &Path) -> ModelResult<Self> {
        let (section, processor) = video_processor_section(dir)?;
        let mut settings = Self::from_section(&section)?;
        settings.image_seq_len = processor
            .as_ref()
            .and_then(|p| p.get("image_seq_len"))
            .and_then(Value::as_i64);
        Ok(settings)
    }

    fn from_section(s: &Value) -> ModelResult<Self> {
        let flag = |key: &str| s.get(key).and_then(Value::as_bool).unwrap_or(true);
        let size = s
            .get("size")
            .or_else(|| s.get("video_sampling").and_then(|v| v.get("video_size")));
        let edge = |v: Option<&Value>| {
            v.and_then(|v| v.get("longest_edge"))
                .and_then(Value::as_i64)
        };
        let hw = size.and_then(|v| {
            Some((
                v.get("height").and_then(Value::as_i64)?,
                v.get("width").and_then(Value::as_i64)?,
            ))
        });
        let longest_edge = match (edge(size), hw) {
            (Some(e), _) => Some(e),
            (None, Some(_)) => None,
            (None, None) => Some(4 * 364),
        };
        let max_image_size = edge(s.get("max_image_size")).unwrap_or(364);
        let resample = Resample::from_pil(s.get("resample").and_then(Value::as_i64).unwrap_or(1))?;
        let settings = Self {
            do_resize: flag("do_resize"),
            longest_edge,
            size: hw,
            max_image_size,
            resample,
            do_rescale: flag("do_rescale"),
            rescale_factor: s
                .get("rescale_factor")
                .and_then(Value::as_f64)
                .unwrap_or(1.0 / 255.0),
            do_normalize: flag("do_normalize"),
            image_mean: three_floats(s, "image_mean", [0.5; 3])?,
            image_std: three_floats(s, "image_std", [0.5; 3])?,
            image_seq_len: None,
        };
        if settings.max_image_size < 1 || settings.longest_edge.is_some_and(|e| e < 1) {
            return Err(ModelError::InvalidConfig(
                "video processor sizes must be positive".into(),
            ));
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_wins_over_video_sampling_as_in_transformers() {
        let hub = serde_json::json!({
            "size": {"longest_edge": 2048},
            "max_image_size": {"longest_edge": 512},
            "video_sampling": {"fps": 1, "max_frames": 64, "video_size": {"longest_edge": 512}},
            "resample": 1,
        });
        let s = VideoProcessing::from_section(&hub).unwrap();
        assert_eq!(s.longest_edge, Some(2048));
        assert_eq!(s.max_image_size, 512);
        assert_eq!(s.resample, Resample::Lanczos);
        let sampling_only = serde_json::json!({
            "video_sampling": {"video_size": {"longest_edge": 512}},
        });
        let s = VideoProcessing::from_section(&sampling_only).unwrap();
        assert_eq!(s.longest_edge, Some(512));
        assert_eq!(s.max_image_size, 364);
        let defaults = VideoProcessing::from_section(&serde_json::json!({})).unwrap();
        assert_eq!(defaults.longest_edge, Some(1456));
        assert_eq!(defaults.image_mean, vec![0.5; 3]);
    }
}

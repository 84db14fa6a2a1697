//! Checkpoint configuration: serde mirrors of Hugging Face `config.json` (LLaVA-OneVision
//! with SigLIP `vision_config` and Qwen2 `text_config`) and of the video preprocessor
//! config, with the defaults `transformers` 5.x applies to fields checkpoints leave out
//! (candle `models/llava/config.rs` habit). Fields this runtime does not use are ignored,
//! so configs written by older and newer `transformers` both load.

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

/// `vision_feature_layer`: one hidden-state index (negative counts from the end) or
/// several whose features are concatenated.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum FeatureLayer {
    One(i64),
    Many(Vec<i64>),
}

impl FeatureLayer {
    pub fn indices(&self) -> Vec<i64> {
        match self {
            FeatureLayer::One(i) => vec![*i],
            FeatureLayer::Many(v) => v.clone(),
        }
    }
}

/// Top-level `config.json` of a `llava_onevision` checkpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct LlavaOnevisionConfig {
    pub model_type: String,
    pub vision_config: SiglipVisionConfig,
    pub text_config: Qwen2Config,
    #[serde(default = "default_image_token", alias = "image_token_id")]
    pub image_token_index: i64,
    #[serde(default = "default_video_token", alias = "video_token_id")]
    pub video_token_index: i64,
    #[serde(default = "default_projector_act")]
    pub projector_hidden_act: String,
    #[serde(default = "default_select_strategy")]
    pub vision_feature_select_strategy: String,
    #[serde(default = "default_feature_layer")]
    pub vision_feature_layer: FeatureLayer,
    #[serde(default = "default_true")]
    pub multimodal_projector_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_image_token() -> i64 {
    151646
}
fn default_video_token() -> i64 {
    151647
}
fn default_projector_act() -> String {
    "gelu".into()
}
fn default_select_strategy() -> String {
    "full".into()
}
fn default_feature_layer() -> FeatureLayer {
    FeatureLayer::One(-1)
}
fn default_true() -> bool {
    true
}

/// `vision_config` (`siglip_vision_model`).
#[derive(Debug, Clone, Deserialize)]
pub struct SiglipVisionConfig {
    #[serde(default = "default_vision_hidden")]
    pub hidden_size: i64,
    #[serde(default = "default_vision_intermediate")]
    pub intermediate_size: i64,
    #[serde(default = "default_vision_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "default_vision_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "default_channels")]
    pub num_channels: i64,
    #[serde(default = "default_image_size")]
    pub image_size: i64,
    #[serde(default = "default_patch_size")]
    pub patch_size: i64,
    #[serde(default = "default_vision_act")]
    pub hidden_act: String,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub vision_use_head: bool,
}

// Defaults are LlavaOnevisionConfig's SigLIP-so400m sub-config defaults.
fn default_vision_hidden() -> i64 {
    1152
}
fn default_vision_intermediate() -> i64 {
    4304
}
fn default_vision_layers() -> i64 {
    26
}
fn default_vision_heads() -> i64 {
    16
}
fn default_channels() -> i64 {
    3
}
fn default_image_size() -> i64 {
    384
}
fn default_patch_size() -> i64 {
    14
}
fn default_vision_act() -> String {
    "gelu_pytorch_tanh".into()
}
fn default_ln_eps() -> f64 {
    1e-6
}

impl SiglipVisionConfig {
    /// Patches along one side of the (square) input (a remainder is dropped).
    pub fn grid(&self) -> i64 {
        self.image_size / self.patch_size
    }
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }
}

/// Rotary parameters: `rope_parameters` (transformers 5) or the older top-level
/// `rope_theta` + `rope_scaling`.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct RopeParameters {
    #[serde(default)]
    pub rope_type: Option<String>,
    #[serde(default, alias = "type")]
    pub legacy_type: Option<String>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
}

/// `text_config` (`qwen2`).
#[derive(Debug, Clone, Deserialize)]
pub struct Qwen2Config {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    #[serde(default)]
    pub head_dim: Option<i64>,
    #[serde(default = "default_silu")]
    pub hidden_act: String,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: i64,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
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

fn default_silu() -> String {
    "silu".into()
}
fn default_max_pos() -> i64 {
    32768
}
fn default_rms_eps() -> f64 {
    1e-6
}

impl Qwen2Config {
    pub fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    /// Base of the default rotary embedding; other rope types are refused by `validate`.
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10000.0)
    }
    fn rope_type(&self) -> String {
        let from = |p: &RopeParameters| p.rope_type.clone().or(p.legacy_type.clone());
        self.rope_parameters
            .as_ref()
            .and_then(from)
            .or_else(|| self.rope_scaling.as_ref().and_then(from))
            .unwrap_or_else(|| "default".into())
    }
}

impl LlavaOnevisionConfig {
    pub fn load(path: &Path) -> ModelResult<Self> {
        let config: Self = read_json(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Both the top-level flag and the text config's may carry tying (transformers
    /// forwards the text config's when the top level says false).
    pub fn tied_embeddings(&self) -> bool {
        self.tie_word_embeddings || self.text_config.tie_word_embeddings
    }

    /// Tokens one video frame becomes: the patch grid pooled 2x2 (rounded up).
    pub fn tokens_per_frame(&self) -> i64 {
        let pooled = (self.vision_config.grid() + 1) / 2;
        pooled * pooled
    }

    fn validate(&self) -> ModelResult<()> {
        let bad = |m: String| Err(ModelError::InvalidConfig(m));
        if self.model_type != "llava_onevision" {
            return Err(ModelError::Unsupported(format!(
                "model_type `{}` (this runtime loads `llava_onevision`)",
                self.model_type
            )));
        }
        let v = &self.vision_config;
        let t = &self.text_config;
        for (name, value) in [
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.num_attention_heads", v.num_attention_heads),
            ("vision_config.patch_size", v.patch_size),
            ("vision_config.image_size", v.image_size),
            ("text_config.hidden_size", t.hidden_size),
            ("text_config.num_attention_heads", t.num_attention_heads),
            ("text_config.num_hidden_layers", t.num_hidden_layers),
            ("text_config.vocab_size", t.vocab_size),
            ("text_config.num_key_value_heads", t.kv_heads()),
        ] {
            if value <= 0 {
                return bad(format!("{name} must be positive, got {value}"));
            }
        }
        if v.hidden_size % v.num_attention_heads != 0 {
            return bad("vision_config.hidden_size must divide by num_attention_heads".into());
        }
        // The patch conv has stride `patch_size` and no padding: where the patch does
        // not divide the size (SigLIP-so400m-patch14-384: 384 = 27 · 14 + 6) the last
        // rows and columns are dropped, as in `transformers`.
        if v.image_size < v.patch_size {
            return bad("vision_config.image_size must be at least patch_size".into());
        }
        if t.num_attention_heads % t.kv_heads() != 0 {
            return bad(
                "text_config.num_attention_heads must divide by num_key_value_heads".into(),
            );
        }
        if t.head_dim() % 2 != 0 {
            return bad("text_config head_dim must be even for rotary embeddings".into());
        }
        let rope = t.rope_type();
        if rope != "default" {
            return Err(ModelError::Unsupported(format!(
                "rope type `{rope}` (only `default` rotary embeddings are implemented)"
            )));
        }
        if t.use_sliding_window {
            return Err(ModelError::Unsupported(
                "text_config.use_sliding_window (Qwen2's built-in window); vstreamd windows by frames instead".into(),
            ));
        }
        if !matches!(
            self.vision_feature_select_strategy.as_str(),
            "full" | "default"
        ) {
            return bad(format!(
                "vision_feature_select_strategy `{}` (expected `full` or `default`)",
                self.vision_feature_select_strategy
            ));
        }
        let layers = v.num_hidden_layers;
        for idx in self.vision_feature_layer.indices() {
            // hidden_states holds the embeddings plus one entry per layer.
            if idx > layers || idx < -(layers + 1) {
                return bad(format!(
                    "vision_feature_layer {idx} is outside the tower's {} hidden states",
                    layers + 1
                ));
            }
        }
        for (name, act) in [
            ("projector_hidden_act", &self.projector_hidden_act),
            ("vision_config.hidden_act", &v.hidden_act),
        ] {
            if crate::model::Activation::parse(act).is_none() {
                return Err(ModelError::Unsupported(format!("{name} `{act}`")));
            }
        }
        if t.hidden_act != "silu" {
            return Err(ModelError::Unsupported(format!(
                "text_config.hidden_act `{}`",
                t.hidden_act
            )));
        }
        Ok(())
    }
}

/// Video preprocessing as `LlavaOnevisionVideoProcessor` does it.
#[derive(Debug, Clone, Deserialize)]
pub struct VideoPreprocessorConfig {
    #[serde(default = "default_true")]
    pub do_resize: bool,
    #[serde(default)]
    pub size: Option<SizeSpec>,
    /// PIL resampling code: 2 bilinear, 3 bicubic.
    #[serde(default = "default_resample")]
    pub resample: i64,
    #[serde(default = "default_true")]
    pub do_rescale: bool,
    #[serde(default = "default_rescale")]
    pub rescale_factor: f64,
    #[serde(default = "default_true")]
    pub do_normalize: bool,
    #[serde(default = "default_mean")]
    pub image_mean: Vec<f64>,
    #[serde(default = "default_std")]
    pub image_std: Vec<f64>,
}

/// `size`: explicit height/width, or a shortest edge (treated as a square here, as
/// LLaVA-OneVision's SigLIP towers take square inputs).
#[derive(Debug, Clone, Deserialize)]
pub struct SizeSpec {
    pub height: Option<i64>,
    pub width: Option<i64>,
    pub shortest_edge: Option<i64>,
}

fn default_resample() -> i64 {
    3
}
fn default_rescale() -> f64 {
    1.0 / 255.0
}
fn default_mean() -> Vec<f64> {
    vec![0.48145466, 0.4578275, 0.40821073]
}
fn default_std() -> Vec<f64> {
    vec![0.26862954, 0.26130258, 0.27577711]
}

impl VideoPreprocessorConfig {
    /// Finds the video preprocessor config the way `transformers` 5 and the hub
    /// checkpoints lay it out: `video_preprocessor_config.json`, the `video_processor`
    /// entry of `processor_config.json`, or `preprocessor_config.json`.
    pub fn load(dir: &Path) -> ModelResult<Self> {
        let video = dir.join("video_preprocessor_config.json");
        if video.exists() {
            return read_json(&video);
        }
        let processor = dir.join("processor_config.json");
        if processor.exists() {
            let value: serde_json::Value = read_json(&processor)?;
            if let Some(section) = value.get("video_processor") {
                return serde_json::from_value(section.clone()).map_err(|source| {
                    ModelError::Json {
                        path: processor,
                        source,
                    }
                });
            }
        }
        let image = dir.join("preprocessor_config.json");
        if image.exists() {
            return read_json(&image);
        }
        Err(ModelError::MissingFile {
            dir: dir.to_owned(),
            what: "video preprocessor config (video_preprocessor_config.json, processor_config.json or preprocessor_config.json)",
        })
    }

    /// Output (height, width), given the tower's input size for configs that omit it.
    pub fn target_size(&self, tower_size: i64) -> (i64, i64) {
        match &self.size {
            Some(SizeSpec {
                height: Some(h),
                width: Some(w),
                ..
            }) => (*h, *w),
            Some(SizeSpec {
                shortest_edge: Some(s),
                ..
            }) => (*s, *s),
            _ => (tower_size, tower_size),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real LLaVA-OneVision-0.5B tower: 384 px in patches of 14 (27 patches, 6 px
    /// dropped), pooled to 14 × 14 = 196 tokens per frame.
    #[test]
    fn siglip_so400m_384_patch14_is_accepted() {
        let json = serde_json::json!({
            "model_type": "llava_onevision",
            "vision_config": {"image_size": 384, "patch_size": 14},
            "text_config": {"vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
                            "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2},
        });
        let config: LlavaOnevisionConfig = serde_json::from_value(json).unwrap();
        config.validate().unwrap();
        assert_eq!(config.vision_config.grid(), 27);
        assert_eq!(config.tokens_per_frame(), 196);
    }
}

//! `config.json` of a `llava_onevision` checkpoint: a SigLIP `vision_config`, a Qwen2
//! `text_config`, the projector and feature-selection settings, with `transformers`'
//! defaults for what checkpoints leave out.

use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, ModelResult};
use crate::model::config::{default_true, read_json};
use crate::model::decoder::llama::LlamaConfig;
use crate::model::vision::siglip::SiglipVisionConfig;

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
    pub text_config: LlamaConfig,
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

impl LlavaOnevisionConfig {
    pub fn load(path: &Path) -> ModelResult<Self> {
        let mut config: Self = read_json(path)?;
        // LLaVA-OneVision's text model is Qwen2 (`transformers`' default text config).
        config
            .text_config
            .model_type
            .get_or_insert_with(|| "qwen2".into());
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
                "model_type `{}` (this family loads `llava_onevision`)",
                self.model_type
            )));
        }
        let v = &self.vision_config;
        v.validate("vision_config")?;
        self.text_config.validate("text_config")?;
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
        if crate::model::Activation::parse(&self.projector_hidden_act).is_none() {
            return Err(ModelError::Unsupported(format!(
                "projector_hidden_act `{}`",
                self.projector_hidden_act
            )));
        }
        Ok(())
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

//! Qwen2.5-VL's `config.json`, read as `transformers`' `Qwen2_5_VLConfig` reads it: the
//! text model either nested under `text_config` (as `transformers` 5 saves it) or flat
//! at the top level (the hub checkpoints, with `rope_scaling: {"type": "mrope",
//! "mrope_section": [...]}`); and the video processor's settings
//! (`Qwen2VLVideoProcessor`), including `smart_resize`.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ModelError, ModelResult};
use crate::model::config::{read_json, three_floats, video_processor_section, RopeParameters};
use crate::model::decoder::llama::LlamaConfig;
use crate::model::preprocess::Resample;

/// `vision_config` (`Qwen2_5_VLVisionConfig`), with its defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    #[serde(default = "default_depth")]
    pub depth: i64,
    pub hidden_size: i64,
    #[serde(default = "default_silu")]
    pub hidden_act: String,
    pub intermediate_size: i64,
    #[serde(alias = "num_attention_heads")]
    pub num_heads: i64,
    #[serde(default = "default_three", alias = "in_chans")]
    pub in_channels: i64,
    #[serde(default = "default_patch")]
    pub patch_size: i64,
    #[serde(default = "default_two")]
    pub spatial_merge_size: i64,
    #[serde(default = "default_two")]
    pub temporal_patch_size: i64,
    /// Temporal positions per second of video (`get_rope_index`).
    #[serde(default = "default_tokens_per_second")]
    pub tokens_per_second: f64,
    /// Side of an attention window, in pixels.
    #[serde(default = "default_window")]
    pub window_size: i64,
    pub out_hidden_size: i64,
    /// Blocks attending over the whole frame; the others attend within windows.
    #[serde(default = "default_fullatt")]
    pub fullatt_block_indexes: Vec<i64>,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
}

fn default_depth() -> i64 {
    32
}
fn default_silu() -> String {
    "silu".into()
}
fn default_three() -> i64 {
    3
}
fn default_patch() -> i64 {
    14
}
fn default_two() -> i64 {
    2
}
fn default_tokens_per_second() -> f64 {
    4.0
}
fn default_window() -> i64 {
    112
}
fn default_fullatt() -> Vec<i64> {
    vec![7, 15, 23, 31]
}

impl VisionConfig {
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_heads.max(1)
    }

    /// Base of the 2-D rotary embedding.
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .unwrap_or(10000.0)
    }

    /// Merged tokens per window side (`window_size / merge / patch`).
    pub fn merged_window(&self) -> i64 {
        self.window_size / self.spatial_merge_size / self.patch_size
    }

    fn validate(&self, text_hidden: i64) -> ModelResult<()> {
        let bad = |m: String| Err(ModelError::InvalidConfig(format!("vision_config.{m}")));
        for (name, v) in [
            ("depth", self.depth),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_heads", self.num_heads),
            ("in_channels", self.in_channels),
            ("patch_size", self.patch_size),
            ("spatial_merge_size", self.spatial_merge_size),
            ("temporal_patch_size", self.temporal_patch_size),
        ] {
            if v <= 0 {
                return bad(format!("{name} must be positive, got {v}"));
            }
        }
        if self.hidden_size % self.num_heads != 0 || self.head_dim() % 4 != 0 {
            return bad(format!(
                "hidden_size {} over {} heads must give a head size divisible by 4 (2-D rotary)",
                self.hidden_size, self.num_heads
            ));
        }
        if self.merged_window() < 1 {
            return bad(format!(
                "window_size {} is smaller than a merged patch",
                self.window_size
            ));
        }
        if self.out_hidden_size != text_hidden {
            return bad(format!(
                "out_hidden_size {} differs from the text model's hidden_size {text_hidden}",
                self.out_hidden_size
            ));
        }
        if let Some(&i) = self
            .fullatt_block_indexes
            .iter()
            .find(|&&i| i < 0 || i >= self.depth)
        {
            return bad(format!(
                "fullatt_block_indexes names block {i} of {}",
                self.depth
            ));
        }
        if !(self.tokens_per_second.is_finite() && self.tokens_per_second >= 0.0) {
            return bad("tokens_per_second must be a non-negative number".into());
        }
        if self.hidden_act != "silu" {
            return Err(ModelError::Unsupported(format!(
                "vision_config.hidden_act `{}`",
                self.hidden_act
            )));
        }
        Ok(())
    }
}

/// `config.json` of a Qwen2.5-VL checkpoint.
#[derive(Debug, Clone)]
pub struct Qwen25VlConfig {
    pub vision_config: VisionConfig,
    pub text_config: LlamaConfig,
    pub image_token_id: i64,
    pub video_token_id: i64,
    pub vision_start_token_id: i64,
    pub vision_end_token_id: i64,
    pub tie_word_embeddings: bool,
}

impl Qwen25VlConfig {
    pub fn load(path: &Path) -> ModelResult<Self> {
        let raw: Value = read_json(path)?;
        Self::from_value(&raw).map_err(|e| match e {
            ModelError::InvalidConfig(m) => {
                ModelError::InvalidConfig(format!("{}: {m}", path.display()))
            }
            other => other,
        })
    }

    fn from_value(raw: &Value) -> ModelResult<Self> {
        let parse = |v: &Value, what: &str| -> ModelResult<LlamaConfig> {
            serde_json::from_value(v.clone())
                .map_err(|e| ModelError::InvalidConfig(format!("{what}: {e}")))
        };
        // `transformers` 5 nests the text model; the hub's configs keep it flat.
        let mut text_config = match raw.get("text_config") {
            Some(t) if t.is_object() => parse(t, "text_config")?,
            _ => parse(raw, "the text model's keys")?,
        };
        // Qwen2's attention biases (q/k/v, not o) whatever the nested model_type says.
        text_config.model_type = Some("qwen2_5_vl_text".into());
        let vision = raw
            .get("vision_config")
            .ok_or_else(|| ModelError::InvalidConfig("vision_config is missing".into()))?;
        let vision_config: VisionConfig = serde_json::from_value(vision.clone())
            .map_err(|e| ModelError::InvalidConfig(format!("vision_config: {e}")))?;
        let id = |key: &str, default: i64| raw.get(key).and_then(Value::as_i64).unwrap_or(default);
        let top_tie = raw.get("tie_word_embeddings").and_then(Value::as_bool);
        let config = Self {
            image_token_id: id("image_token_id", 151655),
            video_token_id: id("video_token_id", 151656),
            vision_start_token_id: id("vision_start_token_id", 151652),
            vision_end_token_id: id("vision_end_token_id", 151653),
            // As `Qwen2_5_VLConfig.__post_init__`: tied if either level says so.
            tie_word_embeddings: top_tie.unwrap_or(false) || text_config.tie_word_embeddings,
            vision_config,
            text_config,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> ModelResult<()> {
        self.text_config.validate("text_config")?;
        let t = &self.text_config;
        let section = t.mrope_section().ok_or_else(|| {
            ModelError::InvalidConfig("the text model's rope has no mrope_section".into())
        })?;
        if section.iter().sum::<i64>() * 2 != t.head_dim() {
            return Err(ModelError::InvalidConfig(format!(
                "mrope_section {section:?} must sum to head_dim / 2 = {}",
                t.head_dim() / 2
            )));
        }
        self.vision_config.validate(t.hidden_size)
    }
}

/// `Qwen2VLVideoProcessor`'s settings.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoProcessing {
    pub do_resize: bool,
    /// `size.shortest_edge` / `min_pixels`: the fewest pixels a resized frame has.
    pub min_pixels: i64,
    /// `size.longest_edge` / `max_pixels`: the most.
    pub max_pixels: i64,
    pub patch_size: i64,
    pub temporal_patch_size: i64,
    pub merge_size: i64,
    pub resample: Resample,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: Vec<f64>,
    pub image_std: Vec<f64>,
}

/// OpenAI CLIP's mean and std, the processor's defaults.
const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

impl VideoProcessing {
    /// Finds the settings as `transformers` does (see
    /// [`crate::model::config::video_processor_section`]).
    pub fn load(dir: &Path) -> ModelResult<Self> {
        let (section, _) = video_processor_section(dir)?;
        Self::from_section(&section)
    }

    /// As `Qwen2VLVideoProcessor.__init__`: `size` (default shortest 128·28² and longest
    /// 768·28² pixels), then top-level `min_pixels` / `max_pixels` over it.
    pub fn from_section(s: &Value) -> ModelResult<Self> {
        let int = |key: &str| s.get(key).and_then(Value::as_i64);
        let flag = |key: &str| s.get(key).and_then(Value::as_bool).unwrap_or(true);
        let size = |key: &str| {
            s.get("size")
                .and_then(|v| v.get(key))
                .and_then(Value::as_i64)
        };
        let settings = Self {
            do_resize: flag("do_resize"),
            min_pixels: int("min_pixels")
                .or_else(|| size("shortest_edge"))
                .unwrap_or(128 * 28 * 28),
            max_pixels: int("max_pixels")
                .or_else(|| size("longest_edge"))
                .unwrap_or(768 * 28 * 28),
            patch_size: int("patch_size").unwrap_or(14),
            temporal_patch_size: int("temporal_patch_size").unwrap_or(2),
            merge_size: int("merge_size").unwrap_or(2),
            resample: Resample::from_pil(int("resample").unwrap_or(3))?,
            do_rescale: flag("do_rescale"),
            rescale_factor: s
                .get("rescale_factor")
                .and_then(Value::as_f64)
                .unwrap_or(1.0 / 255.0),
            do_normalize: flag("do_normalize"),
            image_mean: three_floats(s, "image_mean", CLIP_MEAN)?,
            image_std: three_floats(s, "image_std", CLIP_STD)?,
        };
        if settings.patch_size < 1
            || settings.merge_size < 1
            || settings.temporal_patch_size < 1
            || settings.min_pixels < 1
            || settings.max_pixels < settings.min_pixels
        {
            return Err(ModelError::InvalidConfig(format!(
                "video processor: sizes must be positive and min_pixels ≤ max_pixels, got {settings:?}"
            )));
        }
        Ok(settings)
    }

    /// Height and width a multiple of this: a merged patch.
    pub fn factor(&self) -> i64 {
        self.patch_size * self.merge_size
    }

    /// `smart_resize`: the size frames of `height` × `width` are resized to.
    pub fn target_size(&self, height: i64, width: i64) -> ModelResult<(i64, i64)> {
        smart_resize(
            height,
            width,
            self.factor(),
            self.min_pixels,
            self.max_pixels,
        )
    }
}

/// `smart_resize` of `transformers`' Qwen2-VL processors: both sides a multiple of
/// `factor`, the area within `[min_pixels, max_pixels]`, the aspect ratio kept as
/// closely as that allows. Python's `round` rounds halves to even, as here.
pub fn smart_resize(
    height: i64,
    width: i64,
    factor: i64,
    min_pixels: i64,
    max_pixels: i64,
) -> ModelResult<(i64, i64)> {
    if height < 1 || width < 1 {
        return Err(ModelError::InvalidInput(format!(
            "a {width}x{height} frame has no pixels"
        )));
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > 200.0 {
        return Err(ModelError::InvalidInput(format!(
            "absolute aspect ratio must be smaller than 200, got {}",
            h.max(w) / h.min(w)
        )));
    }
    let mut h_bar = (h / f).round_ties_even() as i64 * factor;
    let mut w_bar = (w / f).round_ties_even() as i64 * factor;
    if h_bar * w_bar > max_pixels {
        let beta = (h * w / max_pixels as f64).sqrt();
        h_bar = factor.max((h / beta / f).floor() as i64 * factor);
        w_bar = factor.max((w / beta / f).floor() as i64 * factor);
    } else if h_bar * w_bar < min_pixels {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() as i64 * factor;
        w_bar = (w * beta / f).ceil() as i64 * factor;
    }
    Ok((h_bar, w_bar))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_rounds_halves_to_even_and_keeps_the_area_in_bounds() {
        // 37 / 8 = 4.625 → 5, 53 / 8 = 6.625 → 7.
        assert_eq!(smart_resize(37, 53, 8, 256, 2560).unwrap(), (40, 56));
        // 36 / 8 = 4.5 → 4 (half to even), 44 / 8 = 5.5 → 6.
        assert_eq!(smart_resize(36, 44, 8, 64, 100_000).unwrap(), (32, 48));
        // Too many pixels: scaled down, floored to the factor.
        assert_eq!(smart_resize(448, 448, 8, 256, 2560).unwrap(), (48, 48));
        // Too few: scaled up, ceiled.
        assert_eq!(
            smart_resize(10, 10, 28, 56 * 56, 1 << 20).unwrap(),
            (56, 56)
        );
        assert!(smart_resize(1, 400, 28, 1, 1 << 30).is_err());
    }

    #[test]
    fn hub_and_nested_configs_read_the_same() {
        let nested = serde_json::json!({
            "model_type": "qwen2_5_vl", "video_token_id": 7, "tie_word_embeddings": true,
            "text_config": {"vocab_size": 80, "hidden_size": 48, "intermediate_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 2, 2]}},
            "vision_config": {"depth": 2, "hidden_size": 32, "intermediate_size": 48, "num_heads": 2,
                "patch_size": 4, "window_size": 16, "out_hidden_size": 48, "fullatt_block_indexes": [1]},
        });
        let flat = serde_json::json!({
            "model_type": "qwen2_5_vl", "video_token_id": 7, "tie_word_embeddings": true,
            "vocab_size": 80, "hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 1, "rope_theta": 1e6,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 2, 2]},
            "vision_config": {"depth": 2, "hidden_size": 32, "intermediate_size": 48, "num_heads": 2,
                "in_chans": 3, "patch_size": 4, "window_size": 16, "out_hidden_size": 48,
                "fullatt_block_indexes": [1]},
        });
        for raw in [nested, flat] {
            let c = Qwen25VlConfig::from_value(&raw).unwrap();
            assert_eq!(c.text_config.mrope_section(), Some(&[2, 2, 2][..]));
            assert_eq!(c.text_config.rope_theta(), 1e6);
            assert!(c.tie_word_embeddings);
            assert_eq!(c.vision_config.merged_window(), 2);
            assert_eq!(c.video_token_id, 7);
        }
    }

    #[test]
    fn pixel_bounds_come_from_size_or_the_top_level() {
        let hub = serde_json::json!({"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14});
        let s = VideoProcessing::from_section(&hub).unwrap();
        assert_eq!(
            (s.min_pixels, s.max_pixels, s.factor()),
            (3136, 12845056, 28)
        );
        let saved = serde_json::json!({"size": {"shortest_edge": 256, "longest_edge": 2560}, "patch_size": 4});
        let s = VideoProcessing::from_section(&saved).unwrap();
        assert_eq!((s.min_pixels, s.max_pixels, s.factor()), (256, 2560, 8));
        assert_eq!(s.resample, Resample::Bicubic);
        let bad = serde_json::json!({"min_pixels": 10, "max_pixels": 5});
        assert!(VideoProcessing::from_section(&bad).is_err());
    }
}

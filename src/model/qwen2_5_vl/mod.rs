//! Qwen2.5-VL (Bai et al. 2025; `transformers`' `models/qwen2_5_vl`,
//! `Qwen2_5_VLForConditionalGeneration`, model_type `qwen2_5_vl`), the family most
//! streaming video work builds on: a native-resolution vision transformer with window
//! attention over temporal patches of two frames ([`vision`]), a 2 × 2 patch merger
//! into a Qwen2 decoder with multi-axis rotary positions (M-RoPE, [`positions`]).
//!
//! One stored block is one temporal patch: two consecutive frames and their merged
//! tokens (16 × 16 = 256 at 448 px). The streaming layout is the chat template's (as
//! for LLaVA-OneVision): the sinks are the ids before the video placeholder (system
//! prompt, the user turn's opening, `<|vision_start|>`), a block's chunk is its visual
//! tokens alone, a question's chunk the ids after the placeholder (`<|vision_end|>`,
//! the text, the turn end, the assistant's opening). Positions are re-based after the
//! sinks (see [`positions`]): a context holding a whole video is token for token and
//! position for position the prompt `transformers` runs.
//!
//! # Layout
//! - [`config`]: `config.json` (nested or the hub's flat layout) and the video
//!   processor's settings (`smart_resize`).
//! - [`preprocess`]: resizing, normalising and cutting frames into temporal patches.
//! - [`vision`]: the vision transformer and merger.
//! - [`positions`]: M-RoPE positions of a prompt and of streamed blocks.

pub mod config;
pub mod positions;
pub mod preprocess;
pub mod vision;

use std::path::Path;
use std::time::Duration;

use tch::{Device, Kind, Tensor};

use crate::error::{ModelError, ModelResult};
use crate::model::decoder::llama::Llama;
use crate::model::family::{BlockLayout, Cursor, ModelSummary, Positions, VideoLlm, VideoPrompt};
use crate::model::nn::weights::WeightStore;
use crate::model::text::TextProcessor;
use crate::model::ModelOptions;
use config::{Qwen25VlConfig, VideoProcessing};
use preprocess::{patchify, QwenPreprocessor};
use vision::QwenVisionTower;

pub struct Qwen25Vl {
    pub config: Qwen25VlConfig,
    vision: QwenVisionTower,
    decoder: Llama,
    pub text: TextProcessor,
    pub preprocessor: QwenPreprocessor,
    /// Merged tokens (rows, columns) of one temporal patch of a streamed frame.
    stream_grid: (i64, i64),
    stop: Vec<i64>,
    parameters: i64,
    dtype: Kind,
    device: Device,
}

/// Where a checkpoint keeps the tower and the decoder: `model.visual` and
/// `model.language_model` (`save_pretrained` in transformers 5) or `visual` and
/// `model` (the hub).
fn prefixes(store: &WeightStore) -> (&'static str, &'static str) {
    if store.contains("model.visual.patch_embed.proj.weight") {
        ("model.visual", "model.language_model")
    } else {
        ("visual", "model")
    }
}

impl Qwen25Vl {
    /// Loads a checkpoint directory as `from_pretrained` would: config, weights (single
    /// or sharded), tokenizer, chat template, processor configs. A tensor the model
    /// needs and lacks, one it does not know, or a wrong shape is an error naming it.
    pub fn load(dir: &Path, opts: ModelOptions) -> ModelResult<Self> {
        if let Some(why) = opts.slow_cpu_gemm() {
            tracing::warn!(model = %dir.display(), "{why}");
        }
        let config = Qwen25VlConfig::load(&dir.join("config.json"))?;
        let store = WeightStore::open(dir, opts.device, opts.dtype)?;
        let root = store.root();
        let (vp, tp) = prefixes(&store);
        let v = &config.vision_config;
        let t = &config.text_config;
        let vision = QwenVisionTower::load(&root.pp(vp), v)?;
        let tied = config.tie_word_embeddings;
        let head_scope = root.pp("lm_head");
        if tied {
            store.skip_prefix(&head_scope.name("weight"));
        }
        let decoder = Llama::load(&root.pp(tp), Some(&head_scope), t, tied)?;
        store.finish()?;
        let parameters = store.parameter_count(tied.then_some("lm_head"));

        let text = TextProcessor::load(dir, config.video_token_id)?;
        if let Some(id) = text.token_id("<|video_pad|>") {
            if id != config.video_token_id {
                return Err(ModelError::InvalidConfig(format!(
                    "video_token_id {} is not the tokenizer's <|video_pad|> ({id})",
                    config.video_token_id
                )));
            }
        }
        let settings = VideoProcessing::load(dir)?;
        if (
            settings.patch_size,
            settings.merge_size,
            settings.temporal_patch_size,
        ) != (v.patch_size, v.spatial_merge_size, v.temporal_patch_size)
        {
            return Err(ModelError::InvalidConfig(format!(
                "the video processor cuts {}-pixel patches merged {}×{} over {} frames, the \
                 vision tower takes {}, {} and {}",
                settings.patch_size,
                settings.merge_size,
                settings.merge_size,
                settings.temporal_patch_size,
                v.patch_size,
                v.spatial_merge_size,
                v.temporal_patch_size
            )));
        }
        let preprocessor = QwenPreprocessor::new(settings, opts.device)?;
        let (h, w) = preprocessor.stream_size();
        let factor = v.patch_size * v.spatial_merge_size;
        let stream_grid = (h / factor, w / factor);
        let mut stop = t
            .eos_token_id
            .as_ref()
            .map(|e| e.to_vec())
            .unwrap_or_default();
        if let Some(id) = text.token_id("<|im_end|>") {
            if !stop.contains(&id) {
                stop.push(id);
            }
        }
        Ok(Self {
            config,
            vision,
            decoder,
            text,
            preprocessor,
            stream_grid,
            stop,
            parameters,
            dtype: opts.dtype,
            device: opts.device,
        })
    }

    /// Merged embeddings of each temporal patch of `pixels` [F, 3, H, W] (F frames, the
    /// last repeated to fill a patch): [⌈F/2⌉, H·W / (p·m)², hidden] in the model dtype.
    pub fn encode_video(&self, pixels: &Tensor) -> ModelResult<Tensor> {
        let v = &self.config.vision_config;
        let dims = pixels.size();
        let patches = patchify(
            &pixels.f_to_device(self.device)?,
            v.patch_size,
            v.spatial_merge_size,
            v.temporal_patch_size,
        )?;
        let grid = (dims[2] / v.patch_size, dims[3] / v.patch_size);
        Ok(self.vision.encode(&patches, grid)?.f_to_kind(self.dtype)?)
    }

    /// Temporal positions between consecutive temporal patches of frames `seconds`
    /// apart.
    fn step(&self, frame_seconds: f64) -> f32 {
        let v = &self.config.vision_config;
        positions::temporal_step(
            v.tokens_per_second,
            v.temporal_patch_size as f64 * frame_seconds,
        )
    }

    fn embed_ids(&self, ids: &[i64]) -> ModelResult<Tensor> {
        let ids = Tensor::from_slice(ids).f_to_device(self.device)?;
        self.decoder.embed(&ids)
    }
}

impl VideoLlm for Qwen25Vl {
    fn family(&self) -> &'static str {
        "qwen2_5_vl"
    }

    fn summary(&self) -> ModelSummary {
        let t = &self.config.text_config;
        let (h, _) = self.preprocessor.stream_size();
        ModelSummary {
            family: "qwen2_5_vl",
            parameters: self.parameters,
            vision_layers: self.config.vision_config.depth,
            layers: t.num_hidden_layers,
            heads: t.num_attention_heads,
            kv_heads: t.kv_heads(),
            head_dim: t.head_dim(),
            hidden_size: t.hidden_size,
            vocab_size: t.vocab_size,
            image_size: h,
            tokens_per_frame: self.tokens_per_frame(),
            frames_per_block: self.config.vision_config.temporal_patch_size,
            tokens_per_frame_chunk: self.tokens_per_frame(),
            max_position_embeddings: t.max_position_embeddings,
            kv_bytes_per_token_fp16: t.num_hidden_layers * 2 * t.kv_heads() * t.head_dim() * 2,
            encode_gflops_per_frame: VideoLlm::encode_flops(self) / 1e9,
            dtype: format!("{:?}", self.dtype),
            device: format!("{:?}", self.device),
        }
    }

    fn device(&self) -> Device {
        self.device
    }

    fn dtype(&self) -> Kind {
        self.dtype
    }

    fn decoder(&self) -> &Llama {
        &self.decoder
    }

    fn frame_size(&self) -> (u32, u32) {
        let (h, w) = self.preprocessor.stream_size();
        (h as u32, w as u32)
    }

    fn frames_per_block(&self) -> usize {
        self.config.vision_config.temporal_patch_size as usize
    }

    fn block_layout(&self) -> BlockLayout {
        BlockLayout {
            frames: self.config.vision_config.temporal_patch_size as u32,
            grid: (self.stream_grid.0 as u32, self.stream_grid.1 as u32),
        }
    }

    fn preprocess(&self, frames: &Tensor) -> ModelResult<Tensor> {
        self.preprocessor
            .process_at(frames, self.preprocessor.stream_size())
    }

    fn encode_frames(&self, pixels: &Tensor) -> ModelResult<Tensor> {
        let per = self.frames_per_block() as i64;
        let dims = pixels.size();
        let (h, w) = self.preprocessor.stream_size();
        if dims.len() != 4 || dims[0] % per != 0 || dims[1..] != [3, h, w] {
            return Err(ModelError::InvalidInput(format!(
                "pixel values must be [N, 3, {h}, {w}] with N a multiple of {per}, got {dims:?}"
            )));
        }
        self.encode_video(pixels)
    }

    fn tokens_per_frame(&self) -> i64 {
        self.stream_grid.0 * self.stream_grid.1
    }

    /// Per frame, half a temporal patch: its tower pass (embedding, blocks with window
    /// or full attention, merger) and the prefill of its merged tokens. For
    /// Qwen2.5-VL-3B at 448 px (1,024 patches of width 1,280 through 32 blocks, 256
    /// merged tokens into a 36-layer 2,048-wide decoder) ≈ 1.5 TFLOP a frame.
    fn encode_flops(&self) -> f64 {
        let v = &self.config.vision_config;
        let (h, w) = self.preprocessor.stream_size();
        let patches = ((h / v.patch_size) * (w / v.patch_size)) as f64;
        let side = (v.merged_window() * v.spatial_merge_size) as f64;
        let windowed = (side * side).min(patches);
        let tokens = self.tokens_per_frame() as f64;
        let per_patch = self.vision.flops(patches, windowed)
            + crate::model::family::prefill_flops(&self.config.text_config, tokens);
        per_patch / v.temporal_patch_size as f64
    }

    fn sink_ids(&self) -> ModelResult<Vec<i64>> {
        let (prefix, _) = self.text.split_video_turn("?")?;
        if prefix.is_empty() {
            return Err(ModelError::Unsupported(
                "the chat template puts nothing before the video: streaming needs sink tokens"
                    .into(),
            ));
        }
        Ok(prefix)
    }

    /// A block's chunk is its merged visual tokens alone.
    fn frame_chunk(&self, embeds: &Tensor, _time: Duration) -> ModelResult<Tensor> {
        Ok(embeds.f_to_kind(self.dtype)?)
    }

    fn question_chunk(&self, question: &str) -> ModelResult<Tensor> {
        let (prefix, suffix) = self.text.split_video_turn(question)?;
        if prefix != self.sink_ids()? {
            return Err(ModelError::Unsupported(
                "the chat template puts question text before the video; streaming needs the \
                 video first"
                    .into(),
            ));
        }
        self.embed_ids(&suffix)
    }

    fn stop_tokens(&self) -> Vec<i64> {
        self.stop.clone()
    }

    fn detokenize(&self, ids: &[i64]) -> ModelResult<String> {
        self.text.decode(ids, true)
    }

    /// Blocks take temporal indices from the cursor's block count, their rows and
    /// columns from their grid (see [`positions`]).
    fn block_positions(
        &self,
        cursor: &mut Cursor,
        blocks: &[(i64, BlockLayout)],
    ) -> ModelResult<Positions> {
        let step = self.step(cursor.frame_seconds);
        let mut parts = Vec::with_capacity(blocks.len());
        for &(tokens, layout) in blocks {
            let (rows, cols) = (i64::from(layout.grid.0), i64::from(layout.grid.1));
            if rows * cols != tokens || tokens == 0 {
                return Err(ModelError::InvalidInput(format!(
                    "a block of {tokens} tokens laid out as {rows}×{cols}: not a Qwen2.5-VL \
                     temporal patch"
                )));
            }
            let at = positions::block_positions(cursor, 1, (rows, cols), step, self.device)?;
            parts.push(at.shallow_clone());
        }
        if parts.is_empty() {
            return self.positions(cursor.next, 0);
        }
        Ok(Positions::from_tensor(Tensor::f_cat(&parts, 1)?))
    }

    fn max_positions(&self) -> i64 {
        self.config.text_config.max_position_embeddings
    }

    fn video_prompt(&self, frames: &Tensor, fps: f64, prompt: &str) -> ModelResult<VideoPrompt> {
        let n = frames.size().first().copied().unwrap_or(0);
        if n < 1 || !(fps.is_finite() && fps > 0.0) {
            return Err(ModelError::InvalidInput(format!(
                "a video needs frames and a positive fps (got {n} frames at {fps})"
            )));
        }
        let v = &self.config.vision_config;
        let pixels = self.preprocessor.process_own_size(frames)?;
        let features = self.encode_video(&pixels)?;
        let (patches, tokens, hidden) = features.size3()?;
        let dims = pixels.size();
        let factor = v.patch_size * v.spatial_merge_size;
        let grid = (dims[2] / factor, dims[3] / factor);
        let templated = self.text.video_user_turn(prompt)?;
        let ids = self
            .text
            .expand_video(&self.text.encode(&templated)?, (patches * tokens) as usize)?;
        let ids_t = Tensor::from_slice(&ids).f_to_device(self.device)?;
        let embeds = self.decoder.embed(&ids_t)?;
        let mask = ids_t.f_eq(self.config.video_token_id)?.f_unsqueeze(-1)?;
        let embeds = embeds.f_masked_scatter(&mask, &features.f_reshape([-1, hidden])?)?;
        // `second_per_grid_ts = temporal_patch_size / fps`, a float32 tensor there.
        let step =
            positions::temporal_step(v.tokens_per_second, v.temporal_patch_size as f64 / fps);
        let (positions, next) = positions::prompt_positions(
            &ids,
            self.config.video_token_id,
            patches,
            grid,
            step,
            self.device,
        )?;
        Ok(VideoPrompt {
            ids,
            embeds,
            positions,
            next,
        })
    }
}

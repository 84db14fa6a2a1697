//! LLaVA-OneVision (Li et al. 2024; `transformers`' `models/llava_onevision`), the
//! Video-LLM ReKV runs: SigLIP tower → 2-layer MLP projector → 2×2 bilinear pooling of
//! each frame's patch grid → Qwen2 decoder. A video of F frames becomes
//! F · ⌈g/2⌉² embeddings plus one `image_newline` embedding after the last frame,
//! scattered over the expanded `<video>` placeholder tokens of the templated prompt.
//!
//! For streaming, [`LlavaOnevision::encode_frames`] gives each frame's embeddings on
//! their own ([N, tokens_per_frame, hidden]); the caller places them (and the newline)
//! in whatever prompt layout it builds, and runs the decoder through
//! [`LlavaOnevision::decoder`] against an [`AttnContext`].

use std::path::Path;

use std::time::Duration;

use tch::{Device, Kind, Tensor};

pub mod config;
mod prompt;

use crate::error::{ModelError, ModelResult};
use crate::model::decoder::llama::Qwen2;
use crate::model::family::{ModelSummary, VideoLlm, VideoPrompt};
use crate::model::nn::weights::{Linear, WeightStore};
use crate::model::preprocess::{FramePreprocessor, VideoPreprocessorConfig};
use crate::model::text::TextProcessor;
use crate::model::vision::siglip::SiglipVisionTower;
use crate::model::{Activation, ModelOptions};
use config::LlavaOnevisionConfig;

/// Where a checkpoint keeps each part. Hub checkpoints use the layout of
/// `transformers` < 4.52 (`vision_tower.vision_model.*`, `language_model.model.*`);
/// `transformers` 5 saves `vision_tower.*` and may prefix parts with `model.`.
/// Each part is found by probing for one tensor it must have.
struct Layout {
    vision: String,
    projector: String,
    text: String,
    lm_head: String,
    newline: String,
}

impl Layout {
    fn detect(store: &WeightStore) -> ModelResult<Self> {
        let find = |candidates: &[&str], probe: &str| -> ModelResult<String> {
            candidates
                .iter()
                .find(|c| {
                    let name = if c.is_empty() {
                        probe.to_owned()
                    } else {
                        format!("{c}.{probe}")
                    };
                    store.contains(&name)
                })
                .map(|c| c.to_string())
                .ok_or_else(|| ModelError::MissingTensor(format!("{}.{probe}", candidates[0])))
        };
        let vision = find(
            &[
                "vision_tower.vision_model",
                "vision_tower",
                "model.vision_tower.vision_model",
                "model.vision_tower",
            ],
            "embeddings.patch_embedding.weight",
        )?;
        let projector = find(
            &["multi_modal_projector", "model.multi_modal_projector"],
            "linear_1.weight",
        )?;
        let text = find(
            &[
                "language_model.model",
                "model.language_model",
                "language_model",
            ],
            "embed_tokens.weight",
        )?;
        let newline = if store.contains("model.image_newline") {
            "model.image_newline"
        } else {
            "image_newline"
        };
        let lm_head = if text == "language_model.model" {
            "language_model.lm_head"
        } else {
            "lm_head"
        };
        Ok(Self {
            vision,
            projector,
            text,
            lm_head: lm_head.into(),
            newline: newline.into(),
        })
    }
}

pub struct LlavaOnevision {
    pub config: LlavaOnevisionConfig,
    vision: SiglipVisionTower,
    projector: (Linear, Activation, Linear),
    /// [hidden].
    image_newline: Tensor,
    decoder: Qwen2,
    pub text: TextProcessor,
    pub preprocessor: FramePreprocessor,
    parameters: i64,
    dtype: Kind,
    device: Device,
}

impl LlavaOnevision {
    /// Loads a checkpoint directory as `from_pretrained` would: config, weights (single
    /// or sharded), tokenizer, chat template, video preprocessor config. A tensor the
    /// model needs and lacks, one it does not know, or a wrong shape is an error naming
    /// the tensor.
    pub fn load(dir: &Path, opts: ModelOptions) -> ModelResult<Self> {
        if let Some(why) = opts.slow_cpu_gemm() {
            tracing::warn!(model = %dir.display(), "{why}");
        }
        let store = WeightStore::open(dir, opts.device, opts.dtype)?;
        Self::load_from(dir, &store, opts)
    }

    /// As [`LlavaOnevision::load`], for training: every weight is a leaf that requires
    /// grad, returned with its checkpoint name (the tied LM head is the embedding
    /// matrix, listed once). Tensors the model never reads (SigLIP's `post_layernorm`)
    /// are not among them.
    pub fn load_trainable(
        dir: &Path,
        opts: ModelOptions,
    ) -> ModelResult<(Self, Vec<(String, Tensor)>)> {
        let store = WeightStore::open_trainable(dir, opts.device, opts.dtype)?;
        let model = Self::load_from(dir, &store, opts)?;
        Ok((model, store.take_parameters()))
    }

    fn load_from(dir: &Path, store: &WeightStore, opts: ModelOptions) -> ModelResult<Self> {
        let config = LlavaOnevisionConfig::load(&dir.join("config.json"))?;
        let layout = Layout::detect(store)?;
        let root = store.root();
        let v = &config.vision_config;
        let t = &config.text_config;
        let vision_scope = root.pp(&layout.vision);
        let vision =
            SiglipVisionTower::load(&vision_scope, v, &config.vision_feature_layer.indices())?;
        for prefix in vision.unused_prefixes(&vision_scope, v.num_hidden_layers) {
            store.skip_prefix(&prefix);
        }
        let features = v.hidden_size * config.vision_feature_layer.indices().len() as i64;
        let bias = config.multimodal_projector_bias;
        let proj = root.pp(&layout.projector);
        let act = Activation::parse(&config.projector_hidden_act).ok_or_else(|| {
            ModelError::Unsupported(format!("projector act `{}`", config.projector_hidden_act))
        })?;
        let projector = (
            proj.pp("linear_1").linear(features, t.hidden_size, bias)?,
            act,
            proj.pp("linear_2")
                .linear(t.hidden_size, t.hidden_size, bias)?,
        );
        let image_newline = root.get(&layout.newline, &[t.hidden_size])?;
        let tied = config.tied_embeddings();
        let head_scope = root.pp(&layout.lm_head);
        if tied {
            // Some exports write the tied head anyway; it is the embedding matrix.
            store.skip_prefix(&head_scope.name("weight"));
        }
        let decoder = Qwen2::load(&root.pp(&layout.text), Some(&head_scope), t, tied)?;
        store.finish()?;
        let parameters = store.parameter_count(tied.then_some(layout.lm_head.as_str()));
        let text = TextProcessor::load(dir, config.video_token_index)?;
        let preprocessor = FramePreprocessor::new(
            &VideoPreprocessorConfig::load(dir)?,
            v.image_size,
            opts.device,
        )?;
        Ok(Self {
            config,
            vision,
            projector,
            image_newline,
            decoder,
            text,
            preprocessor,
            parameters,
            dtype: opts.dtype,
            device: opts.device,
        })
    }

    pub fn decoder(&self) -> &Qwen2 {
        &self.decoder
    }

    pub fn dtype(&self) -> Kind {
        self.dtype
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn tokens_per_frame(&self) -> i64 {
        self.config.tokens_per_frame()
    }

    pub fn summary(&self) -> ModelSummary {
        let t = &self.config.text_config;
        ModelSummary {
            family: "llava_onevision",
            parameters: self.parameters,
            vision_layers: self.config.vision_config.num_hidden_layers,
            layers: t.num_hidden_layers,
            heads: t.num_attention_heads,
            kv_heads: t.kv_heads(),
            head_dim: t.head_dim(),
            hidden_size: t.hidden_size,
            vocab_size: t.vocab_size,
            image_size: self.config.vision_config.image_size,
            tokens_per_frame: self.tokens_per_frame(),
            frames_per_block: 1,
            tokens_per_frame_chunk: self.tokens_per_frame(),
            max_position_embeddings: t.max_position_embeddings,
            kv_bytes_per_token_fp16: t.num_hidden_layers * 2 * t.kv_heads() * t.head_dim() * 2,
            encode_gflops_per_frame: VideoLlm::encode_flops(self) / 1e9,
            dtype: format!("{:?}", self.dtype),
            device: format!("{:?}", self.device),
        }
    }

    /// Embeddings of each frame: pixels [N, 3, S, S] (any float dtype) →
    /// [N, tokens_per_frame, hidden] in the model dtype.
    pub fn encode_frames(&self, pixels: &Tensor) -> ModelResult<Tensor> {
        let s = self.config.vision_config.image_size;
        let dims = pixels.size();
        if dims.len() != 4 || dims[1..] != [3, s, s] {
            return Err(ModelError::InvalidInput(format!(
                "pixel values must be [N, 3, {s}, {s}], got {dims:?}"
            )));
        }
        let pixels = pixels.f_to_device(self.device)?.f_to_kind(self.dtype)?;
        let mut features = self.vision.forward(&pixels)?;
        if self.config.vision_feature_select_strategy == "default" {
            let p = features.size()[1];
            features = features.f_narrow(1, 1, p - 1)?;
        }
        let (l1, act, l2) = &self.projector;
        let projected = l2.forward(&act.forward(&l1.forward(&features))?);
        self.pool(&projected)
    }

    /// 2×2 bilinear pooling of a frame's [g·g] grid to ⌈g/2⌉², as `apply_pooling`.
    fn pool(&self, features: &Tensor) -> ModelResult<Tensor> {
        let g = self.config.vision_config.grid();
        let (n, _, d) = features.size3()?;
        let pooled = (g + 1) / 2;
        Ok(features
            .f_view([n, g, g, d])?
            .f_permute([0, 3, 1, 2])?
            .f_contiguous()?
            .f_upsample_bilinear2d([pooled, pooled], false, None, None)?
            .f_permute([0, 2, 3, 1])?
            // Row-major again: otherwise the hidden axis keeps stride g² and every op of
            // the decoder prefill downstream pays for it.
            .f_contiguous()?
            .f_view([n, pooled * pooled, d])?)
    }

    /// The newline embedding that follows a video's last frame, [1, hidden].
    pub fn newline(&self) -> ModelResult<Tensor> {
        Ok(self.image_newline.f_unsqueeze(0)?)
    }

    /// Token ids of a user turn holding a video of `frames` frames and `prompt`, with
    /// the video placeholder expanded to one token per video embedding.
    pub fn video_prompt_ids(&self, prompt: &str, frames: i64) -> ModelResult<Vec<i64>> {
        let templated = self.text.video_user_turn(prompt)?;
        let ids = self.text.encode(&templated)?;
        let video_tokens = frames * self.tokens_per_frame() + 1;
        self.text.expand_video(&ids, video_tokens as usize)
    }

    /// Input embeddings [T, hidden] for `ids` [T] with the video placeholders replaced,
    /// in order, by `frame_embeddings` [F, tokens_per_frame, hidden] and the newline.
    pub fn embed_with_video(&self, ids: &[i64], frame_embeddings: &Tensor) -> ModelResult<Tensor> {
        let ids_t = Tensor::from_slice(ids).f_to_device(self.device)?;
        let embeds = self.decoder.embed(&ids_t)?;
        let hidden = self.config.text_config.hidden_size;
        let video = Tensor::f_cat(
            &[&frame_embeddings.f_reshape([-1, hidden])?, &self.newline()?],
            0,
        )?;
        let mask = ids_t.f_eq(self.text.video_token_id())?;
        let placeholders = ids
            .iter()
            .filter(|&&i| i == self.text.video_token_id())
            .count() as i64;
        if placeholders != video.size()[0] {
            return Err(ModelError::InvalidInput(format!(
                "{placeholders} video tokens in the prompt for {} video embeddings",
                video.size()[0]
            )));
        }
        Ok(embeds.f_masked_scatter(&mask.f_unsqueeze(-1)?, &video)?)
    }

    /// Input embeddings [B, T, hidden] for a batch of prompts `ids` [B, T] (int64), each
    /// holding its video placeholders at any place, replaced in order by its own clip's
    /// `frame_embeddings` [B, F, tokens_per_frame, hidden] and the newline. Training
    /// runs its batches through this and [`Qwen2::forward_packed`].
    pub fn embed_batch_with_video(
        &self,
        ids: &Tensor,
        frame_embeddings: &Tensor,
    ) -> ModelResult<Tensor> {
        let (b, _) = ids.size2()?;
        let hidden = self.config.text_config.hidden_size;
        let ids = ids.f_to_device(self.device)?;
        let embeds = self.decoder.embed(&ids)?;
        let newline = self
            .image_newline
            .f_view([1, 1, hidden])?
            .f_expand([b, 1, hidden], false)?;
        let video = Tensor::f_cat(
            &[&frame_embeddings.f_reshape([b, -1, hidden])?, &newline],
            1,
        )?;
        let mask = ids.f_eq(self.text.video_token_id())?;
        let placeholders = mask.f_sum(Kind::Int64)?.int64_value(&[]);
        if placeholders != video.size()[0] * video.size()[1] {
            return Err(ModelError::InvalidInput(format!(
                "{placeholders} video tokens in the batch for {:?} video embeddings",
                video.size()
            )));
        }
        Ok(embeds.f_masked_scatter(&mask.f_unsqueeze(-1)?, &video)?)
    }

    /// Greedy decoding after a prefill of `embeds` [T, hidden] at positions 0..T in a
    /// fresh context: at most `max_new_tokens` tokens, stopping after any of `stop`.
    /// Returns the new tokens and the prefill logits [T, vocab] (fp32).
    pub fn generate_greedy(
        &self,
        embeds: &Tensor,
        max_new_tokens: usize,
        stop: &[i64],
    ) -> ModelResult<(Vec<i64>, Tensor)> {
        self.decoder.generate_greedy(embeds, max_new_tokens, stop)
    }

    /// Ids that end an answer: `eos_token_id` of the text config and `<|im_end|>`.
    pub fn stop_tokens(&self) -> Vec<i64> {
        let mut stop = self
            .config
            .text_config
            .eos_token_id
            .as_ref()
            .map(|e| e.to_vec())
            .unwrap_or_default();
        if let Some(id) = self.text.token_id("<|im_end|>") {
            if !stop.contains(&id) {
                stop.push(id);
            }
        }
        stop
    }
}

impl VideoLlm for LlavaOnevision {
    fn family(&self) -> &'static str {
        "llava_onevision"
    }

    fn summary(&self) -> ModelSummary {
        LlavaOnevision::summary(self)
    }

    fn device(&self) -> Device {
        self.device
    }

    fn dtype(&self) -> Kind {
        self.dtype
    }

    fn decoder(&self) -> &Qwen2 {
        &self.decoder
    }

    fn frame_size(&self) -> (u32, u32) {
        let (h, w) = self.preprocessor.size();
        (h as u32, w as u32)
    }

    fn preprocess(&self, frames: &Tensor) -> ModelResult<Tensor> {
        self.preprocessor.process(frames)
    }

    fn encode_frames(&self, pixels: &Tensor) -> ModelResult<Tensor> {
        LlavaOnevision::encode_frames(self, pixels)
    }

    fn tokens_per_frame(&self) -> i64 {
        LlavaOnevision::tokens_per_frame(self)
    }

    /// The tower up to the deepest feature layer, the projector on every patch
    /// (before pooling), the prefill of the pooled tokens. For LLaVA-OneVision-0.5B
    /// (P = 729, D = 1152, I = 4304, L = 26, H = 896, T = 196) ≈ 0.79 TFLOP a frame,
    /// 82% of it in the tower.
    fn encode_flops(&self) -> f64 {
        let cfg = &self.config;
        let v = &cfg.vision_config;
        let feature_layers = cfg.vision_feature_layer.indices();
        let total = v.num_hidden_layers + 1;
        let layers_run = feature_layers
            .iter()
            .map(|&i| if i < 0 { total + i } else { i })
            .max()
            .unwrap_or(0) as f64;
        let p = (v.grid() * v.grid()) as f64;
        let d = v.hidden_size as f64;
        let vision = crate::model::family::vision_flops(
            p,
            d,
            v.intermediate_size as f64,
            layers_run,
            (v.num_channels * v.patch_size * v.patch_size) as f64,
        );
        let f = d * feature_layers.len() as f64;
        let h = cfg.text_config.hidden_size as f64;
        let projector = 2.0 * p * f * h + 2.0 * p * h * h;
        vision
            + projector
            + crate::model::family::prefill_flops(
                &cfg.text_config,
                LlavaOnevision::tokens_per_frame(self) as f64,
            )
    }

    fn sink_ids(&self) -> ModelResult<Vec<i64>> {
        self.streaming_sinks()
    }

    /// A frame's chunk is its pooled embeddings alone.
    fn frame_chunk(&self, embeds: &Tensor, _time: Duration) -> ModelResult<Tensor> {
        Ok(embeds.shallow_clone())
    }

    fn question_chunk(&self, question: &str) -> ModelResult<Tensor> {
        self.streaming_question(question)
    }

    fn stop_tokens(&self) -> Vec<i64> {
        LlavaOnevision::stop_tokens(self)
    }

    fn detokenize(&self, ids: &[i64]) -> ModelResult<String> {
        self.text.decode(ids, true)
    }

    fn max_positions(&self) -> i64 {
        self.config.text_config.max_position_embeddings
    }

    /// LLaVA-OneVision's processor takes the frames as they are (no timestamps in the
    /// prompt): `fps` does not change the prompt.
    fn video_prompt(&self, frames: &Tensor, _fps: f64, prompt: &str) -> ModelResult<VideoPrompt> {
        let pixels = self.preprocessor.process(frames)?;
        let frame_embeddings = LlavaOnevision::encode_frames(self, &pixels)?;
        let ids = self.video_prompt_ids(prompt, frames.size()[0])?;
        let embeds = self.embed_with_video(&ids, &frame_embeddings)?;
        VideoPrompt::at_start(ids, embeds)
    }
}

//! SmolVLM / SmolVLM2 (Marafioti et al. 2025; `transformers`' `models/smolvlm`,
//! `SmolVLMForConditionalGeneration`, model_type `smolvlm`), the Video-LLM made for
//! small machines: a SigLIP tower (SigLIP-B/16 at 512 px in SmolVLM2-256M/500M) with
//! `post_layernorm`, a pixel-shuffle connector folding each `scale × scale` square of
//! patches into one token (64 tokens a frame at 512 px, scale 4), and a Llama decoder
//! (SmolLM2). A video frame is one image: never split into tiles.
//!
//! [`SmolVlm::encode_frames`] gives each frame's embeddings on their own
//! ([N, tokens_per_frame, text_hidden]); [`prompt`] builds the processor's video prompt
//! for `vstreamd model run` and the streaming layout the engine uses.
//!
//! # Layout
//! - [`config`]: `config.json` and the video processor's settings.
//! - [`preprocess`]: the two Lanczos resizes, rescale and normalise.
//! - [`connector`]: pixel shuffle and projection.
//! - [`prompt`]: the video prompt text and its streaming layout.

pub mod config;
pub mod connector;
pub mod preprocess;
pub mod prompt;

use std::path::Path;
use std::time::Duration;

use tch::{Device, Kind, Tensor};

use crate::error::{ModelError, ModelResult};
use crate::model::decoder::llama::Llama;
use crate::model::family::{ModelSummary, VideoLlm, VideoPrompt};
use crate::model::nn::weights::WeightStore;
use crate::model::text::TextProcessor;
use crate::model::vision::siglip::SiglipVisionTower;
use crate::model::ModelOptions;
use config::{SmolVlmConfig, VideoProcessing};
use connector::Connector;
use preprocess::SmolVlmPreprocessor;

/// The tokens around an image as the tokenizer names them.
struct ImageTokens {
    image: String,
    fake: String,
    global: String,
    end_of_utterance: String,
}

pub struct SmolVlm {
    pub config: SmolVlmConfig,
    vision: SiglipVisionTower,
    connector: Connector,
    decoder: Llama,
    pub text: TextProcessor,
    pub preprocessor: SmolVlmPreprocessor,
    tokens: ImageTokens,
    /// `<image>` tokens per frame: the connector's output length.
    image_seq_len: i64,
    stop: Vec<i64>,
    parameters: i64,
    dtype: Kind,
    device: Device,
}

/// Where a checkpoint keeps each part: `model.` prefixed (`save_pretrained`, the hub)
/// or not.
fn prefix(store: &WeightStore) -> &'static str {
    if store.contains("model.vision_model.embeddings.patch_embedding.weight") {
        "model."
    } else {
        ""
    }
}

impl SmolVlm {
    /// Loads a checkpoint directory as `from_pretrained` would: config, weights (single
    /// or sharded), tokenizer, processor configs. A tensor the model needs and lacks, one
    /// it does not know, or a wrong shape is an error naming the tensor.
    pub fn load(dir: &Path, opts: ModelOptions) -> ModelResult<Self> {
        if let Some(why) = opts.slow_cpu_gemm() {
            tracing::warn!(model = %dir.display(), "{why}");
        }
        let config = SmolVlmConfig::load(&dir.join("config.json"))?;
        let store = WeightStore::open(dir, opts.device, opts.dtype)?;
        let root = store.root();
        let p = prefix(&store);
        let v = &config.vision_config;
        let t = &config.text_config;
        let vision = SiglipVisionTower::load_last_normed(&root.pp(format!("{p}vision_model")), v)?;
        let connector = Connector::load(
            &root.pp(format!("{p}connector")),
            v.hidden_size,
            t.hidden_size,
            config.scale_factor,
        )?;
        let tied = config.tied_embeddings();
        let head_scope = root.pp("lm_head");
        if tied {
            store.skip_prefix(&head_scope.name("weight"));
        }
        let decoder = Llama::load(
            &root.pp(format!("{p}text_model")),
            Some(&head_scope),
            t,
            tied,
        )?;
        store.finish()?;
        let parameters = store.parameter_count(tied.then_some("lm_head"));

        let text = TextProcessor::load_optional_template(dir, config.image_token_id)?;
        let tokens = ImageTokens {
            image: text.named_token("image_token", "<image>").to_owned(),
            fake: text
                .named_token("fake_image_token", "<fake_token_around_image>")
                .to_owned(),
            global: text
                .named_token("global_image_token", "<global-img>")
                .to_owned(),
            end_of_utterance: text
                .named_token("end_of_utterance_token", "<end_of_utterance>")
                .to_owned(),
        };
        if text.token_id(&tokens.image) != Some(config.image_token_id) {
            return Err(ModelError::InvalidConfig(format!(
                "image_token_id {} is not the tokenizer's `{}`",
                config.image_token_id, tokens.image
            )));
        }
        let settings = VideoProcessing::load(dir)?;
        if settings.max_image_size != v.image_size {
            return Err(ModelError::InvalidConfig(format!(
                "video frames end at {0}×{0} (max_image_size), the vision tower takes {1}×{1}",
                settings.max_image_size, v.image_size
            )));
        }
        let image_seq_len = config.tokens_per_frame();
        if let Some(declared) = settings.image_seq_len.filter(|&n| n != image_seq_len) {
            return Err(ModelError::InvalidConfig(format!(
                "processor image_seq_len {declared}, the connector gives {image_seq_len} tokens a frame"
            )));
        }
        let preprocessor = SmolVlmPreprocessor::new(settings, opts.device)?;
        let mut stop = t
            .eos_token_id
            .as_ref()
            .map(|e| e.to_vec())
            .unwrap_or_default();
        if let Some(id) = text.token_id(&tokens.end_of_utterance) {
            if !stop.contains(&id) {
                stop.push(id);
            }
        }
        Ok(Self {
            config,
            vision,
            connector,
            decoder,
            text,
            preprocessor,
            tokens,
            image_seq_len,
            stop,
            parameters,
            dtype: opts.dtype,
            device: opts.device,
        })
    }

    pub fn decoder(&self) -> &Llama {
        &self.decoder
    }

    /// Embeddings of each frame: pixels [N, 3, S, S] (any float dtype) →
    /// [N, tokens_per_frame, text_hidden] in the model dtype.
    pub fn encode_frames(&self, pixels: &Tensor) -> ModelResult<Tensor> {
        let s = self.config.vision_config.image_size;
        let dims = pixels.size();
        if dims.len() != 4 || dims[1..] != [3, s, s] {
            return Err(ModelError::InvalidInput(format!(
                "pixel values must be [N, 3, {s}, {s}], got {dims:?}"
            )));
        }
        let pixels = pixels.f_to_device(self.device)?.f_to_kind(self.dtype)?;
        self.connector.forward(&self.vision.forward(&pixels)?)
    }

    /// `<fake_token_around_image><global-img>` + `<image>`×L + `<fake_token_around_image>`.
    fn image_wrapper(&self) -> String {
        let t = &self.tokens;
        format!(
            "{}{}{}{}",
            t.fake,
            t.global,
            t.image.repeat(self.image_seq_len as usize),
            t.fake
        )
    }

    /// The processor's prompt text of a video of `frames` frames at `fps` then `prompt`.
    pub fn video_prompt_text(&self, frames: u64, fps: f64, prompt_text: &str) -> String {
        let duration = (frames as f64 / fps) as u64;
        let mut video = prompt::video_intro(frames, duration);
        for i in 0..frames {
            video.push_str(&prompt::timestamp_line(i as f64 / fps));
            video.push_str(&self.image_wrapper());
        }
        video.push_str(prompt::MEDIA_OUTTRO);
        format!(
            "{}{video}{prompt_text}{}",
            prompt::TURN_OPEN,
            prompt::turn_close(&self.tokens.end_of_utterance)
        )
    }

    /// Input embeddings of `ids` with every `<image>` replaced, in order, by the rows of
    /// `features` [F, L, hidden].
    pub fn embed_with_images(&self, ids: &[i64], features: &Tensor) -> ModelResult<Tensor> {
        let ids_t = Tensor::from_slice(ids).f_to_device(self.device)?;
        let embeds = self.decoder.embed(&ids_t)?;
        let hidden = self.config.text_config.hidden_size;
        let images = features.f_reshape([-1, hidden])?;
        let mask = ids_t.f_eq(self.config.image_token_id)?;
        let placeholders = ids
            .iter()
            .filter(|&&i| i == self.config.image_token_id)
            .count() as i64;
        if placeholders != images.size()[0] {
            return Err(ModelError::InvalidInput(format!(
                "{placeholders} image tokens in the prompt for {} image embeddings",
                images.size()[0]
            )));
        }
        Ok(embeds.f_masked_scatter(&mask.f_unsqueeze(-1)?, &images.f_to_kind(embeds.kind())?)?)
    }

    fn embed_ids(&self, ids: &[i64]) -> ModelResult<Tensor> {
        let ids = Tensor::from_slice(ids).f_to_device(self.device)?;
        self.decoder.embed(&ids)
    }
}

impl VideoLlm for SmolVlm {
    fn family(&self) -> &'static str {
        "smolvlm"
    }

    fn summary(&self) -> ModelSummary {
        let t = &self.config.text_config;
        let chunk = self
            .frame_chunk_ids(Duration::ZERO)
            .map_or(0, |(a, b)| a.len() + b.len()) as i64
            + self.image_seq_len;
        ModelSummary {
            family: "smolvlm",
            parameters: self.parameters,
            vision_layers: self.config.vision_config.num_hidden_layers,
            layers: t.num_hidden_layers,
            heads: t.num_attention_heads,
            kv_heads: t.kv_heads(),
            head_dim: t.head_dim(),
            hidden_size: t.hidden_size,
            vocab_size: t.vocab_size,
            image_size: self.config.vision_config.image_size,
            tokens_per_frame: self.image_seq_len,
            frames_per_block: 1,
            tokens_per_frame_chunk: chunk,
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
        let s = self.preprocessor.side() as u32;
        (s, s)
    }

    fn preprocess(&self, frames: &Tensor) -> ModelResult<Tensor> {
        self.preprocessor.process(frames)
    }

    fn encode_frames(&self, pixels: &Tensor) -> ModelResult<Tensor> {
        SmolVlm::encode_frames(self, pixels)
    }

    fn tokens_per_frame(&self) -> i64 {
        self.image_seq_len
    }

    /// Every tower layer, the connector's projection of the shuffled tokens, the
    /// prefill of the frame's chunk (its timestamp line, wrapper tokens and L visual
    /// tokens). For SmolVLM2-256M (P = 1024, D = 768, I = 3072, 12 layers, scale 4 →
    /// 64 tokens, SmolLM2-135M) ≈ 0.23 TFLOP a frame, 92% of it in the tower.
    fn encode_flops(&self) -> f64 {
        let v = &self.config.vision_config;
        let p = (v.grid() * v.grid()) as f64;
        let d = v.hidden_size as f64;
        let vision = crate::model::family::vision_flops(
            p,
            d,
            v.intermediate_size as f64,
            v.num_hidden_layers as f64,
            (v.num_channels * v.patch_size * v.patch_size) as f64,
        );
        let s = self.config.scale_factor as f64;
        let h = self.config.text_config.hidden_size as f64;
        let connector = 2.0 * (p / (s * s)) * (d * s * s) * h;
        let chunk = self
            .frame_chunk_ids(Duration::ZERO)
            .map_or(0, |(a, b)| a.len() + b.len()) as f64
            + self.image_seq_len as f64;
        vision + connector + crate::model::family::prefill_flops(&self.config.text_config, chunk)
    }

    fn sink_ids(&self) -> ModelResult<Vec<i64>> {
        self.text
            .encode(&format!("{}{}", prompt::TURN_OPEN, prompt::STREAM_INTRO))
    }

    /// The frame's timestamp line and image wrapper around its embeddings.
    fn frame_chunk(&self, embeds: &Tensor, time: Duration) -> ModelResult<Tensor> {
        let (before, after) = self.frame_chunk_ids(time)?;
        Ok(Tensor::f_cat(
            &[
                &self.embed_ids(&before)?,
                &embeds.f_to_kind(self.dtype)?,
                &self.embed_ids(&after)?,
            ],
            0,
        )?)
    }

    fn question_chunk(&self, question: &str) -> ModelResult<Tensor> {
        let text = format!(
            "{}{question}{}",
            prompt::MEDIA_OUTTRO,
            prompt::turn_close(&self.tokens.end_of_utterance)
        );
        let ids = self.text.encode_piece(&text)?;
        if ids.contains(&self.config.image_token_id) {
            return Err(ModelError::BadPrompt(
                "the question must not contain the image placeholder token".into(),
            ));
        }
        self.embed_ids(&ids)
    }

    fn stop_tokens(&self) -> Vec<i64> {
        self.stop.clone()
    }

    fn detokenize(&self, ids: &[i64]) -> ModelResult<String> {
        self.text.decode(ids, true)
    }

    fn max_positions(&self) -> i64 {
        self.config.text_config.max_position_embeddings
    }

    fn video_prompt(
        &self,
        frames: &Tensor,
        fps: f64,
        prompt_text: &str,
    ) -> ModelResult<VideoPrompt> {
        let n = frames.size().first().copied().unwrap_or(0);
        if n < 1 || !(fps.is_finite() && fps > 0.0) {
            return Err(ModelError::InvalidInput(format!(
                "a video needs frames and a positive fps (got {n} frames at {fps})"
            )));
        }
        let features = self.encode_frames(&self.preprocessor.process(frames)?)?;
        let text = self.video_prompt_text(n as u64, fps, prompt_text);
        let ids = self.text.encode(&text)?;
        let embeds = self.embed_with_images(&ids, &features)?;
        VideoPrompt::at_start(ids, embeds)
    }
}

impl SmolVlm {
    /// Ids of a frame's chunk before and after its embeddings.
    fn frame_chunk_ids(&self, time: Duration) -> ModelResult<(Vec<i64>, Vec<i64>)> {
        let t = &self.tokens;
        let before = format!(
            "{}{}{}",
            prompt::stream_timestamp_line(time),
            t.fake,
            t.global
        );
        Ok((
            self.text.encode_piece(&before)?,
            self.text.encode_piece(&t.fake)?,
        ))
    }
}

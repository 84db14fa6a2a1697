//! The seam between the engine and a Video-LLM family (mistral.rs's habit: a family is
//! a folder behind one trait the engine uses). The engine, retrieval, the service and
//! the CLI know a model only as a [`VideoLlm`]; [`crate::model::load`] picks the family
//! from `config.json`'s `model_type`.
//!
//! What a family decides, and the engine follows:
//! - frames: the size ingest should deliver, preprocessing to the tower's input, and
//!   their encoding into visual embeddings ([`VideoLlm::encode_frames`]);
//! - the streaming prompt: the sink ids (everything before the first frame, the same
//!   for every question), one frame's chunk (its embeddings and whatever text the
//!   family puts around a frame, such as SmolVLM's timestamp and image wrapper tokens),
//!   the question's chunk (what follows the frames: the video's closing, the question,
//!   the turn end, the assistant's opening), stop tokens and detokenising;
//! - positions: where tokens sit for the rotary embedding ([`Positions`]: 1-D for the
//!   families here; multi-axis M-RoPE for Qwen2.5-VL);
//! - the decoder ([`crate::model::decoder::Llama`]: one Llama-family implementation
//!   serves Qwen2 and SmolLM2/Llama), which runs chunks over an explicit
//!   [`AttnContext`] and places stored keys (kept before rotary) at new positions.
//!
//! The one-shot prompt of a whole video as `transformers`' processor builds it
//! ([`VideoLlm::video_prompt`]) is the parity check of every family
//! (`vstreamd model run`); the streaming layout with every frame in its context is that
//! prompt's token sequence, or the family documents where it differs.

use std::ops::Deref;
use std::time::Duration;

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::error::ModelResult;
use crate::model::decoder::Llama;
use crate::model::nn::context::{AttnContext, LayerKv};

/// Rotary positions of a run of tokens: `[T]` (1-D) or `[axes, T]` (multi-axis, such
/// as M-RoPE's temporal, height and width), int64, on the model's device. Dereferences
/// to that tensor, which is what [`Llama::forward`] takes.
#[derive(Debug)]
pub struct Positions(Tensor);

impl Positions {
    /// `start..start + len` on one axis.
    pub fn range(start: i64, len: i64, device: Device) -> ModelResult<Self> {
        Ok(Self(Tensor::f_arange_start(
            start,
            start + len,
            (Kind::Int64, device),
        )?))
    }

    /// Positions given as a tensor: `[T]` or `[axes, T]`.
    pub fn from_tensor(t: Tensor) -> Self {
        Self(t)
    }

    /// Tokens covered (T).
    pub fn len(&self) -> i64 {
        self.0.size().last().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Deref for Positions {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        &self.0
    }
}

/// Figures `vstreamd model inspect` prints.
#[derive(Debug, Serialize)]
pub struct ModelSummary {
    pub family: &'static str,
    pub parameters: i64,
    pub vision_layers: i64,
    pub layers: i64,
    pub heads: i64,
    pub kv_heads: i64,
    pub head_dim: i64,
    pub hidden_size: i64,
    pub vocab_size: i64,
    /// The tower's input side in pixels.
    pub image_size: i64,
    /// Visual embeddings per block (per frame where a block is one frame).
    pub tokens_per_frame: i64,
    /// Frames a stored block covers.
    pub frames_per_block: i64,
    /// Tokens of one frame's chunk in the streaming prompt (embeddings and any text
    /// around them; the longest when it varies).
    pub tokens_per_frame_chunk: i64,
    pub max_position_embeddings: i64,
    pub kv_bytes_per_token_fp16: i64,
    /// Matmul GFLOP to encode one frame: tower, connector, prefill of its chunk
    /// ([`VideoLlm::encode_flops`]).
    pub encode_gflops_per_frame: f64,
    pub dtype: String,
    pub device: String,
}

/// A loaded Video-LLM as the engine uses it. Object safe: the daemon holds a
/// `Box<dyn VideoLlm>`.
pub trait VideoLlm: Send {
    /// The family's name (`llava_onevision`, `smolvlm`).
    fn family(&self) -> &'static str;
    fn summary(&self) -> ModelSummary;
    fn device(&self) -> Device;
    fn dtype(&self) -> Kind;
    /// The decoder, with its LM head.
    fn decoder(&self) -> &Llama;

    /// (height, width) frames should arrive at: the tower's input, so that
    /// preprocessing has nothing to resize. Any other size is resized.
    fn frame_size(&self) -> (u32, u32);
    /// Frames one stored block holds: 1, or Qwen2.5-VL's 2 (a temporal patch).
    fn frames_per_block(&self) -> usize {
        1
    }
    /// How a block of frames as [`VideoLlm::preprocess`] makes them lays its tokens
    /// out: what placing it again needs, stored with it.
    fn block_layout(&self) -> BlockLayout {
        BlockLayout::run(self.frames_per_block() as u32)
    }
    /// uint8 frames [N, 3, H, W] → the vision tower's input, one row per frame, at
    /// [`VideoLlm::frame_size`] whatever their size (streams are encoded at one size;
    /// [`VideoLlm::video_prompt`] sizes frames as `transformers` does).
    fn preprocess(&self, frames: &Tensor) -> ModelResult<Tensor>;
    /// The tower's input for N frames, N a multiple of [`VideoLlm::frames_per_block`],
    /// consecutive frames of a block in order → each block's visual embeddings
    /// [N / frames_per_block, tokens_per_frame, hidden] in the model dtype.
    fn encode_frames(&self, pixels: &Tensor) -> ModelResult<Tensor>;
    /// Visual embeddings per block (per frame where a block is one frame) of frames
    /// at [`VideoLlm::frame_size`].
    fn tokens_per_frame(&self) -> i64;
    /// Analytic FLOPs (a multiply-add counts 2, matmuls only) to encode one frame as the
    /// engine does: vision tower, connector or projector, and the decoder prefill of the
    /// frame's chunk against an empty context. Norms, activations, softmax, rotary and
    /// preprocessing (a fraction of a percent) are left out; no LM head.
    fn encode_flops(&self) -> f64;

    /// Token ids before the first frame: the attention sinks of every stream, the same
    /// for every question.
    fn sink_ids(&self) -> ModelResult<Vec<i64>>;
    /// One frame's chunk of the streaming prompt, as input embeddings
    /// [chunk_tokens, hidden]: the frame's visual embeddings `embeds`
    /// [tokens_per_frame, hidden] with whatever text the family puts around a frame;
    /// `time` is the frame's stream time (what a timestamp shows).
    fn frame_chunk(&self, embeds: &Tensor, time: Duration) -> ModelResult<Tensor>;
    /// The question's chunk, as input embeddings [T, hidden]: what follows the frames
    /// for `question` (the video's closing, the text, the turn end, the assistant's
    /// opening).
    fn question_chunk(&self, question: &str) -> ModelResult<Tensor>;
    /// Ids that end an answer.
    fn stop_tokens(&self) -> Vec<i64>;
    /// Text of generated ids, special tokens skipped.
    fn detokenize(&self, ids: &[i64]) -> ModelResult<String>;

    /// Positions of `len` text tokens at `start..start + len` (1-D: text sits on every
    /// axis alike).
    fn positions(&self, start: i64, len: i64) -> ModelResult<Positions> {
        Positions::range(start, len, self.device())
    }
    /// Positions of `len` text tokens at `cursor`, which moves past them.
    fn text_positions(&self, cursor: &mut Cursor, len: i64) -> ModelResult<Positions> {
        let at = self.positions(cursor.next, len)?;
        cursor.next += len;
        cursor.end = cursor.end.max(cursor.next);
        Ok(at)
    }
    /// Positions of blocks' chunks placed one after another at `cursor`, which moves
    /// past them: `blocks` gives each chunk's tokens and its block's layout. A family
    /// with 1-D positions places them as a run of text.
    fn block_positions(
        &self,
        cursor: &mut Cursor,
        blocks: &[(i64, BlockLayout)],
    ) -> ModelResult<Positions> {
        let tokens = blocks.iter().map(|(t, _)| t).sum();
        self.text_positions(cursor, tokens)
    }
    /// Positions the model was trained for (`max_position_embeddings`).
    fn max_positions(&self) -> i64;

    /// The prompt of one user turn holding one video of `frames` (uint8 [N, 3, H, W],
    /// consecutive samples at `fps` frames per second) then `prompt`, with the
    /// generation prompt, exactly as `transformers`' processor and model build it.
    fn video_prompt(&self, frames: &Tensor, fps: f64, prompt: &str) -> ModelResult<VideoPrompt>;
}

/// A one-shot prompt as `transformers` runs it.
#[derive(Debug)]
pub struct VideoPrompt {
    pub ids: Vec<i64>,
    /// Input embeddings [T, hidden], the video's embeddings in place.
    pub embeds: Tensor,
    /// Where each token sits ([T] or, with M-RoPE, [3, T]).
    pub positions: Positions,
    /// Position of the first generated token (the ones after follow it).
    pub next: i64,
}

impl VideoPrompt {
    /// A prompt at positions `0..T`, generating from T (1-D families).
    pub fn at_start(ids: Vec<i64>, embeds: Tensor) -> ModelResult<Self> {
        let t = embeds.size().first().copied().unwrap_or(0);
        Ok(Self {
            positions: Positions::range(0, t, embeds.device())?,
            ids,
            embeds,
            next: t,
        })
    }
}

/// How a stored block's tokens are laid out: what placing it again needs (kept with
/// the block in the store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLayout {
    /// Frames the block covers.
    pub frames: u32,
    /// Its visual tokens as rows × columns of merged patches, for multi-axis positions;
    /// (0, 0): a run of tokens placed like text.
    pub grid: (u32, u32),
}

impl BlockLayout {
    /// A run of tokens covering `frames` frames.
    pub const fn run(frames: u32) -> Self {
        Self {
            frames,
            grid: (0, 0),
        }
    }
}

/// Where the next tokens of a context go, as a family counts positions. For 1-D
/// families `next` is the number of tokens placed so far; M-RoPE families also track
/// the video's blocks (Qwen2.5-VL: the temporal axis counts blocks from the first one,
/// and text after the video continues from where the video started plus its grid's
/// larger side).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cursor {
    /// Position of the next text token.
    pub next: i64,
    /// One past the highest position placed on any axis: where generated tokens go.
    pub end: i64,
    /// Blocks placed.
    pub blocks: i64,
    /// Position of the first block, once one is placed.
    pub video_start: Option<i64>,
    /// Stream seconds between consecutive frames, which spaces blocks on a temporal
    /// axis.
    pub frame_seconds: f64,
}

impl Cursor {
    /// An empty context's cursor, for frames `frame_seconds` apart.
    pub fn new(frame_seconds: f64) -> Self {
        Self {
            next: 0,
            end: 0,
            blocks: 0,
            video_start: None,
            frame_seconds,
        }
    }
}

/// Matmul FLOPs of a SigLIP-style tower over `patches` tokens of width `d`, MLP width
/// `i`, through `layers` layers, with a patch conv of `patch_inputs` values per patch:
/// conv `2·P·d·(c·p²)`; per layer q,k,v,o `4·2·P·d²`, fc1/fc2 `2·2·P·d·i`, QKᵀ and AV
/// `2·2·P²·d`.
pub fn vision_flops(patches: f64, d: f64, i: f64, layers: f64, patch_inputs: f64) -> f64 {
    2.0 * patches * d * patch_inputs
        + layers
            * (4.0 * 2.0 * patches * d * d
                + 2.0 * 2.0 * patches * d * i
                + 2.0 * 2.0 * patches * patches * d)
}

/// Matmul FLOPs of a causal prefill of `tokens` tokens through `decoder` with an empty
/// context: per layer q,o `2·2·T·H·(n·d)`, k,v `2·2·T·H·(m·d)`, gate/up/down
/// `3·2·T·H·J`, QKᵀ and AV `2·2·(T(T+1)/2)·n·d` (the lower triangle).
pub fn prefill_flops(decoder: &crate::model::decoder::LlamaConfig, tokens: f64) -> f64 {
    let h = decoder.hidden_size as f64;
    let qd = (decoder.num_attention_heads * decoder.head_dim()) as f64;
    let kvd = (decoder.kv_heads() * decoder.head_dim()) as f64;
    let j = decoder.intermediate_size as f64;
    let per_layer = 2.0 * 2.0 * tokens * h * qd
        + 2.0 * 2.0 * tokens * h * kvd
        + 3.0 * 2.0 * tokens * h * j
        + 2.0 * tokens * (tokens + 1.0) * qd;
    decoder.num_hidden_layers as f64 * per_layer
}

/// Any family's model, boxed for the engine (`Engine::start(model, ..)`).
impl<M: VideoLlm + 'static> From<M> for Box<dyn VideoLlm> {
    fn from(model: M) -> Self {
        Box::new(model)
    }
}

impl dyn VideoLlm + '_ {
    /// Places stored layers' keys (before rotary) and values in `ctx` at `positions`.
    pub fn place(
        &self,
        ctx: &mut AttnContext,
        layers: &[LayerKv],
        positions: &Positions,
    ) -> ModelResult<()> {
        ctx.push_layers(self.decoder().rotary(), layers, positions)
    }

    /// Places each layer's own stored keys and values, of lengths that may differ
    /// between layers, each at its own `positions` following `ctx`
    /// ([`AttnContext::push_layers_ragged`]).
    pub fn place_ragged(
        &self,
        ctx: &mut AttnContext,
        layers: &[LayerKv],
        positions: &[Positions],
    ) -> ModelResult<()> {
        let positions: Vec<Tensor> = positions.iter().map(|p| p.shallow_clone()).collect();
        ctx.push_layers_ragged(self.decoder().rotary(), layers, &positions)
    }

    /// Greedy decoding of a one-shot `prompt` in a fresh context: at most
    /// `max_new_tokens` tokens, stopping after a stop token. Returns the new tokens and
    /// the prefill logits [T, vocab] (fp32).
    pub fn generate_greedy(
        &self,
        prompt: &VideoPrompt,
        max_new_tokens: usize,
    ) -> ModelResult<(Vec<i64>, Tensor)> {
        self.decoder().generate_greedy_at(
            &prompt.embeds,
            &prompt.positions,
            prompt.next,
            max_new_tokens,
            &self.stop_tokens(),
        )
    }
}

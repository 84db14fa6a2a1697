//! The Llama-family decoder: Qwen2 (the LLM of LLaVA-OneVision, Qwen2.5-VL) and
//! Llama/SmolLM2 (SmolVLM), after `transformers`' `models/qwen2/modeling_qwen2.py`,
//! `models/llama/modeling_llama.py` and candle's `models/qwen2.rs`: RMSNorm, rotary
//! embeddings (default, linear or llama3 scaling), grouped-query attention with or
//! without biases (Qwen2: q/k/v; Llama: `attention_bias` on all four), SwiGLU MLP, tied
//! or untied LM head. Attention uses libtorch's fused `scaled_dot_product_attention`.
//!
//! Streaming entry point: [`Llama::forward`] runs a chunk of T input embeddings
//! [T, hidden] at explicit positions against an [`AttnContext`] of C tokens (sinks,
//! retrieved blocks, recent window — anything), attending to all C context tokens and
//! causally within the chunk. It can return the chunk's per-layer keys *before* rotary
//! and values (a [`KvSegment`]) for storage, can append the chunk to the context
//! (prefill followed by decode), and can return the chunk's per-layer query vectors
//! for retrieval.
//!
//! Retrieval (ReKV) scores each stored block, in each layer, by the dot product of the
//! question's query vector with the block's representative key. Both live in the same
//! [kv_heads · head_dim] space, before rotary embedding, so that neither depends on
//! where the block or the question sit:
//! - the question's query ([`ChunkOutput::queries`]): the layer's query projection of
//!   the chunk before rotary, averaged over the chunk's tokens, then over the query
//!   heads of each GQA group (query head h belongs to KV head h / (num_heads /
//!   kv_heads), as `enable_gqa` and `repeat_kv` group them), KV heads concatenated;
//! - a block's representative key: the mean over its tokens of its keys before rotary
//!   (as a [`KvSegment`] stores them), KV heads concatenated.

use tch::{Kind, Tensor};

use serde::Deserialize;

use crate::error::{ModelError, ModelResult};
use crate::model::config::{RopeParameters, TokenIds};
use crate::model::nn::context::{AttnContext, KvSegment, LayerKv};
use crate::model::nn::rope::{apply_rotary, RopeScaling, Rotary};
use crate::model::nn::weights::{GatedMlp, Linear, RmsNorm, Scope};

/// `text_config` of a Llama-family decoder (`qwen2`, `llama`).
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    /// `qwen2` or `llama` (others of the family load as `llama`).
    #[serde(default)]
    pub model_type: Option<String>,
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
    /// Llama: biases on q, k, v and o. Qwen2 ignores it (q/k/v always, o never).
    #[serde(default)]
    pub attention_bias: Option<bool>,
    /// Llama: biases on the MLP's projections.
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
}

/// The former name, kept for the LLaVA-OneVision code and its callers.
pub type Qwen2Config = LlamaConfig;

fn default_silu() -> String {
    "silu".into()
}
fn default_max_pos() -> i64 {
    32768
}
fn default_rms_eps() -> f64 {
    1e-6
}

impl LlamaConfig {
    pub fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    fn is_qwen2(&self) -> bool {
        matches!(
            self.model_type.as_deref(),
            Some("qwen2" | "qwen2_vl_text" | "qwen2_5_vl_text")
        )
    }
    /// (q/k/v biases, o bias).
    fn attention_biases(&self) -> (bool, bool) {
        if self.is_qwen2() {
            (true, false)
        } else {
            let b = self.attention_bias.unwrap_or(false);
            (b, b)
        }
    }
    /// Base of the rotary embedding.
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10000.0)
    }
    fn rope(&self) -> Option<&RopeParameters> {
        let typed = |p: &&RopeParameters| p.rope_type.is_some() || p.legacy_type.is_some();
        self.rope_parameters
            .as_ref()
            .filter(typed)
            .or_else(|| self.rope_scaling.as_ref().filter(typed))
    }
    /// The rope type's frequency scaling; an unsupported type is an error.
    pub fn rope_scaling(&self) -> ModelResult<RopeScaling> {
        let Some(p) = self.rope() else {
            return Ok(RopeScaling::None);
        };
        let kind = p
            .rope_type
            .clone()
            .or(p.legacy_type.clone())
            .unwrap_or_default();
        let need = |v: Option<f64>, name: &str| {
            v.ok_or_else(|| ModelError::InvalidConfig(format!("rope `{kind}` needs `{name}`")))
        };
        match kind.as_str() {
            // `mrope` is the default frequencies rotated per axis (`mrope_section`).
            "default" | "mrope" => Ok(RopeScaling::None),
            "linear" => Ok(RopeScaling::Linear {
                factor: need(p.factor, "factor")?,
            }),
            "llama3" => Ok(RopeScaling::Llama3 {
                factor: need(p.factor, "factor")?,
                low_freq_factor: need(p.low_freq_factor, "low_freq_factor")?,
                high_freq_factor: need(p.high_freq_factor, "high_freq_factor")?,
                original_max_position_embeddings: need(
                    p.original_max_position_embeddings,
                    "original_max_position_embeddings",
                )?,
            }),
            other => Err(ModelError::Unsupported(format!(
                "rope type `{other}` (default, linear and llama3 are implemented)"
            ))),
        }
    }

    /// M-RoPE's frequency pairs per axis, when the rotary has several axes.
    pub fn mrope_section(&self) -> Option<&[i64]> {
        [&self.rope_parameters, &self.rope_scaling]
            .into_iter()
            .flatten()
            .find_map(|p| p.mrope_section.as_deref())
    }

    /// Checks what the decoder relies on; `at` names the config section in errors.
    pub fn validate(&self, at: &str) -> ModelResult<()> {
        let bad = |m: String| Err(ModelError::InvalidConfig(m));
        for (name, value) in [
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_hidden_layers", self.num_hidden_layers),
            ("vocab_size", self.vocab_size),
            ("num_key_value_heads", self.kv_heads()),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value <= 0 {
                return bad(format!("{at}.{name} must be positive, got {value}"));
            }
        }
        if self.num_attention_heads % self.kv_heads() != 0 {
            return bad(format!(
                "{at}.num_attention_heads must divide by num_key_value_heads"
            ));
        }
        if self.head_dim() % 2 != 0 {
            return bad(format!("{at} head_dim must be even for rotary embeddings"));
        }
        self.rope_scaling()?;
        if self.use_sliding_window {
            return Err(ModelError::Unsupported(format!(
                "{at}.use_sliding_window (Qwen2's built-in window); vstreamd windows by frames instead"
            )));
        }
        if self.hidden_act != "silu" {
            return Err(ModelError::Unsupported(format!(
                "{at}.hidden_act `{}`",
                self.hidden_act
            )));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
}

/// One layer's attention inputs, [B, heads, T, head_dim] each, before rotary.
struct Projected {
    q: Tensor,
    k: Tensor,
    v: Tensor,
}

#[derive(Debug)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: GatedMlp,
}

impl DecoderLayer {
    /// `lin(h)` for `h` [B, T, hidden] split into heads: [B, heads, T, head_dim].
    fn heads(lin: &Linear, h: &Tensor, heads: i64, head_dim: i64) -> ModelResult<Tensor> {
        let (b, t, _) = h.size3()?;
        Ok(lin
            .forward(h)
            .f_view([b, t, heads, head_dim])?
            .f_transpose(1, 2)?)
    }

    /// The layer's attention inputs for the residual stream `x` [B, T, hidden]: the
    /// input norm, then q, k, v split into heads, before rotary.
    fn project(&self, x: &Tensor, heads: (i64, i64), head_dim: i64) -> ModelResult<Projected> {
        let h = self.input_layernorm.forward(x)?;
        let attn = &self.self_attn;
        let (num_heads, kv_heads) = heads;
        Ok(Projected {
            q: Self::heads(&attn.q_proj, &h, num_heads, head_dim)?,
            k: Self::heads(&attn.k_proj, &h, kv_heads, head_dim)?,
            v: Self::heads(&attn.v_proj, &h, kv_heads, head_dim)?,
        })
    }

    /// The rest of the layer after attention: `out` [B, heads, T, head_dim] through
    /// `o_proj` into the residual `x` [B, T, hidden], then the MLP block.
    fn finish(&self, x: &Tensor, out: &Tensor) -> ModelResult<Tensor> {
        let (b, t, _) = x.size3()?;
        let out = out.f_transpose(1, 2)?.f_reshape([b, t, -1])?;
        let x = x.f_add(&self.self_attn.o_proj.forward(&out))?;
        let h = self.post_attention_layernorm.forward(&x)?;
        Ok(x.f_add(&self.mlp.forward(&h)?)?)
    }
}

/// Options of one [`Llama::forward`] call.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardOptions {
    /// Append the chunk's rotated keys and values to the context.
    pub append: bool,
    /// Return the chunk's keys before rotary and values.
    pub return_kv: bool,
    /// Return the chunk's per-layer query vectors ([`ChunkOutput::queries`]).
    pub return_queries: bool,
}

/// Result of one [`Llama::forward`] call.
#[derive(Debug)]
pub struct ChunkOutput {
    /// Final-normed hidden states, [T, hidden].
    pub hidden: Tensor,
    /// The chunk's KV, if asked for.
    pub kv: Option<KvSegment>,
    /// The chunk's query vectors, if asked for ([`ForwardOptions::return_queries`]):
    /// [num_layers, kv_heads · head_dim], fp32, on the CPU. Row l is layer l's query
    /// projection of the chunk *before* rotary embedding ([1, num_heads, T, head_dim]),
    /// averaged over the T tokens, then over the query heads of each GQA group (query
    /// head h belongs to KV head h / (num_heads / kv_heads)), giving [kv_heads,
    /// head_dim], flattened KV head by KV head. This is ReKV's question
    /// representation: retrieval dots row l with each stored block's representative
    /// key in layer l, the mean of the block's keys before rotary with KV heads
    /// concatenated (same layout). Being taken before rotary, it does not depend on
    /// the positions the chunk is run at.
    pub queries: Option<Tensor>,
}

/// A Llama-family decoder with its LM head.
#[derive(Debug)]
pub struct Llama {
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    /// [vocab, hidden]; the embedding matrix itself when tied.
    lm_head: Tensor,
    rotary: Rotary,
    num_heads: i64,
    kv_heads: i64,
    head_dim: i64,
    /// The configuration the weights were loaded with (validated by the family).
    config: LlamaConfig,
}

/// The former name of [`Llama`], which LLaVA-OneVision's code and callers use.
pub type Qwen2 = Llama;

impl Llama {
    /// Loads from the scope holding `embed_tokens`, `layers`, `norm`; `lm_head` is the
    /// full name of the head's weight (absent when tied).
    pub fn load(
        vb: &Scope,
        lm_head: Option<&Scope>,
        cfg: &LlamaConfig,
        tied: bool,
    ) -> ModelResult<Self> {
        let (qkv_bias, o_bias) = cfg.attention_biases();
        let mlp_bias = cfg.mlp_bias;
        let h = cfg.hidden_size;
        let (nh, kvh, hd) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
        let embed_tokens = vb.pp("embed_tokens").get("weight", &[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers as usize);
        for i in 0..cfg.num_hidden_layers {
            let l = vb.pp("layers").pp(i);
            let attn = l.pp("self_attn");
            layers.push(DecoderLayer {
                input_layernorm: l.pp("input_layernorm").rms_norm(h, cfg.rms_norm_eps)?,
                self_attn: Attention {
                    q_proj: attn.pp("q_proj").linear(h, nh * hd, qkv_bias)?,
                    k_proj: attn.pp("k_proj").linear(h, kvh * hd, qkv_bias)?,
                    v_proj: attn.pp("v_proj").linear(h, kvh * hd, qkv_bias)?,
                    o_proj: attn.pp("o_proj").linear(nh * hd, h, o_bias)?,
                },
                post_attention_layernorm: l
                    .pp("post_attention_layernorm")
                    .rms_norm(h, cfg.rms_norm_eps)?,
                mlp: l.pp("mlp").gated_mlp(h, cfg.intermediate_size, mlp_bias)?,
            });
        }
        let norm = vb.pp("norm").rms_norm(h, cfg.rms_norm_eps)?;
        let lm_head = match (tied, lm_head) {
            (true, _) => embed_tokens.shallow_clone(),
            (false, Some(head)) => head.get("weight", &[cfg.vocab_size, h])?,
            (false, None) => {
                return Err(ModelError::MissingTensor(
                    "lm_head.weight (embeddings are not tied)".into(),
                ))
            }
        };
        let mut rotary = Rotary::scaled(
            hd,
            cfg.rope_theta(),
            cfg.rope_scaling()?,
            embed_tokens.device(),
        )?;
        if let Some(section) = cfg.mrope_section() {
            rotary = rotary.with_mrope(section)?;
        }
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary,
            num_heads: nh,
            kv_heads: kvh,
            head_dim: hd,
            config: cfg.clone(),
        })
    }

    /// The configuration it was loaded with.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// (query heads, key/value heads).
    fn heads(&self) -> (i64, i64) {
        (self.num_heads, self.kv_heads)
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn rotary(&self) -> &Rotary {
        &self.rotary
    }

    /// Token embeddings, [T, hidden], for ids [T] (int64).
    ///
    /// An id outside the table is a typed error, not libtorch's index error (on CUDA a
    /// device-side assert that poisons the context): a tokenizer that emits ids its
    /// checkpoint has no rows for (a mismatched pair, an `<unk>` past `vocab_size`)
    /// fails the request that used it, and the daemon carries on.
    pub fn embed(&self, ids: &Tensor) -> ModelResult<Tensor> {
        if ids.numel() > 0 {
            let rows = self.embed_tokens.size()[0];
            let lo = ids.f_min()?.int64_value(&[]);
            let hi = ids.f_max()?.int64_value(&[]);
            if lo < 0 || hi >= rows {
                let bad = if lo < 0 { lo } else { hi };
                return Err(ModelError::Tokenizer(format!(
                    "token id {bad} is outside the checkpoint's embedding table of {rows} rows: \
                     the tokenizer and the checkpoint disagree"
                )));
            }
        }
        Ok(Tensor::f_embedding(
            &self.embed_tokens,
            ids,
            -1,
            false,
            false,
        )?)
    }

    /// Logits in fp32, [T, vocab], from final-normed hidden states [T, hidden].
    pub fn logits(&self, hidden: &Tensor) -> ModelResult<Tensor> {
        Ok(hidden
            .f_linear::<Tensor>(&self.lm_head, None)?
            .f_to_kind(Kind::Float)?)
    }

    /// Runs `embeds` [T, hidden] at `positions` [T] (int64) against `ctx`. Asking for
    /// queries of an empty chunk (T = 0) is an error: they would be a mean over nothing.
    pub fn forward(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        ctx: &mut AttnContext,
        opts: ForwardOptions,
    ) -> ModelResult<ChunkOutput> {
        let t = embeds.size()[0];
        if !self.rotary.fits(positions, t) {
            return Err(ModelError::InvalidInput(format!(
                "{t} embeddings given positions of shape {:?}",
                positions.size()
            )));
        }
        if ctx.layers.len() != self.layers.len() {
            return Err(ModelError::InvalidInput(format!(
                "context has {} layers, decoder {}",
                ctx.layers.len(),
                self.layers.len()
            )));
        }
        if opts.return_queries && t == 0 {
            return Err(ModelError::InvalidInput(
                "queries asked of an empty chunk".into(),
            ));
        }
        let c = ctx.len();
        let dtype = embeds.kind();
        let (cos, sin) = self.rotary.cos_sin(positions, dtype)?;
        // Chunk tokens see every context token and, causally, each other.
        let mask = if t == 1 || c == 0 {
            None
        } else {
            let causal = Tensor::f_ones([t, t], (Kind::Bool, embeds.device()))?.f_tril(0)?;
            let visible = Tensor::f_ones([t, c], (Kind::Bool, embeds.device()))?;
            Some(Tensor::f_cat(&[&visible, &causal], 1)?)
        };
        let is_causal = c == 0 && t > 1;
        let mut x = embeds.f_unsqueeze(0)?;
        let mut kv_out = Vec::new();
        let mut queries = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let Projected {
                q: q_raw,
                k: k_raw,
                v,
            } = layer.project(&x, self.heads(), self.head_dim)?;
            if opts.return_queries {
                queries.push(self.grouped_query(&q_raw)?);
            }
            let q = apply_rotary(&q_raw, &cos, &sin)?;
            let k = apply_rotary(&k_raw, &cos, &sin)?;
            if opts.return_kv {
                kv_out.push(LayerKv {
                    keys: k_raw.f_squeeze_dim(0)?,
                    values: v.f_squeeze_dim(0)?,
                });
            }
            // Appending first, the grown context is what the chunk attends to: one
            // copy of the context per layer instead of two.
            let (keys, values) = if opts.append {
                ctx.append_layer(i, k, v)?;
                let grown = ctx
                    .layer(i)
                    .ok_or_else(|| ModelError::InvalidInput("context layer vanished".into()))?;
                (grown.keys.shallow_clone(), grown.values.shallow_clone())
            } else {
                match ctx.layer(i) {
                    Some(prev) => (
                        Tensor::f_cat(&[&prev.keys, &k], 2)?,
                        Tensor::f_cat(&[&prev.values, &v], 2)?,
                    ),
                    None => (k, v),
                }
            };
            let out = Tensor::f_scaled_dot_product_attention(
                &q,
                &keys,
                &values,
                mask.as_ref(),
                0.0,
                is_causal,
                None,
                self.kv_heads != self.num_heads,
            )?;
            x = layer.finish(&x, &out)?;
        }
        if opts.append {
            ctx.grow(t);
        }
        let hidden = self.norm.forward(&x)?.f_squeeze_dim(0)?;
        let queries = if opts.return_queries {
            // One transfer for all layers.
            Some(Tensor::f_stack(&queries, 0)?.f_to_device(tch::Device::Cpu)?)
        } else {
            None
        };
        Ok(ChunkOutput {
            hidden,
            kv: opts.return_kv.then_some(KvSegment { layers: kv_out }),
            queries,
        })
    }

    /// One decode step of several independent sequences: token embeddings [B, hidden],
    /// sequence b at `positions[b]` against `ctxs[b]`, which it is appended to →
    /// final-normed hidden states [B, hidden]. The linear layers run once over the
    /// batch — on a CPU a decode step is bound by reading the weights, so B sequences
    /// cost little more than one — and attention runs per sequence over its own
    /// context, whatever its length. Row b equals [`Llama::forward`] of that token alone
    /// with `append` (up to float summation order in the batched matmuls).
    pub fn decode_batch(
        &self,
        embeds: &Tensor,
        positions: &[i64],
        ctxs: &mut [&mut AttnContext],
    ) -> ModelResult<Tensor> {
        let b = embeds.size()[0];
        if positions.len() as i64 != b || ctxs.len() as i64 != b {
            return Err(ModelError::InvalidInput(format!(
                "{b} embeddings, {} positions, {} contexts",
                positions.len(),
                ctxs.len()
            )));
        }
        if let Some(bad) = ctxs.iter().find(|c| c.layers.len() != self.layers.len()) {
            return Err(ModelError::InvalidInput(format!(
                "context has {} layers, decoder {}",
                bad.layers.len(),
                self.layers.len()
            )));
        }
        let device = embeds.device();
        let pos = Tensor::from_slice(positions).f_to_device(device)?;
        // [B, head_dim]: row b rotates the batch's token b ([1, heads, B, head_dim]).
        let (cos, sin) = self.rotary.cos_sin(&pos, embeds.kind())?;
        let gqa = self.kv_heads != self.num_heads;
        let mut x = embeds.f_unsqueeze(0)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let p = layer.project(&x, self.heads(), self.head_dim)?;
            let q = apply_rotary(&p.q, &cos, &sin)?;
            let k = apply_rotary(&p.k, &cos, &sin)?;
            let v = p.v;
            let mut outs = Vec::with_capacity(ctxs.len());
            for (row, ctx) in ctxs.iter_mut().enumerate() {
                let row = row as i64;
                ctx.append_layer(i, k.f_narrow(2, row, 1)?, v.f_narrow(2, row, 1)?)?;
                let grown = ctx
                    .layer(i)
                    .ok_or_else(|| ModelError::InvalidInput("context layer vanished".into()))?;
                outs.push(Tensor::f_scaled_dot_product_attention::<&Tensor>(
                    &q.f_narrow(2, row, 1)?,
                    &grown.keys,
                    &grown.values,
                    None,
                    0.0,
                    false,
                    None,
                    gqa,
                )?);
            }
            x = layer.finish(&x, &Tensor::f_cat(&outs, 2)?)?;
        }
        for ctx in ctxs.iter_mut() {
            ctx.grow(1);
        }
        self.norm.forward(&x)?.f_squeeze_dim(0).map_err(Into::into)
    }

    /// A batch of packed sequences with no context: `embeds` [B, T, hidden], each token's
    /// rotary position in `positions` [B, T] (int64) and what it may attend to in `mask`
    /// [B, 1, T, T] (bool, true = attend; every row must allow at least one key) →
    /// final-normed hidden states [B, T, hidden]. The same layers and operations as
    /// [`Llama::forward`] (which takes one sequence against a context); training uses
    /// it to score several questions about one video in one row, each seeing the video
    /// prefix and itself only, at the positions it would have alone.
    pub fn forward_packed(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
    ) -> ModelResult<Tensor> {
        Ok(self.forward_packed_probe(embeds, positions, mask)?.0)
    }

    /// [`Llama::forward_packed`], also returning every layer's queries and keys before
    /// rotary ([B, heads, T, head_dim] and [B, kv_heads, T, head_dim], in the graph):
    /// what retrieval's question queries and representative keys are made of, for
    /// training objectives on them.
    pub fn forward_packed_probe(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
    ) -> ModelResult<(Tensor, Vec<(Tensor, Tensor)>)> {
        let (cos, sin) = self.rotary.cos_sin(positions, embeds.kind())?;
        let (cos, sin) = (cos.f_unsqueeze(1)?, sin.f_unsqueeze(1)?);
        let mut x = embeds.shallow_clone();
        let mut probes = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let p = layer.project(&x, self.heads(), self.head_dim)?;
            let q = apply_rotary(&p.q, &cos, &sin)?;
            let k = apply_rotary(&p.k, &cos, &sin)?;
            probes.push((p.q, p.k));
            let v = p.v;
            let out = Tensor::f_scaled_dot_product_attention::<&Tensor>(
                &q,
                &k,
                &v,
                Some(mask),
                0.0,
                false,
                None,
                self.kv_heads != self.num_heads,
            )?;
            x = layer.finish(&x, &out)?;
        }
        Ok((self.norm.forward(&x)?, probes))
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
        let t = embeds.size()[0];
        let positions = Tensor::f_arange(t, (Kind::Int64, embeds.device()))?;
        self.generate_greedy_at(embeds, &positions, t, max_new_tokens, stop)
    }

    /// Greedy decoding after a prefill of `embeds` [T, hidden] at `positions` ([T] or
    /// [3, T]) in a fresh context, new tokens at `next`, `next + 1`, ...: at most
    /// `max_new_tokens` tokens, stopping after any of `stop`. Returns the new tokens and
    /// the prefill logits [T, vocab] (fp32).
    pub fn generate_greedy_at(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        next: i64,
        max_new_tokens: usize,
        stop: &[i64],
    ) -> ModelResult<(Vec<i64>, Tensor)> {
        let device = embeds.device();
        let t = embeds.size()[0];
        let mut ctx = AttnContext::new(self.num_layers());
        let append = ForwardOptions {
            append: true,
            ..Default::default()
        };
        let out = self.forward(embeds, positions, &mut ctx, append)?;
        let logits = self.logits(&out.hidden)?;
        let mut token = logits.f_get(t - 1)?.f_argmax(-1, false)?.int64_value(&[]);
        let mut tokens = Vec::with_capacity(max_new_tokens);
        for step in 0..max_new_tokens as i64 {
            tokens.push(token);
            if stop.contains(&token) || tokens.len() == max_new_tokens {
                break;
            }
            let ids = Tensor::from_slice(&[token]).f_to_device(device)?;
            let pos = Tensor::from_slice(&[next + step]).f_to_device(device)?;
            let out = self.forward(&self.embed(&ids)?, &pos, &mut ctx, append)?;
            token = self
                .logits(&out.hidden)?
                .f_get(0)?
                .f_argmax(-1, false)?
                .int64_value(&[]);
        }
        Ok((tokens, logits))
    }

    /// One layer's query vector from its queries before rotary, [1, num_heads, T,
    /// head_dim]: mean over the T tokens, then over the query heads of each GQA group
    /// (consecutive heads, as `repeat_kv` lays them out), in fp32 → [kv_heads · head_dim].
    /// Query heads averaged per GQA group, [N, heads, d] → [N, kv_heads · d], as
    /// retrieval's question queries group them (differentiable).
    pub fn group_query_heads(&self, q: &Tensor) -> ModelResult<Tensor> {
        let n = q.size()[0];
        let group = self.num_heads / self.kv_heads;
        Ok(q.f_reshape([n, self.kv_heads, group, self.head_dim])?
            .f_mean_dim(2, false, q.kind())?
            .f_reshape([n, self.kv_heads * self.head_dim])?)
    }

    fn grouped_query(&self, q_raw: &Tensor) -> ModelResult<Tensor> {
        let group = self.num_heads / self.kv_heads;
        Ok(q_raw
            .f_to_kind(Kind::Float)?
            .f_mean_dim(2, false, Kind::Float)?
            .f_reshape([self.kv_heads, group, self.head_dim])?
            .f_mean_dim(1, false, Kind::Float)?
            .f_reshape([self.kv_heads * self.head_dim])?)
    }
}

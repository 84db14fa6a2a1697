//! SigLIP vision tower (Zhai et al. 2023), after `transformers`'
//! `models/siglip/modeling_siglip.py` (`SiglipVisionModel`): a stride-`patch` conv patch
//! embedding plus learned position embeddings, then pre-norm encoder layers
//! (LayerNorm → multi-head attention → residual, LayerNorm → MLP → residual).
//!
//! LLaVA-OneVision takes the hidden states of a configured layer (index into
//! [embeddings, layer 1 .. layer L], before `post_layernorm`), so only the layers up to
//! the deepest requested one run, and the pooling head is never used. SmolVLM's tower
//! (`SmolVLMVisionTransformer`, Idefics3's) is the same network on square frames —
//! its bucketised position ids of a full frame are 0..g² — with `post_layernorm`
//! applied to the last layer ([`SiglipVisionTower::load_last_normed`]).
//! In: pixels [N, 3, S, S] in the model dtype. Out: [N, (S/patch)², hidden · #layers].

use serde::Deserialize;
use tch::Tensor;

use crate::error::{ModelError, ModelResult};
use crate::model::nn::weights::{LayerNorm, Linear, Scope};
use crate::model::Activation;

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

    /// Checks what the tower relies on; `at` names the config section in errors.
    pub fn validate(&self, at: &str) -> ModelResult<()> {
        let bad = |m: String| Err(ModelError::InvalidConfig(m));
        for (name, value) in [
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("patch_size", self.patch_size),
            ("image_size", self.image_size),
        ] {
            if value <= 0 {
                return bad(format!("{at}.{name} must be positive, got {value}"));
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return bad(format!(
                "{at}.hidden_size must divide by num_attention_heads"
            ));
        }
        // The patch conv has stride `patch_size` and no padding: where the patch does
        // not divide the size (SigLIP-so400m-patch14-384: 384 = 27 · 14 + 6) the last
        // rows and columns are dropped, as in `transformers`.
        if self.image_size < self.patch_size {
            return bad(format!("{at}.image_size must be at least patch_size"));
        }
        if Activation::parse(&self.hidden_act).is_none() {
            return Err(ModelError::Unsupported(format!(
                "{at}.hidden_act `{}`",
                self.hidden_act
            )));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

#[derive(Debug)]
pub struct SiglipVisionTower {
    patch_weight: Tensor,
    patch_bias: Tensor,
    /// [num_patches, hidden].
    position_embedding: Tensor,
    /// Only the layers up to the deepest feature layer.
    layers: Vec<EncoderLayer>,
    /// Indices into [embeddings, layer 1, ..., layer L], non-negative.
    feature_layers: Vec<usize>,
    /// Applied to the features when set (the last layer's only).
    post_layernorm: Option<LayerNorm>,
    act: Activation,
    patch: i64,
    heads: i64,
    head_dim: i64,
}

impl SiglipVisionTower {
    /// `vb` is the scope holding `embeddings`, `encoder`, `post_layernorm`.
    pub fn load(vb: &Scope, cfg: &SiglipVisionConfig, feature_layers: &[i64]) -> ModelResult<Self> {
        let total = cfg.num_hidden_layers + 1;
        let feature_layers: Vec<usize> = feature_layers
            .iter()
            .map(|&i| if i < 0 { total + i } else { i } as usize)
            .collect();
        let needed = feature_layers.iter().copied().max().unwrap_or(0);
        let d = cfg.hidden_size;
        let emb = vb.pp("embeddings");
        let patch_weight = emb.pp("patch_embedding").get(
            "weight",
            &[d, cfg.num_channels, cfg.patch_size, cfg.patch_size],
        )?;
        let patch_bias = emb.pp("patch_embedding").get("bias", &[d])?;
        let num_patches = cfg.grid() * cfg.grid();
        let position_embedding = emb
            .pp("position_embedding")
            .get("weight", &[num_patches, d])?;
        let mut layers = Vec::with_capacity(needed);
        for i in 0..needed {
            let l = vb.pp("encoder").pp("layers").pp(i);
            let attn = l.pp("self_attn");
            layers.push(EncoderLayer {
                layer_norm1: l.pp("layer_norm1").layer_norm(d, cfg.layer_norm_eps)?,
                q_proj: attn.pp("q_proj").linear(d, d, true)?,
                k_proj: attn.pp("k_proj").linear(d, d, true)?,
                v_proj: attn.pp("v_proj").linear(d, d, true)?,
                out_proj: attn.pp("out_proj").linear(d, d, true)?,
                layer_norm2: l.pp("layer_norm2").layer_norm(d, cfg.layer_norm_eps)?,
                fc1: l
                    .pp("mlp")
                    .pp("fc1")
                    .linear(d, cfg.intermediate_size, true)?,
                fc2: l
                    .pp("mlp")
                    .pp("fc2")
                    .linear(cfg.intermediate_size, d, true)?,
            });
        }
        let act = Activation::parse(&cfg.hidden_act)
            .ok_or_else(|| ModelError::Unsupported(format!("vision act `{}`", cfg.hidden_act)))?;
        Ok(Self {
            patch_weight,
            patch_bias,
            position_embedding,
            layers,
            feature_layers,
            post_layernorm: None,
            act,
            patch: cfg.patch_size,
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
        })
    }

    /// Every layer, then `post_layernorm`: the last hidden state as SmolVLM's (and
    /// `SiglipVisionModel`'s) `last_hidden_state`.
    pub fn load_last_normed(vb: &Scope, cfg: &SiglipVisionConfig) -> ModelResult<Self> {
        let mut tower = Self::load(vb, cfg, &[-1])?;
        tower.post_layernorm = Some(
            vb.pp("post_layernorm")
                .layer_norm(cfg.hidden_size, cfg.layer_norm_eps)?,
        );
        Ok(tower)
    }

    /// Checkpoint tensors under `vb` this tower never reads: encoder layers past the
    /// deepest feature layer, `post_layernorm` unless used, the pooling `head`.
    pub fn unused_prefixes(&self, vb: &Scope, num_layers: i64) -> Vec<String> {
        let mut out = vec![vb.name("head.")];
        if self.post_layernorm.is_none() {
            out.push(vb.name("post_layernorm."));
        }
        for i in self.layers.len() as i64..num_layers {
            out.push(vb.pp("encoder").pp("layers").pp(i).name(""));
        }
        out
    }

    /// Features of the configured layers, concatenated on the last axis.
    pub fn forward(&self, pixels: &Tensor) -> ModelResult<Tensor> {
        let n = pixels.size()[0];
        let patches = pixels.f_conv2d(
            &self.patch_weight,
            Some(&self.patch_bias),
            [self.patch, self.patch],
            [0, 0],
            [1, 1],
            1,
        )?;
        // [N, D, g, g] -> [N, g*g, D]
        let mut x = patches
            .f_flatten(2, 3)?
            .f_transpose(1, 2)?
            .f_add(&self.position_embedding.f_unsqueeze(0)?)?;
        let mut selected: Vec<Option<Tensor>> = self.feature_layers.iter().map(|_| None).collect();
        let take = |selected: &mut Vec<Option<Tensor>>, idx: usize, x: &Tensor| {
            for (slot, &want) in selected.iter_mut().zip(&self.feature_layers) {
                if want == idx {
                    *slot = Some(x.shallow_clone());
                }
            }
        };
        take(&mut selected, 0, &x);
        for (i, layer) in self.layers.iter().enumerate() {
            x = self.layer_forward(layer, &x, n)?;
            take(&mut selected, i + 1, &x);
        }
        let mut parts: Vec<Tensor> = selected.into_iter().flatten().collect();
        let features = match parts.len() {
            1 => parts.remove(0),
            _ => Tensor::f_cat(&parts, -1)?,
        };
        Ok(match &self.post_layernorm {
            Some(norm) => norm.forward(&features),
            None => features,
        })
    }

    fn layer_forward(&self, l: &EncoderLayer, x: &Tensor, n: i64) -> ModelResult<Tensor> {
        let p = x.size()[1];
        let h = l.layer_norm1.forward(x);
        let heads = |lin: &Linear| -> ModelResult<Tensor> {
            Ok(lin
                .forward(&h)
                .f_view([n, p, self.heads, self.head_dim])?
                .f_transpose(1, 2)?)
        };
        let attn = Tensor::f_scaled_dot_product_attention::<Tensor>(
            &heads(&l.q_proj)?,
            &heads(&l.k_proj)?,
            &heads(&l.v_proj)?,
            None,
            0.0,
            false,
            None,
            false,
        )?
        .f_transpose(1, 2)?
        .f_reshape([n, p, self.heads * self.head_dim])?;
        let x = x.f_add(&l.out_proj.forward(&attn))?;
        let h = l.layer_norm2.forward(&x);
        let h = l.fc2.forward(&self.act.forward(&l.fc1.forward(&h))?);
        Ok(x.f_add(&h)?)
    }
}

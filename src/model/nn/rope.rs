//! Rotary position embedding (RoFormer), computed from explicit positions so that keys
//! stored before rotation can be placed anywhere at attention time (ReKV re-positions
//! retrieved frames). Matches `transformers`' rotary embeddings (`Qwen2RotaryEmbedding`,
//! `LlamaRotaryEmbedding`) and `apply_rotary_pos_emb` operation for operation:
//! frequencies in fp32, cos/sin cast to the model dtype, `x·cos + rotate_half(x)·sin`.
//! Rope types: `default`, `linear` (positions scaled down by `factor`) and `llama3`
//! (low frequencies scaled, high kept, smoothed between), as
//! `modeling_rope_utils.py` computes their inverse frequencies.

use tch::{Device, Kind, Tensor};

use crate::error::ModelResult;

#[derive(Debug)]
pub struct Rotary {
    /// `1 / theta^(2i/d)`, fp32, [head_dim / 2].
    inv_freq: Tensor,
}

/// How inverse frequencies are scaled (the config's rope type).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// `default`.
    None,
    /// `linear`: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// `llama3`: wavelengths beyond `original / low_freq_factor` divided by `factor`,
    /// those below `original / high_freq_factor` kept, a smooth blend between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

impl Rotary {
    /// The `default` rotary embedding of base `theta`.
    pub fn new(head_dim: i64, theta: f64, device: Device) -> ModelResult<Self> {
        Self::scaled(head_dim, theta, RopeScaling::None, device)
    }

    /// Base `theta` with `scaling` applied to the inverse frequencies.
    pub fn scaled(
        head_dim: i64,
        theta: f64,
        scaling: RopeScaling,
        device: Device,
    ) -> ModelResult<Self> {
        let exponents = Tensor::f_arange_start_step(0, head_dim, 2, (Kind::Float, device))?
            .f_div_scalar(head_dim as f64)?;
        let inv_freq = Tensor::f_pow_scalar(theta, &exponents)?.f_reciprocal()?;
        let inv_freq = match scaling {
            RopeScaling::None => inv_freq,
            RopeScaling::Linear { factor } => inv_freq.f_div_scalar(factor)?,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                let wavelen = inv_freq
                    .f_reciprocal()?
                    .f_mul_scalar(2.0 * std::f64::consts::PI)?;
                let long = wavelen.f_gt(low_wavelen)?;
                let scaled = inv_freq.f_div_scalar(factor)?;
                let llama = scaled.f_where_self(&long, &inv_freq)?;
                let smooth = wavelen
                    .f_reciprocal()?
                    .f_mul_scalar(old)?
                    .f_sub_scalar(low_freq_factor)?
                    .f_div_scalar(high_freq_factor - low_freq_factor)?;
                let smoothed = smooth
                    .f_neg()?
                    .f_add_scalar(1.0)?
                    .f_mul(&llama.f_div_scalar(factor)?)?
                    .f_add(&smooth.f_mul(&llama)?)?;
                let medium = wavelen
                    .f_lt(high_wavelen)?
                    .f_logical_not()?
                    .f_logical_and(&wavelen.f_gt(low_wavelen)?.f_logical_not()?)?;
                smoothed.f_where_self(&medium, &llama)?
            }
        };
        Ok(Self { inv_freq })
    }

    /// cos and sin, [T, head_dim] in `dtype`, for positions [T] (int64).
    pub fn cos_sin(&self, positions: &Tensor, dtype: Kind) -> ModelResult<(Tensor, Tensor)> {
        let freqs = positions
            .f_to_kind(Kind::Float)?
            .f_unsqueeze(-1)?
            .f_mul(&self.inv_freq.f_unsqueeze(0)?)?;
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
        Ok((
            emb.f_cos()?.f_to_kind(dtype)?,
            emb.f_sin()?.f_to_kind(dtype)?,
        ))
    }
}

/// Rotates `x` [.., T, head_dim] by cos/sin [T, head_dim].
pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> ModelResult<Tensor> {
    let half = x.size().last().copied().unwrap_or(0) / 2;
    let x1 = x.f_narrow(-1, 0, half)?;
    let x2 = x.f_narrow(-1, half, half)?;
    let rotated = Tensor::f_cat(&[&x2.f_neg()?, &x1], -1)?;
    Ok(x.f_mul(cos)?.f_add(&rotated.f_mul(sin)?)?)
}

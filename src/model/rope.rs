//! Rotary position embedding (RoFormer; Qwen2's `default` rope type), computed from
//! explicit positions so that keys stored before rotation can be placed anywhere at
//! attention time (ReKV re-positions retrieved frames). Matches `transformers`'
//! `Qwen2RotaryEmbedding` and `apply_rotary_pos_emb` operation for operation:
//! frequencies in fp32, cos/sin cast to the model dtype, `x·cos + rotate_half(x)·sin`.

use tch::{Device, Kind, Tensor};

use crate::error::ModelResult;

#[derive(Debug)]
pub struct Rotary {
    /// `1 / theta^(2i/d)`, fp32, [head_dim / 2].
    inv_freq: Tensor,
}

impl Rotary {
    pub fn new(head_dim: i64, theta: f64, device: Device) -> ModelResult<Self> {
        let exponents = Tensor::f_arange_start_step(0, head_dim, 2, (Kind::Float, device))?
            .f_div_scalar(head_dim as f64)?;
        let inv_freq = Tensor::f_pow_scalar(theta, &exponents)?.f_reciprocal()?;
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

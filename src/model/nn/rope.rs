//! Rotary position embedding (RoFormer), computed from explicit positions so that keys
//! stored before rotation can be placed anywhere at attention time (ReKV re-positions
//! retrieved frames). Matches `transformers`' rotary embeddings (`Qwen2RotaryEmbedding`,
//! `LlamaRotaryEmbedding`) and `apply_rotary_pos_emb` operation for operation:
//! frequencies in fp32, cos/sin cast to the model dtype, `x·cos + rotate_half(x)·sin`.
//! Rope types: `default`, `linear` (positions scaled down by `factor`) and `llama3`
//! (low frequencies scaled, high kept, smoothed between), as
//! `modeling_rope_utils.py` computes their inverse frequencies.
//!
//! Multi-axis rotary (Qwen2-VL's M-RoPE, `mrope_section`): positions [3, T] give each
//! token a temporal, a height and a width position; the frequency pairs are split into
//! three sections in that order, each rotated by its own axis
//! (`Qwen2_5_VLRotaryEmbedding.recomposition_frequencies`). Positions [T] rotate every
//! section by the same position, which is exactly the 1-D rotary: text tokens need no
//! second form.

use tch::{Device, Kind, Tensor};

use crate::error::{ModelError, ModelResult};

#[derive(Debug)]
pub struct Rotary {
    /// `1 / theta^(2i/d)`, fp32, [head_dim / 2].
    inv_freq: Tensor,
    /// M-RoPE: frequency pairs per axis (temporal, height, width), summing to
    /// head_dim / 2. `None`: one axis.
    mrope: Option<Vec<i64>>,
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
        Ok(Self {
            inv_freq,
            mrope: None,
        })
    }

    /// The same frequencies rotated per axis by M-RoPE's `section` (pairs for the
    /// temporal, height and width axes, in that order, summing to head_dim / 2).
    pub fn with_mrope(mut self, section: &[i64]) -> ModelResult<Self> {
        let pairs = self.inv_freq.size()[0];
        if section.len() != 3
            || section.iter().any(|&s| s < 0)
            || section.iter().sum::<i64>() != pairs
        {
            return Err(ModelError::InvalidConfig(format!(
                "mrope_section {section:?} must be 3 non-negative sizes summing to head_dim / 2 = {pairs}"
            )));
        }
        self.mrope = Some(section.to_vec());
        Ok(self)
    }

    /// Whether positions may have several axes.
    pub fn is_multi_axis(&self) -> bool {
        self.mrope.is_some()
    }

    /// Whether `positions` place `tokens` tokens: [T], or [3, T] with M-RoPE.
    pub fn fits(&self, positions: &Tensor, tokens: i64) -> bool {
        match positions.size().as_slice() {
            [t] => *t == tokens,
            [3, t] => self.mrope.is_some() && *t == tokens,
            _ => false,
        }
    }

    /// cos and sin, [.., T, head_dim] in `dtype`, for positions [.., T] or, with M-RoPE,
    /// [3, T] (int64).
    pub fn cos_sin(&self, positions: &Tensor, dtype: Kind) -> ModelResult<(Tensor, Tensor)> {
        // [.., T, head_dim / 2], in fp32 as `transformers` computes them.
        let angles = positions
            .f_to_kind(Kind::Float)?
            .f_unsqueeze(-1)?
            .f_mul(&self.inv_freq)?;
        let freqs = match (&self.mrope, positions.dim()) {
            // One axis: positions of any shape ([T], or [B, T] for packed batches).
            (None, _) | (Some(_), 1) => angles,
            (Some(section), 2) if positions.size()[0] == 3 => {
                let mut parts = Vec::with_capacity(3);
                let mut at = 0;
                for (axis, &len) in section.iter().enumerate() {
                    parts.push(angles.f_get(axis as i64)?.f_narrow(-1, at, len)?);
                    at += len;
                }
                Tensor::f_cat(&parts, -1)?
            }
            (Some(_), _) => {
                return Err(ModelError::InvalidInput(format!(
                    "positions of shape {:?} for a rotary embedding of 3 axes ([T] or [3, T])",
                    positions.size()
                )))
            }
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn mrope_with_equal_axes_is_the_one_axis_rotary() {
        let plain = Rotary::new(16, 10000.0, Device::Cpu).unwrap();
        let multi = Rotary::new(16, 10000.0, Device::Cpu)
            .unwrap()
            .with_mrope(&[2, 3, 3])
            .unwrap();
        let p = Tensor::from_slice(&[0i64, 5, 9, 300]);
        let (c1, s1) = plain.cos_sin(&p, Kind::Float).unwrap();
        let (c3, s3) = multi
            .cos_sin(&p.unsqueeze(0).repeat([3, 1]), Kind::Float)
            .unwrap();
        let (c1m, s1m) = multi.cos_sin(&p, Kind::Float).unwrap();
        assert_eq!(max_diff(&c1, &c3) + max_diff(&s1, &s3), 0.0);
        assert_eq!(max_diff(&c1, &c1m) + max_diff(&s1, &s1m), 0.0);
    }

    #[test]
    fn mrope_sections_rotate_by_their_own_axis() {
        let multi = Rotary::new(16, 10000.0, Device::Cpu)
            .unwrap()
            .with_mrope(&[2, 3, 3])
            .unwrap();
        let inv: Vec<f32> = Vec::try_from(&multi.inv_freq).unwrap();
        // One token at temporal 7, height 11, width 13.
        let p = Tensor::from_slice(&[7i64, 11, 13]).view([3, 1]);
        let (cos, _) = multi.cos_sin(&p, Kind::Float).unwrap();
        let cos: Vec<f32> = Vec::try_from(&cos.view([-1])).unwrap();
        for (j, f) in inv.iter().enumerate() {
            let axis_pos = match j {
                0..=1 => 7.0,
                2..=4 => 11.0,
                _ => 13.0,
            };
            let want = (axis_pos * f).cos();
            assert!((cos[j] - want).abs() < 1e-6, "pair {j}");
            assert!((cos[j + 8] - want).abs() < 1e-6, "pair {j}, second half");
        }
        assert!(multi.fits(&p, 1) && !multi.fits(&p, 2));
        assert!(Rotary::new(16, 1e4, Device::Cpu)
            .unwrap()
            .with_mrope(&[2, 3, 4])
            .is_err());
        let plain = Rotary::new(16, 1e4, Device::Cpu).unwrap();
        assert!(!plain.fits(&p, 1));
    }
}

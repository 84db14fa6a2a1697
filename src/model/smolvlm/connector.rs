//! SmolVLM's connector (`SmolVLMConnector`, Idefics3's): pixel shuffle, then one linear
//! projection without bias (`modality_projection.proj`). The shuffle folds each
//! `scale × scale` square of the g × g patch grid into one token of `scale²` times the
//! width, in the exact order `transformers`' `pixel_shuffle` reshapes and permutes.
//! In: [N, g², vision_hidden]. Out: [N, (g/scale)², text_hidden].

use tch::Tensor;

use crate::error::{ModelError, ModelResult};
use crate::model::nn::weights::{Linear, Scope};

#[derive(Debug)]
pub struct Connector {
    scale: i64,
    /// [text_hidden, vision_hidden · scale²].
    proj: Linear,
}

impl Connector {
    /// `vb` holds `modality_projection.proj`.
    pub fn load(vb: &Scope, vision_hidden: i64, text_hidden: i64, scale: i64) -> ModelResult<Self> {
        let proj = vb.pp("modality_projection").pp("proj").linear(
            vision_hidden * scale * scale,
            text_hidden,
            false,
        )?;
        Ok(Self { scale, proj })
    }

    pub fn forward(&self, features: &Tensor) -> ModelResult<Tensor> {
        Ok(self.proj.forward(&pixel_shuffle(features, self.scale)?))
    }
}

/// [N, g², d] → [N, (g/s)², d·s²], as `SmolVLMConnector.pixel_shuffle`.
pub fn pixel_shuffle(x: &Tensor, s: i64) -> ModelResult<Tensor> {
    let (n, seq, d) = x.size3()?;
    let g = (seq as f64).sqrt().round() as i64;
    if g * g != seq || g % s != 0 {
        return Err(ModelError::InvalidInput(format!(
            "pixel shuffle by {s} of {seq} tokens: not a square grid divisible by {s}"
        )));
    }
    Ok(x.f_view([n, g, g, d])?
        .f_view([n, g, g / s, d * s])?
        .f_permute([0, 2, 1, 3])?
        .f_reshape([n, g / s, g / s, d * s * s])?
        .f_permute([0, 2, 1, 3])?
        .f_reshape([n, seq / (s * s), d * s * s])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4 × 4 grid of 1-wide tokens numbered 0..16, shuffled by 2: each output token
    /// holds a 2 × 2 square, row pairs first, as `transformers` lays it out.
    #[test]
    fn squares_fold_in_transformers_order() {
        let x = Tensor::arange(16, (tch::Kind::Float, tch::Device::Cpu)).view([1, 16, 1]);
        let y = pixel_shuffle(&x, 2).unwrap();
        assert_eq!(y.size(), [1, 4, 4]);
        let rows: Vec<Vec<f32>> = (0..4)
            .map(|i| Vec::<f32>::try_from(&y.get(0).get(i)).unwrap())
            .collect();
        assert_eq!(rows[0], vec![0.0, 1.0, 4.0, 5.0]);
        assert_eq!(rows[1], vec![2.0, 3.0, 6.0, 7.0]);
        assert_eq!(rows[3], vec![10.0, 11.0, 14.0, 15.0]);
        assert!(pixel_shuffle(&x, 3).is_err());
    }
}

//! KV quantisation in the manner of KIVI (Liu et al. 2024): keys are quantised per
//! channel (their outliers sit in fixed channels), values per token. Asymmetric
//! min/max quantisation with an f32 scale and zero point per group, 8 or 4 bits
//! (4-bit codes packed two per byte, low nibble first).
//!
//! Error bound: every dequantised value is within `scale / 2` of the original (plus
//! f32 rounding), where `scale = (max − min) / (2^bits − 1)` of its group; a constant
//! group is exact. NaN and infinities are refused with an error.
//!
//! [`Quant`] names every block storage format: `f32` (lossless), `f16` and `bf16`
//! (stored as plain little-endian floats by [`super::block`]) and the quantised
//! `int8` and `int4` implemented here.

use crate::error::KvError;

/// Storage format of a block's K and V.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Quant {
    /// Lossless 32-bit floats: exact round trips (equivalence tests, debugging).
    F32,
    F16,
    Bf16,
    Int8,
    Int4,
}

impl Quant {
    pub fn code(self) -> u8 {
        match self {
            Quant::F16 => 0,
            Quant::Bf16 => 1,
            Quant::Int8 => 2,
            Quant::Int4 => 3,
            Quant::F32 => 4,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Quant::F16),
            1 => Some(Quant::Bf16),
            2 => Some(Quant::Int8),
            3 => Some(Quant::Int4),
            4 => Some(Quant::F32),
            _ => None,
        }
    }

    /// Bits per quantised code (`None` for the float formats).
    pub fn bits(self) -> Option<u32> {
        match self {
            Quant::Int8 => Some(8),
            Quant::Int4 => Some(4),
            _ => None,
        }
    }
}

/// Grouping of a [heads, tokens, dim] tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// One group per (head, channel) across tokens: keys.
    PerChannel,
    /// One group per (head, token) across channels: values.
    PerToken,
}

/// Quantised codes with their group parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    /// (scale, zero) per group, in group order.
    pub params: Vec<(f32, f32)>,
    /// Codes in the tensor's own [heads, tokens, dim] order; 4-bit codes packed.
    pub codes: Vec<u8>,
}

fn check_finite(x: &[f32], what: &'static str) -> Result<(), KvError> {
    if x.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(KvError::NonFinite(what))
    }
}

/// Index of the group holding element (h, t, c) of a [heads, tokens, dim] tensor.
fn group_of(grouping: Grouping, tokens: usize, dim: usize, h: usize, t: usize, c: usize) -> usize {
    match grouping {
        Grouping::PerChannel => h * dim + c,
        Grouping::PerToken => h * tokens + t,
    }
}

/// Quantises `x` ([heads, tokens, dim], row-major) to `bits` (4 or 8).
pub fn quantize(
    x: &[f32],
    shape: [usize; 3],
    grouping: Grouping,
    bits: u32,
    what: &'static str,
) -> Result<Quantized, KvError> {
    let [heads, tokens, dim] = shape;
    if x.len() != heads * tokens * dim {
        return Err(KvError::InvalidBlock(format!(
            "{what}: {} values for shape {shape:?}",
            x.len()
        )));
    }
    if bits != 4 && bits != 8 {
        return Err(KvError::InvalidBlock(format!("{bits}-bit quantisation")));
    }
    check_finite(x, what)?;
    let groups = match grouping {
        Grouping::PerChannel => heads * dim,
        Grouping::PerToken => heads * tokens,
    };
    let mut lo = vec![f32::INFINITY; groups];
    let mut hi = vec![f32::NEG_INFINITY; groups];
    for h in 0..heads {
        for t in 0..tokens {
            for c in 0..dim {
                let g = group_of(grouping, tokens, dim, h, t, c);
                let v = x[(h * tokens + t) * dim + c];
                lo[g] = lo[g].min(v);
                hi[g] = hi[g].max(v);
            }
        }
    }
    let levels = ((1u32 << bits) - 1) as f32;
    let params: Vec<(f32, f32)> = lo
        .iter()
        .zip(&hi)
        .map(|(&l, &h)| {
            // An empty group (no tokens) keeps zeros.
            if !l.is_finite() {
                return (0.0, 0.0);
            }
            ((h - l) / levels, l)
        })
        .collect();
    let code = |v: f32, g: usize| -> u8 {
        let (scale, zero) = params[g];
        if scale == 0.0 {
            0
        } else {
            ((v - zero) / scale).round().clamp(0.0, levels) as u8
        }
    };
    let n = x.len();
    let mut codes = vec![0u8; if bits == 8 { n } else { n.div_ceil(2) }];
    for h in 0..heads {
        for t in 0..tokens {
            for c in 0..dim {
                let i = (h * tokens + t) * dim + c;
                let q = code(x[i], group_of(grouping, tokens, dim, h, t, c));
                if bits == 8 {
                    codes[i] = q;
                } else {
                    codes[i / 2] |= q << (4 * (i % 2));
                }
            }
        }
    }
    Ok(Quantized { params, codes })
}

/// Inverse of [`quantize`].
pub fn dequantize(
    q: &Quantized,
    shape: [usize; 3],
    grouping: Grouping,
    bits: u32,
) -> Result<Vec<f32>, KvError> {
    let [heads, tokens, dim] = shape;
    let n = heads * tokens * dim;
    let groups = match grouping {
        Grouping::PerChannel => heads * dim,
        Grouping::PerToken => heads * tokens,
    };
    let needed = if bits == 8 { n } else { n.div_ceil(2) };
    if q.params.len() != groups || q.codes.len() != needed {
        return Err(KvError::InvalidBlock(format!(
            "quantised data of {} groups / {} bytes for shape {shape:?}",
            q.params.len(),
            q.codes.len()
        )));
    }
    let mut out = vec![0f32; n];
    for h in 0..heads {
        for t in 0..tokens {
            for c in 0..dim {
                let i = (h * tokens + t) * dim + c;
                let code = if bits == 8 {
                    q.codes[i]
                } else {
                    (q.codes[i / 2] >> (4 * (i % 2))) & 0x0f
                };
                let (scale, zero) = q.params[group_of(grouping, tokens, dim, h, t, c)];
                out[i] = code as f32 * scale + zero;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Checks the documented bound: |x − x̂| ≤ scale/2 of x's group (+ f32 slack).
    fn assert_within_bound(x: &[f32], shape: [usize; 3], grouping: Grouping, bits: u32) {
        let q = quantize(x, shape, grouping, bits, "test").unwrap();
        let y = dequantize(&q, shape, grouping, bits).unwrap();
        let [_, tokens, dim] = shape;
        for (i, (a, b)) in x.iter().zip(&y).enumerate() {
            let (h, t, c) = (i / (tokens * dim), (i / dim) % tokens, i % dim);
            let (scale, zero) = q.params[group_of(grouping, tokens, dim, h, t, c)];
            let slack = 1e-5 * (1.0 + a.abs() + zero.abs() + scale * 255.0);
            assert!(
                (a - b).abs() <= scale / 2.0 + slack,
                "elem {i}: {a} vs {b}, scale {scale}"
            );
        }
    }

    fn values(shape: [usize; 3]) -> impl Strategy<Value = Vec<f32>> {
        proptest::collection::vec(-50.0f32..50.0, shape[0] * shape[1] * shape[2])
    }

    proptest! {
        #[test]
        fn random_tensors_stay_within_the_bound(x in values([2, 7, 5]), bits in prop_oneof![Just(4u32), Just(8u32)]) {
            for g in [Grouping::PerChannel, Grouping::PerToken] {
                assert_within_bound(&x, [2, 7, 5], g, bits);
            }
        }

        #[test]
        fn outlier_channels_do_not_spoil_other_channels(x in values([1, 9, 4]), outlier in 1e3f32..1e5) {
            // Channel 2 carries huge values; per-channel key quantisation keeps the
            // other channels as precise as without it.
            let mut with = x.clone();
            for t in 0..9 { with[t * 4 + 2] = outlier * if t % 2 == 0 { 1.0 } else { -1.0 }; }
            let q = quantize(&with, [1, 9, 4], Grouping::PerChannel, 4, "k").unwrap();
            let y = dequantize(&q, [1, 9, 4], Grouping::PerChannel, 4).unwrap();
            for t in 0..9 {
                for c in [0usize, 1, 3] {
                    let i = t * 4 + c;
                    prop_assert!((with[i] - y[i]).abs() <= 100.0 / 15.0 / 2.0 + 1e-3);
                }
            }
            assert_within_bound(&with, [1, 9, 4], Grouping::PerChannel, 8);
        }
    }

    #[test]
    fn constant_groups_are_exact() {
        let x = vec![3.25f32; 2 * 3 * 4];
        for bits in [4, 8] {
            for g in [Grouping::PerChannel, Grouping::PerToken] {
                let q = quantize(&x, [2, 3, 4], g, bits, "c").unwrap();
                assert_eq!(dequantize(&q, [2, 3, 4], g, bits).unwrap(), x);
            }
        }
    }

    #[test]
    fn non_finite_values_are_refused() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = vec![0.5f32; 8];
            x[3] = bad;
            assert!(matches!(
                quantize(&x, [1, 2, 4], Grouping::PerToken, 8, "values"),
                Err(KvError::NonFinite("values"))
            ));
        }
    }

    #[test]
    fn codes_and_serde_names_are_stable() {
        // Codes 0–3 are on disk already; they must never change.
        for (q, code, name) in [
            (Quant::F16, 0u8, "\"f16\""),
            (Quant::Bf16, 1, "\"bf16\""),
            (Quant::Int8, 2, "\"int8\""),
            (Quant::Int4, 3, "\"int4\""),
            (Quant::F32, 4, "\"f32\""),
        ] {
            assert_eq!(q.code(), code);
            assert_eq!(Quant::from_code(code), Some(q));
            assert_eq!(serde_json::to_string(&q).unwrap(), name);
            assert_eq!(serde_json::from_str::<Quant>(name).unwrap(), q);
        }
        assert_eq!(Quant::from_code(5), None);
        assert_eq!(Quant::F32.bits(), None);
    }

    #[test]
    fn odd_element_counts_pack_and_unpack() {
        let x: Vec<f32> = (0..15).map(|i| i as f32).collect();
        let q = quantize(&x, [1, 3, 5], Grouping::PerToken, 4, "v").unwrap();
        assert_eq!(q.codes.len(), 8);
        assert_within_bound(&x, [1, 3, 5], Grouping::PerToken, 4);
    }
}

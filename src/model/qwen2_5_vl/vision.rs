//! Qwen2.5-VL's vision transformer (`Qwen2_5_VisionTransformerPretrainedModel` of
//! `transformers`' `models/qwen2_5_vl`): a linear patch embedding of each temporal
//! patch's p × p × 2 × C values (the checkpoint's Conv3d, whose stride is its kernel),
//! RMSNorm blocks with SwiGLU MLPs, 2-D rotary embeddings (height and width positions,
//! each over half of a head's frequency pairs), attention within windows of
//! `window_size` pixels in most blocks and over the whole temporal patch in
//! `fullatt_block_indexes`, then the merger: RMSNorm, each 2 × 2 block of patches
//! concatenated, a two-layer GELU MLP into the decoder's width.
//!
//! Every temporal patch is attended on its own (`transformers`' `cu_seqlens` split the
//! sequence per temporal patch, full attention included), so [`QwenVisionTower::encode`]
//! batches them. Window attention runs over the patches reordered window by window
//! (`get_vision_window_index`: windows of merged patches row by row, edge windows
//! smaller), the order undone after the merger.

use tch::{Kind, Tensor};

use super::config::VisionConfig;
use crate::error::{ModelError, ModelResult};
use crate::model::nn::weights::{GatedMlp, Linear, RmsNorm, Scope};

/// The eps of every vision RMSNorm (fixed in `transformers`, not in the config).
const NORM_EPS: f64 = 1e-6;

#[derive(Debug)]
struct Block {
    norm1: RmsNorm,
    qkv: Linear,
    proj: Linear,
    norm2: RmsNorm,
    mlp: GatedMlp,
}

#[derive(Debug)]
struct Merger {
    ln_q: RmsNorm,
    fc1: Linear,
    fc2: Linear,
}

/// Where windows go: `order` lists merged patches window by window; `runs` gives
/// consecutive windows of one length as (windows, merged patches each).
#[derive(Debug, Clone, PartialEq)]
pub struct Windows {
    pub order: Vec<i64>,
    pub runs: Vec<(i64, i64)>,
}

impl Windows {
    /// Windows of `side` × `side` merged patches over a grid of `rows` × `cols` merged
    /// patches, as `get_vision_window_index` lays them out for one temporal patch.
    pub fn new(rows: i64, cols: i64, side: i64) -> Self {
        let (wr, wc) = ((rows + side - 1) / side, (cols + side - 1) / side);
        let mut order = Vec::with_capacity((rows * cols) as usize);
        let mut runs: Vec<(i64, i64)> = Vec::new();
        for r in 0..wr {
            for c in 0..wc {
                let mut len = 0;
                for y in r * side..((r + 1) * side).min(rows) {
                    for x in c * side..((c + 1) * side).min(cols) {
                        order.push(y * cols + x);
                        len += 1;
                    }
                }
                match runs.last_mut() {
                    Some((n, l)) if *l == len => *n += 1,
                    _ => runs.push((1, len)),
                }
            }
        }
        Self { order, runs }
    }
}

#[derive(Debug)]
pub struct QwenVisionTower {
    /// [hidden, C · t · p · p].
    patch_embed: Tensor,
    blocks: Vec<Block>,
    merger: Merger,
    /// Frequencies of one spatial axis, fp32 [head_dim / 4].
    inv_freq: Tensor,
    /// Per block: attends over the whole temporal patch (else within windows).
    full: Vec<bool>,
    heads: i64,
    head_dim: i64,
    merge: i64,
    window: i64,
    patch_inputs: i64,
}

impl QwenVisionTower {
    /// Loads from the scope holding `patch_embed`, `blocks` and `merger`.
    pub fn load(vb: &Scope, cfg: &VisionConfig) -> ModelResult<Self> {
        let d = cfg.hidden_size;
        let t = cfg.temporal_patch_size;
        let p = cfg.patch_size;
        let patch_inputs = cfg.in_channels * t * p * p;
        let patch_embed = vb
            .pp("patch_embed")
            .pp("proj")
            .get("weight", &[d, cfg.in_channels, t, p, p])?
            .f_reshape([d, patch_inputs])?;
        let blocks = (0..cfg.depth)
            .map(|i| {
                let b = vb.pp("blocks").pp(i);
                Ok(Block {
                    norm1: b.pp("norm1").rms_norm(d, NORM_EPS)?,
                    qkv: b.pp("attn").pp("qkv").linear(d, 3 * d, true)?,
                    proj: b.pp("attn").pp("proj").linear(d, d, true)?,
                    norm2: b.pp("norm2").rms_norm(d, NORM_EPS)?,
                    mlp: b.pp("mlp").gated_mlp(d, cfg.intermediate_size, true)?,
                })
            })
            .collect::<ModelResult<Vec<_>>>()?;
        let m = cfg.spatial_merge_size;
        let merged = d * m * m;
        let mg = vb.pp("merger");
        let merger = Merger {
            ln_q: mg.pp("ln_q").rms_norm(d, NORM_EPS)?,
            fc1: mg.pp("mlp").pp(0).linear(merged, merged, true)?,
            fc2: mg
                .pp("mlp")
                .pp(2)
                .linear(merged, cfg.out_hidden_size, true)?,
        };
        // `compute_axial_rope_parameters`: over half the head, pairs of frequencies.
        let spatial = cfg.head_dim() / 2;
        let device = patch_embed.device();
        let exponents = Tensor::f_arange_start_step(0, spatial, 2, (Kind::Float, device))?
            .f_div_scalar(spatial as f64)?;
        let inv_freq = Tensor::f_pow_scalar(cfg.rope_theta(), &exponents)?.f_reciprocal()?;
        let full = (0..cfg.depth)
            .map(|i| cfg.fullatt_block_indexes.contains(&i))
            .collect();
        Ok(Self {
            patch_embed,
            blocks,
            merger,
            inv_freq,
            full,
            heads: cfg.num_heads,
            head_dim: cfg.head_dim(),
            merge: m,
            window: cfg.merged_window(),
            patch_inputs,
        })
    }

    /// Temporal patches [B, gh · gw, C · t · p · p] (from
    /// [`super::preprocess::patchify`]) of a grid of gh × gw patches → their merged
    /// embeddings [B, gh · gw / m², out_hidden], row by row over the merged grid.
    pub fn encode(&self, patches: &Tensor, (gh, gw): (i64, i64)) -> ModelResult<Tensor> {
        let dims = patches.size();
        let m = self.merge;
        if dims.len() != 3
            || dims[1] != gh * gw
            || dims[2] != self.patch_inputs
            || gh % m != 0
            || gw % m != 0
        {
            return Err(ModelError::InvalidInput(format!(
                "temporal patches {dims:?} for a {gh}x{gw} grid of {} values a patch",
                self.patch_inputs
            )));
        }
        let (b, n) = (dims[0], dims[1]);
        let unit = m * m;
        let windows = Windows::new(gh / m, gw / m, self.window);
        let device = patches.device();
        let order = Tensor::from_slice(&windows.order).f_to_device(device)?;
        // Patches come merge block by merge block; windows move whole merge blocks.
        let reorder = |x: &Tensor| -> ModelResult<Tensor> {
            let size = x.size();
            let mut grouped = vec![n / unit, unit];
            grouped.extend_from_slice(&size[size.len() - 1..]);
            let lead = &size[..size.len() - 2];
            let mut shape = lead.to_vec();
            shape.extend_from_slice(&grouped);
            let axis = lead.len() as i64;
            Ok(x.f_reshape(&shape[..])?
                .f_index_select(axis, &order)?
                .f_reshape(&size[..])?)
        };
        let weight = &self.patch_embed;
        let x = patches
            .f_to_kind(weight.kind())?
            .f_linear::<Tensor>(weight, None)?;
        let mut x = reorder(&x)?;
        let (cos, sin) = self.rotary(gh, gw)?;
        let (cos, sin) = (reorder(&cos)?, reorder(&sin)?);
        for (block, &full) in self.blocks.iter().zip(&self.full) {
            let within = if full { None } else { Some(&windows) };
            x = self.block(block, &x, &cos, &sin, within)?;
        }
        let merged = self.merger.fc2.forward(
            &self
                .merger
                .fc1
                .forward(&self.merger.ln_q.forward(&x)?.f_reshape([b, n / unit, -1])?)
                .f_gelu("none")?,
        );
        let back = Tensor::from_slice(&inverse(&windows.order)).f_to_device(device)?;
        Ok(merged.f_index_select(1, &back)?)
    }

    /// cos and sin [gh · gw, head_dim] (fp32) of each patch, in merge-block order:
    /// the height position's angles over the first half of the pairs, the width's over
    /// the second (`Qwen2_5_VLVisionRotaryEmbedding`), repeated for both halves.
    fn rotary(&self, gh: i64, gw: i64) -> ModelResult<(Tensor, Tensor)> {
        let m = self.merge;
        let mut rows = Vec::with_capacity((gh * gw) as usize);
        let mut cols = Vec::with_capacity((gh * gw) as usize);
        for by in 0..gh / m {
            for bx in 0..gw / m {
                for iy in 0..m {
                    for ix in 0..m {
                        rows.push((by * m + iy) as f32);
                        cols.push((bx * m + ix) as f32);
                    }
                }
            }
        }
        let device = self.inv_freq.device();
        let angles = |p: Vec<f32>| -> ModelResult<Tensor> {
            Ok(Tensor::from_slice(&p)
                .f_to_device(device)?
                .f_unsqueeze(-1)?
                .f_mul(&self.inv_freq)?)
        };
        let hw = Tensor::f_cat(&[angles(rows)?, angles(cols)?], -1)?;
        let emb = Tensor::f_cat(&[&hw, &hw], -1)?;
        Ok((emb.f_cos()?, emb.f_sin()?))
    }

    /// One block over `x` [B, N, hidden] (window-ordered); `windows` when it attends
    /// within windows, `None` over the whole temporal patch.
    fn block(
        &self,
        block: &Block,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        windows: Option<&Windows>,
    ) -> ModelResult<Tensor> {
        let (b, n, _) = x.size3()?;
        let (heads, hd) = (self.heads, self.head_dim);
        let h = block.norm1.forward(x)?;
        // [B, N, 3, heads, hd] → three [B, N, heads, hd].
        let qkv = block.qkv.forward(&h).f_reshape([b, n, 3, heads, hd])?;
        let dtype = x.kind();
        let rotate = |t: Tensor| -> ModelResult<Tensor> {
            // In fp32, as `apply_rotary_pos_emb_vision`; cos/sin [N, 1, hd].
            let t = t.f_to_kind(Kind::Float)?;
            let half = hd / 2;
            let rotated = Tensor::f_cat(
                &[
                    &t.f_narrow(-1, half, half)?.f_neg()?,
                    &t.f_narrow(-1, 0, half)?,
                ],
                -1,
            )?;
            Ok(t.f_mul(&cos.f_unsqueeze(1)?)?
                .f_add(&rotated.f_mul(&sin.f_unsqueeze(1)?)?)?
                .f_to_kind(dtype)?)
        };
        let q = rotate(qkv.f_select(2, 0)?)?;
        let k = rotate(qkv.f_select(2, 1)?)?;
        let v = qkv.f_select(2, 2)?;
        let attend = |q: &Tensor, k: &Tensor, v: &Tensor| -> ModelResult<Tensor> {
            // [B', L, heads, hd] → attention over L → [B', L, heads, hd].
            let t = |x: &Tensor| x.f_transpose(1, 2);
            Ok(Tensor::f_scaled_dot_product_attention::<&Tensor>(
                &t(q)?,
                &t(k)?,
                &t(v)?,
                None,
                0.0,
                false,
                None,
                false,
            )?
            .f_transpose(1, 2)?)
        };
        let out = match windows {
            None => attend(&q, &k, &v)?,
            Some(w) => {
                let unit = self.merge * self.merge;
                let mut parts = Vec::with_capacity(w.runs.len());
                let mut at = 0;
                for &(count, len) in &w.runs {
                    let l = len * unit;
                    let cut = |x: &Tensor| -> ModelResult<Tensor> {
                        Ok(x.f_narrow(1, at, count * l)?
                            .f_reshape([b * count, l, heads, hd])?)
                    };
                    let o = attend(&cut(&q)?, &cut(&k)?, &cut(&v)?)?;
                    parts.push(o.f_reshape([b, count * l, heads, hd])?);
                    at += count * l;
                }
                Tensor::f_cat(&parts, 1)?
            }
        };
        let x = x.f_add(&block.proj.forward(&out.f_reshape([b, n, heads * hd])?))?;
        Ok(x.f_add(&block.mlp.forward(&block.norm2.forward(&x)?)?)?)
    }

    /// Matmul FLOPs of encoding one temporal patch of `patches` patches (`windowed`:
    /// patches a window holds, on average): embedding, per block q/k/v/o and the MLP,
    /// attention within windows or over the patch, the merger.
    pub fn flops(&self, patches: f64, windowed: f64) -> f64 {
        let d = (self.heads * self.head_dim) as f64;
        let i = self
            .blocks
            .first()
            .map_or(0.0, |b| b.mlp.up_proj.weight.size()[0] as f64);
        let unit = (self.merge * self.merge) as f64;
        let out = self.merger.fc2.weight.size()[0] as f64;
        let per_block = |span: f64| {
            2.0 * patches * (4.0 * d * d + 3.0 * d * i) + 2.0 * 2.0 * patches * span * d
        };
        let blocks: f64 = self
            .full
            .iter()
            .map(|&full| per_block(if full { patches } else { windowed }))
            .sum();
        let merged = patches / unit;
        2.0 * patches * d * self.patch_inputs as f64
            + blocks
            + 2.0 * merged * (unit * d) * (unit * d)
            + 2.0 * merged * (unit * d) * out
    }
}

/// The permutation undoing `order`.
fn inverse(order: &[i64]) -> Vec<i64> {
    let mut back = vec![0; order.len()];
    for (i, &o) in order.iter().enumerate() {
        back[o as usize] = i as i64;
    }
    back
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_tile_the_grid_row_by_row_with_smaller_edges() {
        // 5 × 7 merged patches, windows of 2: 3 × 4 windows, the last row and column short.
        let w = Windows::new(5, 7, 2);
        assert_eq!(w.order.len(), 35);
        assert_eq!(&w.order[..4], &[0, 1, 7, 8]);
        // Rows of windows: 4 4 4 2 | 4 4 4 2 | 2 2 2 1 (equal neighbours run together).
        assert_eq!(w.runs, vec![(3, 4), (1, 2), (3, 4), (4, 2), (1, 1)]);
        let mut sorted = w.order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..35).collect::<Vec<_>>());
        assert_eq!(inverse(&w.order)[w.order[9] as usize], 9);
        // Exact tiling: one run.
        assert_eq!(Windows::new(4, 4, 2).runs, vec![(4, 4)]);
    }
}

//! A block: the KV cache of one sampled frame for every decoder layer (ReKV: one block
//! per frame), keys stored *before* rotary embedding so retrieval can place them at new
//! positions, plus one representative key per layer (the mean of the block's keys,
//! heads concatenated) that retrieval scores questions against.
//!
//! [`Block`] holds tensors as the model produced them; [`CompressedBlock`] is the stored
//! form (32- or 16-bit floats, or int8/int4 quantised as in [`super::quant`]) with its
//! serialisation, used by both the RAM tier and the disk tier.
//!
//! A block may cover several frames and lay its tokens out as a grid (Qwen2.5-VL: a
//! temporal patch of two frames, its merged patches placed with multi-axis positions):
//! its [`BlockLayout`] travels with it. Serialised, the layout follows the fixed header
//! when the quantisation byte has its high bit set; a block of one frame laid out as a
//! run (every block written before layouts existed) has no such extension, so those
//! bytes are unchanged.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use half::{bf16, f16};
use tch::{Device, Kind, Tensor};

use super::quant::{dequantize, quantize, Grouping, Quant, Quantized};
use crate::error::KvError;
use crate::model::{BlockLayout, KvSegment, LayerKv};

/// Where and when a block's frame was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockMeta {
    /// Frame sequence number in its stream; strictly increasing.
    pub seq: u64,
    /// Stream time of the frame.
    pub pts: Duration,
    /// Wall-clock capture time, as nanoseconds since the Unix epoch.
    pub wall_ns: u64,
    pub tokens: u32,
    pub layers: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    /// Frames covered and how the tokens are laid out (what placing the block needs).
    pub layout: BlockLayout,
}

impl BlockMeta {
    pub fn wall(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.wall_ns)
    }

    fn shape(&self) -> [usize; 3] {
        [
            self.kv_heads as usize,
            self.tokens as usize,
            self.head_dim as usize,
        ]
    }

    /// Elements of one K (or V) tensor of one layer.
    fn elements(&self) -> usize {
        self.kv_heads as usize * self.tokens as usize * self.head_dim as usize
    }
}

/// One frame's KV as produced by the model.
#[derive(Debug)]
pub struct Block {
    pub meta: BlockMeta,
    /// Keys before rotary and values, [kv_heads, tokens, head_dim] per layer.
    pub kv: KvSegment,
    /// Mean key per layer, heads concatenated: [layers, kv_heads · head_dim], fp32.
    pub rep_keys: Tensor,
}

impl Block {
    /// Builds a block from a frame's KV segment, computing its representative keys.
    pub fn new(seq: u64, pts: Duration, wall: SystemTime, kv: KvSegment) -> Result<Self, KvError> {
        let first = kv
            .layers
            .first()
            .ok_or_else(|| KvError::InvalidBlock("a block needs at least one layer".into()))?;
        let (heads, tokens, dim) = first.keys.size3()?;
        if tokens == 0 {
            return Err(KvError::InvalidBlock(
                "a block needs at least one token".into(),
            ));
        }
        for (i, l) in kv.layers.iter().enumerate() {
            if l.keys.size() != [heads, tokens, dim] || l.values.size() != [heads, tokens, dim] {
                return Err(KvError::InvalidBlock(format!(
                    "layer {i} has another shape than layer 0"
                )));
            }
        }
        let rep: Vec<Tensor> = kv
            .layers
            .iter()
            .map(|l| {
                l.keys
                    .to_kind(Kind::Float)
                    .mean_dim(1, false, Kind::Float)
                    .reshape([-1])
            })
            .collect();
        let rep_keys = Tensor::f_stack(&rep, 0)?.f_to_device(Device::Cpu)?;
        let wall_ns = wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(Self {
            meta: BlockMeta {
                seq,
                pts,
                wall_ns,
                tokens: tokens as u32,
                layers: kv.layers.len() as u32,
                kv_heads: heads as u32,
                head_dim: dim as u32,
                layout: BlockLayout::run(1),
            },
            kv,
            rep_keys,
        })
    }

    /// The same block laid out as `layout` (one frame as a run by default).
    pub fn with_layout(mut self, layout: BlockLayout) -> Self {
        self.meta.layout = layout;
        self
    }

    /// Bytes of this block's K and V in fp16, the reference for compression ratios.
    pub fn fp16_bytes(&self) -> usize {
        2 * 2 * self.meta.layers as usize * self.meta.elements()
    }
}

/// The stored form of a block. Invariant: `data` holds, for each layer, the K section
/// then the V section in `quant`'s layout for `meta`'s shape.
#[derive(Debug, Clone, PartialEq)]
pub struct CompressedBlock {
    pub meta: BlockMeta,
    pub quant: Quant,
    /// [layers · kv_heads · head_dim] fp32.
    pub rep_keys: Vec<f32>,
    data: Vec<u8>,
}

fn to_f32(t: &Tensor) -> Result<Vec<f32>, KvError> {
    let flat = t
        .f_to_kind(Kind::Float)?
        .f_to_device(Device::Cpu)?
        .f_contiguous()?
        .f_reshape([-1])?;
    Ok(Vec::<f32>::try_from(&flat)?)
}

/// Serialised bytes of one K or V tensor in `quant`.
fn encode_tensor(
    x: &[f32],
    shape: [usize; 3],
    quant: Quant,
    grouping: Grouping,
    out: &mut Vec<u8>,
    what: &'static str,
) -> Result<(), KvError> {
    match quant {
        Quant::F32 | Quant::F16 | Quant::Bf16 => {
            if !x.iter().all(|v| v.is_finite()) {
                return Err(KvError::NonFinite(what));
            }
            if quant == Quant::F32 {
                for &v in x {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                return Ok(());
            }
            for &v in x {
                let bytes = if quant == Quant::F16 {
                    f16::from_f32(v).to_le_bytes()
                } else {
                    bf16::from_f32(v).to_le_bytes()
                };
                out.extend_from_slice(&bytes);
            }
        }
        Quant::Int8 | Quant::Int4 => {
            let bits = quant.bits().unwrap_or(8);
            let q = quantize(x, shape, grouping, bits, what)?;
            for (scale, zero) in &q.params {
                out.extend_from_slice(&scale.to_le_bytes());
                out.extend_from_slice(&zero.to_le_bytes());
            }
            out.extend_from_slice(&q.codes);
        }
    }
    Ok(())
}

/// Size in bytes of one encoded K or V tensor.
fn encoded_len(meta: &BlockMeta, quant: Quant, grouping: Grouping) -> usize {
    let n = meta.elements();
    let [heads, tokens, dim] = meta.shape();
    let groups = match grouping {
        Grouping::PerChannel => heads * dim,
        Grouping::PerToken => heads * tokens,
    };
    match quant {
        Quant::F32 => 4 * n,
        Quant::F16 | Quant::Bf16 => 2 * n,
        Quant::Int8 => groups * 8 + n,
        Quant::Int4 => groups * 8 + n.div_ceil(2),
    }
}

fn decode_tensor(
    bytes: &[u8],
    meta: &BlockMeta,
    quant: Quant,
    grouping: Grouping,
) -> Result<Vec<f32>, KvError> {
    let n = meta.elements();
    let expected = encoded_len(meta, quant, grouping);
    if bytes.len() != expected {
        return Err(KvError::InvalidBlock(format!(
            "{quant:?} section of {} bytes, its shape implies {expected}",
            bytes.len()
        )));
    }
    match quant {
        Quant::F32 => Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()),
        Quant::F16 | Quant::Bf16 => Ok(bytes
            .chunks_exact(2)
            .map(|b| {
                let raw = [b[0], b[1]];
                if quant == Quant::F16 {
                    f16::from_le_bytes(raw).to_f32()
                } else {
                    bf16::from_le_bytes(raw).to_f32()
                }
            })
            .collect()),
        Quant::Int8 | Quant::Int4 => {
            let bits = quant.bits().unwrap_or(8);
            let groups = (expected - if bits == 8 { n } else { n.div_ceil(2) }) / 8;
            let (params, codes) = bytes.split_at(groups * 8);
            let params = params
                .chunks_exact(8)
                .map(|p| {
                    let f = |s: &[u8]| f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                    (f(&p[..4]), f(&p[4..]))
                })
                .collect();
            dequantize(
                &Quantized {
                    params,
                    codes: codes.to_vec(),
                },
                meta.shape(),
                grouping,
                bits,
            )
        }
    }
}

const HEADER_LEN: usize = 8 + 8 + 8 + 4 * 4 + 1;
/// The layout extension after the header: frames, grid rows, grid columns (u32 each).
const LAYOUT_LEN: usize = 3 * 4;
/// Set in the quantisation byte when the layout extension follows.
const LAYOUT_FLAG: u8 = 0x80;

/// Bytes of the serialised header of a block laid out as `layout`.
fn header_len(layout: &BlockLayout) -> usize {
    if *layout == BlockLayout::run(1) {
        HEADER_LEN
    } else {
        HEADER_LEN + LAYOUT_LEN
    }
}

impl CompressedBlock {
    /// Compresses `block` to `quant`.
    pub fn compress(block: &Block, quant: Quant) -> Result<Self, KvError> {
        let meta = block.meta;
        let per_layer = encoded_len(&meta, quant, Grouping::PerChannel)
            + encoded_len(&meta, quant, Grouping::PerToken);
        let mut data = Vec::with_capacity(per_layer * meta.layers as usize);
        for l in &block.kv.layers {
            encode_tensor(
                &to_f32(&l.keys)?,
                meta.shape(),
                quant,
                Grouping::PerChannel,
                &mut data,
                "keys",
            )?;
            encode_tensor(
                &to_f32(&l.values)?,
                meta.shape(),
                quant,
                Grouping::PerToken,
                &mut data,
                "values",
            )?;
        }
        let rep_keys = to_f32(&block.rep_keys)?;
        if !rep_keys.iter().all(|v| v.is_finite()) {
            return Err(KvError::NonFinite("representative keys"));
        }
        Ok(Self {
            meta,
            quant,
            rep_keys,
            data,
        })
    }

    /// Bytes this block holds in memory (what the RAM tier accounts).
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.data.capacity() + self.rep_keys.capacity() * 4
    }

    /// Length of [`CompressedBlock::to_bytes`]' output.
    pub fn stored_len(&self) -> usize {
        header_len(&self.meta.layout) + self.rep_keys.len() * 4 + self.data.len()
    }

    /// Bytes of K and V as stored (scales and zero points included).
    pub fn kv_bytes(&self) -> usize {
        self.data.len()
    }

    /// The block's K and V as tensors [kv_heads, tokens, head_dim] of `dtype` on
    /// `device`, dequantised.
    pub fn to_segment(&self, device: Device, dtype: Kind) -> Result<KvSegment, KvError> {
        let layers = (0..self.meta.layers as usize)
            .map(|l| self.layer_kv(l, device, dtype))
            .collect::<Result<_, _>>()?;
        Ok(KvSegment { layers })
    }

    /// Layer `layer`'s K and V alone, dequantised ([kv_heads, tokens, head_dim] of
    /// `dtype` on `device`): retrieval picks blocks per layer, so it dequantises only
    /// the layers that chose a block.
    pub fn layer_kv(&self, layer: usize, device: Device, dtype: Kind) -> Result<LayerKv, KvError> {
        let m = &self.meta;
        if layer >= m.layers as usize {
            return Err(KvError::InvalidBlock(format!(
                "layer {layer} of a block with {} layers",
                m.layers
            )));
        }
        let k_len = encoded_len(m, self.quant, Grouping::PerChannel);
        let v_len = encoded_len(m, self.quant, Grouping::PerToken);
        let start = layer * (k_len + v_len);
        let section = self
            .data
            .get(start..start + k_len + v_len)
            .ok_or_else(|| KvError::InvalidBlock("block data shorter than its shape".into()))?;
        let (k, v) = section.split_at(k_len);
        let shape = [m.kv_heads as i64, m.tokens as i64, m.head_dim as i64];
        let tensor = |v: Vec<f32>| -> Result<Tensor, KvError> {
            Ok(Tensor::from_slice(&v)
                .f_reshape(shape)?
                .f_to_kind(dtype)?
                .f_to_device(device)?)
        };
        Ok(LayerKv {
            keys: tensor(decode_tensor(k, m, self.quant, Grouping::PerChannel)?)?,
            values: tensor(decode_tensor(v, m, self.quant, Grouping::PerToken)?)?,
        })
    }

    /// Serialises to bytes (the disk tier's record payload).
    pub fn to_bytes(&self) -> Vec<u8> {
        let m = &self.meta;
        let mut out = Vec::with_capacity(self.stored_len());
        out.extend_from_slice(&m.seq.to_le_bytes());
        out.extend_from_slice(&(m.pts.as_nanos() as u64).to_le_bytes());
        out.extend_from_slice(&m.wall_ns.to_le_bytes());
        for v in [m.tokens, m.layers, m.kv_heads, m.head_dim] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        if header_len(&m.layout) == HEADER_LEN {
            out.push(self.quant.code());
        } else {
            out.push(self.quant.code() | LAYOUT_FLAG);
            let l = &m.layout;
            for v in [l.frames, l.grid.0, l.grid.1] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        for v in &self.rep_keys {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.data);
        out
    }

    /// Parses [`CompressedBlock::to_bytes`]' output, checking every length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KvError> {
        let bad = |m: &str| KvError::InvalidBlock(format!("serialised block: {m}"));
        if bytes.len() < HEADER_LEN {
            return Err(bad("shorter than its header"));
        }
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap_or([0; 4]));
        let code = bytes[40];
        let quant =
            Quant::from_code(code & !LAYOUT_FLAG).ok_or_else(|| bad("unknown quantisation"))?;
        let layout = if code & LAYOUT_FLAG == 0 {
            BlockLayout::run(1)
        } else {
            if bytes.len() < HEADER_LEN + LAYOUT_LEN {
                return Err(bad("shorter than its layout"));
            }
            let layout = BlockLayout {
                frames: u32_at(HEADER_LEN),
                grid: (u32_at(HEADER_LEN + 4), u32_at(HEADER_LEN + 8)),
            };
            let (rows, cols) = layout.grid;
            let grid_tokens = u64::from(rows) * u64::from(cols);
            if layout.frames == 0 || (grid_tokens != 0 && grid_tokens != u64::from(u32_at(24))) {
                return Err(bad("a layout that does not fit its tokens"));
            }
            layout
        };
        let meta = BlockMeta {
            seq: u64_at(0),
            pts: Duration::from_nanos(u64_at(8)),
            wall_ns: u64_at(16),
            tokens: u32_at(24),
            layers: u32_at(28),
            kv_heads: u32_at(32),
            head_dim: u32_at(36),
            layout,
        };
        let head = header_len(&layout);
        let rep_len = (meta.layers as usize)
            .checked_mul(meta.kv_heads as usize * meta.head_dim as usize)
            .ok_or_else(|| bad("shape overflows"))?;
        let per_layer = encoded_len(&meta, quant, Grouping::PerChannel)
            + encoded_len(&meta, quant, Grouping::PerToken);
        let expected = head + rep_len * 4 + per_layer * meta.layers as usize;
        if bytes.len() != expected || meta.tokens == 0 || meta.layers == 0 {
            return Err(bad(&format!(
                "{} bytes, its header implies {expected}",
                bytes.len()
            )));
        }
        let rep_end = head + rep_len * 4;
        let rep_keys = bytes[head..rep_end]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(Self {
            meta,
            quant,
            rep_keys,
            data: bytes[rep_end..].to_vec(),
        })
    }

    /// Cosine similarity of two blocks' representative keys (all layers together): the
    /// cheap near-duplicate test for static cameras.
    pub fn similarity(&self, other: &CompressedBlock) -> f32 {
        if self.rep_keys.len() != other.rep_keys.len() {
            return 0.0;
        }
        let dot: f32 = self
            .rep_keys
            .iter()
            .zip(&other.rep_keys)
            .map(|(a, b)| a * b)
            .sum();
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
        let n = norm(&self.rep_keys) * norm(&other.rep_keys);
        if n == 0.0 {
            0.0
        } else {
            dot / n
        }
    }
}

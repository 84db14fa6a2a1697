//! The key/value context a decoder attends over, in the form streaming needs: ReKV's
//! [sink tokens] + [retrieved blocks] + [recent window] + [current chunk], each run of
//! tokens carrying its own explicit positions.
//!
//! Two kinds, as in mistral.rs's and candle's KV caches, with a clear hand-over:
//! - [`KvSegment`]: the KV of a run of tokens for every layer, keys stored *before*
//!   rotary embedding, with the positions they were computed at. This is what a prefill
//!   returns for storage and what a stored block brings back.
//! - [`AttnContext`]: what one prefill/decode attends over: per layer, keys already
//!   rotated to the positions they are given in this context, and values, concatenated
//!   in attention order. Built from segments ([`AttnContext::push_segment`]) or grown
//!   by prefill/decode steps that append their own tokens.

use tch::{Kind, Tensor};

use crate::error::{ModelError, ModelResult};
use crate::model::rope::{apply_rotary, Rotary};

/// K and V of a run of tokens in one decoder layer.
#[derive(Debug)]
pub struct LayerKv {
    /// Keys before rotary embedding, [kv_heads, T, head_dim].
    pub keys: Tensor,
    /// Values, [kv_heads, T, head_dim].
    pub values: Tensor,
}

impl LayerKv {
    pub fn shallow_clone(&self) -> Self {
        Self {
            keys: self.keys.shallow_clone(),
            values: self.values.shallow_clone(),
        }
    }
}

/// The KV of a run of tokens across all layers. Invariant: every layer holds the same
/// T tokens, and `layers.len()` is the decoder's layer count.
#[derive(Debug)]
pub struct KvSegment {
    pub layers: Vec<LayerKv>,
}

impl KvSegment {
    /// Number of tokens (T).
    pub fn len(&self) -> i64 {
        self.layers.first().map_or(0, |l| l.keys.size()[1])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens `start..start+len` of this segment.
    pub fn narrow(&self, start: i64, len: i64) -> ModelResult<KvSegment> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(LayerKv {
                    keys: l.keys.f_narrow(1, start, len)?,
                    values: l.values.f_narrow(1, start, len)?,
                })
            })
            .collect::<ModelResult<_>>()?;
        Ok(KvSegment { layers })
    }

    /// Concatenation of segments in order (tokens of `parts[0]` first).
    pub fn concat(parts: &[&KvSegment]) -> ModelResult<KvSegment> {
        let n_layers = parts.first().map_or(0, |p| p.layers.len());
        let mut layers = Vec::with_capacity(n_layers);
        for l in 0..n_layers {
            let keys: Vec<&Tensor> = parts.iter().map(|p| &p.layers[l].keys).collect();
            let values: Vec<&Tensor> = parts.iter().map(|p| &p.layers[l].values).collect();
            layers.push(LayerKv {
                keys: Tensor::f_cat(&keys, 1)?,
                values: Tensor::f_cat(&values, 1)?,
            });
        }
        Ok(KvSegment { layers })
    }
}

/// Rotated keys and values of one layer, [1, kv_heads, C, head_dim] each.
#[derive(Debug)]
pub(crate) struct LayerContext {
    pub keys: Tensor,
    pub values: Tensor,
}

/// What a prefill or decode step attends over besides its own tokens.
/// Invariant: all layers hold the same C tokens, C == `len`.
#[derive(Debug, Default)]
pub struct AttnContext {
    pub(crate) layers: Vec<Option<LayerContext>>,
    len: i64,
}

impl AttnContext {
    /// An empty context for a decoder with `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
            len: 0,
        }
    }

    /// Tokens attended (C).
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `segment`, its keys rotated to `positions` ([T], int64): the segment may
    /// be placed at positions other than those it was computed at.
    pub fn push_segment(
        &mut self,
        rotary: &Rotary,
        segment: &KvSegment,
        positions: &Tensor,
    ) -> ModelResult<()> {
        if segment.layers.len() != self.layers.len() {
            return Err(ModelError::InvalidInput(format!(
                "segment has {} layers, context {}",
                segment.layers.len(),
                self.layers.len()
            )));
        }
        let t = segment.len();
        if positions.size() != [t] {
            return Err(ModelError::InvalidInput(format!(
                "segment of {t} tokens given positions of shape {:?}",
                positions.size()
            )));
        }
        if t == 0 {
            return Ok(());
        }
        let dtype = segment.layers[0].keys.kind();
        let (cos, sin) = rotary.cos_sin(positions, dtype)?;
        for (slot, kv) in self.layers.iter_mut().zip(&segment.layers) {
            let keys = apply_rotary(&kv.keys, &cos, &sin)?.f_unsqueeze(0)?;
            let values = kv.values.f_unsqueeze(0)?;
            append(slot, keys, values)?;
        }
        self.len += t;
        Ok(())
    }

    /// Appends one layer's already-rotated keys and values ([1, kv_heads, T, d]);
    /// the caller adds T to the length once all layers are done.
    pub(crate) fn append_layer(
        &mut self,
        layer: usize,
        keys: Tensor,
        values: Tensor,
    ) -> ModelResult<()> {
        append(&mut self.layers[layer], keys, values)
    }

    pub(crate) fn grow(&mut self, tokens: i64) {
        self.len += tokens;
    }

    /// Rotated keys of `layer`, [1, kv_heads, C, head_dim]; `None` while empty.
    pub fn keys(&self, layer: usize) -> Option<&Tensor> {
        self.layer(layer).map(|l| &l.keys)
    }

    /// Values of `layer`, [1, kv_heads, C, head_dim]; `None` while empty.
    pub fn values(&self, layer: usize) -> Option<&Tensor> {
        self.layer(layer).map(|l| &l.values)
    }

    pub(crate) fn layer(&self, layer: usize) -> Option<&LayerContext> {
        self.layers.get(layer).and_then(Option::as_ref)
    }

    /// Bytes held by the context's tensors.
    pub fn bytes(&self) -> i64 {
        self.layers
            .iter()
            .flatten()
            .map(|l| {
                let elt = kind_size(l.keys.kind());
                (l.keys.numel() + l.values.numel()) as i64 * elt
            })
            .sum()
    }
}

fn append(slot: &mut Option<LayerContext>, keys: Tensor, values: Tensor) -> ModelResult<()> {
    *slot = Some(match slot.take() {
        None => LayerContext { keys, values },
        Some(prev) => LayerContext {
            keys: Tensor::f_cat(&[&prev.keys, &keys], 2)?,
            values: Tensor::f_cat(&[&prev.values, &values], 2)?,
        },
    });
    Ok(())
}

pub(crate) fn kind_size(kind: Kind) -> i64 {
    kind.elt_size_in_bytes() as i64
}

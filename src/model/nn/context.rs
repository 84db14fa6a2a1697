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
//!
//! The layers of a context may hold different tokens: ReKV retrieves its own top-k
//! blocks in each layer, pushed with [`AttnContext::push_layers`]. What the layers
//! share is the number of tokens and their positions, so the context has one length
//! and the chunk attending to it one set of positions.

use tch::{Kind, Tensor};

use crate::error::{ModelError, ModelResult};
use crate::model::nn::rope::{apply_rotary, Rotary};

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
/// Invariant: every layer holds C tokens, C == `len` (the same tokens in every layer,
/// unless pushed per layer with [`AttnContext::push_layers`]).
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

    /// Appends `segment`, its keys rotated to `positions` ([T] or [axes, T], int64): the segment may
    /// be placed at positions other than those it was computed at.
    pub fn push_segment(
        &mut self,
        rotary: &Rotary,
        segment: &KvSegment,
        positions: &Tensor,
    ) -> ModelResult<()> {
        self.push_layers(rotary, &segment.layers, positions)
    }

    /// Appends different tokens to each layer: `per_layer[l]` holds layer l's keys
    /// before rotary and values, [kv_heads, T, head_dim] each, with the same T in every
    /// layer. Keys are rotated to `positions` ([T], int64) and appended to their layer;
    /// the length grows by T. ReKV's per-layer retrieval builds its context this way.
    ///
    /// An error — `per_layer.len()` other than the number of layers, a T that differs
    /// between layers or between a layer's keys and values, `positions` not [T], a
    /// layer whose heads or head size differ from what the context holds — leaves the
    /// context unchanged.
    pub fn push_layers(
        &mut self,
        rotary: &Rotary,
        per_layer: &[LayerKv],
        positions: &Tensor,
    ) -> ModelResult<()> {
        if per_layer.len() != self.layers.len() {
            return Err(ModelError::InvalidInput(format!(
                "{} layers of KV given, context has {}",
                per_layer.len(),
                self.layers.len()
            )));
        }
        let mut t = None;
        for (l, (kv, slot)) in per_layer.iter().zip(&self.layers).enumerate() {
            let keys = kv.keys.size();
            let values = kv.values.size();
            if keys.len() != 3 || values.len() != 3 || keys[..2] != values[..2] {
                return Err(ModelError::InvalidInput(format!(
                    "layer {l}: keys {keys:?} and values {values:?} must be \
                     [kv_heads, T, head_dim] with the same heads and T"
                )));
            }
            let layer_t = keys[1];
            match t {
                None => t = Some(layer_t),
                Some(t) if t != layer_t => {
                    return Err(ModelError::InvalidInput(format!(
                        "layer {l} holds {layer_t} tokens, layer 0 {t}: every layer \
                         must hold the same number"
                    )))
                }
                Some(_) => {}
            }
            if let Some(prev) = slot {
                let (pk, pv) = (prev.keys.size(), prev.values.size());
                let fits = pk.len() == 4
                    && pv.len() == 4
                    && pk[1] == keys[0]
                    && pk[3] == keys[2]
                    && pv[1] == values[0]
                    && pv[3] == values[2];
                if !fits {
                    return Err(ModelError::InvalidInput(format!(
                        "layer {l}: keys {keys:?} and values {values:?} do not fit a \
                         context of keys {pk:?} and values {pv:?}"
                    )));
                }
            }
        }
        let t = t.unwrap_or(0);
        if !rotary.fits(positions, t) {
            return Err(ModelError::InvalidInput(format!(
                "{t} tokens given positions of shape {:?}",
                positions.size()
            )));
        }
        if t == 0 {
            return Ok(());
        }
        // Rotate every layer before touching the context, so a failure leaves it as is.
        let dtype = per_layer[0].keys.kind();
        let (cos, sin) = rotary.cos_sin(positions, dtype)?;
        let rotated = per_layer
            .iter()
            .map(|kv| {
                Ok((
                    apply_rotary(&kv.keys, &cos, &sin)?.f_unsqueeze(0)?,
                    kv.values.f_unsqueeze(0)?,
                ))
            })
            .collect::<ModelResult<Vec<_>>>()?;
        for (slot, (keys, values)) in self.layers.iter_mut().zip(rotated) {
            append(slot, keys, values)?;
        }
        self.len += t;
        Ok(())
    }

    /// Appends a different number of tokens to each layer (per-layer retrieval of blocks
    /// whose lengths differ, such as SmolVLM frames whose timestamps gained a digit):
    /// layer l's keys before rotary are rotated to `positions[l]` ([T_l] each, following
    /// the context) and appended; the length grows by the longest T_l, so a shorter
    /// layer leaves a gap of unused positions before what comes next (rotary attention
    /// depends on differences of positions only; the gap is a few positions).
    pub fn push_layers_ragged(
        &mut self,
        rotary: &Rotary,
        per_layer: &[LayerKv],
        positions: &[Tensor],
    ) -> ModelResult<()> {
        if per_layer.len() != self.layers.len() || positions.len() != per_layer.len() {
            return Err(ModelError::InvalidInput(format!(
                "{} layers of KV and {} of positions given, context has {}",
                per_layer.len(),
                positions.len(),
                self.layers.len()
            )));
        }
        let mut rotated = Vec::with_capacity(per_layer.len());
        let mut longest = 0;
        for (l, (kv, pos)) in per_layer.iter().zip(positions).enumerate() {
            let t = kv.keys.size().get(1).copied().unwrap_or(0);
            if kv.keys.size().len() != 3
                || kv.values.size() != kv.keys.size()
                || !rotary.fits(pos, t)
            {
                return Err(ModelError::InvalidInput(format!(
                    "layer {l}: keys {:?}, values {:?} and positions {:?} do not agree",
                    kv.keys.size(),
                    kv.values.size(),
                    pos.size()
                )));
            }
            longest = longest.max(t);
            let (cos, sin) = rotary.cos_sin(pos, kv.keys.kind())?;
            rotated.push((
                apply_rotary(&kv.keys, &cos, &sin)?.f_unsqueeze(0)?,
                kv.values.f_unsqueeze(0)?,
            ));
        }
        for (slot, (keys, values)) in self.layers.iter_mut().zip(rotated) {
            if keys.size()[2] > 0 {
                append(slot, keys, values)?;
            }
        }
        self.len += longest;
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

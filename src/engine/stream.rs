//! One stream's model state: its attention sinks, its recent window and its KV store.
//!
//! Streaming encode with sliding-window attention (StreamingLLM's sinks + window, as
//! ReKV encodes video): a new frame's chunk (its embeddings and whatever text its family
//! puts around a frame) attends to the sink tokens (the prompt prefix, positions
//! `0..S`) and the last W frames' chunks, placed contiguously after the sinks, and to
//! itself causally. Window keys are kept *before* rotary and placed afresh for every
//! batch, so positions stay bounded (`S + (W + batch) · chunk tokens`) however long
//! the stream runs, and the cost of a frame never grows. With a window wider than the
//! stream this is exactly the contiguous prefill of the whole video.
//!
//! Every encoded block (a frame, or a family's group of frames such as Qwen2.5-VL's
//! temporal patch of two) becomes a [`Block`] handed to the store at once (the store's
//! own policy decides when it is durable); the window keeps its own full-precision
//! copy until the block slides out. Positions follow the family's count
//! ([`VideoLlm::block_positions`]): a run of tokens for 1-D families; for M-RoPE the
//! window's blocks take temporal indices 0, 1, ... after the sinks, spaced by the
//! stream's frame interval as measured from its frames' stream times.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tch::Tensor;

use crate::engine::prompt::PromptLayout;
use crate::error::{EngineError, EngineResult};
use crate::kv::disk::RecoveryReport;
use crate::kv::{Appended, Block, BlockMeta, KvStore, StoreConfig};
use crate::metrics as names;
use crate::model::{AttnContext, BlockLayout, Cursor, ForwardOptions, KvSegment, VideoLlm};

/// When a frame was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameStamp {
    pub pts: Duration,
    pub wall: SystemTime,
}

/// A block in the recent window. Invariant: `kv` holds the block's chunk (as many tokens
/// as its block) with keys before rotary, in the model dtype and device.
#[derive(Debug)]
pub struct WindowFrame {
    pub meta: BlockMeta,
    pub kv: KvSegment,
}

/// One stream's sinks, window and store.
pub struct StreamCtx {
    pub id: Arc<str>,
    pub store: KvStore,
    /// The prompt prefix's KV, keys before rotary, at positions `0..S`.
    sinks: KvSegment,
    /// The last ≤ `window_frames` frames, oldest first, seqs increasing.
    window: VecDeque<WindowFrame>,
    window_frames: usize,
    /// Seq of the next block: above every seq the store holds (also after a restart).
    next_seq: u64,
    /// Added to incoming frames' pts so stream time keeps increasing across restarts
    /// (ingest counts from zero each time the daemon starts).
    pts_offset: Duration,
    frames_encoded: u64,
    /// Stream seconds between the last two frames encoded (1 until two are seen):
    /// what spaces blocks on a temporal position axis.
    frame_seconds: f64,
    /// Stream time of the last frame encoded.
    last_pts: Option<Duration>,
}

/// Tokens and layout of each of `blocks`, as position planning takes them.
pub fn layouts<'a>(blocks: impl IntoIterator<Item = &'a BlockMeta>) -> Vec<(i64, BlockLayout)> {
    blocks
        .into_iter()
        .map(|m| (i64::from(m.tokens), m.layout))
        .collect()
}

impl StreamCtx {
    /// Opens stream `id`: recovers its store under `dir` and encodes its sinks.
    pub fn open(
        model: &dyn VideoLlm,
        layout: &PromptLayout,
        dir: &Path,
        id: &str,
        store: StoreConfig,
        window_frames: usize,
    ) -> EngineResult<(Self, Option<RecoveryReport>)> {
        if window_frames == 0 {
            return Err(EngineError::InvalidRequest(
                "window_frames must be at least 1".into(),
            ));
        }
        let (store, report) = KvStore::open(dir, id, store)?;
        let last = store.metas().last().copied();
        let sinks = encode_sinks(model, layout)?;
        Ok((
            Self {
                id: Arc::from(id),
                store,
                sinks,
                window: VecDeque::with_capacity(window_frames + 1),
                window_frames,
                next_seq: last.map_or(0, |m| m.seq + 1),
                // One nominal second after the last block seen before the restart.
                pts_offset: last.map_or(Duration::ZERO, |m| m.pts + Duration::from_secs(1)),
                frames_encoded: 0,
                frame_seconds: 1.0,
                last_pts: None,
            },
            report,
        ))
    }

    /// Sink tokens (S).
    pub fn sink_len(&self) -> i64 {
        self.sinks.len()
    }

    pub fn sinks(&self) -> &KvSegment {
        &self.sinks
    }

    pub fn window(&self) -> &VecDeque<WindowFrame> {
        &self.window
    }

    pub fn frames_encoded(&self) -> u64 {
        self.frames_encoded
    }

    /// Stream seconds between consecutive frames, as last measured.
    pub fn frame_seconds(&self) -> f64 {
        self.frame_seconds
    }

    /// A context of the sinks at `0..S` followed by `frames` contiguously, and the
    /// cursor after them.
    pub fn sinks_and(
        &self,
        model: &dyn VideoLlm,
        frames: &[&WindowFrame],
    ) -> EngineResult<(AttnContext, Cursor)> {
        let mut ctx = AttnContext::new(model.decoder().num_layers());
        let mut cursor = Cursor::new(self.frame_seconds);
        let at = model.text_positions(&mut cursor, self.sinks.len())?;
        model.place(&mut ctx, &self.sinks.layers, &at)?;
        if !frames.is_empty() {
            let parts: Vec<&KvSegment> = frames.iter().map(|f| &f.kv).collect();
            let window = KvSegment::concat(&parts)?;
            let at =
                model.block_positions(&mut cursor, &layouts(frames.iter().map(|f| &f.meta)))?;
            model.place(&mut ctx, &window.layers, &at)?;
        }
        Ok((ctx, cursor))
    }

    /// Encodes blocks of this stream whose visual embeddings are `embeds` [n,
    /// tokens_per_frame, hidden] (from [`VideoLlm::encode_frames`]); `stamps` are their
    /// frames', [`VideoLlm::frames_per_block`] a block in order (the last block may
    /// have fewer: a frame repeated to fill it has no stamp of its own). Their chunks
    /// ([`VideoLlm::frame_chunk`]) run as one prefill after the sinks and the window;
    /// each block's chunk is stored and slides the window.
    pub fn encode(
        &mut self,
        model: &dyn VideoLlm,
        embeds: &Tensor,
        stamps: &[FrameStamp],
    ) -> EngineResult<Vec<Appended>> {
        let n = embeds.size3()?.0 as usize;
        let per = model.frames_per_block().max(1);
        if n == 0 || stamps.len() > n * per || stamps.len() + per <= n * per {
            return Err(EngineError::Internal(format!(
                "{n} blocks of {per} frame(s) for {} stamps",
                stamps.len()
            )));
        }
        for stamp in stamps {
            if let Some(last) = self.last_pts {
                let gap = stamp.pts.saturating_sub(last).as_secs_f64();
                if gap > 0.0 {
                    self.frame_seconds = gap;
                }
            }
            self.last_pts = Some(stamp.pts);
        }
        // Each block's first frame, and how many real frames it holds (a filled last
        // block holds fewer).
        let firsts: Vec<(FrameStamp, u32)> =
            stamps.chunks(per).map(|c| (c[0], c.len() as u32)).collect();
        let chunks = firsts
            .iter()
            .enumerate()
            .map(|(i, (stamp, _))| {
                model.frame_chunk(&embeds.f_get(i as i64)?, stamp.pts + self.pts_offset)
            })
            .collect::<Result<Vec<Tensor>, _>>()?;
        let layout = model.block_layout();
        let lengths: Vec<i64> = chunks.iter().map(|c| c.size()[0]).collect();
        let window: Vec<&WindowFrame> = self.window.iter().collect();
        let (mut ctx, mut cursor) = self.sinks_and(model, &window)?;
        let planned: Vec<(i64, BlockLayout)> = lengths.iter().map(|&l| (l, layout)).collect();
        let at = model.block_positions(&mut cursor, &planned)?;
        let opts = ForwardOptions {
            return_kv: true,
            ..Default::default()
        };
        let out = model
            .decoder()
            .forward(&Tensor::f_cat(&chunks, 0)?, &at, &mut ctx, opts)?;
        let kv = out
            .kv
            .ok_or_else(|| EngineError::Internal("prefill returned no KV".into()))?;
        let mut appended = Vec::with_capacity(firsts.len());
        let mut offset = 0;
        for ((stamp, frames), len) in firsts.iter().zip(lengths) {
            let block_kv = kv.narrow(offset, len)?;
            offset += len;
            let block = Block::new(
                self.next_seq,
                stamp.pts + self.pts_offset,
                stamp.wall,
                block_kv,
            )?
            .with_layout(BlockLayout {
                frames: *frames,
                ..layout
            });
            self.next_seq += 1;
            appended.push(self.store.append(&block)?);
            self.window.push_back(WindowFrame {
                meta: block.meta,
                kv: block.kv,
            });
            while self.window.len() > self.window_frames {
                self.window.pop_front();
            }
        }
        self.frames_encoded += stamps.len() as u64;
        metrics::counter!(names::ENGINE_FRAMES_ENCODED, "stream" => self.id.to_string())
            .increment(stamps.len() as u64);
        Ok(appended)
    }
}

/// The prompt prefix prefilled at `0..S`: the sinks every frame and question attend to.
fn encode_sinks(model: &dyn VideoLlm, layout: &PromptLayout) -> EngineResult<KvSegment> {
    let dec = model.decoder();
    let s = layout.prefix.len() as i64;
    if s == 0 {
        return Err(EngineError::InvalidRequest(
            "the prompt puts nothing before the first frame: streaming needs sink tokens".into(),
        ));
    }
    let ids = Tensor::from_slice(&layout.prefix).f_to_device(model.device())?;
    let mut ctx = AttnContext::new(dec.num_layers());
    let opts = ForwardOptions {
        return_kv: true,
        ..Default::default()
    };
    let at = model.text_positions(&mut Cursor::new(1.0), s)?;
    let out = dec.forward(&dec.embed(&ids)?, &at, &mut ctx, opts)?;
    out.kv
        .ok_or_else(|| EngineError::Internal("prefill returned no KV".into()))
}

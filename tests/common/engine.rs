//! Family-agnostic helpers for the engine equivalence tests: a fixture's frames streamed
//! into a `StreamCtx` one block at a time, a question prepared as the engine thread
//! prepares it, and the question chunk's logits over the prepared context.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tch::Tensor;
use vstreamd::engine::answer::{self, Prepared};
use vstreamd::engine::prompt::PromptLayout;
use vstreamd::engine::stream::{FrameStamp, StreamCtx};
use vstreamd::engine::AskDefaults;
use vstreamd::engine::AskRequest;
use vstreamd::kv::disk::DiskConfig;
use vstreamd::kv::{Quant, StoreConfig};
use vstreamd::model::{ForwardOptions, VideoLlm};
use vstreamd::retrieval::LayerSelection;

/// A store holding every block in RAM (64 MiB) over a disk tier.
pub fn store(quant: Quant) -> StoreConfig {
    StoreConfig {
        quant,
        ram_budget_bytes: 64 << 20,
        rep_key_budget_bytes: 64 << 20,
        dedup_threshold: None,
        disk: Some(DiskConfig::default()),
    }
}

/// Frame i of a stream: at 2·i seconds of stream time, wall clock 1,000 + i s.
pub fn stamp(i: i64) -> FrameStamp {
    FrameStamp {
        pts: Duration::from_secs(2 * i as u64),
        wall: UNIX_EPOCH + Duration::from_secs(1_000 + i as u64),
    }
}

/// `frames` (uint8 [N, 3, H, W]) encoded and streamed one block at a time (a block is
/// [`VideoLlm::frames_per_block`] frames; the last one filled by repeating the last
/// frame, as the engine does when a stream ends), frame i stamped by [`stamp`], into a
/// stream `name` under `dir` with a window of `window` blocks.
pub fn streamed(
    model: &dyn VideoLlm,
    frames: &Tensor,
    name: &str,
    window: usize,
    store: StoreConfig,
    dir: &Path,
) -> (PromptLayout, StreamCtx) {
    let layout = PromptLayout::new(model).unwrap();
    let (mut ctx, _) =
        StreamCtx::open(model, &layout, dir, name, store, window).expect("open stream");
    let n = frames.size()[0];
    let per = model.frames_per_block() as i64;
    let mut pixels = model.preprocess(frames).unwrap();
    let blocks = (n + per - 1) / per;
    if blocks * per > n {
        let last = pixels
            .narrow(0, n - 1, 1)
            .repeat([blocks * per - n, 1, 1, 1]);
        pixels = Tensor::cat(&[&pixels, &last], 0);
    }
    let embeds = model.encode_frames(&pixels).unwrap();
    for b in 0..blocks {
        let stamps: Vec<_> = (b * per..((b + 1) * per).min(n)).map(stamp).collect();
        ctx.encode(model, &embeds.narrow(0, b, 1), &stamps).unwrap();
    }
    (layout, ctx)
}

/// `req` prepared as the engine thread does (top-k at most 16, per-layer retrieval).
pub fn prepare(
    model: &dyn VideoLlm,
    layout: &PromptLayout,
    ctx: &mut StreamCtx,
    req: &AskRequest,
) -> Prepared {
    answer::prepare(
        model,
        layout,
        ctx,
        req,
        AskDefaults {
            top_k: 16,
            layer_selection: LayerSelection::PerLayer,
            recent_frames: None,
        },
        SystemTime::now(),
    )
    .unwrap()
}

/// Logits [T, vocab] of the prepared question chunk over its context.
pub fn question_logits(model: &dyn VideoLlm, prepared: &mut Prepared) -> Tensor {
    let opts = ForwardOptions {
        append: true,
        ..Default::default()
    };
    let out = model
        .decoder()
        .forward(
            &prepared.question,
            &prepared.positions,
            &mut prepared.ctx,
            opts,
        )
        .unwrap();
    model.decoder().logits(&out.hidden).unwrap()
}

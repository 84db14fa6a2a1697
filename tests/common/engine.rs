//! Family-agnostic helpers for the engine equivalence tests: a fixture's frames streamed
//! into a `StreamCtx` one block at a time, a question prepared as the engine thread
//! prepares it, and the question chunk's logits over the prepared context.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tch::Tensor;
use vstreamd::engine::answer::{self, Prepared};
use vstreamd::engine::prompt::PromptLayout;
use vstreamd::engine::stream::{FrameStamp, StreamCtx};
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

/// `frames` (uint8 [N, 3, H, W]) encoded and streamed one block each, stamped by
/// [`stamp`], into a stream `name` under `dir` with a window of `window` frames.
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
    let pixels = model.preprocess(frames).unwrap();
    let embeds = model.encode_frames(&pixels).unwrap();
    for i in 0..embeds.size()[0] {
        ctx.encode(model, &embeds.narrow(0, i, 1), &[stamp(i)])
            .unwrap();
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
        16,
        LayerSelection::PerLayer,
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

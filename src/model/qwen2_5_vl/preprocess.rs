//! Frames → the vision tower's input as `Qwen2VLVideoProcessor` (transformers 5,
//! torchvision backend) makes it: each uint8 frame resized to the `smart_resize` of its
//! size with antialiased bicubic (libtorch's native uint8 kernel on the CPU, as
//! torchvision uses), rescaled and normalised in fp32 as one fused `(x − mean/r) /
//! (std/r)`, then cut into temporal patches of two consecutive frames (an odd count is
//! filled by repeating the last frame, after normalisation) and flattened patch by
//! patch in the merger's order ([`patchify`]).
//!
//! Streams are encoded at one size, [`QwenPreprocessor::stream_size`], so that every
//! block has the same token grid; a one-shot prompt sizes its frames from their own
//! size, as `transformers` does.

use tch::{Device, Tensor};

use super::config::VideoProcessing;
use crate::error::{ModelError, ModelResult};
use crate::model::preprocess::{check_frames, resize_uint8, Normalisation};

/// The square side streams are sized from (then `smart_resize`d to the processor's
/// bounds): 448 px, 16 × 16 merged tokens a temporal patch at patch size 14.
pub const STREAM_SIDE: i64 = 448;

#[derive(Debug)]
pub struct QwenPreprocessor {
    pub settings: VideoProcessing,
    /// On the CPU, where the resizes run.
    normalisation: Normalisation,
    /// Where pixel values go.
    device: Device,
    /// (height, width) of streamed frames.
    stream_size: (i64, i64),
}

impl QwenPreprocessor {
    pub fn new(settings: VideoProcessing, device: Device) -> ModelResult<Self> {
        let normalisation = Normalisation::new(
            &settings.image_mean,
            &settings.image_std,
            settings.do_normalize,
            settings.do_rescale.then_some(settings.rescale_factor),
            Device::Cpu,
        )?;
        let stream_size = settings.target_size(STREAM_SIDE, STREAM_SIDE)?;
        Ok(Self {
            settings,
            normalisation,
            device,
            stream_size,
        })
    }

    /// (height, width) streamed frames are encoded at.
    pub fn stream_size(&self) -> (i64, i64) {
        self.stream_size
    }

    /// Pixel values [N, 3, h, w] (fp32, on the model's device) of uint8 frames
    /// [N, 3, H, W] resized to `(h, w)`; frames are not resized where the processor
    /// says not to.
    pub fn process_at(&self, frames: &Tensor, (h, w): (i64, i64)) -> ModelResult<Tensor> {
        check_frames(frames)?;
        let mut x = frames.f_to_device(Device::Cpu)?.f_contiguous()?;
        if self.settings.do_resize {
            x = resize_uint8(&x, h, w, self.settings.resample)?;
        }
        Ok(self.normalisation.apply(&x)?.f_to_device(self.device)?)
    }

    /// Pixel values of frames resized as `transformers` sizes them: the `smart_resize`
    /// of their own size.
    pub fn process_own_size(&self, frames: &Tensor) -> ModelResult<Tensor> {
        check_frames(frames)?;
        let dims = frames.size();
        let size = if self.settings.do_resize {
            self.settings.target_size(dims[2], dims[3])?
        } else {
            (dims[2], dims[3])
        };
        self.process_at(frames, size)
    }
}

/// Pixel values [F, C, H, W] → temporal patches [⌈F/t⌉, H/p · W/p, C·t·p·p] (t the
/// temporal patch size, p the patch size, m the merge size): an F not divisible by t
/// is filled by repeating the last frame; within a temporal patch, patches run over
/// m × m blocks row by row, and within a block row by row (`Qwen2VLVideoProcessor.
/// patchify`), each patch's values in (channel, frame, row, column) order.
pub fn patchify(pixels: &Tensor, patch: i64, merge: i64, temporal: i64) -> ModelResult<Tensor> {
    let dims = pixels.size();
    let [f, c, h, w] = dims[..] else {
        return Err(ModelError::InvalidInput(format!(
            "pixel values must be [F, C, H, W], got {dims:?}"
        )));
    };
    let factor = patch * merge;
    if f < 1 || h % factor != 0 || w % factor != 0 {
        return Err(ModelError::InvalidInput(format!(
            "{f} frames of {w}x{h}: need frames whose sides divide by {factor}"
        )));
    }
    let mut x = pixels.shallow_clone();
    let pad = (temporal - f % temporal) % temporal;
    if pad > 0 {
        let last = pixels
            .f_narrow(0, f - 1, 1)?
            .f_expand([pad, c, h, w], false)?;
        x = Tensor::f_cat(&[&x, &last], 0)?;
    }
    let t = (f + pad) / temporal;
    let (gh, gw) = (h / patch, w / patch);
    Ok(x.f_reshape([
        t,
        temporal,
        c,
        gh / merge,
        merge,
        patch,
        gw / merge,
        merge,
        patch,
    ])?
    .f_permute([0, 3, 6, 4, 7, 2, 1, 5, 8])?
    .f_reshape([t, gh * gw, c * temporal * patch * patch])?)
}

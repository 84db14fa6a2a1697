//! Frames → pixel values as `SmolVLMVideoProcessor` (transformers 5, torchvision
//! backend) makes them for a video — never split into tiles: each uint8 frame is
//! resized so that its longest edge is the configured one (aspect kept, the other side
//! truncated and rounded up to even), then to the square `max_image_size`, both with
//! antialiased Lanczos-3 (libtorch's native uint8 kernel on the CPU, as torchvision
//! uses; a resize to the size a frame already has is skipped), then rescaled and
//! normalised in fp32 as one fused `(x − mean/r) / (std/r)`.
//! In: [N, 3, H, W] uint8 (any device). Out: [N, 3, S, S] fp32 on the model's device.

use tch::{Device, Tensor};

use super::config::VideoProcessing;
use crate::error::ModelResult;
use crate::model::preprocess::{check_frames, resize_uint8, Normalisation};

/// The longest edge torchvision's resize allows (`MAX_IMAGE_SIZE`).
const MAX_IMAGE_SIZE: i64 = 4096;

#[derive(Debug)]
pub struct SmolVlmPreprocessor {
    settings: VideoProcessing,
    /// On the CPU, where the resizes run.
    normalisation: Normalisation,
    /// Where pixel values go.
    device: Device,
}

/// `get_resize_output_image_size`: the longest edge to `longest`, the other side by the
/// aspect ratio, truncated, then rounded up to even.
pub fn longest_edge_size(height: i64, width: i64, longest: i64) -> (i64, i64) {
    let longest = longest.min(MAX_IMAGE_SIZE);
    let aspect = width as f64 / height as f64;
    let even = |x: i64| if x % 2 != 0 { x + 1 } else { x };
    let (h, w) = if width >= height {
        (even((longest as f64 / aspect) as i64), longest)
    } else {
        (longest, even((longest as f64 * aspect) as i64))
    };
    (h.max(1), w.max(1))
}

impl SmolVlmPreprocessor {
    pub fn new(settings: VideoProcessing, device: Device) -> ModelResult<Self> {
        let normalisation = Normalisation::new(
            &settings.image_mean,
            &settings.image_std,
            settings.do_normalize,
            settings.do_rescale.then_some(settings.rescale_factor),
            Device::Cpu,
        )?;
        Ok(Self {
            settings,
            normalisation,
            device,
        })
    }

    /// The square side frames end at.
    pub fn side(&self) -> i64 {
        self.settings.max_image_size
    }

    fn resize(&self, frames: &Tensor, height: i64, width: i64) -> ModelResult<Tensor> {
        resize_uint8(frames, height, width, self.settings.resample)
    }

    /// Pixel values for frames [N, 3, H, W] uint8.
    pub fn process(&self, frames: &Tensor) -> ModelResult<Tensor> {
        check_frames(frames)?;
        let dims = frames.size();
        // torchvision resizes uint8 with libtorch's native kernels on the CPU only.
        let mut x = frames.f_to_device(Device::Cpu)?.f_contiguous()?;
        if self.settings.do_resize {
            let (h, w) = match (self.settings.longest_edge, self.settings.size) {
                (Some(edge), _) => longest_edge_size(dims[2], dims[3], edge),
                (None, Some(hw)) => hw,
                (None, None) => (dims[2], dims[3]),
            };
            x = self.resize(&x, h, w)?;
            let side = self.settings.max_image_size;
            x = self.resize(&x, side, side)?;
        }
        Ok(self.normalisation.apply(&x)?.f_to_device(self.device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::longest_edge_size;

    #[test]
    fn longest_edge_keeps_aspect_and_rounds_up_to_even() {
        assert_eq!(longest_edge_size(40, 56, 64), (46, 64)); // 64 / 1.4 = 45.7 → 45 → 46
        assert_eq!(longest_edge_size(50, 38, 54), (54, 42)); // 54 · 0.76 = 41.04 → 41 → 42
        assert_eq!(longest_edge_size(512, 512, 2048), (2048, 2048));
        assert_eq!(longest_edge_size(10, 20_000, 9_999), (2, 4096));
    }
}

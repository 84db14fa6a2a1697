//! Frame preprocessing as `LlavaOnevisionVideoProcessor` (transformers 5, torchvision
//! backend) does it: RGB uint8 frames resized to the configured size with antialiased
//! bicubic (or bilinear) interpolation, rounded back to uint8, then the fused
//! rescale-and-normalise `(x - mean/r) / (std/r)` in fp32.
//! In: [N, 3, H, W] uint8. Out: [N, 3, S_h, S_w] fp32.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use serde::Deserialize;

use crate::error::{ModelError, ModelResult};
use crate::model::config::read_json;

/// Video preprocessing as `LlavaOnevisionVideoProcessor` does it.
#[derive(Debug, Clone, Deserialize)]
pub struct VideoPreprocessorConfig {
    #[serde(default = "crate::model::config::default_true")]
    pub do_resize: bool,
    #[serde(default)]
    pub size: Option<SizeSpec>,
    /// PIL resampling code: 2 bilinear, 3 bicubic.
    #[serde(default = "default_resample")]
    pub resample: i64,
    #[serde(default = "crate::model::config::default_true")]
    pub do_rescale: bool,
    #[serde(default = "default_rescale")]
    pub rescale_factor: f64,
    #[serde(default = "crate::model::config::default_true")]
    pub do_normalize: bool,
    #[serde(default = "default_mean")]
    pub image_mean: Vec<f64>,
    #[serde(default = "default_std")]
    pub image_std: Vec<f64>,
}

/// `size`: explicit height/width, or a shortest edge (treated as a square here, as
/// LLaVA-OneVision's SigLIP towers take square inputs).
#[derive(Debug, Clone, Deserialize)]
pub struct SizeSpec {
    pub height: Option<i64>,
    pub width: Option<i64>,
    pub shortest_edge: Option<i64>,
}

fn default_resample() -> i64 {
    3
}
fn default_rescale() -> f64 {
    1.0 / 255.0
}
fn default_mean() -> Vec<f64> {
    vec![0.48145466, 0.4578275, 0.40821073]
}
fn default_std() -> Vec<f64> {
    vec![0.26862954, 0.26130258, 0.27577711]
}

impl VideoPreprocessorConfig {
    /// Finds the video preprocessor config the way `transformers` 5 and the hub
    /// checkpoints lay it out: `video_preprocessor_config.json`, the `video_processor`
    /// entry of `processor_config.json`, or `preprocessor_config.json`.
    pub fn load(dir: &Path) -> ModelResult<Self> {
        let video = dir.join("video_preprocessor_config.json");
        if video.exists() {
            return read_json(&video);
        }
        let processor = dir.join("processor_config.json");
        if processor.exists() {
            let value: serde_json::Value = read_json(&processor)?;
            if let Some(section) = value.get("video_processor") {
                return serde_json::from_value(section.clone()).map_err(|source| {
                    ModelError::Json {
                        path: processor,
                        source,
                    }
                });
            }
        }
        let image = dir.join("preprocessor_config.json");
        if image.exists() {
            return read_json(&image);
        }
        Err(ModelError::MissingFile {
            dir: dir.to_owned(),
            what: "video preprocessor config (video_preprocessor_config.json, processor_config.json or preprocessor_config.json)",
        })
    }

    /// Output (height, width), given the tower's input size for configs that omit it.
    pub fn target_size(&self, tower_size: i64) -> (i64, i64) {
        match &self.size {
            Some(SizeSpec {
                height: Some(h),
                width: Some(w),
                ..
            }) => (*h, *w),
            Some(SizeSpec {
                shortest_edge: Some(s),
                ..
            }) => (*s, *s),
            _ => (tower_size, tower_size),
        }
    }
}

#[derive(Debug)]
pub struct FramePreprocessor {
    height: i64,
    width: i64,
    resize: bool,
    bicubic: bool,
    normalisation: Normalisation,
}

/// Rescale and per-channel normalisation folded into one offset and one divisor,
/// `(x·r − mean) / std = (x − mean/r) / (std/r)`, as `transformers`' fast processors
/// fuse them (the same rounding as theirs, so pixel values match bit for bit).
#[derive(Debug)]
pub struct Normalisation {
    /// Per-channel offset and divisor, [1, 3, 1, 1] fp32, with the rescale folded in.
    mean: Tensor,
    std: Tensor,
}

impl Normalisation {
    /// `rescale`: the factor when `do_rescale`; `None` leaves values in 0..=255.
    /// Without `do_normalize` only the rescale is applied.
    pub fn new(
        mean: &[f64],
        std: &[f64],
        do_normalize: bool,
        rescale: Option<f64>,
        device: Device,
    ) -> ModelResult<Self> {
        if mean.len() != 3 || std.len() != 3 {
            return Err(ModelError::InvalidConfig(
                "image_mean and image_std need 3 values".into(),
            ));
        }
        let (mean, std) = if do_normalize {
            (mean.to_vec(), std.to_vec())
        } else {
            (vec![0.0; 3], vec![1.0; 3])
        };
        let scale = rescale.unwrap_or(1.0);
        let folded = |v: &[f64]| -> ModelResult<Tensor> {
            let v: Vec<f32> = v.iter().map(|x| (x / scale) as f32).collect();
            Ok(Tensor::from_slice(&v)
                .f_view([1, 3, 1, 1])?
                .f_to_device(device)?)
        };
        Ok(Self {
            mean: folded(&mean)?,
            std: folded(&std)?,
        })
    }

    /// The device the offsets live on (where [`Normalisation::apply`] runs).
    pub fn device(&self) -> Device {
        self.mean.device()
    }

    /// uint8 (or any) [N, 3, H, W] on [`Normalisation::device`] → fp32 pixel values.
    pub fn apply(&self, frames: &Tensor) -> ModelResult<Tensor> {
        Ok(frames
            .f_to_kind(Kind::Float)?
            .f_sub(&self.mean)?
            .f_div(&self.std)?)
    }
}

/// How frames are resized, by PIL resampling code: `Lanczos` (1), `Bilinear` (2),
/// `Bicubic` (3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    Lanczos,
    Bicubic,
    Bilinear,
}

impl Resample {
    pub fn from_pil(code: i64) -> ModelResult<Self> {
        match code {
            1 => Ok(Self::Lanczos),
            2 => Ok(Self::Bilinear),
            3 => Ok(Self::Bicubic),
            other => Err(ModelError::Unsupported(format!(
                "video processor resample {other} (1 Lanczos, 2 bilinear, 3 bicubic)"
            ))),
        }
    }
}

/// uint8 frames [N, 3, H, W] on the CPU resized to `height` × `width` with antialiasing,
/// as torchvision resizes uint8 tensors on the CPU (libtorch's native uint8 kernels);
/// a resize to the size frames already have returns them as they are.
pub fn resize_uint8(
    frames: &Tensor,
    height: i64,
    width: i64,
    resample: Resample,
) -> ModelResult<Tensor> {
    let dims = frames.size();
    if dims.len() == 4 && (dims[2], dims[3]) == (height, width) {
        return Ok(frames.shallow_clone());
    }
    let size = [height, width];
    Ok(match resample {
        Resample::Lanczos => frames.f_internal_upsample_lanczos2d_aa(size, false, None, None)?,
        Resample::Bicubic => frames.f_internal_upsample_bicubic2d_aa(size, false, None, None)?,
        Resample::Bilinear => frames.f_internal_upsample_bilinear2d_aa(size, false, None, None)?,
    })
}

/// Frames a preprocessor takes: uint8 [N, 3, H, W].
pub fn check_frames(frames: &Tensor) -> ModelResult<()> {
    let dims = frames.size();
    if dims.len() != 4 || dims[1] != 3 || frames.kind() != Kind::Uint8 {
        return Err(ModelError::InvalidInput(format!(
            "frames must be uint8 [N, 3, H, W], got {:?} {:?}",
            frames.kind(),
            dims
        )));
    }
    Ok(())
}

impl FramePreprocessor {
    pub fn new(
        cfg: &VideoPreprocessorConfig,
        tower_size: i64,
        device: Device,
    ) -> ModelResult<Self> {
        let (height, width) = cfg.target_size(tower_size);
        if (height, width) != (tower_size, tower_size) {
            return Err(ModelError::InvalidConfig(format!(
                "video preprocessor size {height}x{width} differs from the vision tower's {tower_size}x{tower_size}"
            )));
        }
        let bicubic = match cfg.resample {
            3 => true,
            2 => false,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "resample {other} (bilinear = 2 and bicubic = 3 are supported)"
                )))
            }
        };
        let normalisation = Normalisation::new(
            &cfg.image_mean,
            &cfg.image_std,
            cfg.do_normalize,
            cfg.do_rescale.then_some(cfg.rescale_factor),
            device,
        )?;
        Ok(Self {
            height,
            width,
            resize: cfg.do_resize,
            bicubic,
            normalisation,
        })
    }

    pub fn size(&self) -> (i64, i64) {
        (self.height, self.width)
    }

    /// Resizes uint8 frames as torchvision's `resize` does: on CPU, libtorch's native
    /// uint8 antialiased kernels; elsewhere in fp32, clamped and rounded back to uint8.
    fn resize(&self, frames: &Tensor) -> ModelResult<Tensor> {
        let size = [self.height, self.width];
        let interpolate = |x: &Tensor| -> ModelResult<Tensor> {
            Ok(if self.bicubic {
                x.f_internal_upsample_bicubic2d_aa(size, false, None, None)?
            } else {
                x.f_internal_upsample_bilinear2d_aa(size, false, None, None)?
            })
        };
        if frames.device() == Device::Cpu {
            return interpolate(frames);
        }
        Ok(interpolate(&frames.f_to_kind(Kind::Float)?)?
            .f_clamp(0.0, 255.0)?
            .f_round()?
            .f_to_kind(Kind::Uint8)?)
    }

    /// Pixel values for frames [N, 3, H, W] uint8.
    pub fn process(&self, frames: &Tensor) -> ModelResult<Tensor> {
        check_frames(frames)?;
        let dims = frames.size();
        let frames = frames.f_to_device(self.normalisation.device())?;
        let x = if self.resize && (dims[2], dims[3]) != (self.height, self.width) {
            self.resize(&frames)?
        } else {
            frames
        };
        self.normalisation.apply(&x)
    }
}

/// Reads an image file as an RGB uint8 tensor [3, H, W].
pub fn load_rgb(path: &Path) -> ModelResult<Tensor> {
    let img = image::open(path)
        .map_err(|e| ModelError::Image {
            path: path.to_owned(),
            message: e.to_string(),
        })?
        .to_rgb8();
    let (w, h) = img.dimensions();
    let t = Tensor::f_from_data_size(img.as_raw(), &[h as i64, w as i64, 3], Kind::Uint8)?;
    Ok(t.f_permute([2, 0, 1])?.f_contiguous()?)
}

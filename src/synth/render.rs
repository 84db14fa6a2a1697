//! Rasterisation of a [`Scene`] at a time `t` into a packed RGB u8 frame (row-major,
//! `[H, W, 3]`), in plain Rust: the background with its static noise, then each
//! visible object in script order, its coverage of each pixel estimated from 4×4
//! sub-pixel samples and blended over what lies beneath (anti-aliased edges, so a shape
//! reads the same wherever it sits on the pixel grid).
//!
//! Shapes, all centred and scaled by the object's radius r: a disc of radius 0.95 r; an
//! axis-aligned square of half side 0.82 r; an upward equilateral triangle inscribed in
//! a circle of 1.1 r; a five-pointed star with outer radius 1.1 r and inner 0.45 r.

use tch::{Kind, Tensor};

use crate::error::SynthResult;
use crate::synth::world::{mix, Object, Scene, Shape};

/// One RGB frame, packed row-major as `[height, width, 3]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

impl Frame {
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = 3 * (y as usize * self.width as usize + x as usize);
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    /// As an `image` buffer, to write as PNG.
    pub fn to_image(&self) -> Option<image::RgbImage> {
        image::RgbImage::from_raw(self.width, self.height, self.rgb.clone())
    }
}

const SUBSAMPLES: usize = 4;

impl Scene {
    /// The scene at time `t`.
    pub fn render(&self, t: f64) -> Frame {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut acc = vec![0f32; w * h * 3];
        let bg = &self.background;
        for y in 0..h {
            for x in 0..w {
                let noise = if bg.texture == 0 {
                    0.0
                } else {
                    let r = mix(bg.seed ^ ((y as u64) << 32 | x as u64));
                    let unit = (r >> 11) as f32 / (1u64 << 53) as f32;
                    (unit * 2.0 - 1.0) * f32::from(bg.texture)
                };
                let i = 3 * (y * w + x);
                for c in 0..3 {
                    acc[i + c] = f32::from(bg.rgb[c]) + noise;
                }
            }
        }
        for object in self.visible_at(t) {
            draw(&mut acc, w, h, object, t);
        }
        Frame {
            width: self.width,
            height: self.height,
            rgb: acc
                .iter()
                .map(|v| v.round().clamp(0.0, 255.0) as u8)
                .collect(),
        }
    }
}

fn draw(acc: &mut [f32], w: usize, h: usize, object: &Object, t: f64) {
    let [cx, cy] = object.centre_at(t);
    let r = object.radius;
    let reach = 1.2 * r + 1.0;
    let x0 = (cx - reach).floor().max(0.0) as usize;
    let y0 = (cy - reach).floor().max(0.0) as usize;
    let x1 = ((cx + reach).ceil().max(0.0) as usize).min(w);
    let y1 = ((cy + reach).ceil().max(0.0) as usize).min(h);
    let polygon = outline(object.shape, r);
    let colour = object.colour.rgb();
    let step = 1.0 / SUBSAMPLES as f32;
    for y in y0..y1 {
        for x in x0..x1 {
            let mut inside = 0usize;
            for sy in 0..SUBSAMPLES {
                for sx in 0..SUBSAMPLES {
                    let px = x as f32 + (sx as f32 + 0.5) * step - cx;
                    let py = y as f32 + (sy as f32 + 0.5) * step - cy;
                    if contains(object.shape, r, &polygon, px, py) {
                        inside += 1;
                    }
                }
            }
            if inside == 0 {
                continue;
            }
            let cover = inside as f32 / (SUBSAMPLES * SUBSAMPLES) as f32;
            let i = 3 * (y * w + x);
            for c in 0..3 {
                acc[i + c] = acc[i + c] * (1.0 - cover) + f32::from(colour[c]) * cover;
            }
        }
    }
}

/// Vertices of polygonal shapes, relative to the centre (empty for circle and square).
fn outline(shape: Shape, r: f32) -> Vec<[f32; 2]> {
    let at = |radius: f32, k: f32, n: f32| {
        let angle = -std::f32::consts::FRAC_PI_2 + k * std::f32::consts::TAU / n;
        [radius * angle.cos(), radius * angle.sin()]
    };
    match shape {
        Shape::Triangle => (0..3).map(|k| at(1.1 * r, k as f32, 3.0)).collect(),
        Shape::Star => (0..10)
            .map(|k| at(if k % 2 == 0 { 1.1 * r } else { 0.45 * r }, k as f32, 10.0))
            .collect(),
        Shape::Circle | Shape::Square => Vec::new(),
    }
}

fn contains(shape: Shape, r: f32, polygon: &[[f32; 2]], x: f32, y: f32) -> bool {
    match shape {
        Shape::Circle => x * x + y * y <= (0.95 * r) * (0.95 * r),
        Shape::Square => x.abs() <= 0.82 * r && y.abs() <= 0.82 * r,
        Shape::Triangle | Shape::Star => in_polygon(polygon, x, y),
    }
}

/// Even-odd rule.
fn in_polygon(polygon: &[[f32; 2]], x: f32, y: f32) -> bool {
    let mut inside = false;
    let n = polygon.len();
    for i in 0..n {
        let [xi, yi] = polygon[i];
        let [xj, yj] = polygon[(i + n - 1) % n];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
    }
    inside
}

/// Frames of one size as a uint8 tensor [N, 3, H, W], the layout the model's
/// preprocessor takes.
pub fn frames_to_tensor(frames: &[Frame]) -> SynthResult<Tensor> {
    let Some(first) = frames.first() else {
        return Err(crate::error::SynthError::InvalidInput(
            "no frames to stack".into(),
        ));
    };
    let (w, h) = (first.width as i64, first.height as i64);
    let mut bytes = Vec::with_capacity(frames.len() * first.rgb.len());
    for f in frames {
        if (f.width, f.height) != (first.width, first.height) {
            return Err(crate::error::SynthError::InvalidInput(format!(
                "frames of {}x{} and {}x{} in one batch",
                f.width, f.height, first.width, first.height
            )));
        }
        bytes.extend_from_slice(&f.rgb);
    }
    let t = Tensor::f_from_data_size(&bytes, &[frames.len() as i64, h, w, 3], Kind::Uint8)?;
    Ok(t.f_permute([0, 3, 1, 2])?.f_contiguous()?)
}

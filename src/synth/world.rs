//! The scene world: timed objects (shape, colour, size, straight-line motion, appear
//! and leave times) over a plain or lightly textured background, deterministic from a
//! `u64` seed through `fastrand`'s seeded generator.
//!
//! A [`Scene`] is a script in stream time (seconds): objects are visible on
//! `[appear, leave)`, and [`Scene::render`](crate::synth::render) draws the scene at
//! any time `t`. Training clips are short random scenes sampled at a fixed rate
//! ([`Clip::random`]); long live streams are scenes built by hand with
//! [`Scene::add`] (scripted events at given times, distractors, needle events).

use std::fmt;

/// The shapes of the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
}

impl Shape {
    pub const ALL: [Shape; 4] = [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Star];

    pub fn word(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Shape::Circle => "circles",
            Shape::Square => "squares",
            Shape::Triangle => "triangles",
            Shape::Star => "stars",
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// The colours of the world: saturated and far apart, all bright against the dark
/// backgrounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    White,
}

impl Colour {
    pub const ALL: [Colour; 5] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::White,
    ];

    pub fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::White => "white",
        }
    }

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [225, 35, 35],
            Colour::Green => [40, 200, 60],
            Colour::Blue => [50, 100, 250],
            Colour::Yellow => [245, 215, 30],
            Colour::White => [245, 245, 245],
        }
    }
}

impl fmt::Display for Colour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// One object of a scene. Visible on `[appear, leave)` (seconds); its centre moves in
/// a straight line from `origin` (at `appear`) with `velocity` (pixels per second).
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub shape: Shape,
    pub colour: Colour,
    /// Half the object's extent, in pixels.
    pub radius: f32,
    /// Centre at `appear`, pixels (x right, y down).
    pub origin: [f32; 2],
    pub velocity: [f32; 2],
    pub appear: f64,
    /// Exclusive; `f64::INFINITY` for an object that never leaves.
    pub leave: f64,
}

impl Object {
    pub fn visible_at(&self, t: f64) -> bool {
        t >= self.appear && t < self.leave
    }

    /// Centre at time `t` (extrapolated outside the visible interval).
    pub fn centre_at(&self, t: f64) -> [f32; 2] {
        let dt = (t - self.appear) as f32;
        [
            self.origin[0] + self.velocity[0] * dt,
            self.origin[1] + self.velocity[1] * dt,
        ]
    }
}

/// A plain colour with optional static per-pixel luminance noise of ±`texture`.
#[derive(Debug, Clone, PartialEq)]
pub struct Background {
    pub rgb: [u8; 3],
    pub texture: u8,
    /// Seeds the texture, so a scene renders the same every time.
    pub seed: u64,
}

/// Dark backgrounds: every object colour stands out on each.
const BACKGROUNDS: [[u8; 3]; 5] = [
    [18, 18, 22],
    [38, 30, 48],
    [22, 42, 36],
    [48, 36, 28],
    [34, 34, 34],
];

/// A script of timed objects over a background, in stream time.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    pub width: u32,
    pub height: u32,
    pub background: Background,
    /// Drawn in order: later objects cover earlier ones.
    pub objects: Vec<Object>,
}

impl Scene {
    pub fn new(width: u32, height: u32, background: Background) -> Self {
        Self {
            width,
            height,
            background,
            objects: Vec::new(),
        }
    }

    /// Adds a scripted object (an event of a long stream, a distractor, a needle).
    pub fn add(&mut self, object: Object) -> &mut Self {
        self.objects.push(object);
        self
    }

    pub fn visible_at(&self, t: f64) -> impl Iterator<Item = &Object> {
        self.objects.iter().filter(move |o| o.visible_at(t))
    }
}

/// Shape of a random clip: `frames` frames sampled at `fps`, `width`×`height`
/// pixels, at most `max_objects` objects.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClipSpec {
    pub frames: usize,
    pub fps: f64,
    pub width: u32,
    pub height: u32,
    pub max_objects: usize,
}

impl Default for ClipSpec {
    fn default() -> Self {
        Self {
            frames: 6,
            fps: 1.0,
            width: 48,
            height: 48,
            max_objects: 4,
        }
    }
}

impl ClipSpec {
    /// Stream time of frame `i`; object times of random clips are frame times, computed
    /// by this same expression, so visibility tests compare exactly.
    pub fn frame_time(&self, i: usize) -> f64 {
        i as f64 / self.fps
    }

    pub fn times(&self) -> Vec<f64> {
        (0..self.frames).map(|i| self.frame_time(i)).collect()
    }
}

/// A scene and the times its frames are taken at.
#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    pub scene: Scene,
    pub times: Vec<f64>,
}

/// splitmix64: decorrelates nearby integers into seeds and texture noise.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Seed of clip `index` of the clip stream `stream`: training draws its clips from
/// one stream, evaluation from another, so they never share a clip.
pub fn clip_seed(stream: u64, index: u64) -> u64 {
    mix(mix(stream) ^ index.wrapping_mul(0xd1b5_4a32_d192_ed03))
}

impl Clip {
    /// A random clip: 1..=`max_objects` objects, each a distinct (shape, colour) pair
    /// (shapes repeat often, so counting has something to count), appearing at a frame
    /// time, leaving at a later one or staying, moving at most 12 px over its life and
    /// never overlapping another object in a sampled frame.
    pub fn random(spec: &ClipSpec, seed: u64) -> Clip {
        let mut rng = fastrand::Rng::with_seed(seed);
        let background = Background {
            rgb: BACKGROUNDS[rng.usize(..BACKGROUNDS.len())],
            texture: if rng.bool() { 0 } else { rng.u8(3..=10) },
            seed: rng.u64(..),
        };
        let mut scene = Scene::new(spec.width, spec.height, background);
        let times = spec.times();
        let f = spec.frames.max(1);
        let wanted = rng.usize(1..=spec.max_objects.max(1));
        let mut used: Vec<(Shape, Colour)> = Vec::new();
        for _ in 0..wanted {
            let shape = match used.last() {
                Some(&(previous, _)) if rng.f32() < 0.35 => previous,
                _ => Shape::ALL[rng.usize(..Shape::ALL.len())],
            };
            let free: Vec<Colour> = Colour::ALL
                .iter()
                .copied()
                .filter(|c| !used.contains(&(shape, *c)))
                .collect();
            if free.is_empty() {
                continue;
            }
            let colour = free[rng.usize(..free.len())];
            let first = if rng.f32() < 0.3 { 0 } else { rng.usize(..f) };
            let last = if rng.bool() {
                f
            } else {
                rng.usize(first + 1..=f)
            };
            let appear = spec.frame_time(first);
            let leave = if last == f {
                f64::INFINITY
            } else {
                spec.frame_time(last)
            };
            // Motion is spread over the visible frames: the last one shows `end`.
            let duration = spec.frame_time(last - 1) - appear;
            for _attempt in 0..40 {
                let radius = 5.5 + 2.0 * rng.f32();
                let lo = radius + 1.0;
                let (hi_x, hi_y) = (spec.width as f32 - lo, spec.height as f32 - lo);
                let origin = [lo + rng.f32() * (hi_x - lo), lo + rng.f32() * (hi_y - lo)];
                let end = [
                    (origin[0] + (rng.f32() - 0.5) * 24.0).clamp(lo, hi_x),
                    (origin[1] + (rng.f32() - 0.5) * 24.0).clamp(lo, hi_y),
                ];
                let velocity = if duration > 0.0 {
                    [
                        (end[0] - origin[0]) / duration as f32,
                        (end[1] - origin[1]) / duration as f32,
                    ]
                } else {
                    [0.0, 0.0]
                };
                let candidate = Object {
                    shape,
                    colour,
                    radius,
                    origin,
                    velocity,
                    appear,
                    leave,
                };
                if !overlaps_any(&scene.objects, &candidate, &times) {
                    scene.add(candidate);
                    used.push((shape, colour));
                    break;
                }
            }
        }
        Clip { scene, times }
    }
}

/// Whether `candidate` comes within a pixel of any of `objects` in a frame both show.
fn overlaps_any(objects: &[Object], candidate: &Object, times: &[f64]) -> bool {
    objects.iter().any(|o| {
        times.iter().any(|&t| {
            if !(o.visible_at(t) && candidate.visible_at(t)) {
                return false;
            }
            let (a, b) = (o.centre_at(t), candidate.centre_at(t));
            let d = ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
            d < o.radius + candidate.radius + 1.5
        })
    })
}

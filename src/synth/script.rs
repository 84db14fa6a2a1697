//! Scripted synthetic streams: long scenes with ground truth, for the embedded demo,
//! the needle benchmark and the daemon-level needle test.
//!
//! A [`Script`] is a [`Scene`] sampled at a fixed rate for a fixed duration, plus the
//! questions to ask about it: each with the moment to ask, the answer, and the stream
//! time spans of the evidence. Streams are made of *segments* of distractor objects
//! (by default circles and squares only) laid out on a 3×3 grid of cells so they never
//! overlap, with a few *needle* objects (shapes the distractors never show) placed at
//! chosen times; a question about a needle ("what colour was the triangle ?") then has
//! one answer in the whole stream, and only frames that show the needle hold it. This
//! is the VideoNIAH construction (Zhao et al. 2024) in the synthetic world of
//! [`super::world`]; the phrasing is that of [`super::qa`], which the model was trained
//! on.
//!
//! Scripts are deterministic from their seed. [`Script::from_name`] resolves the names
//! the `synth://NAME?seed=N` ingest source accepts.

use crate::error::{SynthError, SynthResult};
use crate::synth::world::{mix, Background, Colour, Object, Scene, Shape};

/// A question about a script, with its ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptedQuestion {
    /// Stream time to ask at (seconds).
    pub at: f64,
    pub question: String,
    pub answer: String,
    /// Stream-time spans `[since, until)` of the frames that hold the answer.
    pub evidence: Vec<(f64, f64)>,
}

/// A scripted stream: `scene` sampled every `1 / fps` seconds on `[0, duration)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    pub name: String,
    pub scene: Scene,
    pub fps: f64,
    pub duration: f64,
    pub questions: Vec<ScriptedQuestion>,
}

/// A needle: one object of a shape no distractor shows, visible on `[at, at + seconds)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Needle {
    pub shape: Shape,
    pub colour: Colour,
    pub at: f64,
    pub seconds: f64,
}

/// What a needle stream looks like.
#[derive(Debug, Clone, PartialEq)]
pub struct NeedleSpec {
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    /// Frames in the stream.
    pub frames: usize,
    /// Needles in the stream (1..=2: one per needle shape).
    pub needles: usize,
    /// Frames each needle stays.
    pub needle_frames: usize,
    pub seed: u64,
}

impl Default for NeedleSpec {
    fn default() -> Self {
        Self {
            width: 48,
            height: 48,
            fps: 1.0,
            frames: 1000,
            needles: 1,
            needle_frames: 3,
            seed: 1,
        }
    }
}

/// Shapes distractors are drawn from; the others are left for needles.
pub const DISTRACTOR_SHAPES: [Shape; 2] = [Shape::Circle, Shape::Square];
/// Shapes needles are drawn from.
pub const NEEDLE_SHAPES: [Shape; 2] = [Shape::Triangle, Shape::Star];

/// Centres of the 3×3 grid cells of a `w`×`h` frame, and the scale of objects
/// against the 48×48 frames the model was trained on.
fn grid(w: u32, h: u32) -> (Vec<[f32; 2]>, f32) {
    let (cw, ch) = (w as f32 / 3.0, h as f32 / 3.0);
    let mut cells = Vec::with_capacity(9);
    for row in 0..3 {
        for col in 0..3 {
            cells.push([cw * (col as f32 + 0.5), ch * (row as f32 + 0.5)]);
        }
    }
    (cells, w.min(h) as f32 / 48.0)
}

/// Radii (at 48×48) of stream objects: the low end of the training clips' 5.5–7.5,
/// so that neighbours in adjacent 16-pixel cells, drifting at most [`DRIFT`] pixels
/// from the cell centre, never touch (2 × 1.1 × 6.2 < 16 − 2 × 1).
const RADIUS: (f32, f32) = (5.5, 6.2);
const DRIFT: f32 = 1.0;

/// Builds a stream scene segment by segment.
struct Builder {
    scene: Scene,
    rng: fastrand::Rng,
    cells: Vec<[f32; 2]>,
    /// Pixel scale against 48×48.
    scale: f32,
}

impl Builder {
    fn new(width: u32, height: u32, seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(mix(seed));
        let background = Background {
            rgb: [18 + rng.u8(..24), 18 + rng.u8(..24), 22 + rng.u8(..24)],
            texture: rng.u8(..=6),
            seed: rng.u64(..),
        };
        let (cells, scale) = grid(width, height);
        Self {
            scene: Scene::new(width, height, background),
            rng,
            cells,
            scale,
        }
    }

    /// An object in grid cell `cell` on `[since, until)`, drifting a little.
    fn object(&mut self, shape: Shape, colour: Colour, cell: usize, since: f64, until: f64) {
        let r = self.scale * (RADIUS.0 + (RADIUS.1 - RADIUS.0) * self.rng.f32());
        let slack = self.scale * DRIFT;
        let centre = self.cells[cell % self.cells.len()];
        let jitter = |rng: &mut fastrand::Rng| (rng.f32() * 2.0 - 1.0) * slack;
        let origin = [
            centre[0] + jitter(&mut self.rng),
            centre[1] + jitter(&mut self.rng),
        ];
        let span = (until - since).max(1e-3) as f32;
        let target = [
            centre[0] + jitter(&mut self.rng),
            centre[1] + jitter(&mut self.rng),
        ];
        self.scene.add(Object {
            shape,
            colour,
            radius: r,
            origin,
            velocity: [
                (target[0] - origin[0]) / span,
                (target[1] - origin[1]) / span,
            ],
            appear: since,
            leave: until,
        });
    }

    /// Distractors on `[since, until)`: 1–3 objects of `shapes` with distinct
    /// (shape, colour) pairs, in distinct cells other than `avoid`.
    fn distractors(&mut self, shapes: &[Shape], since: f64, until: f64, avoid: &[usize]) {
        let n = self.rng.usize(1..=3);
        let mut cells: Vec<usize> = (0..self.cells.len())
            .filter(|c| !avoid.contains(c))
            .collect();
        self.rng.shuffle(&mut cells);
        let mut used: Vec<(Shape, Colour)> = Vec::new();
        for &cell in cells.iter().take(n) {
            let shape = shapes[self.rng.usize(..shapes.len())];
            let colour = Colour::ALL[self.rng.usize(..Colour::ALL.len())];
            if used.contains(&(shape, colour)) {
                continue;
            }
            used.push((shape, colour));
            self.object(shape, colour, cell, since, until);
        }
    }

    /// Segments of distractors covering `[since, until)`, each lasting `segment` seconds
    /// (the last one may be shorter).
    fn fill(&mut self, since: f64, until: f64, segment: f64) {
        let mut t = since;
        while t < until {
            let end = (t + segment).min(until);
            self.distractors(&DISTRACTOR_SHAPES, t, end, &[]);
            t = end;
        }
    }
}

fn colour_question(
    shape: Shape,
    colour: Colour,
    at: f64,
    evidence: (f64, f64),
) -> ScriptedQuestion {
    ScriptedQuestion {
        at,
        question: format!("what colour was the {shape} ?"),
        answer: colour.word().to_owned(),
        evidence: vec![evidence],
    }
}

impl Script {
    /// Names [`Script::from_name`] knows.
    pub const NAMES: [&'static str; 2] = ["demo", "needle"];

    /// The script a `synth://NAME?seed=N[&frames=N]` source plays, at
    /// `width`×`height`; `frames` sets a needle stream's length.
    pub fn from_name(
        name: &str,
        seed: u64,
        frames: Option<usize>,
        width: u32,
        height: u32,
    ) -> SynthResult<Script> {
        match name {
            "demo" => Ok(Script::demo(width, height, seed)),
            "needle" => {
                let defaults = NeedleSpec::default();
                Ok(Script::needle(&NeedleSpec {
                    width,
                    height,
                    seed,
                    frames: frames.unwrap_or(defaults.frames).max(10),
                    ..defaults
                }))
            }
            other => Err(SynthError::InvalidInput(format!(
                "unknown synthetic script `{other}` (known: demo, needle)"
            ))),
        }
    }

    /// Frames in the stream.
    pub fn frames(&self) -> usize {
        (self.duration * self.fps).round() as usize
    }

    /// Stream time of frame `i`.
    pub fn frame_time(&self, i: usize) -> f64 {
        i as f64 / self.fps
    }

    /// The embedded demo: 4 minutes of stream time at 1 frame/s, distractor circles
    /// and squares throughout, a triangle early on, a star at the middle, and questions
    /// asked later about both — minutes after they left — and about what is in view.
    pub fn demo(width: u32, height: u32, seed: u64) -> Script {
        let mut b = Builder::new(width, height, seed);
        let duration: f64 = 240.0;
        let segment = 6.0;
        let triangle = Needle {
            shape: Shape::Triangle,
            colour: Colour::Green,
            at: 24.0,
            seconds: 4.0,
        };
        let star = Needle {
            shape: Shape::Star,
            colour: Colour::Yellow,
            at: 96.0,
            seconds: 4.0,
        };
        // Distractors everywhere, needles in the cell the distractors leave free.
        let mut t = 0.0;
        while t < duration {
            let end = (t + segment).min(duration);
            b.distractors(&DISTRACTOR_SHAPES, t, end, &[4]);
            t = end;
        }
        for n in [triangle, star] {
            b.object(n.shape, n.colour, 4, n.at, n.at + n.seconds);
        }
        let span = |n: Needle| (n.at, n.at + n.seconds);
        let questions = vec![
            ScriptedQuestion {
                at: 60.0,
                question: "is there a star ?".into(),
                answer: "no".into(),
                evidence: Vec::new(),
            },
            colour_question(triangle.shape, triangle.colour, 60.0, span(triangle)),
            ScriptedQuestion {
                at: 150.0,
                question: "is there a star ?".into(),
                answer: "yes".into(),
                evidence: vec![span(star)],
            },
            colour_question(star.shape, star.colour, 180.0, span(star)),
            colour_question(triangle.shape, triangle.colour, 235.0, span(triangle)),
        ];
        Script {
            name: "demo".into(),
            scene: b.scene,
            fps: 1.0,
            duration,
            questions,
        }
    }

    /// A needle stream: `spec.frames` frames of distractor segments (4–8 frames each)
    /// with `spec.needles` needles of distinct needle shapes at random times (not in
    /// the last 10% of the stream, so they have left the recent window when asked), and
    /// one colour question per needle asked at the end.
    pub fn needle(spec: &NeedleSpec) -> Script {
        let mut b = Builder::new(spec.width, spec.height, spec.seed);
        let duration = spec.frames as f64 / spec.fps;
        let frame = 1.0 / spec.fps;
        let needles: Vec<Needle> = (0..spec.needles.clamp(1, NEEDLE_SHAPES.len()))
            .map(|i| {
                let latest = (spec.frames * 9 / 10)
                    .saturating_sub(spec.needle_frames)
                    .max(1);
                Needle {
                    shape: NEEDLE_SHAPES[i],
                    colour: Colour::ALL[b.rng.usize(..Colour::ALL.len())],
                    at: b.rng.usize(..latest) as f64 * frame,
                    seconds: spec.needle_frames as f64 * frame,
                }
            })
            .collect();
        let segment_frames = b.rng.usize(4..=8);
        b.fill(0.0, duration, segment_frames as f64 * frame);
        // Each needle takes a cell that no object overlapping its span uses.
        let mut questions = Vec::new();
        for n in &needles {
            let (since, until) = (n.at, n.at + n.seconds);
            let busy: Vec<[f32; 2]> = b
                .scene
                .objects
                .iter()
                .filter(|o| o.appear < until && o.leave > since)
                .map(|o| o.origin)
                .collect();
            let free = (0..b.cells.len())
                .find(|&c| {
                    let centre = b.cells[c];
                    let half_cell = 8.0 * b.scale;
                    busy.iter().all(|p| {
                        (p[0] - centre[0]).abs() > half_cell || (p[1] - centre[1]).abs() > half_cell
                    })
                })
                .unwrap_or(4);
            b.object(n.shape, n.colour, free, since, until);
            questions.push(colour_question(n.shape, n.colour, duration, (since, until)));
        }
        Script {
            name: "needle".into(),
            scene: b.scene,
            fps: spec.fps,
            duration,
            questions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes_at(script: &Script, t: f64) -> Vec<Shape> {
        script.scene.visible_at(t).map(|o| o.shape).collect()
    }

    #[test]
    fn scripts_are_deterministic_from_their_seed() {
        assert_eq!(Script::demo(48, 48, 3), Script::demo(48, 48, 3));
        assert_ne!(Script::demo(48, 48, 3), Script::demo(48, 48, 4));
        let spec = NeedleSpec::default();
        assert_eq!(Script::needle(&spec), Script::needle(&spec));
        assert!(Script::from_name("nope", 1, None, 48, 48).is_err());
    }

    #[test]
    fn needles_are_the_only_objects_of_their_shape_and_answers_match() {
        for seed in 0..20 {
            let spec = NeedleSpec {
                seed,
                needles: 2,
                frames: 300,
                ..NeedleSpec::default()
            };
            let s = Script::needle(&spec);
            assert_eq!(s.frames(), 300);
            assert_eq!(s.questions.len(), 2);
            for q in &s.questions {
                let (since, until) = q.evidence[0];
                let needles: Vec<&Object> = s
                    .scene
                    .objects
                    .iter()
                    .filter(|o| q.question.contains(o.shape.word()))
                    .collect();
                assert_eq!(needles.len(), 1, "seed {seed}: {}", q.question);
                let n = needles[0];
                assert_eq!(n.colour.word(), q.answer);
                assert_eq!((n.appear, n.leave), (since, until));
                assert!(until <= s.duration * 0.9 + 1e-9);
                // Visible in exactly needle_frames sampled frames.
                let shown = (0..s.frames())
                    .filter(|&i| n.visible_at(s.frame_time(i)))
                    .count();
                assert_eq!(shown, spec.needle_frames);
            }
            // Every frame shows something, and no two objects share a cell centre.
            for i in (0..s.frames()).step_by(7) {
                let t = s.frame_time(i);
                assert!(!shapes_at(&s, t).is_empty(), "seed {seed} frame {i}");
                let visible: Vec<&Object> = s.scene.visible_at(t).collect();
                for (a, x) in visible.iter().enumerate() {
                    for y in &visible[a + 1..] {
                        let (p, q) = (x.centre_at(t), y.centre_at(t));
                        let d = ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt();
                        assert!(d > x.radius + y.radius, "seed {seed} frame {i}: overlap");
                    }
                }
            }
        }
    }

    #[test]
    fn demo_questions_match_the_scene() {
        let s = Script::demo(48, 48, 1);
        for q in &s.questions {
            assert!(q.at <= s.duration);
            for &(since, until) in &q.evidence {
                assert!(until <= q.at, "{}: evidence after the question", q.question);
                assert!(since < until);
            }
            let star_seen =
                (0..q.at as usize).any(|i| shapes_at(&s, i as f64).contains(&Shape::Star));
            if q.question == "is there a star ?" {
                assert_eq!(q.answer, if star_seen { "yes" } else { "no" });
            }
        }
        // Needles are the only triangles and stars.
        let rare = s
            .scene
            .objects
            .iter()
            .filter(|o| NEEDLE_SHAPES.contains(&o.shape))
            .count();
        assert_eq!(rare, 2);
    }
}

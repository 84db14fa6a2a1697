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
//! the `synth://NAME?seed=N` ingest source accepts, with the [`ScriptOptions`] of its
//! query (needle shapes, copies, how long needles stay, chained needles, which kinds
//! of question the ground truth holds).

use std::fmt;

use crate::error::{SynthError, SynthResult};
use crate::synth::qa::{self, QuestionKind};
use crate::synth::world::{mix, Background, Clip, Colour, Object, Scene, Shape};

/// A question about a script, with its ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptedQuestion {
    pub kind: QuestionKind,
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
    /// Needle shapes, each once, from [`NEEDLE_SHAPES`] (others are ignored; none
    /// means a triangle).
    pub shapes: Vec<Shape>,
    /// Needles of each shape (1..=[`MAX_COPIES`]); with more than one, a shape's colour
    /// is no longer one answer and only count, exists and after questions are asked.
    pub copies: usize,
    /// Frames each needle stays.
    pub needle_frames: usize,
    /// Each needle shape after the first first shows in the frame after the one
    /// before it does (their first copies), the only newcomer of that frame: "which
    /// shape appeared after the green triangle ?" has an answer.
    pub chained: bool,
    /// Kinds of question the script asks (each about the needles, at the end).
    pub kinds: Vec<QuestionKind>,
    pub seed: u64,
}

/// Most needles of one shape (answers are number words up to nine).
pub const MAX_COPIES: usize = 9;

impl Default for NeedleSpec {
    fn default() -> Self {
        Self {
            width: 48,
            height: 48,
            fps: 1.0,
            frames: 1000,
            shapes: vec![Shape::Triangle],
            copies: 1,
            needle_frames: 3,
            chained: false,
            kinds: vec![QuestionKind::Colour],
            seed: 1,
        }
    }
}

/// What a `synth://` URI's query may set beyond `seed` and `speed`. Unset fields take
/// the script's defaults; the demo takes none.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScriptOptions {
    /// `frames=N` (10..=10,000,000): a needle stream's length.
    pub frames: Option<usize>,
    /// `needles=triangle,star`: the needle shapes.
    pub needles: Option<Vec<Shape>>,
    /// `copies=N` (1..=9): needles of each shape.
    pub copies: Option<usize>,
    /// `needle_frames=N` (1..=1000): frames each needle stays.
    pub needle_frames: Option<usize>,
    /// `chained=1`: needles follow each other (see [`NeedleSpec::chained`]).
    pub chained: bool,
    /// `questions=colour,after,count,exists` or `all`: the kinds asked (default colour).
    pub kinds: Option<Vec<QuestionKind>>,
}

impl ScriptOptions {
    /// Takes one `key=value` of the query: `Ok(false)` for a key that is not a script
    /// option, `Err` (what is accepted) for a bad value.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, String> {
        let number = |lo: usize, hi: usize| -> Result<usize, String> {
            value
                .parse::<usize>()
                .ok()
                .filter(|n| (lo..=hi).contains(n))
                .ok_or_else(|| format!("{key} must be in {lo}..={hi}"))
        };
        match key {
            "frames" => self.frames = Some(number(10, 10_000_000)?),
            "copies" => self.copies = Some(number(1, MAX_COPIES)?),
            "needle_frames" => self.needle_frames = Some(number(1, 1000)?),
            "chained" => {
                self.chained = match value {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => return Err("chained is 0 or 1".into()),
                }
            }
            "needles" => {
                let mut shapes = Vec::new();
                for word in value.split(',') {
                    let shape = NEEDLE_SHAPES
                        .into_iter()
                        .find(|s| s.word() == word)
                        .ok_or_else(|| "needles lists triangle, star".to_string())?;
                    if !shapes.contains(&shape) {
                        shapes.push(shape);
                    }
                }
                self.needles = Some(shapes);
            }
            "questions" => {
                let kinds = if value == "all" {
                    QuestionKind::ALL.to_vec()
                } else {
                    let mut kinds = Vec::new();
                    for word in value.split(',') {
                        let kind = QuestionKind::ALL
                            .into_iter()
                            .find(|k| k.name() == word)
                            .ok_or_else(|| {
                                "questions lists colour, after, count, exists (or is all)"
                                    .to_string()
                            })?;
                        if !kinds.contains(&kind) {
                            kinds.push(kind);
                        }
                    }
                    kinds
                };
                self.kinds = Some(kinds);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The needle stream these options make (over `NeedleSpec::default()`).
    fn needle_spec(&self, width: u32, height: u32, seed: u64) -> NeedleSpec {
        let d = NeedleSpec::default();
        NeedleSpec {
            width,
            height,
            seed,
            frames: self.frames.unwrap_or(d.frames).max(10),
            shapes: self.needles.clone().unwrap_or(d.shapes),
            copies: self.copies.unwrap_or(d.copies),
            needle_frames: self.needle_frames.unwrap_or(d.needle_frames),
            chained: self.chained,
            kinds: self.kinds.clone().unwrap_or(d.kinds),
            ..d
        }
    }
}

/// The query form, `&key=value` for each option set (empty when none is).
impl fmt::Display for ScriptOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words = |w: Vec<&str>| w.join(",");
        if let Some(n) = self.frames {
            write!(f, "&frames={n}")?;
        }
        if let Some(s) = &self.needles {
            write!(
                f,
                "&needles={}",
                words(s.iter().map(|s| s.word()).collect())
            )?;
        }
        if let Some(n) = self.copies {
            write!(f, "&copies={n}")?;
        }
        if let Some(n) = self.needle_frames {
            write!(f, "&needle_frames={n}")?;
        }
        if self.chained {
            write!(f, "&chained=1")?;
        }
        if let Some(k) = &self.kinds {
            write!(
                f,
                "&questions={}",
                words(k.iter().map(|k| k.name()).collect())
            )?;
        }
        Ok(())
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
        kind: QuestionKind::Colour,
        at,
        question: format!("what colour was the {shape} ?"),
        answer: colour.word().to_owned(),
        evidence: vec![evidence],
    }
}

/// A script's ground truth, as `vstreamd synth --script … --truth` prints it: the
/// needles (objects of [`NEEDLE_SHAPES`]) with their spans and sampled frames, how many
/// distractors there are, and every question with its answer and evidence.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Truth {
    pub script: String,
    pub fps: f64,
    pub frames: usize,
    pub duration_seconds: f64,
    pub needles: Vec<TruthObject>,
    pub distractors: usize,
    pub questions: Vec<TruthQuestion>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TruthObject {
    pub shape: &'static str,
    pub colour: &'static str,
    /// Stream seconds `[appear, leave)`.
    pub appear: f64,
    pub leave: f64,
    /// The first sampled frame that shows it (an index), and how many do.
    pub first_frame: Option<usize>,
    pub frames_shown: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TruthQuestion {
    pub kind: &'static str,
    /// Stream seconds to ask at.
    pub at: f64,
    pub question: String,
    pub answer: String,
    /// Stream-second spans `[since, until)` of the frames that hold the answer.
    pub evidence: Vec<[f64; 2]>,
}

impl Script {
    /// The ground truth of this script (see [`Truth`]).
    pub fn truth(&self) -> Truth {
        let frames = self.frames();
        let needles = self
            .scene
            .objects
            .iter()
            .filter(|o| NEEDLE_SHAPES.contains(&o.shape))
            .map(|o| {
                let shown: Vec<usize> = (0..frames)
                    .filter(|&i| o.visible_at(self.frame_time(i)))
                    .collect();
                TruthObject {
                    shape: o.shape.word(),
                    colour: o.colour.word(),
                    appear: o.appear,
                    leave: o.leave,
                    first_frame: shown.first().copied(),
                    frames_shown: shown.len(),
                }
            })
            .collect::<Vec<_>>();
        Truth {
            script: self.name.clone(),
            fps: self.fps,
            frames,
            duration_seconds: self.duration,
            distractors: self.scene.objects.len() - needles.len(),
            needles,
            questions: self
                .questions
                .iter()
                .map(|q| TruthQuestion {
                    kind: q.kind.name(),
                    at: q.at,
                    question: q.question.clone(),
                    answer: q.answer.clone(),
                    evidence: q.evidence.iter().map(|&(a, b)| [a, b]).collect(),
                })
                .collect(),
        }
    }

    /// Names [`Script::from_name`] knows.
    pub const NAMES: [&'static str; 2] = ["demo", "needle"];

    /// The script a `synth://NAME?seed=N[&OPTIONS]` source plays, at
    /// `width`×`height`; the options shape a needle stream (the demo takes none).
    pub fn from_name(
        name: &str,
        seed: u64,
        options: &ScriptOptions,
        width: u32,
        height: u32,
    ) -> SynthResult<Script> {
        match name {
            "demo" if *options == ScriptOptions::default() => Ok(Script::demo(width, height, seed)),
            "demo" => Err(SynthError::InvalidInput(format!(
                "the demo script takes no options (`{options}`)"
            ))),
            "needle" => Ok(Script::needle(&options.needle_spec(width, height, seed))),
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
                kind: QuestionKind::Exists,
                at: 60.0,
                question: "is there a star ?".into(),
                answer: "no".into(),
                evidence: Vec::new(),
            },
            colour_question(triangle.shape, triangle.colour, 60.0, span(triangle)),
            ScriptedQuestion {
                kind: QuestionKind::Exists,
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
    /// with `spec.copies` needles of each of `spec.shapes` at random times (not in the
    /// last 10% of the stream, so they have left the recent window when asked), and
    /// the questions of `spec.kinds` about the needles, asked at the end with their
    /// answers derived from the scene by the rules of [`qa::candidates`] over every
    /// frame of the stream.
    pub fn needle(spec: &NeedleSpec) -> Script {
        let mut b = Builder::new(spec.width, spec.height, spec.seed);
        let duration = spec.frames as f64 / spec.fps;
        let frame = 1.0 / spec.fps;
        let mut shapes: Vec<Shape> = Vec::new();
        for &s in &spec.shapes {
            if NEEDLE_SHAPES.contains(&s) && !shapes.contains(&s) {
                shapes.push(s);
            }
        }
        if shapes.is_empty() {
            shapes.push(Shape::Triangle);
        }
        let latest = (spec.frames * 9 / 10)
            .saturating_sub(spec.needle_frames)
            .max(1);
        // Random draws in the order the one-copy streams always made them (a stream's
        // layout for a seed does not change with the options it does not use).
        let mut needles: Vec<Needle> = Vec::new();
        for _ in 0..spec.copies.clamp(1, MAX_COPIES) {
            for &shape in &shapes {
                needles.push(Needle {
                    shape,
                    colour: Colour::ALL[b.rng.usize(..Colour::ALL.len())],
                    at: b.rng.usize(..latest) as f64 * frame,
                    seconds: spec.needle_frames as f64 * frame,
                });
            }
        }
        let segment_frames = b.rng.usize(4..=8);
        if spec.chained && shapes.len() > 1 {
            // The first needle at a segment's start, the next ones a frame apart inside
            // the segment: no distractor is new in their frames.
            let first = needles[0].at / frame;
            let first = (first as usize / segment_frames * segment_frames) as f64;
            for (k, n) in needles.iter_mut().take(shapes.len()).enumerate() {
                n.at = (first + k as f64) * frame;
            }
        }
        b.fill(0.0, duration, segment_frames as f64 * frame);
        // Each needle takes a cell that no object overlapping its span uses.
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
        }
        let questions = if spec.kinds == [QuestionKind::Colour] && spec.copies <= 1 {
            // Every needle's colour, in needle order (no scan of the stream needed).
            needles
                .iter()
                .map(|n| colour_question(n.shape, n.colour, duration, (n.at, n.at + n.seconds)))
                .collect()
        } else {
            needle_questions(&b.scene, spec, duration)
        };
        Script {
            name: "needle".into(),
            scene: b.scene,
            fps: spec.fps,
            duration,
            questions,
        }
    }
}

/// The questions of `spec.kinds` a needle stream answers about its needle shapes (all
/// of [`NEEDLE_SHAPES`] for count and exists, so absent shapes give "zero" and "no"),
/// derived as for a training clip whose frames are every frame of the stream, asked
/// at `at`; evidence is the spans of the objects a question is about.
fn needle_questions(scene: &Scene, spec: &NeedleSpec, at: f64) -> Vec<ScriptedQuestion> {
    let clip = Clip {
        scene: scene.clone(),
        times: (0..spec.frames).map(|i| i as f64 / spec.fps).collect(),
    };
    let spans = |shape: Shape| -> Vec<(f64, f64)> {
        scene
            .objects
            .iter()
            .filter(|o| o.shape == shape)
            .map(|o| (o.appear, o.leave))
            .collect()
    };
    let about = |question: &str| -> Option<Shape> {
        NEEDLE_SHAPES
            .into_iter()
            .find(|s| question.contains(s.word()) || question.contains(s.plural()))
    };
    let mut out = Vec::new();
    for &kind in &spec.kinds {
        for q in qa::candidates(&clip, kind) {
            let Some(shape) = about(&q.question) else {
                continue;
            };
            let evidence = match kind {
                // After: the anchor and the newcomer that followed it.
                QuestionKind::After => {
                    let anchor = scene.objects.iter().find(|o| {
                        o.shape == shape
                            && q.question.contains(&format!("{} {}", o.colour, o.shape))
                    });
                    let Some(anchor) = anchor else { continue };
                    let next = scene
                        .objects
                        .iter()
                        .filter(|o| o.shape.word() == q.answer && o.appear > anchor.appear)
                        .min_by(|a, b| a.appear.total_cmp(&b.appear));
                    std::iter::once(anchor)
                        .chain(next)
                        .map(|o| (o.appear, o.leave))
                        .collect()
                }
                _ => spans(shape),
            };
            out.push(ScriptedQuestion {
                kind,
                at,
                question: q.question,
                answer: q.answer,
                evidence,
            });
        }
    }
    out
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
        let none = ScriptOptions::default();
        assert!(Script::from_name("nope", 1, &none, 48, 48).is_err());
    }

    #[test]
    fn needles_are_the_only_objects_of_their_shape_and_answers_match() {
        for seed in 0..20 {
            let spec = NeedleSpec {
                seed,
                shapes: NEEDLE_SHAPES.to_vec(),
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
    fn needle_options_give_every_question_kind_a_true_answer() {
        for seed in 0..10 {
            let base = NeedleSpec {
                seed,
                frames: 400,
                ..NeedleSpec::default()
            };
            // Questions do not move the scene.
            let all = NeedleSpec {
                kinds: QuestionKind::ALL.to_vec(),
                ..base.clone()
            };
            assert_eq!(Script::needle(&base).scene, Script::needle(&all).scene);
            let s = Script::needle(&all);
            let answer = |q: &str| {
                s.questions
                    .iter()
                    .find(|x| x.question == q)
                    .map(|x| x.answer.as_str())
            };
            assert_eq!(answer("is there a triangle ?"), Some("yes"));
            assert_eq!(answer("is there a star ?"), Some("no"));
            assert_eq!(answer("how many triangles were there ?"), Some("one"));
            assert_eq!(answer("how many stars were there ?"), Some("zero"));

            // Chained: the star is the only newcomer right after the triangle.
            let chained = Script::needle(&NeedleSpec {
                shapes: NEEDLE_SHAPES.to_vec(),
                chained: true,
                ..all.clone()
            });
            let tri = chained
                .scene
                .objects
                .iter()
                .find(|o| o.shape == Shape::Triangle)
                .unwrap();
            let q = format!("which shape appeared after the {} triangle ?", tri.colour);
            let after = chained.questions.iter().find(|x| x.question == q);
            let after = after.unwrap_or_else(|| panic!("seed {seed}: no `{q}`"));
            assert_eq!(after.answer, "star", "seed {seed}");
            assert_eq!(after.kind, QuestionKind::After);
            assert_eq!(after.evidence.len(), 2);
            assert!(after.evidence[1].0 > after.evidence[0].0);

            // Copies: counted, and no colour question for a shape seen twice.
            let copies = Script::needle(&NeedleSpec {
                shapes: NEEDLE_SHAPES.to_vec(),
                copies: 2,
                kinds: QuestionKind::ALL.to_vec(),
                ..base.clone()
            });
            let count = copies
                .questions
                .iter()
                .find(|x| x.question == "how many stars were there ?")
                .unwrap();
            assert_eq!(count.answer, "two", "seed {seed}");
            assert_eq!(count.evidence.len(), 2);
            assert!(copies
                .questions
                .iter()
                .all(|x| x.kind != QuestionKind::Colour));
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

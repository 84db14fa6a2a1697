//! Questions and answers about a clip, derived from its ground truth: which objects are
//! seen in the sampled frames, and in which frame each is first seen. Questions are lower
//! case words separated by spaces (a space before "?"); answers are one word.
//!
//! | kind | question | answer | asked when |
//! |---|---|---|---|
//! | colour | `what colour was the triangle ?` | colour | exactly one triangle is seen |
//! | after | `which shape appeared after the red circle ?` | shape | exactly one red circle is seen, and exactly one object is first seen in the first frame after its first frame that shows a newcomer |
//! | count | `how many squares were there ?` | `zero` … `nine` | always (distinct objects over the clip) |
//! | exists | `is there a star ?` | `yes` / `no` | always |

use std::fmt;

use crate::synth::world::{Clip, Colour, Object, Shape};

/// The question families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuestionKind {
    Colour,
    After,
    Count,
    Exists,
}

impl QuestionKind {
    pub const ALL: [QuestionKind; 4] = [
        QuestionKind::Colour,
        QuestionKind::After,
        QuestionKind::Count,
        QuestionKind::Exists,
    ];

    pub fn name(self) -> &'static str {
        match self {
            QuestionKind::Colour => "colour",
            QuestionKind::After => "after",
            QuestionKind::Count => "count",
            QuestionKind::Exists => "exists",
        }
    }
}

impl fmt::Display for QuestionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One question about a clip with its ground-truth answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qa {
    pub kind: QuestionKind,
    pub question: String,
    pub answer: String,
}

pub const NUMBER_WORDS: [&str; 10] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];

/// An object seen in the clip and the index of the first frame that shows it.
#[derive(Debug, Clone, Copy)]
pub struct Sighting<'a> {
    pub object: &'a Object,
    pub first_frame: usize,
}

/// The objects seen in at least one sampled frame, in script order.
pub fn sightings(clip: &Clip) -> Vec<Sighting<'_>> {
    clip.scene
        .objects
        .iter()
        .filter_map(|object| {
            clip.times
                .iter()
                .position(|&t| object.visible_at(t))
                .map(|first_frame| Sighting {
                    object,
                    first_frame,
                })
        })
        .collect()
}

/// Every question of `kind` the clip answers unambiguously.
pub fn candidates(clip: &Clip, kind: QuestionKind) -> Vec<Qa> {
    let seen = sightings(clip);
    let of_shape = |shape: Shape| seen.iter().filter(move |s| s.object.shape == shape);
    let qa = |question: String, answer: &str| Qa {
        kind,
        question,
        answer: answer.to_owned(),
    };
    match kind {
        QuestionKind::Colour => Shape::ALL
            .iter()
            .filter_map(|&shape| {
                let mut found = of_shape(shape);
                match (found.next(), found.next()) {
                    (Some(only), None) => Some(qa(
                        format!("what colour was the {shape} ?"),
                        only.object.colour.word(),
                    )),
                    _ => None,
                }
            })
            .collect(),
        QuestionKind::After => seen
            .iter()
            .filter(|s| {
                seen.iter()
                    .filter(|o| {
                        o.object.shape == s.object.shape && o.object.colour == s.object.colour
                    })
                    .count()
                    == 1
            })
            .filter_map(|s| {
                let next = seen
                    .iter()
                    .map(|o| o.first_frame)
                    .filter(|&f| f > s.first_frame)
                    .min()?;
                let mut newcomers = seen.iter().filter(|o| o.first_frame == next);
                match (newcomers.next(), newcomers.next()) {
                    (Some(only), None) => Some(qa(
                        format!(
                            "which shape appeared after the {} {} ?",
                            s.object.colour, s.object.shape
                        ),
                        only.object.shape.word(),
                    )),
                    _ => None,
                }
            })
            .collect(),
        QuestionKind::Count => Shape::ALL
            .iter()
            .map(|&shape| {
                let n = of_shape(shape).count().min(NUMBER_WORDS.len() - 1);
                qa(
                    format!("how many {} were there ?", shape.plural()),
                    NUMBER_WORDS[n],
                )
            })
            .collect(),
        QuestionKind::Exists => Shape::ALL
            .iter()
            .map(|&shape| {
                let answer = if of_shape(shape).next().is_some() {
                    "yes"
                } else {
                    "no"
                };
                qa(format!("is there a {shape} ?"), answer)
            })
            .collect(),
    }
}

/// One question of `kind`, if the clip has any: uniform over the candidates, except
/// that `exists` picks `yes` and `no` equally often when both are possible.
pub fn sample_of_kind(clip: &Clip, kind: QuestionKind, rng: &mut fastrand::Rng) -> Option<Qa> {
    let mut pool = candidates(clip, kind);
    if kind == QuestionKind::Exists {
        let want = if rng.bool() { "yes" } else { "no" };
        if pool.iter().any(|q| q.answer == want) {
            pool.retain(|q| q.answer == want);
        }
    }
    if pool.is_empty() {
        return None;
    }
    let i = rng.usize(..pool.len());
    Some(pool.swap_remove(i))
}

/// Questions for one training clip: up to `per_kind` of each kind, drawn uniformly
/// among its candidates, except that `exists` takes a `yes` and a `no` first when both
/// are possible. Shuffled, so no kind has a fixed place.
pub fn sample_set(clip: &Clip, per_kind: usize, rng: &mut fastrand::Rng) -> Vec<Qa> {
    let mut out = Vec::new();
    for kind in QuestionKind::ALL {
        let mut pool = candidates(clip, kind);
        rng.shuffle(&mut pool);
        if kind == QuestionKind::Exists {
            // A stable sort keeps the shuffle within each answer; alternate them.
            let first = if rng.bool() { "yes" } else { "no" };
            pool.sort_by_key(|q| q.answer != first);
            if let Some(other) = pool.iter().position(|q| q.answer != first) {
                let second = 1.min(pool.len() - 1);
                pool.swap(second, other);
            }
        }
        out.extend(pool.into_iter().take(per_kind));
    }
    rng.shuffle(&mut out);
    out
}

/// Every word questions and answers use, for the vocabulary.
pub fn words() -> Vec<&'static str> {
    let mut out = vec![
        "what", "colour", "was", "the", "which", "shape", "appeared", "after", "how", "many",
        "were", "there", "is", "a", "?", "yes", "no",
    ];
    out.extend(Shape::ALL.iter().map(|s| s.word()));
    out.extend(Shape::ALL.iter().map(|s| s.plural()));
    out.extend(Colour::ALL.iter().map(|c| c.word()));
    out.extend(NUMBER_WORDS);
    out
}

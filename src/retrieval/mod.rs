//! Retrieval: which stored blocks a question attends to.
//!
//! ReKV (Di et al., ICLR 2025) in-context retrieval: every block (one frame) keeps one
//! representative key per decoder layer — the mean of its keys before rotary, KV heads
//! concatenated. A question is run through the model once to get its query vectors per
//! layer (mean over its tokens, query heads averaged per GQA group, before rotary); each
//! layer scores every candidate block by the dot product of the two and takes its *own*
//! top-k. Blocks then enter the context in temporal order, so the model sees them as a
//! (shorter) video.
//!
//! Pure selection logic on plain slices, no tensors: the engine feeds it the store's
//! representative keys and gets back, per layer, which blocks to load.
//!
//! - [`TimeRange`]: since/until on stream time or wall clock, absolute or relative
//!   ("the last 10 minutes"), resolved once per question against the current time.
//! - [`score_blocks`]: scores [blocks × layers] from queries and representative keys.
//! - [`select_top_k`]: per-layer top-k (or one layer's top-k for all, [`LayerSelection`]),
//!   each layer's picks in temporal order, plus a
//!   per-block summary for citations.
//! - [`select_uniform`]: k blocks spread evenly over a range (summaries), the same for
//!   every layer.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::kv::BlockMeta;

/// One end of a time range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimePoint {
    /// A wall-clock instant.
    Wall(SystemTime),
    /// A stream time (the frame's pts).
    Stream(Duration),
    /// This long before the question was asked (wall clock).
    Ago(Duration),
}

/// A closed range of time a question is restricted to; an open end is unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeRange {
    pub since: Option<TimePoint>,
    pub until: Option<TimePoint>,
}

/// A [`TimeRange`] with relative ends resolved against one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedRange {
    since: Option<Bound>,
    until: Option<Bound>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    WallNs(u64),
    Pts(Duration),
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl TimeRange {
    /// The unbounded range.
    pub fn all() -> Self {
        Self::default()
    }

    pub fn is_unbounded(&self) -> bool {
        self.since.is_none() && self.until.is_none()
    }

    /// Resolves `Ago` ends against `now`.
    pub fn resolve(&self, now: SystemTime) -> ResolvedRange {
        let bound = |p: TimePoint| match p {
            TimePoint::Wall(t) => Bound::WallNs(unix_ns(t)),
            TimePoint::Stream(d) => Bound::Pts(d),
            TimePoint::Ago(d) => Bound::WallNs(unix_ns(now.checked_sub(d).unwrap_or(UNIX_EPOCH))),
        };
        ResolvedRange {
            since: self.since.map(bound),
            until: self.until.map(bound),
        }
    }

    /// Whether the range is empty for every block: both ends of the same kind with
    /// `since` after `until`. (Mixed kinds cannot be compared without the stream.)
    pub fn is_inverted(&self, now: SystemTime) -> bool {
        let r = self.resolve(now);
        match (r.since, r.until) {
            (Some(Bound::WallNs(a)), Some(Bound::WallNs(b))) => a > b,
            (Some(Bound::Pts(a)), Some(Bound::Pts(b))) => a > b,
            _ => false,
        }
    }
}

impl ResolvedRange {
    /// Whether a block seen at `meta`'s times falls in the range (ends included).
    pub fn contains(&self, meta: &BlockMeta) -> bool {
        let after = |b: Bound| match b {
            Bound::WallNs(ns) => meta.wall_ns >= ns,
            Bound::Pts(d) => meta.pts >= d,
        };
        let before = |b: Bound| match b {
            Bound::WallNs(ns) => meta.wall_ns <= ns,
            Bound::Pts(d) => meta.pts <= d,
        };
        self.since.is_none_or(after) && self.until.is_none_or(before)
    }
}

/// Scores of blocks against a question: `scores[b * layers + l]` is block `b`'s score in
/// layer `l`. Invariant: `scores.len() == blocks · layers`.
#[derive(Debug, Clone)]
pub struct Scores {
    pub layers: usize,
    pub scores: Vec<f32>,
}

impl Scores {
    pub fn blocks(&self) -> usize {
        self.scores.len().checked_div(self.layers).unwrap_or(0)
    }

    pub fn get(&self, block: usize, layer: usize) -> f32 {
        self.scores[block * self.layers + layer]
    }

    /// Mean over layers of one block's scores.
    pub fn mean(&self, block: usize) -> f32 {
        let row = &self.scores[block * self.layers..(block + 1) * self.layers];
        row.iter().sum::<f32>() / self.layers.max(1) as f32
    }
}

/// Per-layer dot products of `queries` ([layers · dim], row-major) with each block's
/// representative keys (same layout). A block whose keys have another length scores
/// `-inf` in every layer (it cannot be compared, so it is never picked).
pub fn score_blocks<K: AsRef<[f32]>>(queries: &[f32], layers: usize, rep_keys: &[K]) -> Scores {
    let mut scores = Scores {
        layers,
        scores: Vec::with_capacity(rep_keys.len() * layers),
    };
    for keys in rep_keys {
        scores.push_block(queries, keys.as_ref());
    }
    scores
}

impl Scores {
    /// Empty scores for `layers` layers.
    pub fn new(layers: usize) -> Self {
        Self {
            layers,
            scores: Vec::new(),
        }
    }

    /// Appends one block's per-layer scores (as [`score_blocks`] does for each block).
    pub fn push_block(&mut self, queries: &[f32], keys: &[f32]) {
        let layers = self.layers;
        let dim = queries.len().checked_div(layers).unwrap_or(0);
        if keys.len() != queries.len() || dim == 0 {
            self.scores
                .extend(std::iter::repeat_n(f32::NEG_INFINITY, layers));
            return;
        }
        for (q, k) in queries.chunks_exact(dim).zip(keys.chunks_exact(dim)) {
            self.scores.push(q.iter().zip(k).map(|(a, b)| a * b).sum());
        }
    }
}

/// Why a block is in a question's context, for its citation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockPick {
    /// Index of the block in the candidate list.
    pub index: usize,
    /// Mean over layers of its score (`None` for uniform picks, which are not scored).
    pub score: Option<f32>,
    /// Layers whose top-k holds the block.
    pub layers: u32,
}

/// The blocks a question attends to. Invariant: every `per_layer` list has the same
/// length, is sorted ascending (temporal order: candidates are given in seq order) and
/// only names blocks listed in `picks`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    /// Per layer, candidate indices in temporal order.
    pub per_layer: Vec<Vec<usize>>,
    /// Every block picked by at least one layer, ascending by index.
    pub picks: Vec<BlockPick>,
}

impl Selection {
    /// Blocks per layer (k, or fewer when there were fewer candidates).
    pub fn k(&self) -> usize {
        self.per_layer.first().map_or(0, Vec::len)
    }
}

/// Whose scores pick each layer's blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayerSelection {
    /// ReKV: each layer its own top-k by its own question query.
    #[default]
    PerLayer,
    /// Every layer gets the top-k of this one layer's scores (clamped to the last
    /// layer), so all layers see the same frames, as in a contiguous prompt. For models
    /// whose deeper layers' queries do not single out the relevant frames: on the
    /// shipped synthetic checkpoint, per-layer retrieval finds the needle in some layer
    /// for 96% of questions but answers 25% right; layer 0's blocks for all layers
    /// answer 92–100% right (`cargo bench --bench needle`).
    Shared(usize),
}

/// Each layer's `k` best-scoring blocks (ties broken towards the later block), listed
/// in temporal order, scored as `how` says. Non-finite scores are never picked, so a layer may get fewer
/// than `k` only when fewer blocks are comparable; then every layer is cut to the
/// shortest list so all layers hold the same number of tokens.
pub fn select_top_k(scores: &Scores, k: usize, how: LayerSelection) -> Selection {
    let n = scores.blocks();
    let layers = scores.layers;
    let mut per_layer: Vec<Vec<usize>> = Vec::with_capacity(layers);
    for layer in 0..layers {
        let l = match how {
            LayerSelection::PerLayer => layer,
            LayerSelection::Shared(by) => by.min(layers - 1),
        };
        let mut order: Vec<usize> = (0..n).filter(|&b| scores.get(b, l).is_finite()).collect();
        // Best first; ties towards the later block. Partition in O(n), sort only the k.
        let better = |a: &usize, b: &usize| {
            scores
                .get(*b, l)
                .total_cmp(&scores.get(*a, l))
                .then(b.cmp(a))
        };
        if k < order.len() {
            order.select_nth_unstable_by(k, better);
            order.truncate(k);
        }
        order.sort_unstable_by(better);
        per_layer.push(order);
    }
    let shortest = per_layer.iter().map(Vec::len).min().unwrap_or(0);
    for list in &mut per_layer {
        // Lists are best-first here, so cutting keeps each layer's best.
        list.truncate(shortest);
        list.sort_unstable();
    }
    let mut counts: BTreeMap<usize, u32> = BTreeMap::new();
    for list in &per_layer {
        for &b in list {
            *counts.entry(b).or_default() += 1;
        }
    }
    let picks = counts
        .into_iter()
        .map(|(index, layers)| BlockPick {
            index,
            score: Some(scores.mean(index)),
            layers,
        })
        .collect();
    Selection { per_layer, picks }
}

/// `k` of `n` blocks spread evenly (the first and the last included when k ≥ 2), the
/// same for all `layers`: the summary mode's question-agnostic sampling.
pub fn select_uniform(n: usize, k: usize, layers: usize) -> Selection {
    let k = k.min(n);
    let chosen: Vec<usize> = match k {
        0 => Vec::new(),
        1 => vec![(n - 1) / 2],
        _ => {
            let mut v: Vec<usize> = (0..k)
                .map(|i| ((i as f64) * (n - 1) as f64 / (k - 1) as f64).round() as usize)
                .collect();
            v.dedup();
            v
        }
    };
    Selection {
        per_layer: vec![chosen.clone(); layers],
        picks: chosen
            .into_iter()
            .map(|index| BlockPick {
                index,
                score: None,
                layers: layers as u32,
            })
            .collect(),
    }
}

/// Every block, for every layer (retrieval with k ≥ candidates).
pub fn select_all(n: usize, layers: usize) -> Selection {
    select_uniform(n, n, layers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(seq: u64, pts_s: u64, wall_s: u64) -> BlockMeta {
        BlockMeta {
            seq,
            pts: Duration::from_secs(pts_s),
            wall_ns: wall_s * 1_000_000_000,
            tokens: 1,
            layers: 1,
            kv_heads: 1,
            head_dim: 1,
            layout: crate::model::BlockLayout::run(1),
        }
    }

    #[test]
    fn scores_are_per_layer_dot_products() {
        // 2 layers of dim 2.
        let q = [1.0, 0.0, 0.0, 2.0];
        let keys = vec![vec![3.0, 5.0, 7.0, 1.0], vec![-1.0, 0.0, 0.0, -1.0]];
        let s = score_blocks(&q, 2, &keys);
        assert_eq!(s.blocks(), 2);
        assert_eq!(s.get(0, 0), 3.0);
        assert_eq!(s.get(0, 1), 2.0);
        assert_eq!(s.get(1, 0), -1.0);
        assert_eq!(s.get(1, 1), -2.0);
        assert_eq!(s.mean(0), 2.5);
    }

    #[test]
    fn mismatched_keys_are_never_picked() {
        let q = [1.0, 1.0];
        let keys = vec![vec![1.0, 1.0], vec![9.0, 9.0, 9.0], vec![0.5, 0.5]];
        let sel = select_top_k(&score_blocks(&q, 2, &keys), 3, LayerSelection::PerLayer);
        assert_eq!(sel.per_layer, vec![vec![0, 2], vec![0, 2]]);
    }

    #[test]
    fn each_layer_takes_its_own_top_k_in_temporal_order() {
        // Layer 0 prefers late blocks, layer 1 early ones.
        let n = 6;
        let keys: Vec<Vec<f32>> = (0..n).map(|b| vec![b as f32, -(b as f32)]).collect();
        let s = score_blocks(&[1.0, 1.0], 2, &keys);
        let sel = select_top_k(&s, 2, LayerSelection::PerLayer);
        assert_eq!(sel.per_layer[0], vec![4, 5]);
        assert_eq!(sel.per_layer[1], vec![0, 1]);
        assert_eq!(sel.k(), 2);
        let idx: Vec<usize> = sel.picks.iter().map(|p| p.index).collect();
        assert_eq!(idx, vec![0, 1, 4, 5]);
        assert!(sel.picks.iter().all(|p| p.layers == 1));
    }

    #[test]
    fn shared_selection_gives_every_layer_one_layers_top_k() {
        let keys: Vec<Vec<f32>> = (0..6).map(|b| vec![b as f32, -(b as f32)]).collect();
        let s = score_blocks(&[1.0, 1.0], 2, &keys);
        let by_first = select_top_k(&s, 2, LayerSelection::Shared(0));
        assert_eq!(by_first.per_layer, vec![vec![4, 5], vec![4, 5]]);
        assert!(by_first.picks.iter().all(|p| p.layers == 2));
        let by_second = select_top_k(&s, 2, LayerSelection::Shared(1));
        assert_eq!(by_second.per_layer, vec![vec![0, 1], vec![0, 1]]);
        // A layer beyond the model's is the last one.
        assert_eq!(select_top_k(&s, 2, LayerSelection::Shared(9)), by_second);
    }

    #[test]
    fn ties_prefer_the_later_block_and_k_beyond_n_takes_all() {
        let keys = vec![vec![1.0], vec![1.0], vec![1.0]];
        let s = score_blocks(&[1.0], 1, &keys);
        assert_eq!(
            select_top_k(&s, 1, LayerSelection::PerLayer).per_layer[0],
            vec![2]
        );
        assert_eq!(
            select_top_k(&s, 10, LayerSelection::PerLayer).per_layer[0],
            vec![0, 1, 2]
        );
        let none = select_top_k(
            &score_blocks::<Vec<f32>>(&[1.0], 1, &[]),
            4,
            LayerSelection::PerLayer,
        );
        assert_eq!(none.k(), 0);
        assert!(none.picks.is_empty());
    }

    #[test]
    fn uniform_spreads_over_the_range() {
        assert_eq!(select_uniform(10, 4, 1).per_layer[0], vec![0, 3, 6, 9]);
        assert_eq!(select_uniform(10, 1, 1).per_layer[0], vec![4]);
        assert_eq!(select_uniform(3, 8, 2).per_layer, vec![vec![0, 1, 2]; 2]);
        assert_eq!(select_uniform(0, 8, 2).k(), 0);
        assert_eq!(select_all(5, 3).per_layer, vec![vec![0, 1, 2, 3, 4]; 3]);
    }

    #[test]
    fn time_ranges_filter_on_stream_time_and_wall_clock() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let blocks: Vec<BlockMeta> = (0..10).map(|i| meta(i, i * 10, 900 + i * 10)).collect();
        let keep = |r: TimeRange| -> Vec<u64> {
            let r = r.resolve(now);
            blocks
                .iter()
                .filter(|m| r.contains(m))
                .map(|m| m.seq)
                .collect()
        };
        assert_eq!(keep(TimeRange::all()).len(), 10);
        let pts = TimeRange {
            since: Some(TimePoint::Stream(Duration::from_secs(20))),
            until: Some(TimePoint::Stream(Duration::from_secs(40))),
        };
        assert_eq!(keep(pts), vec![2, 3, 4]);
        // The last 30 s of wall clock: walls 970, 980, 990.
        let recent = TimeRange {
            since: Some(TimePoint::Ago(Duration::from_secs(30))),
            until: None,
        };
        assert_eq!(keep(recent), vec![7, 8, 9]);
        let wall = TimeRange {
            since: None,
            until: Some(TimePoint::Wall(UNIX_EPOCH + Duration::from_secs(915))),
        };
        assert_eq!(keep(wall), vec![0, 1]);
        assert!(!TimeRange::all().is_inverted(now));
        let inverted = TimeRange {
            since: Some(TimePoint::Stream(Duration::from_secs(5))),
            until: Some(TimePoint::Stream(Duration::from_secs(1))),
        };
        assert!(inverted.is_inverted(now));
    }
}

//! Who runs next on the engine thread: which streams' frames form the next encode
//! batch ([`round_robin`]), and how the thread's time is shared between answering
//! questions and encoding frames ([`SharePolicy`]).
//!
//! The share follows the habit of vLLM's and TGI's schedulers (a budget per turn, so
//! that decoding and prefill interleave) with a time budget instead of a token budget:
//! on a CPU a decode step of a long context and an encode batch differ by orders of
//! magnitude, and only time keeps encoding's frame rate predictable.

use std::time::Duration;

use crossbeam::channel::{Receiver, TryRecvError};

/// Time-share between answering and encoding while both have work.
///
/// Each encode batch earns answering a credit of `took · share / (1 − share)`; every
/// stretch of answering done while frames were waiting spends it. Decode steps run
/// while the credit is positive, so over time answering gets `share` of the thread
/// and encoding `1 − share`. Two rules keep it live:
/// - at least one decode step per turn, so answers always progress;
/// - the credit is capped at one batch's worth, so a long quiet spell does not bank a
///   burst that would stall encoding later.
///
/// A new question's first step (retrieval and the question pass) is answering too and
/// is charged, but never postponed: a question waits at most one encode batch. Time
/// spent answering while no frame waits is free (encoding had nothing to do).
#[derive(Debug, Clone)]
pub struct SharePolicy {
    /// `share / (1 − share)`: answering time earned per second of encoding.
    ratio: f64,
    /// Answering time still allowed before the next batch, in nanoseconds; negative
    /// after an overrun (a long first step), repaid by later batches. Invariant: at
    /// most the last batch's earning.
    credit: i64,
}

impl SharePolicy {
    /// `answer_share` in (0, 1).
    pub fn new(answer_share: f64) -> Self {
        let share = answer_share.clamp(0.01, 0.99);
        Self {
            ratio: share / (1.0 - share),
            credit: 0,
        }
    }

    /// An encode batch took `took`.
    pub fn encoded(&mut self, took: Duration) {
        let earned = (took.as_nanos() as f64 * self.ratio) as i64;
        self.credit = self.credit.saturating_add(earned).min(earned);
    }

    /// Answering took `took` while frames were waiting.
    pub fn answered(&mut self, took: Duration) {
        self.credit = self
            .credit
            .saturating_sub(i64::try_from(took.as_nanos()).unwrap_or(i64::MAX));
    }

    /// Whether a decode step may run now: always when no frame waits, else the first
    /// step of the turn or while the credit lasts.
    pub fn may_decode(&self, frames_waiting: bool, steps_this_turn: usize) -> bool {
        !frames_waiting || steps_this_turn == 0 || self.credit > 0
    }
}

/// Takes up to `max` items from `queues`, one per queue in turn starting at queue
/// `start % n`, until `max` or every queue is empty: every stream with frames waiting
/// gets a share of each batch, and no stream always goes first. Returns the items with
/// their queue index, and the queues found disconnected and empty (input ended).
pub fn round_robin<T>(
    queues: &[&Receiver<T>],
    start: usize,
    max: usize,
) -> (Vec<(usize, T)>, Vec<usize>) {
    let n = queues.len();
    let mut batch = Vec::new();
    let mut ended = Vec::new();
    if n == 0 {
        return (batch, ended);
    }
    let mut open = vec![true; n];
    while batch.len() < max && open.iter().any(|&o| o) {
        for step in 0..n {
            let i = (start + step) % n;
            if !open[i] || batch.len() >= max {
                continue;
            }
            match queues[i].try_recv() {
                Ok(item) => batch.push((i, item)),
                Err(TryRecvError::Empty) => open[i] = false,
                Err(TryRecvError::Disconnected) => {
                    open[i] = false;
                    ended.push(i);
                }
            }
        }
    }
    (batch, ended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam::channel::{self, Sender};

    fn queue(items: &[u32]) -> (Sender<u32>, Receiver<u32>) {
        let (tx, rx) = channel::unbounded();
        for &i in items {
            tx.send(i).unwrap();
        }
        (tx, rx)
    }

    #[test]
    fn batches_take_turns_across_streams() {
        let (_a, qa) = queue(&[10, 11, 12, 13, 14, 15]);
        let (_b, qb) = queue(&[20, 21]);
        let (_c, qc) = queue(&[30, 31, 32, 33]);
        let queues = [&qa, &qb, &qc];
        // One from each in turn; b runs dry and the others share the rest.
        let (batch, ended) = round_robin(&queues, 0, 7);
        let items: Vec<u32> = batch.iter().map(|(_, x)| *x).collect();
        assert_eq!(items, vec![10, 20, 30, 11, 21, 31, 12]);
        assert!(ended.is_empty());
        // The next batch starts one stream further.
        let (batch, _) = round_robin(&queues, 1, 3);
        let items: Vec<u32> = batch.iter().map(|(_, x)| *x).collect();
        assert_eq!(items, vec![32, 13, 33]);
    }

    #[test]
    fn closed_and_drained_queues_are_reported_once_empty() {
        let (a, qa) = queue(&[1]);
        drop(a);
        let (_b, qb) = queue(&[2, 3]);
        let (batch, ended) = round_robin(&[&qa, &qb], 0, 8);
        assert_eq!(batch.len(), 3);
        assert_eq!(ended, vec![0]);
        let (batch, ended) = round_robin::<u32>(&[], 0, 8);
        assert!(batch.is_empty() && ended.is_empty());
    }

    /// Simulates the engine loop with both kinds of work always waiting: `batch` per
    /// encode batch, `step` per decode step, `first` for a new question's first step
    /// every `every` turns. Returns the fraction of time spent encoding.
    fn encode_fraction(share: f64, batch: f64, step: f64, first: f64, every: usize) -> f64 {
        let mut policy = SharePolicy::new(share);
        let (mut encoding, mut answering) = (0.0, 0.0);
        for turn in 0..10_000 {
            if every > 0 && turn % every == 0 {
                policy.answered(Duration::from_secs_f64(first));
                answering += first;
            }
            let mut steps = 0;
            while policy.may_decode(true, steps) {
                policy.answered(Duration::from_secs_f64(step));
                answering += step;
                steps += 1;
            }
            policy.encoded(Duration::from_secs_f64(batch));
            encoding += batch;
        }
        encoding / (encoding + answering)
    }

    #[test]
    fn both_sides_get_their_share() {
        // Cheap steps against costly batches, and the other way round: the share holds
        // to within one step's cost per batch.
        for (batch, step) in [(0.100, 0.002), (0.010, 0.004), (0.040, 0.040)] {
            for share in [0.25, 0.5, 0.75] {
                let f = encode_fraction(share, batch, step, 0.0, 0);
                let slack = step / (batch + step);
                assert!(
                    (f - (1.0 - share)).abs() <= slack + 0.01,
                    "share {share} batch {batch} step {step}: encoding {f:.3}"
                );
            }
        }
        // Steps far costlier than a batch: one step per turn is the floor, never zero.
        let f = encode_fraction(0.5, 0.001, 0.1, 0.0, 0);
        assert!(f > 0.0 && f < 0.5, "{f}");
    }

    #[test]
    fn first_steps_are_repaid_not_banked() {
        // A costly first step every 10 turns is charged: encoding still gets its half.
        let f = encode_fraction(0.5, 0.05, 0.005, 0.2, 10);
        assert!(f >= 0.45, "{f}");
        // A long quiet spell does not bank credit for a burst.
        let mut policy = SharePolicy::new(0.5);
        for _ in 0..1000 {
            policy.encoded(Duration::from_millis(50));
        }
        let mut steps = 0;
        while policy.may_decode(true, steps) {
            policy.answered(Duration::from_millis(5));
            steps += 1;
        }
        assert_eq!(steps, 10);
        // No frames waiting: answering never waits.
        assert!(policy.may_decode(false, 1000));
    }
}

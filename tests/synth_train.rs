//! `vstreamd train` through the library on a few steps: clip steps, retrieval-like
//! context steps (`contexts`) and the retrieval objective (`retrieval_weight`) run,
//! report finite losses, and write a checkpoint that loads as any other. What the
//! options buy is measured by the needle bench, not here.

use std::time::Duration;

use vstreamd::model::{LlavaOnevision, ModelOptions, Precision};
use vstreamd::synth::train::{self, Progress, TrainOptions};

#[test]
fn contexts_and_the_retrieval_objective_train_and_save() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ckpt");
    let mut opts = TrainOptions::new(out.clone());
    opts.steps = 4;
    opts.batch = 4;
    opts.warmup = 2;
    opts.max_time = Duration::from_secs(600);
    opts.contexts = 0.5;
    opts.context_frames = (2, 12);
    opts.retrieval_weight = 1.0;
    let mut seen: Vec<Progress> = Vec::new();
    let report = train::train(&opts, &mut |p| seen.push(p.clone())).unwrap();
    assert_eq!(report.steps, 4);
    assert!(report.final_loss.is_finite());
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(|p| p.loss.is_finite()));
    assert!(
        seen.iter()
            .any(|p| p.retrieval_loss.is_finite() && p.retrieval_loss > 0.0),
        "the retrieval objective never ran: {seen:?}"
    );
    LlavaOnevision::load(&out, ModelOptions::cpu(Precision::F32)).unwrap();

    // Off by default, and bad settings refused.
    assert_eq!(TrainOptions::new(out.clone()).retrieval_weight, 0.0);
    let mut bad = TrainOptions::new(dir.path().join("bad"));
    bad.contexts = 1.5;
    assert!(train::train(&bad, &mut |_| {}).is_err());
    let mut bad = TrainOptions::new(dir.path().join("bad"));
    bad.retrieval_weight = f64::NAN;
    assert!(train::train(&bad, &mut |_| {}).is_err());
}

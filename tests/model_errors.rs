//! Bad checkpoints and bad inputs give typed errors that name what is wrong.

mod common;

use std::path::Path;

use common::*;
use tch::{Kind, Tensor};
use vstreamd::error::ModelError;
use vstreamd::model::{LlavaOnevision, ModelOptions, Precision};

/// A copy of tiny_a whose tensors have been passed through `edit`.
fn edited_checkpoint(edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("tiny_a")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let weights = dir.path().join("model.safetensors");
    let mut tensors = Tensor::read_safetensors(&weights).unwrap();
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, &weights).unwrap();
    dir
}

fn load_err(dir: &Path) -> ModelError {
    match LlavaOnevision::load(dir, ModelOptions::cpu(Precision::F32)) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e,
    }
}

const Q_PROJ: &str = "language_model.model.layers.1.self_attn.q_proj.weight";

#[test]
fn missing_tensor_is_named() {
    let dir = edited_checkpoint(|t| t.retain(|(n, _)| n != Q_PROJ));
    match load_err(dir.path()) {
        ModelError::MissingTensor(name) => assert_eq!(name, Q_PROJ),
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn unknown_tensor_is_named() {
    let dir = edited_checkpoint(|t| {
        t.push((
            "language_model.model.layers.1.extra.weight".into(),
            Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)),
        ))
    });
    let err = load_err(dir.path());
    assert!(
        matches!(&err, ModelError::UnknownTensors { count: 1, first } if first == "language_model.model.layers.1.extra.weight"),
        "unexpected error {err}"
    );
}

#[test]
fn shape_mismatch_names_tensor_and_shapes() {
    let dir = edited_checkpoint(|t| {
        for (name, tensor) in t.iter_mut() {
            if name == Q_PROJ {
                *tensor = tensor.narrow(0, 0, 8);
            }
        }
    });
    match load_err(dir.path()) {
        ModelError::ShapeMismatch {
            name,
            expected,
            found,
        } => {
            assert_eq!(name, Q_PROJ);
            assert_eq!(expected, vec![48, 48]);
            assert_eq!(found, vec![8, 48]);
        }
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn missing_files_and_bad_configs_are_typed() {
    let dir = edited_checkpoint(|_| {});
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    assert!(matches!(
        load_err(dir.path()),
        ModelError::MissingFile {
            what: "tokenizer.json",
            ..
        }
    ));

    let dir = edited_checkpoint(|_| {});
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert!(matches!(
        load_err(dir.path()),
        ModelError::MissingFile { .. }
    ));

    let dir = edited_checkpoint(|_| {});
    let config = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("\"llava_onevision\"", "\"llava_next\""),
    )
    .unwrap();
    assert!(matches!(load_err(dir.path()), ModelError::Unsupported(_)));

    std::fs::write(&config, "{ not json").unwrap();
    assert!(matches!(load_err(dir.path()), ModelError::Json { .. }));

    let dir = edited_checkpoint(|_| {});
    std::fs::write(dir.path().join("model.safetensors"), b"\x10\x00\x00").unwrap();
    assert!(matches!(
        load_err(dir.path()),
        ModelError::Safetensors { .. }
    ));
}

#[test]
fn bad_inputs_are_rejected_not_panicked_on() {
    let _g = tch::no_grad_guard();
    let model = load("tiny_a", Precision::F32);
    let wrong_size = Tensor::zeros([1, 3, 8, 8], (Kind::Float, tch::Device::Cpu));
    assert!(matches!(
        model.encode_frames(&wrong_size),
        Err(ModelError::InvalidInput(_))
    ));
    let float_frames = Tensor::zeros([1, 3, 30, 30], (Kind::Float, tch::Device::Cpu));
    assert!(matches!(
        model.preprocessor.process(&float_frames),
        Err(ModelError::InvalidInput(_))
    ));
    // Two frames of embeddings for a prompt expanded for one.
    let features = model
        .encode_frames(&Tensor::zeros(
            [2, 3, 30, 30],
            (Kind::Float, tch::Device::Cpu),
        ))
        .unwrap();
    let ids = model.video_prompt_ids(PROMPT, 1).unwrap();
    assert!(matches!(
        model.embed_with_video(&ids, &features),
        Err(ModelError::InvalidInput(_))
    ));
    assert!(matches!(
        model.text.expand_video(&[1, 2], 5),
        Err(ModelError::InvalidInput(_))
    ));
}

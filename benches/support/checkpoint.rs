//! Random LLaVA-OneVision checkpoints of a given [`Shape`], written by the benchmarks
//! themselves (never committed, never downloaded): the layout `transformers` 5 saves,
//! weights normal with std 0.02 (norms 1, biases 0) in bf16, sharded at ~512 MB. Text
//! needs no real vocabulary for what the benches run, so the tokenizer, chat template and
//! processor config are the tiny test fixture's (`tests/fixtures/llava_ov/tiny_a`), with
//! the processor's sizes set to the image size.
//!
//! A checkpoint directory carries a `.complete` marker naming its generator version,
//! shape and seed; one with another marker is rewritten.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use tch::{Device, Kind, Tensor};

/// Bumped whenever what [`ensure`] writes changes.
const CHECKPOINT_VERSION: u32 = 2;
const SEED: i64 = 0;

/// Sizes of a LLaVA-OneVision checkpoint: a SigLIP tower and a Qwen2 decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Shape {
    pub name: &'static str,
    pub v_hidden: i64,
    pub v_inter: i64,
    pub v_layers: i64,
    pub v_heads: i64,
    pub v_image: i64,
    pub v_patch: i64,
    pub t_hidden: i64,
    pub t_inter: i64,
    pub t_layers: i64,
    pub t_heads: i64,
    pub t_kv_heads: i64,
}

/// llava-onevision-qwen2-0.5b-ov (scripts/make_bench_checkpoint.py): SigLIP-so400m at
/// 384 px (27×27 patches pooled to 196 tokens a frame), Qwen2-0.5B.
pub const LLAVA_OV_0P5B: Shape = Shape {
    name: "llava_ov_0p5b",
    v_hidden: 1152,
    v_inter: 4304,
    v_layers: 26,
    v_heads: 16,
    v_image: 384,
    v_patch: 14,
    t_hidden: 896,
    t_inter: 4864,
    t_layers: 24,
    t_heads: 14,
    t_kv_heads: 2,
};

/// A small model for service benchmarks: heavy enough that two live streams load the
/// engine on a 2-core CPU (about 2.5 GFLOP a frame: 112 px, 8×8 patches pooled to 16
/// tokens), light enough to decode 1,024-token answers in seconds.
pub const SERVE_SMALL: Shape = Shape {
    name: "serve_small",
    v_hidden: 384,
    v_inter: 1536,
    v_layers: 6,
    v_heads: 6,
    v_image: 112,
    v_patch: 14,
    t_hidden: 512,
    t_inter: 2048,
    t_layers: 8,
    t_heads: 8,
    t_kv_heads: 2,
};

#[derive(Clone, Copy)]
enum Init {
    /// Normal, std 0.02.
    Normal,
    Ones,
    Zeros,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every tensor of a checkpoint of `shape`, in the layout `transformers` 5 saves.
fn tensors(shape: &Shape, vocab: i64) -> Vec<(String, Vec<i64>, Init)> {
    use Init::*;
    let mut out: Vec<(String, Vec<i64>, Init)> = Vec::new();
    let mut add = |name: String, dims: &[i64], init: Init| out.push((name, dims.to_vec(), init));
    let linear =
        |add: &mut dyn FnMut(String, &[i64], Init), p: &str, i: i64, o: i64, bias: bool| {
            add(format!("{p}.weight"), &[o, i], Normal);
            if bias {
                add(format!("{p}.bias"), &[o], Zeros);
            }
        };
    let (d, grid) = (shape.v_hidden, shape.v_image / shape.v_patch);
    let vis = "model.vision_tower.vision_model";
    add(
        format!("{vis}.embeddings.patch_embedding.weight"),
        &[d, 3, shape.v_patch, shape.v_patch],
        Normal,
    );
    add(
        format!("{vis}.embeddings.patch_embedding.bias"),
        &[d],
        Zeros,
    );
    add(
        format!("{vis}.embeddings.position_embedding.weight"),
        &[grid * grid, d],
        Normal,
    );
    for l in 0..shape.v_layers {
        let p = format!("{vis}.encoder.layers.{l}");
        for norm in ["layer_norm1", "layer_norm2"] {
            add(format!("{p}.{norm}.weight"), &[d], Ones);
            add(format!("{p}.{norm}.bias"), &[d], Zeros);
        }
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            linear(&mut add, &format!("{p}.self_attn.{proj}"), d, d, true);
        }
        linear(&mut add, &format!("{p}.mlp.fc1"), d, shape.v_inter, true);
        linear(&mut add, &format!("{p}.mlp.fc2"), shape.v_inter, d, true);
    }
    add(format!("{vis}.post_layernorm.weight"), &[d], Ones);
    add(format!("{vis}.post_layernorm.bias"), &[d], Zeros);
    let h = shape.t_hidden;
    linear(&mut add, "model.multi_modal_projector.linear_1", d, h, true);
    linear(&mut add, "model.multi_modal_projector.linear_2", h, h, true);
    add("model.image_newline".into(), &[h], Normal);
    let text = "model.language_model";
    let hd = h / shape.t_heads;
    add(format!("{text}.embed_tokens.weight"), &[vocab, h], Normal);
    for l in 0..shape.t_layers {
        let p = format!("{text}.layers.{l}");
        add(format!("{p}.input_layernorm.weight"), &[h], Ones);
        add(format!("{p}.post_attention_layernorm.weight"), &[h], Ones);
        let attn = format!("{p}.self_attn");
        linear(
            &mut add,
            &format!("{attn}.q_proj"),
            h,
            shape.t_heads * hd,
            true,
        );
        linear(
            &mut add,
            &format!("{attn}.k_proj"),
            h,
            shape.t_kv_heads * hd,
            true,
        );
        linear(
            &mut add,
            &format!("{attn}.v_proj"),
            h,
            shape.t_kv_heads * hd,
            true,
        );
        linear(
            &mut add,
            &format!("{attn}.o_proj"),
            shape.t_heads * hd,
            h,
            false,
        );
        linear(
            &mut add,
            &format!("{p}.mlp.gate_proj"),
            h,
            shape.t_inter,
            false,
        );
        linear(
            &mut add,
            &format!("{p}.mlp.up_proj"),
            h,
            shape.t_inter,
            false,
        );
        linear(
            &mut add,
            &format!("{p}.mlp.down_proj"),
            shape.t_inter,
            h,
            false,
        );
    }
    add(format!("{text}.norm.weight"), &[h], Ones);
    out
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// The marker a complete checkpoint carries; a checkpoint with another is rebuilt.
fn marker(shape: &Shape, vocab: i64) -> serde_json::Value {
    json!({
        "generator": "benches/support/checkpoint.rs",
        "version": CHECKPOINT_VERSION,
        "vocab_size": vocab,
        "shape": shape,
        "seed": SEED,
    })
}

/// Bytes available to unprivileged users on the filesystem holding `path` (or its
/// nearest existing ancestor).
pub fn free_bytes(path: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let mut at = path;
    while !at.exists() {
        at = at
            .parent()
            .ok_or_else(|| anyhow!("no existing ancestor of {}", path.display()))?;
    }
    let c = std::ffi::CString::new(at.as_os_str().as_bytes())?;
    // SAFETY: `statvfs` is plain data, for which all-zero bytes are a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid, writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        bail!(
            "statvfs {}: {}",
            at.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Returns the checkpoint directory `out` of `shape`, writing it first if absent or
/// stale.
pub fn ensure(out: &Path, shape: &Shape) -> Result<PathBuf> {
    let tiny = repo().join("tests/fixtures/llava_ov/tiny_a");
    let tiny_config = read_json(&tiny.join("config.json"))?;
    let vocab = tiny_config["text_config"]["vocab_size"]
        .as_i64()
        .ok_or_else(|| anyhow!("tiny_a config has no text_config.vocab_size"))?;
    let wanted = marker(shape, vocab);
    let complete = out.join(".complete");
    if complete.exists() {
        let found = read_json(&complete)?;
        if ["generator", "version", "vocab_size", "shape", "seed"]
            .iter()
            .all(|k| found.get(k) == wanted.get(k))
        {
            println!("  checkpoint: {} (cached)", out.display());
            return Ok(out.to_owned());
        }
    }
    let tensors = tensors(shape, vocab);
    let params: i64 = tensors
        .iter()
        .map(|(_, s, _)| s.iter().product::<i64>())
        .sum();
    let need = params as u64 * 2 + (64 << 20);
    let free = free_bytes(out)?;
    if free < need + (1 << 30) {
        bail!(
            "writing the {} checkpoint needs {} MiB and {} keeps only {} MiB free",
            shape.name,
            need >> 20,
            out.display(),
            free >> 20
        );
    }
    let started = Instant::now();
    let staging = out.with_extension("partial");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    write(&staging, shape, &tiny, &tiny_config, &tensors)?;
    let mut wanted = wanted;
    wanted["parameters"] = json!(params);
    write_json(&staging.join(".complete"), &wanted)?;
    if out.exists() {
        std::fs::remove_dir_all(out)?;
    }
    std::fs::rename(&staging, out)?;
    println!(
        "  checkpoint: wrote {} ({:.0}M parameters, bf16, vocab {vocab}) in {:.0} s",
        out.display(),
        params as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(out.to_owned())
}

fn write(
    dir: &Path,
    shape: &Shape,
    tiny: &Path,
    tiny_config: &serde_json::Value,
    tensors: &[(String, Vec<i64>, Init)],
) -> Result<()> {
    let text = &tiny_config["text_config"];
    let config = json!({
        "architectures": ["LlavaOnevisionForConditionalGeneration"],
        "model_type": "llava_onevision",
        "image_token_index": tiny_config["image_token_index"],
        "video_token_index": tiny_config["video_token_index"],
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "full",
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": true,
        "tie_word_embeddings": true,
        "dtype": "bfloat16",
        "vision_config": {
            "model_type": "siglip_vision_model",
            "hidden_size": shape.v_hidden,
            "intermediate_size": shape.v_inter,
            "num_hidden_layers": shape.v_layers,
            "num_attention_heads": shape.v_heads,
            "num_channels": 3,
            "image_size": shape.v_image,
            "patch_size": shape.v_patch,
            "hidden_act": "gelu_pytorch_tanh",
            "layer_norm_eps": 1e-6,
            "vision_use_head": false,
        },
        "text_config": {
            "model_type": "qwen2",
            "vocab_size": text["vocab_size"],
            "hidden_size": shape.t_hidden,
            "intermediate_size": shape.t_inter,
            "num_hidden_layers": shape.t_layers,
            "num_attention_heads": shape.t_heads,
            "num_key_value_heads": shape.t_kv_heads,
            "hidden_act": "silu",
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "tie_word_embeddings": true,
            "use_sliding_window": false,
            "eos_token_id": text["eos_token_id"],
            "pad_token_id": text["pad_token_id"],
            "bos_token_id": null,
        },
    });
    write_json(&dir.join("config.json"), &config)?;
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ] {
        std::fs::copy(tiny.join(name), dir.join(name))
            .with_context(|| format!("copying {name}"))?;
    }
    let mut processor = read_json(&tiny.join("processor_config.json"))?;
    for section in ["image_processor", "video_processor"] {
        processor[section]["size"] = json!({"height": shape.v_image, "width": shape.v_image});
    }
    let grid = shape.v_image / shape.v_patch;
    processor["num_image_tokens"] = json!(grid * grid);
    write_json(&dir.join("processor_config.json"), &processor)?;

    // Shards of ~512 MB so that only one shard's tensors are held at a time.
    const SHARD_BYTES: i64 = 512 << 20;
    tch::manual_seed(SEED);
    let mut weight_map = serde_json::Map::new();
    let mut shard: Vec<(String, Tensor)> = Vec::new();
    let mut shard_bytes = 0i64;
    let mut shard_index = 0usize;
    let mut total = 0i64;
    let mut flush = |shard: &mut Vec<(String, Tensor)>, index: &mut usize| -> Result<()> {
        if shard.is_empty() {
            return Ok(());
        }
        *index += 1;
        let file = format!("model-{index:05}.safetensors");
        Tensor::write_safetensors(shard, dir.join(&file))
            .with_context(|| format!("writing {file}"))?;
        for (name, _) in shard.drain(..) {
            weight_map.insert(name, json!(file));
        }
        Ok(())
    };
    for (name, dims, init) in tensors {
        let opts = (Kind::Float, Device::Cpu);
        let t = match init {
            Init::Normal => Tensor::f_randn(dims.as_slice(), opts)?.f_mul_scalar(0.02)?,
            Init::Ones => Tensor::f_ones(dims.as_slice(), opts)?,
            Init::Zeros => Tensor::f_zeros(dims.as_slice(), opts)?,
        }
        .f_to_kind(Kind::BFloat16)?;
        let bytes = t.numel() as i64 * 2;
        total += bytes;
        shard_bytes += bytes;
        shard.push((name.clone(), t));
        if shard_bytes >= SHARD_BYTES {
            flush(&mut shard, &mut shard_index)?;
            shard_bytes = 0;
        }
    }
    flush(&mut shard, &mut shard_index)?;
    write_json(
        &dir.join("model.safetensors.index.json"),
        &json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
    )?;
    Ok(())
}

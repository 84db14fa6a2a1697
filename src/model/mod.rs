//! The model runtime: Hugging Face Video-LLM checkpoints run through libtorch (`tch`).
//!
//! Kept free of serving and storage code: it loads a checkpoint, turns frames into
//! embeddings and runs the decoder over an explicit key/value context. The engine knows
//! a model only through [`VideoLlm`] ([`family`]); [`load`] picks the family from
//! `config.json`'s `model_type`, so adding a family is adding a folder.
//!
//! # Layout
//! - [`family`]: the seam ([`VideoLlm`], [`Positions`], [`ModelSummary`]).
//! - [`nn`]: shared layers and state: safetensors weights by scoped name, rotary
//!   embeddings at explicit positions, KV segments and attention contexts.
//! - [`vision`]: vision towers (SigLIP). [`decoder`]: the Llama-family decoder (Qwen2,
//!   Llama/SmolLM2).
//! - [`config`]: what every family's config shares; [`text`]: tokenizer, chat
//!   templates; [`preprocess`]: frames → pixel values (resize, rescale, normalise).
//! - one folder per family: [`llava_onevision`], [`smolvlm`].

pub mod config;
pub mod decoder;
pub mod family;
pub mod llava_onevision;
pub mod nn;
pub mod preprocess;
pub mod qwen2_5_vl;
pub mod smolvlm;
pub mod text;
pub mod vision;

use std::str::FromStr;

use tch::{Device, Kind, Tensor};

use crate::error::{ModelError, ModelResult};

pub use decoder::{ChunkOutput, ForwardOptions, Llama};
pub use family::{BlockLayout, Cursor, ModelSummary, Positions, VideoLlm, VideoPrompt};
pub use llava_onevision::LlavaOnevision;
pub use nn::context::{AttnContext, KvSegment, LayerKv};
pub use qwen2_5_vl::Qwen25Vl;
pub use smolvlm::SmolVlm;

/// Loads the checkpoint in `dir` with the family its `config.json` names
/// (`model_type`): `llava_onevision`, `smolvlm`, `qwen2_5_vl`.
pub fn load(dir: &std::path::Path, opts: ModelOptions) -> ModelResult<Box<dyn VideoLlm>> {
    #[derive(serde::Deserialize)]
    struct Head {
        model_type: Option<String>,
    }
    let path = dir.join("config.json");
    if !path.exists() {
        return Err(ModelError::MissingFile {
            dir: dir.to_owned(),
            what: "config.json",
        });
    }
    let head: Head = config::read_json(&path)?;
    match head.model_type.as_deref() {
        Some("llava_onevision") => Ok(Box::new(LlavaOnevision::load(dir, opts)?)),
        Some("smolvlm") => Ok(Box::new(smolvlm::SmolVlm::load(dir, opts)?)),
        Some("qwen2_5_vl") => Ok(Box::new(Qwen25Vl::load(dir, opts)?)),
        Some(other) => Err(ModelError::Unsupported(format!(
            "model_type `{other}` (families: llava_onevision, smolvlm, qwen2_5_vl)"
        ))),
        None => Err(ModelError::InvalidConfig(format!(
            "{} has no model_type",
            path.display()
        ))),
    }
}

/// Numeric precision the model runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub fn kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
            Precision::F16 => Kind::Half,
        }
    }
}

impl FromStr for Precision {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "f16" | "fp16" | "float16" => Ok(Precision::F16),
            other => Err(ModelError::InvalidInput(format!(
                "unknown dtype `{other}` (f32, bf16, f16)"
            ))),
        }
    }
}

/// Where and how a model runs.
#[derive(Debug, Clone, Copy)]
pub struct ModelOptions {
    pub device: Device,
    pub dtype: Kind,
}

impl ModelOptions {
    pub fn cpu(precision: Precision) -> Self {
        Self {
            device: Device::Cpu,
            dtype: precision.kind(),
        }
    }

    /// `cpu`, `cuda` or `cuda:N`; CUDA must be present when asked for.
    pub fn parse(device: &str, precision: Precision) -> ModelResult<Self> {
        let device = match device {
            "cpu" => Device::Cpu,
            "cuda" => Device::Cuda(0),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => Device::Cuda(i),
                _ => {
                    return Err(ModelError::InvalidInput(format!(
                        "unknown device `{other}` (cpu, cuda, cuda:N)"
                    )))
                }
            },
        };
        if device.is_cuda() && !tch::Cuda::is_available() {
            return Err(ModelError::Unsupported(
                "CUDA was asked for but libtorch sees no CUDA device (see README: CUDA builds)"
                    .into(),
            ));
        }
        Ok(Self {
            device,
            dtype: precision.kind(),
        })
    }

    /// Why matmuls in this dtype will be much slower than in f32 here, if they will be.
    ///
    /// libtorch (2.13) multiplies bf16 on x86 CPUs through oneDNN only where AVX-512
    /// (BW, VL, DQ) is present, and f16 only with AVX-512-FP16; elsewhere it falls back
    /// to a reference kernel. Measured on an AVX2-only machine (2 threads): a 2048³
    /// `a · bᵀ` at ~10 GFLOP/s in bf16 against ~65 in f32, and `a · b` in bf16 below 2.
    /// Nothing is wrong with the results, only with the speed, so callers warn.
    pub fn slow_cpu_gemm(&self) -> Option<String> {
        if self.device != Device::Cpu || self.dtype == Kind::Float {
            return None;
        }
        let native = native_cpu_gemm(self.dtype);
        (!native).then(|| {
            let (name, needs) = if self.dtype == Kind::Half {
                ("f16", "AVX-512-FP16")
            } else {
                ("bf16", "AVX-512 BW/VL/DQ")
            };
            format!(
                "{name} matmuls on this CPU run libtorch's reference kernel (no {needs}): \
                 several times slower than f32; use dtype = \"f32\" here"
            )
        })
    }
}

/// Whether libtorch has a vectorised (oneDNN) GEMM for `kind` on this CPU.
#[cfg(target_arch = "x86_64")]
fn native_cpu_gemm(kind: Kind) -> bool {
    let avx512_core = std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512dq");
    match kind {
        Kind::BFloat16 => avx512_core,
        Kind::Half => std::arch::is_x86_feature_detected!("avx512fp16"),
        _ => true,
    }
}

/// Other architectures: assume libtorch's kernels are fine (no measurement here).
#[cfg(not(target_arch = "x86_64"))]
fn native_cpu_gemm(_kind: Kind) -> bool {
    true
}

/// Activation functions named in checkpoint configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact (erf) GELU: `gelu`.
    Gelu,
    /// Tanh-approximated GELU: `gelu_pytorch_tanh`, `gelu_new`, `gelu_fast`.
    GeluTanh,
    Silu,
    Relu,
}

impl Activation {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Activation::Gelu),
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Some(Activation::GeluTanh),
            "silu" | "swish" => Some(Activation::Silu),
            "relu" => Some(Activation::Relu),
            _ => None,
        }
    }

    pub fn forward(self, x: &Tensor) -> ModelResult<Tensor> {
        Ok(match self {
            Activation::Gelu => x.f_gelu("none")?,
            Activation::GeluTanh => x.f_gelu("tanh")?,
            Activation::Silu => x.f_silu()?,
            Activation::Relu => x.f_relu()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reduced_precision_on_cpus_without_its_gemm_is_flagged() {
        assert_eq!(ModelOptions::cpu(Precision::F32).slow_cpu_gemm(), None);
        for (precision, name) in [(Precision::Bf16, "bf16"), (Precision::F16, "f16")] {
            let opts = ModelOptions::cpu(precision);
            match opts.slow_cpu_gemm() {
                Some(why) => {
                    assert!(!native_cpu_gemm(opts.dtype));
                    assert!(why.starts_with(name), "{why}");
                }
                None => assert!(native_cpu_gemm(opts.dtype)),
            }
        }
        let cuda = ModelOptions {
            device: Device::Cuda(0),
            dtype: Kind::BFloat16,
        };
        assert_eq!(cuda.slow_cpu_gemm(), None);
    }
}

//! The model runtime: Hugging Face Video-LLM checkpoints run through libtorch (`tch`).
//!
//! Kept free of serving and storage code: it loads a checkpoint, turns frames into
//! embeddings and runs the decoder over an explicit key/value context. The streaming
//! engine builds its sliding window and retrieved blocks on [`context`].
//!
//! # Layout
//! - [`config`]: serde mirrors of `config.json` and the video preprocessor config.
//! - [`weights`]: safetensors (single or sharded) by scoped name, with shape checks.
//! - [`text`]: tokenizer, chat template, video placeholder expansion.
//! - [`preprocess`]: frames → pixel values as the `transformers` video processor does.
//! - [`rope`], [`context`]: rotary embeddings at explicit positions; KV segments and
//!   attention contexts.
//! - [`siglip`], [`qwen2`]: the vision tower and the decoder, shared by families.
//! - [`llava_onevision`]: the LLaVA-OneVision family assembled from them.

pub mod config;
pub mod context;
pub mod llava_onevision;
pub mod preprocess;
pub mod qwen2;
pub mod rope;
pub mod siglip;
pub mod text;
pub mod weights;

use std::str::FromStr;

use tch::{Device, Kind, Tensor};

use crate::error::{ModelError, ModelResult};

pub use context::{AttnContext, KvSegment, LayerKv};
pub use llava_onevision::LlavaOnevision;
pub use qwen2::{ChunkOutput, ForwardOptions};

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

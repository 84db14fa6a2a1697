//! Text decoders run over explicit key/value contexts. [`llama`]: the Llama family
//! (Qwen2, Llama/SmolLM2), one implementation for every family's LLM.

pub mod llama;

pub use llama::{ChunkOutput, ForwardOptions, Llama, LlamaConfig};

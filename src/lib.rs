//! vstreamd: streaming, online video understanding.
//!
//! A daemon that watches live video, encodes it continuously with a Video-LLM, keeps
//! the key/value caches of what it has seen, and answers questions about any moment
//! by retrieving only the relevant cached frames (the ReKV line of research).
//!
//! # Layout
//! - [`error`]: typed errors per layer with stable metric labels.
//! - [`model`]: Hugging Face Video-LLM checkpoints in libtorch (LLaVA-OneVision):
//!   loading, preprocessing, vision tower, decoder with explicit KV contexts.
//! - [`ingest`]: GStreamer sources → sampled, timestamped RGB frames in a bounded
//!   queue, with reconnection.
//! - [`kv`]: compressed KV blocks in a RAM tier and a crash-safe disk tier.
//! - [`retrieval`]: ReKV block selection: per-layer top-k by representative keys,
//!   time ranges, uniform sampling.
//! - [`engine`]: the model-owning thread: streaming encode with a sliding window,
//!   questions answered over retrieved blocks, scheduling.
//! - [`config`]: the daemon's TOML configuration, stream entries, validation.
//! - [`serve`]: the daemon: gRPC API, auth, limits, Prometheus endpoint, systemd.
//! - [`synth`]: a synthetic scene world (shapes that appear, move and leave), its
//!   question answering, and the training of a tiny LLaVA-OneVision on it.
//! - [`metrics`]: metric names, descriptions, buckets, the exporter's installation.
//! - [`cli`]: the `vstreamd` command line (the binary's `main.rs` only calls it).

pub mod cli;
pub mod config;
pub mod engine;
pub mod error;
pub mod ingest;
pub mod kv;
pub mod metrics;
pub mod model;
pub mod retrieval;
pub mod serve;
pub mod synth;

//! The KV store: every encoded frame's key/value cache, compressed, kept in RAM and in
//! crash-safe memory-mapped segment files on disk, and brought back when a question
//! needs it (ReKV's offloading, with the disk tier its paper describes and its code
//! lacks).
//!
//! # Layout
//! - [`disk`]: per-stream append-only segment files: checksummed records, recovery,
//!   retention, durability.
pub mod disk;

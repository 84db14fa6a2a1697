//! The KV store: every encoded frame's key/value cache, compressed, kept in RAM and in
//! crash-safe memory-mapped segment files on disk, and brought back when a question
//! needs it (ReKV's offloading, with the disk tier its paper describes and its code
//! lacks).
//!
//! # Layout
//! - [`quant`]: KIVI-style int8/int4 quantisation (keys per channel, values per token).
//! - [`block`]: [`Block`] (one frame's KV, keys before rotary, representative keys) and
//!   its stored form [`CompressedBlock`].
//! - [`ram`]: the RAM tier, LRU under a byte budget.
//! - [`store`]: one stream's store over both tiers, with the block index and the
//!   representative keys retrieval scans.
//! - [`disk`]: per-stream append-only segment files: checksummed records, recovery,
//!   retention, durability.
pub mod block;
pub mod disk;
pub mod quant;
pub mod ram;
pub mod store;

pub use block::{Block, BlockMeta, CompressedBlock};
pub use quant::Quant;
pub use ram::RamTier;
pub use store::{Appended, KvStore, StoreConfig, Tier};

//! RAM tier: compressed blocks under a byte budget with least-recently-used eviction
//! (`lru`), as ReKV keeps recently used blocks close at hand. Evicted blocks remain on
//! the disk tier; the store decides what eviction means when there is none.

use std::sync::Arc;

use lru::LruCache;

use super::block::CompressedBlock;
use crate::metrics as names;

/// Bookkeeping bytes per cached entry: the LRU node (key, value pointer, list links)
/// and its hash-table slot, so accounting tracks what the allocator really holds.
const ENTRY_OVERHEAD: usize = 96;

pub struct RamTier {
    stream: Arc<str>,
    cache: LruCache<u64, Arc<CompressedBlock>>,
    /// Sum of `entry_bytes` over cached blocks. Invariant: ≤ `budget` after every call.
    bytes: usize,
    budget: usize,
}

fn entry_bytes(block: &CompressedBlock) -> usize {
    block.heap_bytes() + ENTRY_OVERHEAD
}

impl RamTier {
    pub fn new(stream: Arc<str>, budget: usize) -> Self {
        Self {
            stream,
            cache: LruCache::unbounded(),
            bytes: 0,
            budget,
        }
    }

    /// Caches `block` as most recently used; returns the sequence numbers evicted to
    /// stay under budget (possibly `block` itself, if it alone exceeds the budget).
    pub fn insert(&mut self, block: Arc<CompressedBlock>) -> Vec<u64> {
        let seq = block.meta.seq;
        self.bytes += entry_bytes(&block);
        if let Some(old) = self.cache.put(seq, block) {
            self.bytes -= entry_bytes(&old);
        }
        let mut evicted = Vec::new();
        while self.bytes > self.budget {
            let Some((seq, old)) = self.cache.pop_lru() else {
                break;
            };
            self.bytes -= entry_bytes(&old);
            evicted.push(seq);
        }
        if !evicted.is_empty() {
            metrics::counter!(names::KV_EVICTIONS, "stream" => self.stream.to_string())
                .increment(evicted.len() as u64);
        }
        self.report();
        evicted
    }

    /// The block `seq`, marked most recently used.
    pub fn get(&mut self, seq: u64) -> Option<Arc<CompressedBlock>> {
        self.cache.get(&seq).cloned()
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.cache.contains(&seq)
    }

    pub fn remove(&mut self, seq: u64) {
        if let Some(old) = self.cache.pop(&seq) {
            self.bytes -= entry_bytes(&old);
            self.report();
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Cached sequence numbers, most recently used first.
    pub fn seqs(&self) -> Vec<u64> {
        self.cache.iter().map(|(k, _)| *k).collect()
    }

    fn report(&self) {
        let stream = self.stream.to_string();
        metrics::gauge!(names::KV_BYTES, "stream" => stream.clone(), "tier" => "ram")
            .set(self.bytes as f64);
        metrics::gauge!(names::KV_BLOCKS, "stream" => stream, "tier" => "ram")
            .set(self.cache.len() as f64);
    }
}

impl std::fmt::Debug for RamTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RamTier")
            .field("blocks", &self.cache.len())
            .field("bytes", &self.bytes)
            .field("budget", &self.budget)
            .finish()
    }
}

//! One stream's KV store: the owner of its RAM tier, its disk tier and the index of
//! every block it can serve (TGI's habit: one owner, others ask it). Blocks are
//! compressed once, kept in RAM under a byte budget, and appended to the disk tier;
//! a block evicted from RAM is reloaded from disk when a question needs it.
//!
//! Representative keys (what retrieval scans) of every block stay in RAM under their
//! own budget; past it, the oldest are read from disk when scanned.
//!
//! A disk that fills up first gives way to retention (whole oldest segments go); if
//! that frees nothing the store degrades to RAM-only, says so in a metric, and keeps
//! going — it never stops the daemon.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::block::{Block, BlockMeta, CompressedBlock};
use super::disk::{DiskConfig, DiskReader, DiskTier, RecordMeta, RecoveryReport};
use super::quant::Quant;
use super::ram::RamTier;
use crate::error::KvError;
use crate::metrics as names;

/// Settings of one stream's store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub quant: Quant,
    /// Budget of the RAM tier (compressed blocks).
    pub ram_budget_bytes: usize,
    /// Budget of representative keys held in RAM.
    pub rep_key_budget_bytes: usize,
    /// Drop a block whose representative keys have at least this cosine similarity with
    /// the previous stored block's (static cameras). `None` keeps every block.
    pub dedup_threshold: Option<f32>,
    /// The disk tier; `None` keeps blocks in RAM only.
    pub disk: Option<DiskConfig>,
}

/// Representative keys by block: (seq, [layers · kv_heads · head_dim]) in seq order.
pub type RepKeys = Vec<(u64, Arc<[f32]>)>;

/// Where a loaded block came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Ram,
    Disk,
}

impl Tier {
    fn label(self) -> &'static str {
        match self {
            Tier::Ram => "ram",
            Tier::Disk => "disk",
        }
    }
}

/// Outcome of [`KvStore::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// False when the block was dropped as a near-duplicate.
    pub stored: bool,
    /// The block's disk write is synced (it survives a crash).
    pub durable: bool,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    meta: BlockMeta,
    on_disk: bool,
}

/// One stream's blocks across tiers. Invariant: every `index` entry is in the RAM
/// tier, on disk, or both.
pub struct KvStore {
    stream: Arc<str>,
    config: StoreConfig,
    ram: RamTier,
    disk: Option<DiskTier>,
    reader: Option<DiskReader>,
    index: BTreeMap<u64, Entry>,
    /// (seq, representative keys) held in RAM, oldest first.
    rep_keys: VecDeque<(u64, Arc<[f32]>)>,
    rep_bytes: usize,
    last_stored: Option<Arc<CompressedBlock>>,
    /// The disk tier failed for good; blocks live in RAM only.
    degraded: bool,
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl KvStore {
    /// Opens the store of `stream`, recovering its disk tier under `dir` when configured.
    pub fn open(
        dir: &Path,
        stream: &str,
        config: StoreConfig,
    ) -> Result<(Self, Option<RecoveryReport>), KvError> {
        let stream: Arc<str> = Arc::from(stream);
        let mut store = Self {
            ram: RamTier::new(stream.clone(), config.ram_budget_bytes),
            stream,
            config,
            disk: None,
            reader: None,
            index: BTreeMap::new(),
            rep_keys: VecDeque::new(),
            rep_bytes: 0,
            last_stored: None,
            degraded: false,
        };
        let mut report = None;
        if let Some(disk_config) = store.config.disk {
            let (disk, recovered) = DiskTier::open(dir, &store.stream, disk_config)?;
            let reader = disk.reader();
            for meta in reader.metas() {
                // The record payload starts with the block's own header and rep keys. A
                // record that fails its checksums was counted by the disk tier; one that
                // passes them but does not decode as a block is reported to it here.
                let block = match reader.get(meta.seq) {
                    Ok(Some(rec)) => CompressedBlock::from_bytes(&rec)
                        .map(Some)
                        .map_err(|e| reader.undecodable(meta.seq, e)),
                    other => other.map(|_| None),
                };
                match block {
                    Ok(Some(block)) => {
                        store.index.insert(
                            block.meta.seq,
                            Entry {
                                meta: block.meta,
                                on_disk: true,
                            },
                        );
                        store.push_rep_keys(block.meta.seq, Arc::from(block.rep_keys.as_slice()));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(stream = %store.stream, seq = meta.seq, error = %e, "skipping unreadable block");
                    }
                }
            }
            store.disk = Some(disk);
            store.reader = Some(reader);
            report = Some(recovered);
        }
        Ok((store, report))
    }

    /// Compresses and stores `block`. Errors only for a block that cannot be stored at
    /// all (bad shape, NaN); disk trouble degrades instead.
    pub fn append(&mut self, block: &Block) -> Result<Appended, KvError> {
        if let Some((&last, _)) = self.index.last_key_value() {
            if block.meta.seq <= last {
                return Err(KvError::InvalidBlock(format!(
                    "block {} after block {last}: sequence numbers must increase",
                    block.meta.seq
                )));
            }
        }
        let compressed = Arc::new(CompressedBlock::compress(block, self.config.quant)?);
        if let (Some(threshold), Some(last)) = (self.config.dedup_threshold, &self.last_stored) {
            if compressed.similarity(last) >= threshold {
                metrics::counter!(names::KV_DEDUP_DROPS, "stream" => self.stream.to_string())
                    .increment(1);
                return Ok(Appended {
                    stored: false,
                    durable: false,
                });
            }
        }
        let ratio = block.fp16_bytes() as f64 / compressed.kv_bytes().max(1) as f64;
        metrics::gauge!(names::KV_COMPRESSION_RATIO, "stream" => self.stream.to_string())
            .set(ratio);
        let (on_disk, durable) = self.write_to_disk(&compressed);
        let seq = compressed.meta.seq;
        self.index.insert(
            seq,
            Entry {
                meta: compressed.meta,
                on_disk,
            },
        );
        self.push_rep_keys(seq, Arc::from(compressed.rep_keys.as_slice()));
        for evicted in self.ram.insert(compressed.clone()) {
            if let Some(entry) = self.index.get(&evicted) {
                if !entry.on_disk {
                    // RAM-only and evicted: the block is gone.
                    tracing::warn!(stream = %self.stream, seq = evicted, "block lost: evicted from RAM with no disk copy");
                    self.index.remove(&evicted);
                    self.drop_rep_keys(evicted);
                }
            }
        }
        self.last_stored = Some(compressed);
        self.report();
        Ok(Appended {
            stored: true,
            durable,
        })
    }

    /// Appends to disk; returns (on disk, durable). Handles a full disk.
    fn write_to_disk(&mut self, block: &CompressedBlock) -> (bool, bool) {
        if self.degraded {
            return (false, false);
        }
        let Some(disk) = self.disk.as_mut() else {
            return (false, false);
        };
        let meta = RecordMeta {
            seq: block.meta.seq,
            pts_ns: block.meta.pts.as_nanos() as u64,
            wall_ns: block.meta.wall_ns,
            kind: block.quant.code(),
            token_count: block.meta.tokens,
        };
        let payload = block.to_bytes();
        let mut freed_any = false;
        // After a failed write the tier rolls to a fresh segment: one plain retry first
        // (a per-file limit), then retention (a full filesystem), then RAM-only.
        let mut retried = false;
        loop {
            match disk.append(&meta, &payload) {
                // The disk tier counts its appends, write errors and deletions.
                Ok(done) => {
                    if freed_any {
                        self.forget_deleted_segments();
                    }
                    return (true, done.durable);
                }
                Err(e) => {
                    let full = matches!(e, KvError::DiskFull { .. });
                    if full && !retried {
                        retried = true;
                        continue;
                    }
                    let retry = full && disk.free_space_by_retention().unwrap_or(false);
                    if retry {
                        freed_any = true;
                        continue;
                    }
                    tracing::error!(stream = %self.stream, error = %e, "disk tier unusable; continuing RAM-only");
                    metrics::gauge!(names::KV_DEGRADED, "stream" => self.stream.to_string())
                        .set(1.0);
                    self.degraded = true;
                    if freed_any {
                        self.forget_deleted_segments();
                    }
                    return (false, false);
                }
            }
        }
    }

    /// After segments were deleted, drops index entries no tier holds any more.
    fn forget_deleted_segments(&mut self) {
        let Some(reader) = &self.reader else { return };
        let on_disk: std::collections::HashSet<u64> =
            reader.metas().iter().map(|m| m.seq).collect();
        let gone: Vec<u64> = self
            .index
            .iter_mut()
            .filter_map(|(seq, e)| {
                if e.on_disk && !on_disk.contains(seq) {
                    e.on_disk = false;
                    (!self.ram.contains(*seq)).then_some(*seq)
                } else {
                    None
                }
            })
            .collect();
        for seq in gone {
            self.index.remove(&seq);
            self.drop_rep_keys(seq);
        }
    }

    /// Applies the disk tier's retention (by bytes and age) now.
    pub fn enforce_retention(&mut self, now: SystemTime) -> Result<usize, KvError> {
        let Some(disk) = self.disk.as_mut() else {
            return Ok(0);
        };
        let deleted = disk.enforce_retention(unix_ns(now))?;
        if deleted > 0 {
            self.forget_deleted_segments();
            self.report();
        }
        Ok(deleted)
    }

    /// The block `seq`, from RAM or else from disk (then cached in RAM).
    pub fn get(&mut self, seq: u64) -> Result<(Arc<CompressedBlock>, Tier), KvError> {
        let start = Instant::now();
        let stream = self.stream.to_string();
        let (block, tier) = if let Some(b) = self.ram.get(seq) {
            (b, Tier::Ram)
        } else {
            let entry = self.index.get(&seq).ok_or(KvError::NotFound(seq))?;
            let reader = self
                .reader
                .as_ref()
                .filter(|_| entry.on_disk)
                .ok_or(KvError::NotFound(seq))?;
            let (_, payload) = reader.read_owned(seq)?.ok_or(KvError::NotFound(seq))?;
            let block = Arc::new(
                CompressedBlock::from_bytes(&payload).map_err(|e| reader.undecodable(seq, e))?,
            );
            self.ram.insert(block.clone());
            (block, Tier::Disk)
        };
        metrics::counter!(names::KV_RELOADS, "stream" => stream, "source" => tier.label())
            .increment(1);
        metrics::histogram!(names::KV_RELOAD_LATENCY, "source" => tier.label())
            .record(start.elapsed().as_secs_f64());
        Ok((block, tier))
    }

    /// The blocks `seqs` (in that order), as [`KvStore::get`] gives them, with the disk
    /// reads of RAM misses issued in parallel: retrieval loads its top-k together, and
    /// a cold disk serves several outstanding reads far faster than one at a time.
    pub fn get_many(&mut self, seqs: &[u64]) -> Result<Vec<(Arc<CompressedBlock>, Tier)>, KvError> {
        const READERS: usize = 16;
        let start = Instant::now();
        let mut out: Vec<Option<(Arc<CompressedBlock>, Tier)>> = seqs
            .iter()
            .map(|&seq| self.ram.get(seq).map(|b| (b, Tier::Ram)))
            .collect();
        let misses: Vec<(usize, u64)> = seqs
            .iter()
            .enumerate()
            .filter(|(i, _)| out[*i].is_none())
            .map(|(i, &seq)| (i, seq))
            .collect();
        for &(_, seq) in &misses {
            if !self.index.get(&seq).is_some_and(|e| e.on_disk) {
                return Err(KvError::NotFound(seq));
            }
        }
        if !misses.is_empty() {
            let reader = self.reader.clone().ok_or(KvError::NotFound(misses[0].1))?;
            let chunk = misses.len().div_ceil(READERS);
            let loaded: Vec<Result<(usize, CompressedBlock), KvError>> =
                std::thread::scope(|scope| {
                    let handles: Vec<_> = misses
                        .chunks(chunk)
                        .map(|part| {
                            let reader = reader.clone();
                            scope.spawn(move || {
                                part.iter()
                                    .map(|&(i, seq)| {
                                        let (_, payload) = reader
                                            .read_owned(seq)?
                                            .ok_or(KvError::NotFound(seq))?;
                                        let block = CompressedBlock::from_bytes(&payload)
                                            .map_err(|e| reader.undecodable(seq, e))?;
                                        Ok((i, block))
                                    })
                                    .collect::<Vec<_>>()
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .flat_map(|h| {
                            h.join().unwrap_or_else(|_| {
                                vec![Err(KvError::InvalidBlock("reader thread panicked".into()))]
                            })
                        })
                        .collect()
                });
            for result in loaded {
                let (i, block) = result?;
                let block = Arc::new(block);
                self.ram.insert(block.clone());
                out[i] = Some((block, Tier::Disk));
            }
        }
        let stream = self.stream.to_string();
        let disk = misses.len() as u64;
        metrics::counter!(names::KV_RELOADS, "stream" => stream.clone(), "source" => "disk")
            .increment(disk);
        metrics::counter!(names::KV_RELOADS, "stream" => stream, "source" => "ram")
            .increment(seqs.len() as u64 - disk);
        metrics::histogram!(names::KV_RELOAD_LATENCY, "source" => "batch")
            .record(start.elapsed().as_secs_f64());
        out.into_iter()
            .zip(seqs)
            .map(|(o, &seq)| o.ok_or(KvError::NotFound(seq)))
            .collect()
    }

    /// Metadata of every block the store can serve, in sequence order.
    pub fn metas(&self) -> impl Iterator<Item = &BlockMeta> {
        self.index.values().map(|e| &e.meta)
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Representative keys of every block, in sequence order: from RAM, or read from
    /// disk for blocks past the representative-key budget.
    pub fn rep_keys(&self) -> Result<RepKeys, KvError> {
        let mut out = Vec::with_capacity(self.index.len());
        self.visit_rep_keys(u64::MAX, |meta, keys| {
            out.push((meta.seq, Arc::from(keys)));
        })?;
        Ok(out)
    }

    /// Calls `f` with the metadata and representative keys of every block whose seq is
    /// below `before`, in sequence order, without collecting them: retrieval scores each
    /// block as it passes, so a question's scan allocates nothing per block.
    pub fn visit_rep_keys(
        &self,
        before: u64,
        mut f: impl FnMut(&BlockMeta, &[f32]),
    ) -> Result<(), KvError> {
        // Both are in seq order: one merge walk.
        let mut in_ram = self.rep_keys.iter().peekable();
        for (&seq, entry) in self.index.range(..before) {
            while in_ram.next_if(|(s, _)| *s < seq).is_some() {}
            match in_ram.next_if(|(s, _)| *s == seq) {
                Some((_, k)) => f(&entry.meta, k),
                None => {
                    let reader = self.reader.as_ref().ok_or(KvError::NotFound(seq))?;
                    let record = reader.get(seq)?.ok_or(KvError::NotFound(seq))?;
                    let block = CompressedBlock::from_bytes(&record)?;
                    f(&entry.meta, &block.rep_keys);
                }
            }
        }
        Ok(())
    }

    /// Syncs the disk tier now.
    pub fn sync(&mut self) -> Result<(), KvError> {
        match self.disk.as_mut() {
            Some(d) if !self.degraded => d.sync(),
            _ => Ok(()),
        }
    }

    /// Gives back mapped disk pages (see [`DiskReader::release_pages`]).
    pub fn release_disk_pages(&self) -> Result<(), KvError> {
        self.reader.as_ref().map_or(Ok(()), |r| r.release_pages())
    }

    pub fn ram(&self) -> &RamTier {
        &self.ram
    }

    pub fn disk_bytes(&self) -> u64 {
        self.disk.as_ref().map_or(0, |d| d.bytes())
    }

    /// Whether the store has given up its disk tier.
    pub fn is_degraded(&self) -> bool {
        self.degraded
    }

    pub fn rep_key_bytes(&self) -> usize {
        self.rep_bytes
    }

    fn push_rep_keys(&mut self, seq: u64, keys: Arc<[f32]>) {
        self.rep_bytes += keys.len() * 4;
        self.rep_keys.push_back((seq, keys));
        // Past the budget, the oldest keys are left to the disk tier (when there is one).
        while self.rep_bytes > self.config.rep_key_budget_bytes
            && self.reader.is_some()
            && !self.degraded
        {
            let Some((old, k)) = self.rep_keys.front().cloned() else {
                break;
            };
            if !self.index.get(&old).is_some_and(|e| e.on_disk) {
                break;
            }
            self.rep_keys.pop_front();
            self.rep_bytes -= k.len() * 4;
        }
    }

    fn drop_rep_keys(&mut self, seq: u64) {
        if let Some(i) = self.rep_keys.iter().position(|(s, _)| *s == seq) {
            if let Some((_, k)) = self.rep_keys.remove(i) {
                self.rep_bytes -= k.len() * 4;
            }
        }
    }

    fn report(&self) {
        let stream = self.stream.to_string();
        metrics::gauge!(names::KV_BYTES, "stream" => stream.clone(), "tier" => "rep_keys")
            .set(self.rep_bytes as f64);
        metrics::gauge!(names::KV_BLOCKS, "stream" => stream, "tier" => "all")
            .set(self.index.len() as f64);
    }
}

//! The KV store's disk tier: one directory per stream of append-only segment files
//! holding opaque payloads (serialised, compressed KV blocks), read back zero-copy
//! through memory maps: the disk layer ReKV's paper describes and its code lacks, built
//! like a write-ahead log (checksummed records, torn-tail truncation, resync past
//! damage).
//!
//! # API
//! - [`DiskTier::open`]`(dir, stream, cfg)` creates `dir` (the stream's own directory;
//!   `stream` is only the metric label), scans every segment and rebuilds the index,
//!   returning a [`RecoveryReport`]. One [`DiskTier`] per directory, owned by one
//!   thread: it is the only writer.
//! - [`DiskTier::append`] writes one record ([`RecordMeta`] + payload; seqs strictly
//!   increasing) and says in [`Appended`] whether it is durable yet; [`DiskTier::sync`]
//!   makes everything durable; [`DiskTier::durable_seq`] is the highest seq known synced.
//! - [`DiskTier::enforce_retention`] deletes whole oldest segments past
//!   [`DiskConfig::max_age`] / [`DiskConfig::max_bytes`];
//!   [`DiskTier::free_space_by_retention`] deletes the oldest one after a
//!   [`KvError::DiskFull`]. Neither ever deletes the segment being appended to.
//! - [`DiskTier::reader`] hands out [`DiskReader`]s (`Clone + Send + Sync`):
//!   [`DiskReader::get`] returns a [`Record`] that derefs to the payload inside an
//!   `Arc`'d map, its CRCs verified on every read; [`DiskReader::metas`] snapshots the
//!   index.
//!
//! # Files
//! Segments are named `seg-{number:010}-{first_seq:020}.vkv`; `number` grows by one per
//! segment and orders them (a fresh number never collides with any file present, even
//! one skipped at recovery). The layout is in [`format`]. A segment rolls when the next
//! record would take it past [`DiskConfig::segment_bytes`], and after any failed write.
//!
//! # Recovery
//! Every segment is scanned record by record. A record whose header verifies but whose
//! payload does not is skipped by its (verified) length. A record whose header does not
//! verify cannot be trusted for its length, so the scan resyncs: it searches forward,
//! 8-byte aligned position by position, for the next record whose header and payload
//! both verify and whose seq is above the last good one, and counts the skipped region
//! as one corrupt record (one region per single damage; a damage spanning several
//! records counts once). In the last segment, a bad region with no verified record
//! after it is a torn tail: the file is truncated there (and the bytes counted in
//! [`RecoveryReport::torn_bytes_truncated`]); in older segments it is corrupt. A segment
//! whose file header names another format version, or is not a segment header at all,
//! is skipped as a whole (never served, never written to, never deleted by recovery)
//! and its error listed in [`RecoveryReport::skipped`]. (One caveat of resyncing: a
//! payload that itself contained the bytes of a whole verified record with a higher
//! seq would be taken for one; payloads here are compressed KV blocks, never segment
//! bytes.)
//!
//! # Durability
//! A record is durable once its segment has been `fdatasync`ed after it was written.
//! [`SyncPolicy::EveryRecord`] syncs in every append; [`SyncPolicy::Interval`] syncs in
//! the append that finds the last sync older than the interval (and [`DiskTier::sync`]
//! or dropping the tier syncs the rest). A segment is synced before the next one is
//! created, so records are made durable in seq order and `durable_seq` covers every
//! record up to it. Segment creation and deletion also fsync the directory. Open syncs
//! the recovered last segment, so everything recovered is durable.
//!
//! # Failed writes (disk full)
//! A failed write or sync truncates the segment back to the end of its last record,
//! and the next append rolls to a new segment (with `RLIMIT_FSIZE`-style limits the old
//! one cannot grow; if the truncation failed, the tail is garbage that recovery will
//! count). Nothing is indexed before its write completed, so readers never see a partial
//! record; a failed append leaves no trace in the index.
//!
//! # Readers and deletion
//! Readers map each segment with `memmap2`; the segment being appended to grows, so a
//! reader remaps it when asked for a record past its current mapping. Retention unlinks
//! a segment file and drops it from the index; a [`Record`] already handed out keeps
//! its map (an unlinked file's mapping stays valid on Linux), and a lookup already under
//! way finishes through the map or file handle it holds.
//! The directory must belong to this process: segment files are never modified by
//! anyone else while mapped (the `memmap2` contract), other than the append-only growth
//! and tail truncations done here, which never touch an indexed byte.
//!
//! Metrics (tier `disk`): `KV_BYTES`, `KV_BLOCKS`, `KV_SPILLS`, `KV_CORRUPT_RECORDS`,
//! `KV_TORN_TAILS`, `KV_RETENTION_DELETES` (reason `age`, `bytes`, `disk_full`),
//! `KV_WRITE_ERRORS`.

pub mod format;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use memmap2::Mmap;

use crate::error::KvError;
use crate::metrics as names;
use format::{FileHeaderError, Parsed, FILE_HEADER_LEN, FORMAT_VERSION, MAX_PAYLOAD};

/// When appended records are made durable (synced to the device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every append syncs before it returns.
    EveryRecord,
    /// An append syncs when the last sync is older than this.
    Interval(Duration),
}

/// Disk tier settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskConfig {
    /// A segment rolls when the next record would take it past this many bytes (a
    /// record larger than this gets a segment of its own).
    pub segment_bytes: u64,
    /// Retention by size: oldest whole segments are deleted while the tier holds more.
    pub max_bytes: u64,
    /// Retention by age: a segment goes when its newest record's wall time is older.
    pub max_age: Option<Duration>,
    pub sync: SyncPolicy,
}

impl Default for DiskConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            max_bytes: 16 << 30,
            max_age: None,
            sync: SyncPolicy::Interval(Duration::from_secs(1)),
        }
    }
}

/// What the caller says about a record; stored in its header, opaque to this tier
/// except `seq` (the key, strictly increasing per stream) and `wall_ns` (retention).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    pub seq: u64,
    pub pts_ns: u64,
    /// Unix epoch nanoseconds.
    pub wall_ns: u64,
    /// Opaque (e.g. the quantisation).
    pub kind: u8,
    pub token_count: u32,
}

/// Outcome of [`DiskTier::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The record (and every one before it) was synced before `append` returned.
    pub durable: bool,
}

/// What [`DiskTier::open`] found.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    /// Segments recovered (skipped ones not included).
    pub segments: usize,
    /// Records recovered and indexed.
    pub records: usize,
    /// Bytes cut from the end of the last segment (a torn write).
    pub torn_bytes_truncated: u64,
    /// Damaged regions skipped, each counted as one record (never served).
    pub corrupt_records: usize,
    /// Segments skipped whole: [`KvError::VersionMismatch`] or [`KvError::Corrupt`].
    pub skipped: Vec<KvError>,
}

/// A record's place in the shared index.
#[derive(Debug, Clone, Copy)]
struct Loc {
    meta: RecordMeta,
    /// Segment number.
    seg: u64,
    /// Offset of the record header in the segment.
    offset: usize,
    payload_len: usize,
}

/// A segment as readers see it.
struct SegMap {
    path: Arc<Path>,
    /// Covers at least every indexed record of the segment.
    map: Arc<Mmap>,
    /// Set while the segment may grow (the active one): readers remap through it.
    file: Option<Arc<File>>,
}

/// State shared between the writer and the readers.
#[derive(Default)]
struct Shared {
    /// Every servable record, seq strictly increasing; segments in number order.
    index: Vec<Loc>,
    segments: BTreeMap<u64, SegMap>,
}

fn read_lock(s: &RwLock<Shared>) -> RwLockReadGuard<'_, Shared> {
    // Nothing panics while holding the lock; a poisoned lock still holds a valid index.
    s.read().unwrap_or_else(|e| e.into_inner())
}

fn write_lock(s: &RwLock<Shared>) -> RwLockWriteGuard<'_, Shared> {
    s.write().unwrap_or_else(|e| e.into_inner())
}

/// The writer's view of a segment.
#[derive(Debug)]
struct SegInfo {
    path: PathBuf,
    /// File length up to the end of the last good record (= the append offset).
    bytes: u64,
    records: usize,
    newest_wall_ns: Option<u64>,
}

/// The segment being appended to.
struct Active {
    number: u64,
    file: File,
    /// Written since the last sync.
    dirty: bool,
    /// A write failed: the next append starts a new segment.
    needs_roll: bool,
    /// Truncating back after a failed write failed too: bytes past `SegInfo::bytes` are
    /// garbage.
    poisoned: bool,
}

/// The disk tier of one stream: the single writer.
pub struct DiskTier {
    dir: PathBuf,
    stream: Arc<str>,
    cfg: DiskConfig,
    /// Every live segment by number (oldest first), the active one included.
    segs: BTreeMap<u64, SegInfo>,
    active: Option<Active>,
    /// Above every segment number present in the directory.
    next_number: u64,
    last_seq: Option<u64>,
    durable_seq: Option<u64>,
    last_sync: Instant,
    /// Sum of `segs[..].bytes`.
    bytes: u64,
    /// Sum of `segs[..].records`.
    records: usize,
    shared: Arc<RwLock<Shared>>,
    /// Reused encoding buffer.
    buf: Vec<u8>,
}

fn segment_name(number: u64, first_seq: u64) -> String {
    format!("seg-{number:010}-{first_seq:020}.vkv")
}

/// The segment number of a file name, if it is a segment name.
fn parse_segment_name(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("seg-")?.strip_suffix(".vkv")?;
    let (number, first) = rest.split_once('-')?;
    first.parse::<u64>().ok()?;
    number.parse().ok()
}

fn sync_dir(dir: &Path) -> Result<(), KvError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| KvError::from_io(dir, e))
}

/// Maps `file`.
fn map_file(file: &File, path: &Path) -> Result<Mmap, KvError> {
    // SAFETY: segment files belong to this process (module docs): nothing truncates or
    // rewrites bytes below the indexed end of a segment while it is mapped.
    unsafe { Mmap::map(file) }.map_err(|e| KvError::from_io(path, e))
}

/// A segment recovered by [`DiskTier::open`].
struct Recovered {
    file: File,
    map: Mmap,
    bytes: u64,
    records: Vec<format::Found>,
}

impl DiskTier {
    /// Opens (creating if needed) the stream directory `dir` and recovers it (module
    /// docs). Fails only on I/O errors; damage is reported, not fatal.
    pub fn open(
        dir: &Path,
        stream: &str,
        cfg: DiskConfig,
    ) -> Result<(DiskTier, RecoveryReport), KvError> {
        fs::create_dir_all(dir).map_err(|e| KvError::from_io(dir, e))?;
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| KvError::from_io(dir, e))? {
            let entry = entry.map_err(|e| KvError::from_io(dir, e))?;
            let name = entry.file_name();
            match name.to_str().and_then(parse_segment_name) {
                Some(n) => found.push((n, entry.path())),
                None => tracing::debug!(stream, file = ?name, "not a segment, ignored"),
            }
        }
        found.sort();
        let next_number = found.last().map_or(1, |(n, _)| n + 1);

        let mut tier = DiskTier {
            dir: dir.to_owned(),
            stream: Arc::from(stream),
            cfg,
            segs: BTreeMap::new(),
            active: None,
            next_number,
            last_seq: None,
            durable_seq: None,
            last_sync: Instant::now(),
            bytes: 0,
            records: 0,
            shared: Arc::default(),
            buf: Vec::new(),
        };
        let mut report = RecoveryReport::default();
        let last = found.len().saturating_sub(1);
        for (i, (number, path)) in found.into_iter().enumerate() {
            let is_last = i == last;
            let Some(rec) = tier.recover_segment(&path, is_last, &mut report)? else {
                continue;
            };
            let records = rec.records.len();
            let newest_wall_ns = rec.records.iter().map(|f| f.meta.wall_ns).max();
            let mut shared = write_lock(&tier.shared);
            for f in &rec.records {
                shared.index.push(Loc {
                    meta: f.meta,
                    seg: number,
                    offset: f.offset,
                    payload_len: f.payload_len,
                });
                tier.last_seq = Some(f.meta.seq);
            }
            let path: Arc<Path> = Arc::from(path.as_path());
            let reader_file = if is_last {
                Some(Arc::new(
                    rec.file
                        .try_clone()
                        .map_err(|e| KvError::from_io(&*path, e))?,
                ))
            } else {
                None
            };
            shared.segments.insert(
                number,
                SegMap {
                    path: path.clone(),
                    map: Arc::new(rec.map),
                    file: reader_file,
                },
            );
            drop(shared);
            tier.segs.insert(
                number,
                SegInfo {
                    path: path.to_path_buf(),
                    bytes: rec.bytes,
                    records,
                    newest_wall_ns,
                },
            );
            tier.bytes += rec.bytes;
            tier.records += records;
            report.segments += 1;
            report.records += records;
            if is_last {
                // Whatever the previous process wrote may still be only in the page cache.
                rec.file
                    .sync_data()
                    .map_err(|e| KvError::from_io(&*path, e))?;
                tier.active = Some(Active {
                    number,
                    file: rec.file,
                    dirty: false,
                    needs_roll: false,
                    poisoned: false,
                });
            }
        }
        tier.durable_seq = tier.last_seq;
        if report.corrupt_records > 0 {
            metrics::counter!(names::KV_CORRUPT_RECORDS, "stream" => stream.to_string())
                .increment(report.corrupt_records as u64);
        }
        if report.torn_bytes_truncated > 0 {
            metrics::counter!(names::KV_TORN_TAILS, "stream" => stream.to_string()).increment(1);
        }
        tier.publish_gauges();
        tracing::info!(
            stream,
            segments = report.segments,
            records = report.records,
            torn_bytes = report.torn_bytes_truncated,
            corrupt = report.corrupt_records,
            skipped = report.skipped.len(),
            "disk tier recovered"
        );
        Ok((tier, report))
    }

    /// Opens, checks and scans one segment; `None` when it is skipped (listed in the
    /// report). Truncates a torn tail of the last segment.
    fn recover_segment(
        &self,
        path: &Path,
        is_last: bool,
        report: &mut RecoveryReport,
    ) -> Result<Option<Recovered>, KvError> {
        let io = |e| KvError::from_io(path, e);
        let file = OpenOptions::new()
            .read(true)
            .write(is_last)
            .open(path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut head = [0u8; FILE_HEADER_LEN];
        let short = len < FILE_HEADER_LEN as u64;
        if !short {
            file.read_exact_at(&mut head, 0).map_err(io)?;
        }
        if is_last && (short || head == [0u8; FILE_HEADER_LEN]) {
            // Created but its header never (fully) reached the disk: a torn creation.
            file.set_len(0).map_err(io)?;
            file.write_all_at(&format::encode_file_header(), 0)
                .map_err(io)?;
            file.sync_data().map_err(io)?;
            report.torn_bytes_truncated += len;
            tracing::warn!(stream = %self.stream, path = %path.display(), bytes = len, "torn segment header rewritten");
            let map = map_file(&file, path)?;
            return Ok(Some(Recovered {
                file,
                map,
                bytes: FILE_HEADER_LEN as u64,
                records: Vec::new(),
            }));
        }
        if let Err(e) = format::check_file_header(&head[..len.min(FILE_HEADER_LEN as u64) as usize])
        {
            let err = match e {
                FileHeaderError::Version(found) => KvError::VersionMismatch {
                    path: path.to_owned(),
                    found,
                    supported: FORMAT_VERSION,
                },
                FileHeaderError::Short => corrupt(path, 0, "file shorter than a segment header"),
                FileHeaderError::Magic => corrupt(path, 0, "not a segment file"),
                FileHeaderError::Invalid(reason) => corrupt(path, 0, reason),
            };
            tracing::warn!(stream = %self.stream, error = %err, "segment skipped, not served");
            report.skipped.push(err);
            return Ok(None);
        }
        let mut map = map_file(&file, path)?;
        let scan = format::scan(&map, is_last, self.last_seq);
        report.corrupt_records += scan.corrupt;
        if scan.corrupt > 0 {
            tracing::warn!(stream = %self.stream, path = %path.display(), regions = scan.corrupt, "corrupt records skipped");
        }
        let mut bytes = len;
        if let Some(at) = scan.torn_at {
            drop(map);
            file.set_len(at as u64).map_err(io)?;
            file.sync_data().map_err(io)?;
            report.torn_bytes_truncated += len - at as u64;
            tracing::warn!(stream = %self.stream, path = %path.display(), bytes = len - at as u64, "torn tail truncated");
            bytes = at as u64;
            map = map_file(&file, path)?;
        }
        Ok(Some(Recovered {
            file,
            map,
            bytes,
            records: scan.records,
        }))
    }

    /// Appends one record. `meta.seq` must exceed every seq appended before; the
    /// payload is at most [`format::MAX_PAYLOAD`] bytes. On error nothing is indexed
    /// and the segment is left ending at its last good record (module docs).
    pub fn append(&mut self, meta: &RecordMeta, payload: &[u8]) -> Result<Appended, KvError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(KvError::InvalidBlock(format!(
                "payload of {} bytes over the disk tier's maximum of {MAX_PAYLOAD}",
                payload.len()
            )));
        }
        if let Some(last) = self.last_seq.filter(|&l| meta.seq <= l) {
            return Err(KvError::InvalidBlock(format!(
                "seq {} not above the last appended seq {last}",
                meta.seq
            )));
        }
        let rec_len = format::record_len(payload.len()) as u64;
        if let Err(e) = self.ensure_active(rec_len, meta.seq) {
            self.count_write_error(&e);
            return Err(e);
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        format::encode_record(meta, payload, &mut buf);
        let result = self.write_record(&buf, meta, payload.len());
        self.buf = buf;
        match result {
            Ok(a) => {
                metrics::counter!(names::KV_SPILLS, "stream" => self.stream.to_string())
                    .increment(1);
                self.publish_gauges();
                Ok(a)
            }
            Err(e) => {
                self.count_write_error(&e);
                self.publish_gauges();
                Err(e)
            }
        }
    }

    /// Writes (and maybe syncs) an encoded record at the end of the active segment,
    /// then indexes it.
    fn write_record(
        &mut self,
        buf: &[u8],
        meta: &RecordMeta,
        payload_len: usize,
    ) -> Result<Appended, KvError> {
        let Some(active) = self.active.as_mut() else {
            return Err(KvError::InvalidBlock("no active segment".into()));
        };
        let Some(info) = self.segs.get(&active.number) else {
            return Err(KvError::InvalidBlock("active segment not tracked".into()));
        };
        let offset = info.bytes;
        let path = info.path.clone();
        let sync_now = match self.cfg.sync {
            SyncPolicy::EveryRecord => true,
            SyncPolicy::Interval(d) => self.last_sync.elapsed() >= d,
        };
        let written = active.file.write_all_at(buf, offset).and_then(|()| {
            if sync_now {
                active.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // Leave the segment ending at its last good record; if even that fails, the
            // tail is garbage and the segment must not be appended to again.
            active.needs_roll = true;
            if let Err(te) = active.file.set_len(offset) {
                active.poisoned = true;
                tracing::error!(stream = %self.stream, path = %path.display(), error = %te, "cannot truncate a failed write; rolling to a new segment");
            }
            return Err(KvError::from_io(path, e));
        }
        active.dirty = !sync_now;
        let number = active.number;
        let rec_len = buf.len() as u64;
        if let Some(info) = self.segs.get_mut(&number) {
            info.bytes += rec_len;
            info.records += 1;
            info.newest_wall_ns = Some(
                info.newest_wall_ns
                    .map_or(meta.wall_ns, |w| w.max(meta.wall_ns)),
            );
        }
        self.bytes += rec_len;
        self.records += 1;
        self.last_seq = Some(meta.seq);
        if sync_now {
            self.durable_seq = Some(meta.seq);
            self.last_sync = Instant::now();
        }
        write_lock(&self.shared).index.push(Loc {
            meta: *meta,
            seg: number,
            offset: offset as usize,
            payload_len,
        });
        Ok(Appended { durable: sync_now })
    }

    /// Makes sure there is an active segment with room for `rec_len` more bytes,
    /// rolling (module docs) when needed.
    fn ensure_active(&mut self, rec_len: u64, first_seq: u64) -> Result<(), KvError> {
        let roll = match &mut self.active {
            None => true,
            Some(a) => {
                let info = self.segs.get(&a.number);
                let (bytes, records) = info.map_or((0, 0), |i| (i.bytes, i.records));
                if records == 0 {
                    if a.poisoned && a.file.set_len(bytes).is_ok() {
                        a.poisoned = false;
                    }
                    a.poisoned
                } else {
                    a.needs_roll || a.poisoned || bytes + rec_len > self.cfg.segment_bytes
                }
            }
        };
        if roll {
            self.roll(first_seq)?;
        }
        Ok(())
    }

    /// Seals the active segment (synced first) and creates a new one.
    fn roll(&mut self, first_seq: u64) -> Result<(), KvError> {
        if let Some(old) = self.active.take() {
            let info = self.segs.get(&old.number);
            let empty = info.is_none_or(|i| i.records == 0);
            if old.dirty {
                if let Err(e) = old.file.sync_data() {
                    let path = info.map(|i| i.path.clone()).unwrap_or_default();
                    self.active = Some(old);
                    return Err(KvError::from_io(path, e));
                }
                self.durable_seq = self.last_seq;
                self.last_sync = Instant::now();
            }
            if empty {
                // Holds no record (its header only, or garbage that could not be cut).
                if let Some(info) = self.segs.remove(&old.number) {
                    self.bytes -= info.bytes;
                    let _ = fs::remove_file(&info.path);
                }
                write_lock(&self.shared).segments.remove(&old.number);
            } else {
                let mut shared = write_lock(&self.shared);
                if let Some(seg) = shared.segments.get_mut(&old.number) {
                    if let Ok(map) = map_file(&old.file, &seg.path) {
                        seg.map = Arc::new(map);
                        seg.file = None;
                    }
                }
            }
        }
        let number = self.next_number;
        self.next_number += 1;
        let path = self.dir.join(segment_name(number, first_seq));
        let io = |e| KvError::from_io(&path, e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io)?;
        let created = file
            .write_all_at(&format::encode_file_header(), 0)
            .and_then(|()| file.sync_data())
            .map_err(io)
            .and_then(|()| sync_dir(&self.dir))
            .and_then(|()| map_file(&file, &path))
            .and_then(|map| {
                let reader_file = file.try_clone().map_err(io)?;
                Ok((map, reader_file))
            });
        let (map, reader_file) = match created {
            Ok(x) => x,
            Err(e) => {
                let _ = fs::remove_file(&path);
                return Err(e);
            }
        };
        write_lock(&self.shared).segments.insert(
            number,
            SegMap {
                path: Arc::from(path.as_path()),
                map: Arc::new(map),
                file: Some(Arc::new(reader_file)),
            },
        );
        self.segs.insert(
            number,
            SegInfo {
                path,
                bytes: FILE_HEADER_LEN as u64,
                records: 0,
                newest_wall_ns: None,
            },
        );
        self.bytes += FILE_HEADER_LEN as u64;
        self.active = Some(Active {
            number,
            file,
            dirty: false,
            needs_roll: false,
            poisoned: false,
        });
        Ok(())
    }

    /// Syncs everything appended so far.
    pub fn sync(&mut self) -> Result<(), KvError> {
        if let Some(a) = self.active.as_mut().filter(|a| a.dirty) {
            a.file.sync_data().map_err(|e| {
                let path = self.segs.get(&a.number).map(|i| i.path.clone());
                KvError::from_io(path.unwrap_or_default(), e)
            })?;
            a.dirty = false;
        }
        self.durable_seq = self.last_seq;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Highest seq known synced (every record up to it is durable).
    pub fn durable_seq(&self) -> Option<u64> {
        self.durable_seq
    }

    /// Highest seq stored.
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// Deletes whole oldest segments (never the active one): those whose newest record
    /// is older than `max_age` at `now_wall_ns`, then more while the tier holds over
    /// `max_bytes`. Returns how many were deleted.
    pub fn enforce_retention(&mut self, now_wall_ns: u64) -> Result<usize, KvError> {
        let max_age_ns = self
            .cfg
            .max_age
            .map(|a| u64::try_from(a.as_nanos()).unwrap_or(u64::MAX));
        let mut deleted = 0;
        while let Some((number, info)) = self.oldest_sealed() {
            let expired = max_age_ns.is_some_and(|max| {
                info.newest_wall_ns
                    .is_none_or(|w| now_wall_ns.saturating_sub(w) > max)
            });
            let reason = if expired {
                "age"
            } else if self.bytes > self.cfg.max_bytes {
                "bytes"
            } else {
                break;
            };
            self.delete_segment(number, reason)?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// After a [`KvError::DiskFull`]: deletes the oldest segment (never the active one).
    /// `false` when there is none to delete.
    pub fn free_space_by_retention(&mut self) -> Result<bool, KvError> {
        match self.oldest_sealed() {
            Some((number, _)) => {
                self.delete_segment(number, "disk_full")?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn oldest_sealed(&self) -> Option<(u64, &SegInfo)> {
        let active = self.active.as_ref().map(|a| a.number);
        self.segs
            .iter()
            .next()
            .filter(|(n, _)| Some(**n) != active)
            .map(|(n, i)| (*n, i))
    }

    fn delete_segment(&mut self, number: u64, reason: &'static str) -> Result<(), KvError> {
        let Some(info) = self.segs.get(&number) else {
            return Ok(());
        };
        match fs::remove_file(&info.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(KvError::from_io(&info.path, e)),
        }
        if let Some(info) = self.segs.remove(&number) {
            self.bytes -= info.bytes;
            self.records -= info.records;
            tracing::info!(stream = %self.stream, path = %info.path.display(), reason, records = info.records, "segment deleted");
        }
        {
            let mut shared = write_lock(&self.shared);
            shared.segments.remove(&number);
            shared.index.retain(|l| l.seg != number);
        }
        metrics::counter!(names::KV_RETENTION_DELETES, "stream" => self.stream.to_string(), "reason" => reason)
            .increment(1);
        self.publish_gauges();
        sync_dir(&self.dir)
    }

    /// A handle for readers.
    pub fn reader(&self) -> DiskReader {
        DiskReader {
            shared: self.shared.clone(),
            stream: self.stream.clone(),
        }
    }

    /// Bytes of all live segment files (headers included).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Records stored.
    pub fn len(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Live segments (the active one included).
    pub fn segments(&self) -> usize {
        self.segs.len()
    }

    fn publish_gauges(&self) {
        let stream = self.stream.to_string();
        metrics::gauge!(names::KV_BYTES, "stream" => stream.clone(), "tier" => "disk")
            .set(self.bytes as f64);
        metrics::gauge!(names::KV_BLOCKS, "stream" => stream, "tier" => "disk")
            .set(self.records as f64);
    }

    fn count_write_error(&self, e: &KvError) {
        tracing::warn!(stream = %self.stream, error = %e, "disk tier write failed");
        metrics::counter!(names::KV_WRITE_ERRORS, "stream" => self.stream.to_string(), "error_type" => e.error_type())
            .increment(1);
    }
}

impl Drop for DiskTier {
    fn drop(&mut self) {
        if let Some(a) = self.active.as_ref().filter(|a| a.dirty) {
            if let Err(e) = a.file.sync_data() {
                tracing::warn!(stream = %self.stream, error = %e, "final disk tier sync failed");
            }
        }
    }
}

fn corrupt(path: &Path, offset: u64, reason: &str) -> KvError {
    KvError::Corrupt {
        path: path.to_owned(),
        offset,
        reason: reason.to_owned(),
    }
}

/// Read access to a stream's disk tier; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct DiskReader {
    shared: Arc<RwLock<Shared>>,
    stream: Arc<str>,
}

/// A record's payload, zero-copy inside the segment's map (which it keeps alive).
pub struct Record {
    map: Arc<Mmap>,
    /// `start..start + len` lies inside `map` (checked when the record was verified).
    start: usize,
    len: usize,
    meta: RecordMeta,
}

impl Record {
    pub fn meta(&self) -> &RecordMeta {
        &self.meta
    }

    pub fn payload(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }
}

impl std::ops::Deref for Record {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.payload()
    }
}

impl AsRef<[u8]> for Record {
    fn as_ref(&self) -> &[u8] {
        self.payload()
    }
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("meta", &self.meta)
            .field("len", &self.len)
            .finish()
    }
}

/// A record's index entry with its segment's path, map and (for the active segment)
/// file, taken under the read lock.
struct Located {
    loc: Loc,
    path: Arc<Path>,
    map: Arc<Mmap>,
    file: Option<Arc<File>>,
}

impl DiskReader {
    /// Where record `seq` lives; `None` if not stored.
    fn locate(&self, seq: u64) -> Option<Located> {
        let shared = read_lock(&self.shared);
        let i = shared
            .index
            .binary_search_by_key(&seq, |l| l.meta.seq)
            .ok()?;
        let loc = shared.index[i];
        let seg = shared.segments.get(&loc.seg)?;
        Some(Located {
            loc,
            path: seg.path.clone(),
            map: seg.map.clone(),
            file: seg.file.clone(),
        })
    }

    /// Verifies the record at `pos` of `buf` against its index entry `loc`; the payload
    /// length on success, else the counted corruption error (read at `loc` of `path`).
    fn verify(&self, buf: &[u8], pos: usize, loc: &Loc, path: &Path) -> Result<usize, KvError> {
        let reason = match format::parse_at(buf, pos) {
            Parsed::Ok {
                meta, payload_len, ..
            } if meta == loc.meta && payload_len == loc.payload_len => return Ok(payload_len),
            Parsed::Ok { .. } => "record header differs from the index",
            Parsed::BadPayload { reason, .. } | Parsed::BadHeader(reason) => reason,
            Parsed::Truncated => "record cut short",
        };
        Err(self.corrupt_read(path, loc.offset as u64, reason))
    }

    /// The record `seq`, verified (both CRCs, and that its header matches the index);
    /// `None` if not stored (never written, deleted by retention, or lost to damage).
    /// A record that fails verification is an error, counted, never returned.
    pub fn get(&self, seq: u64) -> Result<Option<Record>, KvError> {
        let Some(Located {
            loc,
            path,
            map,
            file,
        }) = self.locate(seq)
        else {
            return Ok(None);
        };
        let end = loc.offset + format::record_len(loc.payload_len);
        let map = if end <= map.len() {
            map
        } else {
            self.remap(&loc, &path, file.as_deref(), end)?
        };
        let len = self.verify(&map, loc.offset, &loc, &path)?;
        Ok(Some(Record {
            map,
            start: loc.offset + format::RECORD_HEADER_LEN,
            len,
            meta: loc.meta,
        }))
    }

    /// The record `seq` as an owned payload, read with one positioned read and verified
    /// like [`DiskReader::get`]. For cold data one large read is several times faster
    /// than faulting a mapping in page by page; callers that copy the payload anyway
    /// (block reloads) use this, scans that touch a few bytes use `get`.
    pub fn read_owned(&self, seq: u64) -> Result<Option<(RecordMeta, Vec<u8>)>, KvError> {
        let Some(Located { loc, path, .. }) = self.locate(seq) else {
            return Ok(None);
        };
        let file = match File::open(&*path) {
            Ok(f) => f,
            // Deleted by retention since the lookup: the mapping still holds it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(self.get(seq)?.map(|r| (r.meta, r.payload().to_vec())));
            }
            Err(e) => return Err(KvError::from_io(&*path, e)),
        };
        let mut buf = vec![0u8; format::record_len(loc.payload_len)];
        {
            use std::os::unix::fs::FileExt;
            if let Err(e) = file.read_exact_at(&mut buf, loc.offset as u64) {
                return match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => {
                        Err(self.corrupt_read(&path, loc.offset as u64, "record cut short"))
                    }
                    _ => Err(KvError::from_io(&*path, e)),
                };
            }
        }
        let len = self.verify(&buf, 0, &loc, &path)?;
        buf.drain(..format::RECORD_HEADER_LEN);
        buf.truncate(len);
        Ok(Some((loc.meta, buf)))
    }

    /// Maps the segment again (it grew since it was mapped) and shares the new map.
    fn remap(
        &self,
        loc: &Loc,
        path: &Path,
        file: Option<&File>,
        end: usize,
    ) -> Result<Arc<Mmap>, KvError> {
        let mut shared = write_lock(&self.shared);
        if let Some(seg) = shared.segments.get(&loc.seg) {
            if seg.map.len() >= end {
                return Ok(seg.map.clone());
            }
        }
        let Some(file) = file else {
            return Err(self.corrupt_read(
                path,
                loc.offset as u64,
                "record past the end of its sealed segment",
            ));
        };
        let map = Arc::new(map_file(file, path)?);
        if map.len() < end {
            return Err(self.corrupt_read(
                path,
                loc.offset as u64,
                "record past the end of its segment file",
            ));
        }
        if let Some(seg) = shared.segments.get_mut(&loc.seg) {
            seg.map = map.clone();
        }
        Ok(map)
    }

    /// Reports that record `seq` passed its checksums but its payload could not be
    /// decoded (`error`, returned as it is): such a record is corrupt too and counted
    /// here, the one owner of the corrupt-record count, so no reader counts it twice.
    pub fn undecodable(&self, seq: u64, error: KvError) -> KvError {
        metrics::counter!(names::KV_CORRUPT_RECORDS, "stream" => self.stream.to_string())
            .increment(1);
        tracing::error!(stream = %self.stream, seq, error = %error, "undecodable record not served");
        error
    }

    fn corrupt_read(&self, path: &Path, offset: u64, reason: &str) -> KvError {
        metrics::counter!(names::KV_CORRUPT_RECORDS, "stream" => self.stream.to_string())
            .increment(1);
        let err = corrupt(path, offset, reason);
        tracing::error!(stream = %self.stream, error = %err, "corrupt record not served");
        err
    }

    /// Drops this process's mapped pages of every segment; they are read again from
    /// the file on next access. Keeps resident memory to what is in use (mapped pages
    /// count in RSS) and lets a benchmark start from a cold cache.
    pub fn release_pages(&self) -> Result<(), KvError> {
        let shared = read_lock(&self.shared);
        for seg in shared.segments.values() {
            // SAFETY: a read-only, file-backed shared mapping: discarded pages are
            // re-read from the file, so no reader can observe lost data.
            unsafe { seg.map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) }
                .map_err(|e| KvError::from_io(&*seg.path, e))?;
        }
        Ok(())
    }

    /// Snapshot of the index, in seq order.
    pub fn metas(&self) -> Vec<RecordMeta> {
        read_lock(&self.shared)
            .index
            .iter()
            .map(|l| l.meta)
            .collect()
    }

    /// Number of records stored.
    pub fn len(&self) -> usize {
        read_lock(&self.shared).index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

//! The KV disk tier on real files: round trips across segment rolls and reopenings;
//! crash safety against a child process killed with SIGKILL mid-append (plus injected
//! torn tails); detection of every single-byte flip in record headers and sampled
//! payload bytes; disk full (a child under `RLIMIT_FSIZE`); retention by bytes and age
//! with readers holding records of deleted segments; version mismatches; and readers
//! racing a writer.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vstreamd::error::KvError;
use vstreamd::kv::disk::format::{record_len, FILE_HEADER_LEN, RECORD_HEADER_LEN};
use vstreamd::kv::disk::{DiskConfig, DiskTier, RecordMeta, RecoveryReport, SyncPolicy};

const CRASH_DIR_ENV: &str = "VSTREAMD_TEST_KV_CRASH_DIR";
const FULL_DIR_ENV: &str = "VSTREAMD_TEST_KV_FULL_DIR";
const BASE_WALL_NS: u64 = 1_700_000_000_000_000_000;
const SEC: u64 = 1_000_000_000;

fn meta(seq: u64) -> RecordMeta {
    RecordMeta {
        seq,
        pts_ns: seq * 33_333_333,
        wall_ns: BASE_WALL_NS + seq * SEC,
        kind: (seq % 4) as u8,
        token_count: (seq * 7 % 200) as u32,
    }
}

/// Deterministic payload of `seq`, 0..=max_len bytes.
fn payload(seq: u64, max_len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xA5);
    let len = rng.usize(0..=max_len);
    let mut p = vec![0u8; len];
    rng.fill(&mut p);
    p
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<vstreamd::kv::disk::DiskReader>();
    check::<vstreamd::kv::disk::Record>();
    fn send<T: Send>() {}
    send::<DiskTier>();
}

fn config(segment_bytes: u64, sync: SyncPolicy) -> DiskConfig {
    DiskConfig {
        segment_bytes,
        max_bytes: u64::MAX,
        max_age: None,
        sync,
    }
}

const LAZY: SyncPolicy = SyncPolicy::Interval(Duration::from_secs(3600));

/// Segment files of `dir`, in name (= segment number) order.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "vkv"))
        .collect();
    v.sort();
    v
}

fn assert_clean(report: &RecoveryReport) {
    assert_eq!(report.torn_bytes_truncated, 0, "{report:?}");
    assert_eq!(report.corrupt_records, 0, "{report:?}");
    assert!(report.skipped.is_empty(), "{report:?}");
}

/// Every seq in `seqs` is served with its payload and meta.
fn assert_served(tier: &DiskTier, seqs: impl IntoIterator<Item = u64>, max_len: usize) {
    let reader = tier.reader();
    for seq in seqs {
        let rec = reader
            .get(seq)
            .unwrap_or_else(|e| panic!("seq {seq}: {e}"))
            .unwrap_or_else(|| panic!("seq {seq} missing"));
        assert_eq!(*rec.meta(), meta(seq));
        assert!(
            &*rec == payload(seq, max_len).as_slice(),
            "seq {seq} payload"
        );
    }
}

#[test]
fn round_trip_across_segments_and_reopen() {
    const MAX: usize = 64 << 10;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("stream");
    let cfg = config(256 << 10, LAZY);
    let seqs: Vec<u64> = (1..=160).map(|i| i * 3).collect();

    let (mut tier, report) = DiskTier::open(&dir, "rt", cfg).unwrap();
    assert_clean(&report);
    assert_eq!(report.records, 0);
    for &seq in &seqs {
        let a = tier.append(&meta(seq), &payload(seq, MAX)).unwrap();
        assert!(!a.durable, "interval of an hour: not synced in append");
    }
    assert!(matches!(
        tier.append(&meta(seqs[5]), b"x"),
        Err(KvError::InvalidBlock(_))
    ));
    assert_eq!(tier.len(), seqs.len());
    assert!(tier.segments() > 5, "segments rolled: {}", tier.segments());
    assert_served(&tier, seqs.iter().copied(), MAX);
    assert!(tier.reader().get(4).unwrap().is_none());
    tier.sync().unwrap();
    assert_eq!(tier.durable_seq(), seqs.last().copied());
    let segments = tier.segments();
    let bytes = tier.bytes();
    let on_disk: u64 = segment_files(&dir)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(bytes, on_disk);
    drop(tier);

    let (mut tier, report) = DiskTier::open(&dir, "rt", cfg).unwrap();
    assert_clean(&report);
    assert_eq!(report.records, seqs.len());
    assert_eq!(report.segments, segments);
    assert_eq!(segment_files(&dir).len(), segments);
    assert_eq!(tier.bytes(), bytes);
    assert_eq!(tier.durable_seq(), seqs.last().copied());
    let metas = tier.reader().metas();
    assert_eq!(metas, seqs.iter().map(|&s| meta(s)).collect::<Vec<_>>());
    assert_served(&tier, seqs.iter().copied(), MAX);

    // Appending continues where it stopped.
    tier.append(&meta(1000), &payload(1000, MAX)).unwrap();
    drop(tier);
    let (tier, report) = DiskTier::open(&dir, "rt", cfg).unwrap();
    assert_clean(&report);
    assert_eq!(report.records, seqs.len() + 1);
    assert_served(&tier, seqs.iter().copied().chain([1000]), MAX);
}

#[test]
fn sync_policies_report_durability() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let (mut tier, _) = DiskTier::open(&dir, "sync", config(1 << 20, LAZY)).unwrap();
    assert_eq!(tier.durable_seq(), None);
    assert!(!tier.append(&meta(1), b"one").unwrap().durable);
    assert!(!tier.append(&meta(2), b"two").unwrap().durable);
    assert_eq!(tier.durable_seq(), None);
    tier.sync().unwrap();
    assert_eq!(tier.durable_seq(), Some(2));
    drop(tier);
    // Everything recovered is durable; an interval of zero syncs in every append.
    let every = SyncPolicy::Interval(Duration::ZERO);
    let (mut tier, _) = DiskTier::open(&dir, "sync", config(1 << 20, every)).unwrap();
    assert_eq!(tier.durable_seq(), Some(2));
    assert!(tier.append(&meta(3), b"three").unwrap().durable);
    assert_eq!(tier.durable_seq(), Some(3));
    drop(tier);
    let (mut tier, _) =
        DiskTier::open(&dir, "sync", config(1 << 20, SyncPolicy::EveryRecord)).unwrap();
    assert!(tier.append(&meta(4), b"four").unwrap().durable);
    assert_eq!(tier.durable_seq(), Some(4));
    assert_eq!(tier.len(), 4);
}

// ---------------------------------------------------------------------------------
// Crash safety: a child appends with EveryRecord and is killed with SIGKILL.

const CRASH_MAX: usize = 6000;

/// The appender: runs only when re-executed by `crash_recovery_sigkill_children`.
#[test]
#[ignore = "helper process for the crash test, started by it"]
fn kv_crash_child() {
    let Ok(dir) = std::env::var(CRASH_DIR_ENV) else {
        return;
    };
    let (mut tier, _) = DiskTier::open(
        Path::new(&dir),
        "crash",
        config(32 << 10, SyncPolicy::EveryRecord),
    )
    .unwrap();
    let first = tier.last_seq().map_or(1, |s| s + 1);
    let mut out = std::io::stdout().lock();
    writeln!(out, "\nstarted {first}").unwrap();
    for seq in first..first + 100_000 {
        let a = tier.append(&meta(seq), &payload(seq, CRASH_MAX)).unwrap();
        assert!(a.durable);
        assert_eq!(tier.durable_seq(), Some(seq));
        writeln!(out, "durable {seq}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn crash_recovery_sigkill_children() {
    const ITERATIONS: usize = 24;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("stream");
    let cfg = config(32 << 10, SyncPolicy::EveryRecord);
    let mut rng = fastrand::Rng::with_seed(0x5EED_C0DE);
    let mut durable: BTreeSet<u64> = BTreeSet::new();
    let mut injected_total = 0;
    let started = Instant::now();
    for it in 0..ITERATIONS {
        let kill_after = rng.usize(1..=40);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "kv_crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DIR_ENV, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut seen = 0;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            // libtest prints "test kv_crash_child ... " on the same line first.
            if let Some(seq) = line.split("durable ").nth(1) {
                durable.insert(seq.trim().parse().unwrap());
                seen += 1;
                if seen == kill_after {
                    child.kill().unwrap();
                    break;
                }
            }
        }
        let status = child.wait().unwrap();
        assert_eq!(seen, kill_after, "child {it} exited early: {status}");

        // Sometimes add a torn tail the way a crash could leave one. One fault at a time:
        // the kill's own damage is recovered first, since a real writer never follows a
        // torn record with more bytes or a new segment (stacking the two made this test
        // fail in about one run in four).
        if it % 5 != 0 {
            drop(DiskTier::open(&dir, "crash", cfg).unwrap());
        }
        let files = segment_files(&dir);
        let last = files.last().unwrap().clone();
        let injected = match it % 5 {
            1 => {
                let mut garbage = vec![0u8; rng.usize(1..300)];
                rng.fill(&mut garbage);
                append_bytes(&last, &garbage)
            }
            2 => {
                // A prefix of a real record (its seq is old, its payload cut short).
                let bytes = fs::read(&last).unwrap();
                let avail = bytes.len() - FILE_HEADER_LEN;
                if avail == 0 {
                    append_bytes(&last, &[0x42; 40])
                } else {
                    let n = rng.usize(1..avail.min(RECORD_HEADER_LEN + 500));
                    append_bytes(&last, &bytes[FILE_HEADER_LEN..FILE_HEADER_LEN + n])
                }
            }
            3 => append_bytes(&last, &vec![0u8; 8 * rng.usize(1..40)]),
            4 => {
                // A segment whose creation was cut short (empty or half a header).
                let name = last.file_name().unwrap().to_str().unwrap();
                let number: u64 = name[4..14].parse().unwrap();
                let next = dir.join(format!("seg-{:010}-{:020}.vkv", number + 1, 0));
                let len = rng.usize(0..FILE_HEADER_LEN);
                fs::write(&next, vec![0x56u8; len]).unwrap();
                len as u64
            }
            _ => 0,
        };
        injected_total += injected;

        let (tier, report) = DiskTier::open(&dir, "crash", cfg).unwrap();
        assert_eq!(report.corrupt_records, 0, "iteration {it}: {report:?}");
        assert!(report.skipped.is_empty(), "iteration {it}: {report:?}");
        assert!(
            report.torn_bytes_truncated >= injected,
            "iteration {it}: injected {injected}, {report:?}"
        );
        let seqs: Vec<u64> = tier.reader().metas().iter().map(|m| m.seq).collect();
        // The child continues after the last recovered seq: no gaps.
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
        let missing: Vec<_> = durable.iter().filter(|s| !seqs.contains(s)).collect();
        assert!(missing.is_empty(), "durable seqs lost: {missing:?}");
        assert_served(&tier, seqs.iter().copied(), CRASH_MAX);
        let records = report.records;
        drop(tier);

        // The torn tail is gone for good.
        let (tier, report) = DiskTier::open(&dir, "crash", cfg).unwrap();
        assert_clean(&report);
        assert_eq!(report.records, records);
        drop(tier);
    }
    assert!(injected_total > 0);
    eprintln!(
        "crash test: {ITERATIONS} kills, {} durable records, {:?}",
        durable.len(),
        started.elapsed()
    );
}

fn append_bytes(path: &Path, bytes: &[u8]) -> u64 {
    let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
    bytes.len() as u64
}

// ---------------------------------------------------------------------------------
// Corruption: single-byte flips.

/// A record's position in the original files.
#[derive(Debug, Clone, Copy)]
struct Pos {
    file: usize,
    offset: usize,
    payload_len: usize,
    seq: u64,
}

/// Walks the documented layout of intact segment files.
fn record_positions(files: &[(PathBuf, Vec<u8>)]) -> Vec<Pos> {
    let mut out = Vec::new();
    for (i, (_, bytes)) in files.iter().enumerate() {
        let mut off = FILE_HEADER_LEN;
        while off < bytes.len() {
            let len = u32::from_le_bytes(bytes[off + 12..off + 16].try_into().unwrap()) as usize;
            let seq = u64::from_le_bytes(bytes[off + 16..off + 24].try_into().unwrap());
            out.push(Pos {
                file: i,
                offset: off,
                payload_len: len,
                seq,
            });
            off += record_len(len);
        }
        assert_eq!(off, bytes.len());
    }
    out
}

fn write_copy(dir: &Path, files: &[(PathBuf, Vec<u8>)], flip: Option<(usize, usize, u8)>) {
    if dir.exists() {
        fs::remove_dir_all(dir).unwrap();
    }
    fs::create_dir_all(dir).unwrap();
    for (i, (name, bytes)) in files.iter().enumerate() {
        let mut b = bytes.clone();
        if let Some((file, at, mask)) = flip {
            if file == i {
                b[at] ^= mask;
            }
        }
        fs::write(dir.join(name), b).unwrap();
    }
}

#[test]
fn single_byte_flips_are_never_served() {
    const MAX: usize = 1500;
    let tmp = tempfile::tempdir().unwrap();
    let orig = tmp.path().join("orig");
    let cfg = config(8 << 10, LAZY);
    let n = 30u64;
    {
        let (mut tier, _) = DiskTier::open(&orig, "flip", cfg).unwrap();
        for seq in 1..=n {
            // Make sure a few payloads need padding and one is empty.
            let p = if seq == 4 {
                Vec::new()
            } else {
                payload(seq, MAX)
            };
            tier.append(&meta(seq), &p).unwrap();
        }
    }
    let files: Vec<(PathBuf, Vec<u8>)> = segment_files(&orig)
        .into_iter()
        .map(|p| (PathBuf::from(p.file_name().unwrap()), fs::read(&p).unwrap()))
        .collect();
    assert!(
        files.len() >= 3,
        "need several segments, got {}",
        files.len()
    );
    let positions = record_positions(&files);
    assert_eq!(positions.len(), n as usize);
    let expected = |seq: u64| {
        if seq == 4 {
            Vec::new()
        } else {
            payload(seq, MAX)
        }
    };

    let last_file = files.len() - 1;
    let in_file =
        |f: usize| -> Vec<Pos> { positions.iter().copied().filter(|p| p.file == f).collect() };
    let mut targets = vec![
        in_file(0)[0],
        *in_file(0).last().unwrap(),
        in_file(1)[1],
        in_file(last_file)[0],
        *in_file(last_file).last().unwrap(),
    ];
    targets.push(positions.iter().copied().find(|p| p.seq == 4).unwrap());
    let mut rng = fastrand::Rng::with_seed(7);
    let masks = [0x01u8, 0x80, 0xFF, 0x5A, 0x10];
    let work = tmp.path().join("work");
    let mut cases = 0;
    let started = Instant::now();
    for t in &targets {
        let mut at: Vec<usize> = (0..RECORD_HEADER_LEN).collect();
        let body = record_len(t.payload_len) - RECORD_HEADER_LEN;
        if t.payload_len > 0 {
            at.extend([RECORD_HEADER_LEN, RECORD_HEADER_LEN + t.payload_len - 1]);
            at.extend((0..8).map(|_| RECORD_HEADER_LEN + rng.usize(0..t.payload_len)));
        }
        if body > t.payload_len {
            at.push(RECORD_HEADER_LEN + body - 1); // padding
        }
        let is_final = t.file == last_file && t.seq == positions.last().unwrap().seq;
        for (k, &rel) in at.iter().enumerate() {
            let mask = masks[k % masks.len()];
            write_copy(&work, &files, Some((t.file, t.offset + rel, mask)));
            let (tier, report) = DiskTier::open(&work, "flip", cfg).unwrap();
            let ctx = format!("seq {} byte {rel} mask {mask:#x}: {report:?}", t.seq);
            assert!(report.skipped.is_empty(), "{ctx}");
            if is_final {
                // The tail of the last segment: a torn tail, truncated.
                assert_eq!(report.corrupt_records, 0, "{ctx}");
                assert_eq!(
                    report.torn_bytes_truncated,
                    record_len(t.payload_len) as u64,
                    "{ctx}"
                );
            } else {
                assert_eq!(report.corrupt_records, 1, "{ctx}");
                assert_eq!(report.torn_bytes_truncated, 0, "{ctx}");
            }
            assert_eq!(report.records, n as usize - 1, "{ctx}");
            let reader = tier.reader();
            assert!(reader.get(t.seq).unwrap().is_none(), "{ctx}");
            for seq in (1..=n).filter(|&s| s != t.seq) {
                let rec = reader
                    .get(seq)
                    .unwrap()
                    .unwrap_or_else(|| panic!("{ctx}: {seq} missing"));
                assert!(*rec == *expected(seq), "{ctx}: {seq} differs");
            }
            cases += 1;
        }
    }

    // A flip in a segment's file header: the whole segment is skipped, the rest served.
    let first_seqs: Vec<u64> = in_file(0).iter().map(|p| p.seq).collect();
    for at in 0..FILE_HEADER_LEN {
        write_copy(&work, &files, Some((0, at, 0x04)));
        let (tier, report) = DiskTier::open(&work, "flip", cfg).unwrap();
        assert_eq!(report.skipped.len(), 1, "byte {at}: {report:?}");
        if (4..8).contains(&at) {
            let flipped = 1u32 ^ (0x04 << (8 * (at - 4)));
            assert!(
                matches!(report.skipped[0], KvError::VersionMismatch { found, .. } if found == flipped),
                "byte {at}: {report:?}"
            );
        } else {
            assert!(matches!(report.skipped[0], KvError::Corrupt { .. }));
        }
        let reader = tier.reader();
        for seq in 1..=n {
            let got = reader.get(seq).unwrap();
            assert_eq!(
                got.is_some(),
                !first_seqs.contains(&seq),
                "byte {at} seq {seq}"
            );
        }
        cases += 1;
    }
    eprintln!("flip test: {cases} cases in {:?}", started.elapsed());
}

#[test]
fn corruption_after_open_is_an_error_on_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let (mut tier, _) = DiskTier::open(&dir, "rd", config(4 << 10, LAZY)).unwrap();
    for seq in 1..=12 {
        tier.append(
            &meta(seq),
            &payload(seq, 900).iter().map(|b| b | 1).collect::<Vec<_>>(),
        )
        .unwrap();
    }
    let files: Vec<(PathBuf, Vec<u8>)> = segment_files(&dir)
        .into_iter()
        .map(|p| (p.clone(), fs::read(&p).unwrap()))
        .collect();
    let positions = record_positions(&files);
    let reader = tier.reader();
    // Flip a payload byte of one record and a header byte of another, under the maps.
    for (p, rel) in [(positions[1], RECORD_HEADER_LEN), (positions[7], 20)] {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&files[p.file].0)
            .unwrap();
        let byte = files[p.file].1[p.offset + rel];
        f.write_all_at(&[byte ^ 0x20], (p.offset + rel) as u64)
            .unwrap();
        match reader.get(p.seq) {
            Err(KvError::Corrupt { offset, .. }) => assert_eq!(offset, p.offset as u64),
            other => panic!("seq {}: {other:?}", p.seq),
        }
    }
    assert!(reader.get(positions[2].seq).unwrap().is_some());
}

// ---------------------------------------------------------------------------------
// Disk full: a child under RLIMIT_FSIZE.

const FSIZE_LIMIT: u64 = 48 << 10;
const FULL_PAYLOAD: usize = 3000;

/// Runs only when re-executed by `disk_full_child_process`.
#[test]
#[ignore = "helper process for the disk-full test, started by it"]
fn kv_disk_full_child() {
    let Ok(dir) = std::env::var(FULL_DIR_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    // SAFETY: plain libc calls on this single-threaded test process, before any file
    // is written; ignoring SIGXFSZ turns "file too large" into EFBIG from write(2).
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let lim = libc::rlimit {
            rlim_cur: FSIZE_LIMIT,
            rlim_max: FSIZE_LIMIT,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }
    let cfg = config(1 << 20, LAZY);
    let (mut tier, _) = DiskTier::open(&dir, "full", cfg).unwrap();
    let body = |seq: u64| vec![(seq % 251) as u8; FULL_PAYLOAD];
    let (mut full, mut freed) = (0, 0);
    let last = 120u64;
    for seq in 1..=last {
        match tier.append(&meta(seq), &body(seq)) {
            Ok(_) => {}
            Err(KvError::DiskFull { .. }) => {
                full += 1;
                // Nothing partial was left behind: every file ends at a record boundary.
                for p in segment_files(&dir) {
                    let len = fs::metadata(&p).unwrap().len() as usize;
                    assert!(len as u64 <= FSIZE_LIMIT);
                    assert_eq!(
                        (len - FILE_HEADER_LEN) % record_len(FULL_PAYLOAD),
                        0,
                        "{p:?}"
                    );
                }
                let before = tier.segments();
                if tier.free_space_by_retention().unwrap() {
                    freed += 1;
                    assert_eq!(tier.segments(), before - 1);
                }
                tier.append(&meta(seq), &body(seq))
                    .expect("append after a disk-full error rolls to a new segment");
            }
            Err(e) => panic!("seq {seq}: unexpected {e}"),
        }
    }
    tier.sync().unwrap();
    assert!(full >= 3, "disk full {full} times");
    assert!(freed >= 2, "freed {freed} times");
    let metas = tier.reader().metas();
    let first = metas[0].seq;
    assert_eq!(
        metas.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (first..=last).collect::<Vec<_>>()
    );
    let check = |tier: &DiskTier| {
        let reader = tier.reader();
        for seq in first..=last {
            let rec = reader.get(seq).unwrap().unwrap();
            assert!(*rec == *body(seq));
        }
    };
    check(&tier);
    let len = tier.len();
    drop(tier);
    let (tier, report) = DiskTier::open(&dir, "full", cfg).unwrap();
    assert_clean(&report);
    assert_eq!(report.records, len);
    check(&tier);
    println!("\nkv-disk-full-child ok: full {full}, freed {freed}, kept {len}");
}

#[test]
fn disk_full_child_process() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "kv_disk_full_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(FULL_DIR_ENV, tmp.path().join("s"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("kv-disk-full-child ok"),
        "child did not run: {stdout}"
    );
}

// ---------------------------------------------------------------------------------
// Retention.

#[test]
fn retention_by_bytes_keeps_held_records_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let mut cfg = config(4096, LAZY);
    cfg.max_bytes = 10_000;
    let (mut tier, _) = DiskTier::open(&dir, "ret", cfg).unwrap();
    let body = |seq: u64| vec![seq as u8; 1000];
    for seq in 1..=30 {
        tier.append(&meta(seq), &body(seq)).unwrap();
    }
    // 3 records (3184 bytes) per segment.
    assert_eq!(tier.segments(), 10);
    let reader = tier.reader();
    let held = reader.get(1).unwrap().unwrap();
    let held_late = reader.get(8).unwrap().unwrap();
    let deleted = tier.enforce_retention(0).unwrap();
    assert_eq!(deleted, 7);
    assert!(tier.bytes() <= cfg.max_bytes);
    assert_eq!(tier.segments(), 3);
    assert_eq!(segment_files(&dir).len(), 3);
    assert_eq!(tier.len(), 9);
    assert_eq!(reader.metas().first().map(|m| m.seq), Some(22));
    assert!(reader.get(1).unwrap().is_none());
    assert!(reader.get(21).unwrap().is_none());
    // Records handed out before the deletion still read their bytes.
    assert!(*held == *body(1));
    assert!(*held_late == *body(8));
    assert_eq!(held.meta().seq, 1);
    // Nothing more to delete; appending and reading go on.
    assert_eq!(tier.enforce_retention(0).unwrap(), 0);
    tier.append(&meta(31), &body(31)).unwrap();
    assert!(*reader.get(31).unwrap().unwrap() == *body(31));
    drop(tier);
    let (tier, report) = DiskTier::open(&dir, "ret", cfg).unwrap();
    assert_clean(&report);
    assert_eq!(tier.reader().metas().first().map(|m| m.seq), Some(22));
    assert_eq!(tier.len(), 10);
}

#[test]
fn retention_by_age_never_deletes_the_active_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let mut cfg = config(4096, LAZY);
    cfg.max_age = Some(Duration::from_secs(10));
    let (mut tier, _) = DiskTier::open(&dir, "age", cfg).unwrap();
    for seq in 1..=30 {
        tier.append(&meta(seq), &[seq as u8; 1000]).unwrap();
    }
    let reader = tier.reader();
    // Segment k holds seqs 3k+1..=3k+3, newest wall BASE + (3k+3) s. At BASE + 30 s,
    // segments whose newest record is over 10 s old (seq < 20) go.
    let deleted = tier.enforce_retention(BASE_WALL_NS + 30 * SEC).unwrap();
    assert_eq!(deleted, 6);
    assert_eq!(reader.metas().first().map(|m| m.seq), Some(19));
    assert_eq!(tier.enforce_retention(BASE_WALL_NS + 30 * SEC).unwrap(), 0);
    // Far in the future everything is old, but the active segment stays.
    let deleted = tier
        .enforce_retention(BASE_WALL_NS + 1_000_000 * SEC)
        .unwrap();
    assert_eq!(deleted, 3);
    assert_eq!(tier.segments(), 1);
    assert_eq!(
        reader.metas().iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![28, 29, 30]
    );
    assert!(!tier.free_space_by_retention().unwrap());
    assert!(reader.get(30).unwrap().is_some());
}

// ---------------------------------------------------------------------------------
// Version mismatch.

#[test]
fn version_mismatch_is_reported_and_never_served() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let cfg = config(4096, LAZY);
    {
        let (mut tier, _) = DiskTier::open(&dir, "ver", cfg).unwrap();
        for seq in 1..=9 {
            tier.append(&meta(seq), &[seq as u8; 1000]).unwrap();
        }
        assert_eq!(tier.segments(), 3);
    }
    let bump = |path: &Path| {
        let f = fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(&2u32.to_le_bytes(), 4).unwrap();
    };
    let files = segment_files(&dir);
    bump(&files[0]);
    let (tier, report) = DiskTier::open(&dir, "ver", cfg).unwrap();
    assert_eq!(report.skipped.len(), 1);
    assert!(matches!(
        &report.skipped[0],
        KvError::VersionMismatch { path, found: 2, supported: 1 } if *path == files[0]
    ));
    assert_eq!(report.records, 6);
    let reader = tier.reader();
    for seq in 1..=9 {
        assert_eq!(reader.get(seq).unwrap().is_some(), seq > 3, "seq {seq}");
    }
    drop(tier);

    // The last segment of another version: skipped, untouched, appends go elsewhere.
    bump(&files[2]);
    let foreign = fs::read(&files[2]).unwrap();
    let (mut tier, report) = DiskTier::open(&dir, "ver", cfg).unwrap();
    assert_eq!(report.skipped.len(), 2);
    assert_eq!(report.records, 3);
    assert!(tier.reader().get(8).unwrap().is_none());
    tier.append(&meta(100), &[7; 10]).unwrap();
    drop(tier);
    assert_eq!(fs::read(&files[2]).unwrap(), foreign);
    assert_eq!(segment_files(&dir).len(), 4);
    let (tier, report) = DiskTier::open(&dir, "ver", cfg).unwrap();
    assert_eq!(report.skipped.len(), 2);
    assert_eq!(
        tier.reader()
            .metas()
            .iter()
            .map(|m| m.seq)
            .collect::<Vec<_>>(),
        vec![4, 5, 6, 100]
    );
}

// ---------------------------------------------------------------------------------
// Concurrency.

#[test]
fn readers_race_a_writer() {
    const MAX: usize = 8 << 10;
    const N: u64 = 1500;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let (mut tier, _) = DiskTier::open(
        &dir,
        "race",
        config(64 << 10, SyncPolicy::Interval(Duration::from_millis(5))),
    )
    .unwrap();
    let reader = tier.reader();
    let published = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let writer = {
        let (published, done) = (published.clone(), done.clone());
        std::thread::spawn(move || {
            for seq in 1..=N {
                tier.append(&meta(seq), &payload(seq, MAX)).unwrap();
                published.store(seq, Ordering::Release);
            }
            done.store(true, Ordering::Release);
            tier
        })
    };
    let readers: Vec<_> = (0..2u64)
        .map(|r| {
            let (reader, published, done) = (reader.clone(), published.clone(), done.clone());
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(r);
                let mut reads = 0u64;
                while !done.load(Ordering::Acquire) {
                    let p = published.load(Ordering::Acquire);
                    if p == 0 {
                        std::thread::yield_now();
                        continue;
                    }
                    // Mostly the newest records (those force remaps), some old ones.
                    let seq = if rng.bool() { p } else { rng.u64(1..=p) };
                    let rec = reader
                        .get(seq)
                        .unwrap_or_else(|e| panic!("seq {seq}: {e}"))
                        .unwrap_or_else(|| panic!("seq {seq} missing"));
                    assert!(*rec == *payload(seq, MAX), "seq {seq} payload");
                    if reads % 64 == 0 {
                        let metas = reader.metas();
                        assert!(metas.len() as u64 >= p);
                        assert!(metas.windows(2).all(|w| w[0].seq < w[1].seq));
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let tier = writer.join().unwrap();
    let reads: Vec<u64> = readers.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(reads.iter().all(|&r| r > 0), "reads {reads:?}");
    assert_served(&tier, 1..=N, MAX);
    eprintln!("race: reads {reads:?} in {:?}", started.elapsed());
}

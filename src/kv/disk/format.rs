//! On-disk layout of a disk-tier segment file, and the recovery scan over it.
//!
//! All integers are little-endian. A segment is a file header followed by records, each
//! record starting at a multiple of [`ALIGN`] bytes from the start of the file (so a
//! payload is 8-byte aligned in a mapping, and the resync search only has to look at
//! aligned positions).
//!
//! File header ([`FILE_HEADER_LEN`] bytes):
//!
//! | bytes  | field                                                    |
//! |--------|----------------------------------------------------------|
//! | 0..4   | magic `VKVS`                                             |
//! | 4..8   | format version (u32, [`FORMAT_VERSION`])                 |
//! | 8..12  | record header length (u32, [`RECORD_HEADER_LEN`])        |
//! | 12..16 | CRC32C of bytes 0..12                                    |
//!
//! Record header ([`RECORD_HEADER_LEN`] bytes), then the payload, then zero padding to
//! the next multiple of [`ALIGN`]:
//!
//! | bytes  | field                                                    |
//! |--------|----------------------------------------------------------|
//! | 0..4   | magic `VKVR`                                             |
//! | 4..8   | format version (u32)                                     |
//! | 8..12  | header length (u32, [`RECORD_HEADER_LEN`])               |
//! | 12..16 | payload length (u32, at most [`MAX_PAYLOAD`])            |
//! | 16..24 | seq (u64)                                                |
//! | 24..32 | pts_ns (u64)                                             |
//! | 32..40 | wall_ns (u64)                                            |
//! | 40..44 | token_count (u32)                                        |
//! | 44     | kind (u8)                                                |
//! | 45..48 | reserved, zero                                           |
//! | 48..52 | payload CRC32C: payload and padding                      |
//! | 52..56 | header CRC32C: bytes 0..52 (every field, the length and the payload CRC) |
//!
//! Two CRCs rather than one: the header CRC is checked before the length is trusted,
//! so a flipped length can never make a reader walk into the wrong bytes, and a record
//! whose header verifies but whose payload does not can be skipped exactly (its length
//! is known good). CRC32C detects every error burst of up to 32 bits, so every
//! single-byte flip in a header (52 bytes covered plus the CRC itself) or a payload is
//! detected, not just with high probability.

use super::RecordMeta;

/// Format version written by this build, in the file header and in every record.
pub const FORMAT_VERSION: u32 = 1;
/// Magic at the start of a segment file.
pub const FILE_MAGIC: [u8; 4] = *b"VKVS";
/// Magic at the start of every record.
pub const RECORD_MAGIC: [u8; 4] = *b"VKVR";
/// Length of the segment file header.
pub const FILE_HEADER_LEN: usize = 16;
/// Length of a record header.
pub const RECORD_HEADER_LEN: usize = 56;
/// Records start (and end) at multiples of this.
pub const ALIGN: usize = 8;
/// Largest payload accepted (and believed when reading a length field).
pub const MAX_PAYLOAD: usize = 256 << 20;

/// Offset of the payload CRC in a record header.
const PAYLOAD_CRC_AT: usize = 48;
/// Offset of the header CRC in a record header; the header CRC covers `0..HEADER_CRC_AT`.
const HEADER_CRC_AT: usize = 52;

/// `len` rounded up to [`ALIGN`].
pub const fn padded(len: usize) -> usize {
    len.div_ceil(ALIGN) * ALIGN
}

/// Bytes a record with a payload of `payload_len` takes in a segment.
pub const fn record_len(payload_len: usize) -> usize {
    RECORD_HEADER_LEN + padded(payload_len)
}

const ZEROS: [u8; ALIGN] = [0; ALIGN];

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// The segment file header this build writes.
pub(crate) fn encode_file_header() -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[0..4].copy_from_slice(&FILE_MAGIC);
    h[4..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[8..12].copy_from_slice(&(RECORD_HEADER_LEN as u32).to_le_bytes());
    let crc = crc32c::crc32c(&h[0..12]);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Why a segment file header is unusable.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FileHeaderError {
    /// Shorter than a header.
    Short,
    /// Not a segment file.
    Magic,
    /// Another format version (its header layout may differ: nothing else is checked).
    Version(u32),
    /// Magic and version fine, but the header fails its CRC or names another layout.
    Invalid(&'static str),
}

/// Checks a segment file header: magic, then version, then CRC and layout.
pub(crate) fn check_file_header(buf: &[u8]) -> Result<(), FileHeaderError> {
    if buf.len() < FILE_HEADER_LEN {
        return Err(FileHeaderError::Short);
    }
    if buf[0..4] != FILE_MAGIC {
        return Err(FileHeaderError::Magic);
    }
    let version = u32_at(buf, 4);
    if version != FORMAT_VERSION {
        return Err(FileHeaderError::Version(version));
    }
    if crc32c::crc32c(&buf[0..12]) != u32_at(buf, 12) {
        return Err(FileHeaderError::Invalid("file header checksum mismatch"));
    }
    if u32_at(buf, 8) as usize != RECORD_HEADER_LEN {
        return Err(FileHeaderError::Invalid("unsupported record header length"));
    }
    Ok(())
}

/// Appends the encoded record (header, payload, padding) to `out`.
/// The caller has checked `payload.len() <= MAX_PAYLOAD`.
pub(crate) fn encode_record(meta: &RecordMeta, payload: &[u8], out: &mut Vec<u8>) {
    let pad = padded(payload.len()) - payload.len();
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[0..4].copy_from_slice(&RECORD_MAGIC);
    h[4..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[8..12].copy_from_slice(&(RECORD_HEADER_LEN as u32).to_le_bytes());
    h[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[16..24].copy_from_slice(&meta.seq.to_le_bytes());
    h[24..32].copy_from_slice(&meta.pts_ns.to_le_bytes());
    h[32..40].copy_from_slice(&meta.wall_ns.to_le_bytes());
    h[40..44].copy_from_slice(&meta.token_count.to_le_bytes());
    h[44] = meta.kind;
    let payload_crc = crc32c::crc32c_append(crc32c::crc32c(payload), &ZEROS[..pad]);
    h[PAYLOAD_CRC_AT..HEADER_CRC_AT].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&h[..HEADER_CRC_AT]);
    h[HEADER_CRC_AT..].copy_from_slice(&header_crc.to_le_bytes());
    out.reserve(RECORD_HEADER_LEN + payload.len() + pad);
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    out.extend_from_slice(&ZEROS[..pad]);
}

/// What is at a position of a segment.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A whole, verified record; its payload is `pos + RECORD_HEADER_LEN ..` for
    /// `payload_len` bytes; the next record starts at `next`.
    Ok {
        meta: RecordMeta,
        payload_len: usize,
        next: usize,
    },
    /// The header verifies (so `next` is trustworthy) but the payload does not.
    BadPayload { next: usize, reason: &'static str },
    /// The header does not verify: nothing in it, the length included, can be trusted.
    BadHeader(&'static str),
    /// The file ends inside the header, or inside the payload of a verified header.
    Truncated,
}

/// Parses and verifies the record at `pos` of `buf` (a whole segment, file header
/// included). Never reads outside `buf`.
pub(crate) fn parse_at(buf: &[u8], pos: usize) -> Parsed {
    let Some(h) = buf
        .get(pos..)
        .and_then(|rest| rest.get(..RECORD_HEADER_LEN))
    else {
        return Parsed::Truncated;
    };
    if h[0..4] != RECORD_MAGIC {
        return Parsed::BadHeader("bad record magic");
    }
    if crc32c::crc32c(&h[..HEADER_CRC_AT]) != u32_at(h, HEADER_CRC_AT) {
        return Parsed::BadHeader("record header checksum mismatch");
    }
    // The header is what a writer wrote; the fields below are still checked, because a
    // writer of another build (or another program) may have written it.
    if u32_at(h, 4) != FORMAT_VERSION {
        return Parsed::BadHeader("record of another format version");
    }
    if u32_at(h, 8) as usize != RECORD_HEADER_LEN || h[45..48] != [0, 0, 0] {
        return Parsed::BadHeader("record header of another layout");
    }
    let payload_len = u32_at(h, 12) as usize;
    if payload_len > MAX_PAYLOAD {
        return Parsed::BadHeader("payload length over the maximum");
    }
    let start = pos + RECORD_HEADER_LEN;
    let next = pos + record_len(payload_len);
    let Some(body) = buf.get(start..next) else {
        return Parsed::Truncated;
    };
    if crc32c::crc32c(body) != u32_at(h, PAYLOAD_CRC_AT) {
        return Parsed::BadPayload {
            next,
            reason: "payload checksum mismatch",
        };
    }
    let meta = RecordMeta {
        seq: u64_at(h, 16),
        pts_ns: u64_at(h, 24),
        wall_ns: u64_at(h, 32),
        token_count: u32_at(h, 40),
        kind: h[44],
    };
    Parsed::Ok {
        meta,
        payload_len,
        next,
    }
}

fn newer(seq: u64, last: Option<u64>) -> bool {
    last.is_none_or(|l| seq > l)
}

/// First aligned position at or after `from` holding a whole verified record whose seq
/// is above `after_seq`.
pub(crate) fn find_next(buf: &[u8], from: usize, after_seq: Option<u64>) -> Option<usize> {
    let mut pos = padded(from);
    while pos + RECORD_HEADER_LEN <= buf.len() {
        if buf[pos..pos + 4] == RECORD_MAGIC {
            if let Parsed::Ok { meta, .. } = parse_at(buf, pos) {
                if newer(meta.seq, after_seq) {
                    return Some(pos);
                }
            }
        }
        pos += ALIGN;
    }
    None
}

/// One record found by [`scan`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Found {
    pub meta: RecordMeta,
    pub offset: usize,
    pub payload_len: usize,
}

/// Outcome of scanning one segment.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Verified records, in file order, seqs strictly increasing.
    pub records: Vec<Found>,
    /// Damaged regions skipped (each counts as one lost record).
    pub corrupt: usize,
    /// Where a torn tail starts, when the segment is the last one and ends in one.
    pub torn_at: Option<usize>,
}

/// Scans a whole segment (file header included, already checked).
///
/// A bad record is skipped: by its verified length when its header verifies, else by a
/// search for the next aligned, fully verified record with a higher seq (resync). In the
/// last segment, a bad region with no verified record after it is a torn tail (a write
/// cut short by a crash): `torn_at` says where to truncate. Anywhere else a bad region
/// counts as one corrupt record. Records whose seq does not exceed the previous one are
/// treated as corrupt too (the index must be strictly increasing).
pub(crate) fn scan(buf: &[u8], is_last: bool, mut last_seq: Option<u64>) -> Scan {
    let mut out = Scan::default();
    let mut pos = FILE_HEADER_LEN;
    while pos < buf.len() {
        match parse_at(buf, pos) {
            Parsed::Ok {
                meta,
                payload_len,
                next,
            } if newer(meta.seq, last_seq) => {
                out.records.push(Found {
                    meta,
                    offset: pos,
                    payload_len,
                });
                last_seq = Some(meta.seq);
                pos = next;
            }
            // The header is good, so the next record starts at `next`.
            Parsed::Ok { next, .. } | Parsed::BadPayload { next, .. } => {
                if is_last && find_next(buf, next, last_seq).is_none() {
                    out.torn_at = Some(pos);
                    break;
                }
                out.corrupt += 1;
                pos = next;
            }
            Parsed::BadHeader(_) | Parsed::Truncated => {
                match find_next(buf, pos + ALIGN, last_seq) {
                    Some(resume) => {
                        out.corrupt += 1;
                        pos = resume;
                    }
                    None => {
                        if is_last {
                            out.torn_at = Some(pos);
                        } else {
                            out.corrupt += 1;
                        }
                        break;
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(seq: u64) -> RecordMeta {
        RecordMeta {
            seq,
            pts_ns: seq * 10,
            wall_ns: seq * 20,
            kind: 3,
            token_count: 196,
        }
    }

    fn segment(payload_lens: &[usize]) -> Vec<u8> {
        let mut buf = encode_file_header().to_vec();
        for (i, &len) in payload_lens.iter().enumerate() {
            let payload: Vec<u8> = (0..len).map(|b| (b * 7 + i) as u8).collect();
            encode_record(&meta(i as u64 + 1), &payload, &mut buf);
        }
        buf
    }

    #[test]
    fn round_trip_and_alignment() {
        let buf = segment(&[0, 1, 7, 8, 9, 100]);
        assert_eq!(check_file_header(&buf), Ok(()));
        let s = scan(&buf, true, None);
        assert_eq!(s.records.len(), 6);
        assert_eq!(s.corrupt, 0);
        assert_eq!(s.torn_at, None);
        for (i, f) in s.records.iter().enumerate() {
            assert_eq!(f.meta, meta(i as u64 + 1));
            assert_eq!(f.offset % ALIGN, 0);
        }
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let buf = segment(&[13, 40, 5]);
        let second = FILE_HEADER_LEN + record_len(13);
        for at in second..second + record_len(40) {
            for bit in [0x01u8, 0x80, 0xff] {
                let mut b = buf.clone();
                b[at] ^= bit;
                assert!(
                    !matches!(parse_at(&b, second), Parsed::Ok { .. }),
                    "flip at {at} not detected"
                );
                let s = scan(&b, false, None);
                let seqs: Vec<u64> = s.records.iter().map(|f| f.meta.seq).collect();
                assert_eq!(seqs, vec![1, 3], "flip at {at}");
                assert_eq!(s.corrupt, 1);
            }
        }
    }

    #[test]
    fn torn_tail_only_in_last_segment() {
        let full = segment(&[10, 20, 30]);
        let cut = full.len() - 5;
        let s = scan(&full[..cut], true, None);
        assert_eq!(s.records.len(), 2);
        assert_eq!(
            s.torn_at,
            Some(FILE_HEADER_LEN + record_len(10) + record_len(20))
        );
        let s = scan(&full[..cut], false, None);
        assert_eq!((s.records.len(), s.corrupt, s.torn_at), (2, 1, None));
    }
}

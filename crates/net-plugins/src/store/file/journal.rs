//! The change journal: every commit of the store as one framed record, in revision order, in
//! append-only segment files `journal/<first revision, 20 digits>.log`.
//!
//! A frame is a 32-byte header (magic, payload length, revision, checksum, flags), the payload
//! (a JSON [`super::record::Record`]) and an 8-byte trailer (payload length, magic), so the
//! last frame of a segment is found from its end. The checksum (FNV-1a 64 over the revision
//! and the payload) does not cover the flags: the writer sets the `applied` flag in place
//! once the record's changes are in the index.

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::StoreError;

use super::io_error;

const MAGIC: u32 = 0x3151_4a52; // "RJQ1" little-endian
const HEADER: u64 = 32;
const TRAILER: u64 = 8;
const FLAGS_AT: u64 = 24;
const APPLIED: u32 = 1;
/// Frames larger than this are not believed (a corrupt length).
const MAX_PAYLOAD: u64 = 1 << 30;

/// FNV-1a 64 over the revision and the payload.
pub(super) fn checksum(revision: u64, payload: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in revision.to_le_bytes().iter().chain(payload) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// One frame as written: header, payload, trailer.
pub(super) fn encode(revision: u64, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(payload.len() + 40);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&revision.to_le_bytes());
    out.extend_from_slice(&checksum(revision, payload).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // flags
    out.extend_from_slice(&0u32.to_le_bytes()); // reserved
    out.extend_from_slice(payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out
}

/// A frame read back.
#[derive(Debug, Clone)]
pub(super) struct Frame {
    /// Where the frame starts in its segment.
    pub(super) offset: u64,
    /// Where it ends (the next frame's offset).
    pub(super) end: u64,
    /// The commit's revision.
    pub(super) revision: u64,
    /// Whether the writer had applied it to the index.
    pub(super) applied: bool,
    /// The record.
    pub(super) payload: Vec<u8>,
}

/// What lies at an offset of a segment.
#[derive(Debug)]
pub(super) enum Read {
    /// A complete, valid frame.
    Frame(Frame),
    /// The end of the segment, or a frame still being written (or torn by a crash).
    Incomplete,
    /// A complete frame that is not valid; the string says why, the flag whether its header
    /// claims it was applied.
    Bad(String, bool),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Reads the frame at `offset` of `file`, whose length is `len`.
pub(super) fn read_at(file: &File, offset: u64, len: u64) -> std::io::Result<Read> {
    if offset + HEADER + TRAILER > len {
        return Ok(Read::Incomplete);
    }
    let mut header = [0u8; HEADER as usize];
    file.read_exact_at(&mut header, offset)?;
    let applied = u32_at(&header, FLAGS_AT as usize) & APPLIED != 0;
    if u32_at(&header, 0) != MAGIC {
        return Ok(Read::Bad(
            format!("no frame header at byte {offset}"),
            applied,
        ));
    }
    let size = u64::from(u32_at(&header, 4));
    if size > MAX_PAYLOAD {
        return Ok(Read::Bad(
            format!("frame at byte {offset} claims {size} bytes"),
            applied,
        ));
    }
    let end = offset + HEADER + size + TRAILER;
    if end > len {
        return Ok(Read::Incomplete);
    }
    let revision = u64_at(&header, 8);
    let sum = u64_at(&header, 16);
    let mut rest = vec![0u8; usize::try_from(size + TRAILER).unwrap_or(usize::MAX)];
    file.read_exact_at(&mut rest, offset + HEADER)?;
    let trailer_at = rest.len() - TRAILER as usize;
    if u32_at(&rest, trailer_at + 4) != MAGIC || u64::from(u32_at(&rest, trailer_at)) != size {
        return Ok(Read::Bad(
            format!("frame of revision {revision} at byte {offset} has no trailer"),
            applied,
        ));
    }
    rest.truncate(trailer_at);
    if checksum(revision, &rest) != sum {
        return Ok(Read::Bad(
            format!("frame of revision {revision} at byte {offset} fails its checksum"),
            applied,
        ));
    }
    Ok(Read::Frame(Frame {
        offset,
        end,
        revision,
        applied,
        payload: rest,
    }))
}

/// The journal directory.
#[derive(Debug, Clone)]
pub(super) struct Journal {
    dir: PathBuf,
}

/// The segment being appended to, open, with the last frame in it.
#[derive(Debug)]
pub(super) struct Active {
    /// The first revision the segment holds.
    pub(super) first: u64,
    /// Its path.
    pub(super) path: PathBuf,
    file: File,
    len: u64,
    /// The newest revision in the journal.
    pub(super) head: u64,
    /// The last frame of the segment, when it has one.
    pub(super) tail: Option<Frame>,
}

impl Journal {
    pub(super) fn new(dir: PathBuf) -> Journal {
        Journal { dir }
    }

    /// The journal directory.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    fn segment_path(&self, first: u64) -> PathBuf {
        self.dir.join(format!("{first:020}.log"))
    }

    /// The segments, oldest first, with the first revision each holds.
    pub(super) fn segments(&self) -> Result<Vec<(u64, PathBuf)>, StoreError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(io_error(format!(
                    "cannot list journal {}",
                    self.dir.display()
                ))(e));
            }
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error(format!(
                "cannot list journal {}",
                self.dir.display()
            )))?;
            let name = entry.file_name();
            let Some(first) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            out.push((first, entry.path()));
        }
        out.sort();
        Ok(out)
    }

    /// Opens the newest segment for appending (creating the journal, with a first segment
    /// starting after `base`, when there is none), recovering a torn last frame.
    pub(super) fn open_active(&self, base: u64) -> Result<Active, StoreError> {
        let segments = self.segments()?;
        let (first, path) = match segments.last() {
            Some((first, path)) => (*first, path.clone()),
            None => {
                fs::create_dir_all(&self.dir).map_err(io_error(format!(
                    "cannot create journal {}",
                    self.dir.display()
                )))?;
                (base + 1, self.segment_path(base + 1))
            }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error(format!("cannot open {}", path.display())))?;
        let len = file
            .metadata()
            .map_err(io_error(format!("cannot stat {}", path.display())))?
            .len();
        let mut active = Active {
            first,
            path,
            file,
            len,
            head: first - 1,
            tail: None,
        };
        active.find_tail()?;
        Ok(active)
    }

    /// Starts a new segment after `head` and returns it (the old one stays as it is).
    pub(super) fn start_segment(&self, head: u64, fsync: bool) -> Result<Active, StoreError> {
        let path = self.segment_path(head + 1);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error(format!("cannot create {}", path.display())))?;
        if fsync {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_error(format!("cannot sync {}", self.dir.display())))?;
        }
        Ok(Active {
            first: head + 1,
            path,
            file,
            len: 0,
            head,
            tail: None,
        })
    }

    /// Deletes the oldest segments whose records are all at or before `checkpoint` while at
    /// least `keep` revisions stay (the newest segment always stays).
    pub(super) fn trim(&self, checkpoint: u64, head: u64, keep: u64) -> Result<(), StoreError> {
        let segments = self.segments()?;
        for pair in segments.windows(2) {
            let (next_first, last_of_this) = (pair[1].0, pair[1].0 - 1);
            if last_of_this > checkpoint || head + 1 - next_first < keep {
                break;
            }
            fs::remove_file(&pair[0].1)
                .map_err(io_error(format!("cannot remove {}", pair[0].1.display())))?;
        }
        Ok(())
    }

    /// The oldest revision a reader can resume after (the first kept revision minus one), or
    /// `None` when there is no journal yet.
    pub(super) fn oldest(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.segments()?.first().map(|(first, _)| first - 1))
    }
}

impl Active {
    fn corrupt(&self, reason: String) -> StoreError {
        StoreError::Corrupt {
            location: self.path.display().to_string(),
            reason,
        }
    }

    /// Finds the last frame; a last frame that is incomplete or invalid and was never marked
    /// applied is a commit that never returned (its writer died): it is cut off.
    fn find_tail(&mut self) -> Result<(), StoreError> {
        if self.len == 0 {
            return Ok(());
        }
        let ctx = || io_error(format!("cannot read {}", self.path.display()));
        // Fast path: the trailer at the end names the last frame.
        if self.len >= HEADER + TRAILER {
            let mut t = [0u8; TRAILER as usize];
            self.file
                .read_exact_at(&mut t, self.len - TRAILER)
                .map_err(ctx())?;
            let size = u64::from(u32_at(&t, 0));
            if u32_at(&t, 4) == MAGIC && HEADER + size + TRAILER <= self.len {
                let at = self.len - TRAILER - size - HEADER;
                if let Read::Frame(f) = read_at(&self.file, at, self.len).map_err(ctx())? {
                    self.check_revision(&f, None)?;
                    self.head = f.revision;
                    self.tail = Some(f);
                    return Ok(());
                }
            }
        }
        // Slow path (after a crash): walk the frames from the start.
        let mut offset = 0;
        let mut last: Option<Frame> = None;
        loop {
            match read_at(&self.file, offset, self.len).map_err(ctx())? {
                Read::Frame(f) => {
                    self.check_revision(&f, last.as_ref())?;
                    offset = f.end;
                    last = Some(f);
                }
                Read::Incomplete => break,
                Read::Bad(reason, applied) => {
                    if applied {
                        return Err(self.corrupt(reason));
                    }
                    // Only the last frame can be torn: anything after a bad frame's extent
                    // means the segment is damaged, not cut short.
                    let mut h = [0u8; 8];
                    let extent = if offset + 8 <= self.len {
                        self.file.read_exact_at(&mut h, offset).map_err(ctx())?;
                        offset + HEADER + u64::from(u32_at(&h, 4)) + TRAILER
                    } else {
                        self.len
                    };
                    if extent < self.len {
                        return Err(self.corrupt(reason));
                    }
                    break;
                }
            }
        }
        if offset < self.len {
            self.file
                .set_len(offset)
                .map_err(io_error(format!("cannot truncate {}", self.path.display())))?;
            self.len = offset;
        }
        if let Some(f) = last {
            self.head = f.revision;
            self.tail = Some(f);
        }
        Ok(())
    }

    fn check_revision(&self, f: &Frame, prev: Option<&Frame>) -> Result<(), StoreError> {
        let want = prev.map(|p| p.revision + 1);
        let ok = match want {
            Some(w) => f.revision == w,
            None => f.revision >= self.first,
        };
        if !ok {
            return Err(self.corrupt(format!(
                "frame at byte {} holds revision {} (expected {})",
                f.offset,
                f.revision,
                want.unwrap_or(self.first)
            )));
        }
        Ok(())
    }

    /// How many revisions the segment holds.
    pub(super) fn records(&self) -> u64 {
        self.head + 1 - self.first
    }

    /// Appends the record of `revision` (made durable first when `fsync`); returns where its
    /// frame starts.
    pub(super) fn append(
        &mut self,
        revision: u64,
        payload: &[u8],
        fsync: bool,
    ) -> Result<u64, StoreError> {
        let frame = encode(revision, payload);
        let offset = self.len;
        let ctx = || io_error(format!("cannot append to {}", self.path.display()));
        self.file.write_all_at(&frame, offset).map_err(ctx())?;
        if fsync {
            self.file.sync_data().map_err(ctx())?;
        }
        self.len += frame.len() as u64;
        self.head = revision;
        self.tail = None;
        Ok(offset)
    }

    /// Marks the frame at `offset` applied (no sync: a crash before it reaches the disk only
    /// means the record is applied again).
    pub(super) fn mark_applied(&mut self, offset: u64) -> Result<(), StoreError> {
        self.file
            .write_all_at(&APPLIED.to_le_bytes(), offset + FLAGS_AT)
            .map_err(io_error(format!("cannot write {}", self.path.display())))
    }
}

/// Reads a segment's frames in order from an offset (for replays and watches).
#[derive(Debug)]
pub(super) struct SegmentReader {
    /// The segment's first revision.
    pub(super) first: u64,
    path: PathBuf,
    file: File,
    /// Where the next frame starts.
    pub(super) offset: u64,
}

impl SegmentReader {
    pub(super) fn open(first: u64, path: PathBuf) -> Result<SegmentReader, StoreError> {
        let file =
            File::open(&path).map_err(io_error(format!("cannot open {}", path.display())))?;
        Ok(SegmentReader {
            first,
            path,
            file,
            offset: 0,
        })
    }

    /// The frame at the current offset (`None`: none complete yet); does not advance.
    pub(super) fn peek(&self) -> Result<Option<Frame>, StoreError> {
        self.peek_at(self.offset)
    }

    /// The frame at `offset` (`None`: none complete yet).
    pub(super) fn peek_at(&self, offset: u64) -> Result<Option<Frame>, StoreError> {
        let ctx = || io_error(format!("cannot read {}", self.path.display()));
        let len = self.file.metadata().map_err(ctx())?.len();
        match read_at(&self.file, offset, len).map_err(ctx())? {
            Read::Frame(f) => Ok(Some(f)),
            Read::Incomplete => Ok(None),
            Read::Bad(reason, _) => Err(StoreError::Corrupt {
                location: self.path.display().to_string(),
                reason,
            }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_flipped_bit_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.log");
        let mut bytes = encode(7, b"{\"a\":1}");
        bytes.extend(encode(8, b"{}"));
        fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        let len = bytes.len() as u64;
        let Read::Frame(f) = read_at(&file, 0, len).unwrap() else {
            panic!("no frame")
        };
        assert_eq!(
            (f.revision, f.payload.as_slice(), f.applied),
            (7, &b"{\"a\":1}"[..], false)
        );
        let Read::Frame(g) = read_at(&file, f.end, len).unwrap() else {
            panic!("no second frame")
        };
        assert_eq!(g.revision, 8);
        assert!(matches!(
            read_at(&file, g.end, len).unwrap(),
            Read::Incomplete
        ));
        // A frame cut short is incomplete, a changed payload byte is bad.
        assert!(matches!(
            read_at(&file, 0, len - 3).unwrap(),
            Read::Frame(_)
        ));
        assert!(matches!(
            read_at(&file, f.end, len - 3).unwrap(),
            Read::Incomplete
        ));
        bytes[HEADER as usize + 2] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        assert!(matches!(read_at(&file, 0, len).unwrap(), Read::Bad(..)));
    }

    #[test]
    fn a_torn_last_frame_is_cut_off_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("journal"));
        let mut a = j.open_active(0).unwrap();
        assert_eq!((a.first, a.head), (1, 0));
        let off = a.append(1, b"{}", false).unwrap();
        a.mark_applied(off).unwrap();
        a.append(2, b"{\"x\":2}", false).unwrap();
        drop(a);
        // Tear the second frame.
        let path = j.segments().unwrap()[0].1.clone();
        let len = fs::metadata(&path).unwrap().len();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let mut a = j.open_active(0).unwrap();
        assert_eq!(a.head, 1);
        assert!(a.tail.as_ref().unwrap().applied);
        a.append(2, b"{}", false).unwrap();
        let a = j.open_active(0).unwrap();
        assert_eq!(a.head, 2);
        assert!(!a.tail.as_ref().unwrap().applied);
    }

    #[test]
    fn a_damaged_frame_before_good_ones_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("journal"));
        let mut a = j.open_active(0).unwrap();
        for r in 1..=3 {
            a.append(r, b"{\"pools\":[]}", false).unwrap();
        }
        drop(a);
        let path = j.segments().unwrap()[0].1.clone();
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER as usize + 3] ^= 0x20; // first frame's payload
        let n = bytes.len();
        bytes[n - 1] ^= 0xff; // and the trailer of the last, so the slow path runs
        fs::write(&path, &bytes).unwrap();
        let err = j.open_active(0).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { location, .. } if location.ends_with(".log")),
            "{err}"
        );
    }

    #[test]
    fn trimming_keeps_the_newest_revisions_and_nothing_after_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("journal"));
        let mut a = j.open_active(0).unwrap();
        for r in 1..=30 {
            if r > 1 && (r - 1) % 10 == 0 {
                a = j.start_segment(r - 1, false).unwrap();
            }
            a.append(r, b"{}", false).unwrap();
        }
        assert_eq!(j.segments().unwrap().len(), 3);
        j.trim(5, 30, 10).unwrap(); // checkpoint before the first segment's end: keep all
        assert_eq!(j.oldest().unwrap(), Some(0));
        j.trim(30, 30, 15).unwrap(); // 20 kept after dropping the first; dropping two keeps 10
        assert_eq!(j.oldest().unwrap(), Some(10));
        j.trim(30, 30, 5).unwrap();
        assert_eq!(j.oldest().unwrap(), Some(20));
    }
}

//! The engine's state file, written in place into two alternating slots.
//!
//! The engine records every process it starts before it relies on it, so the state is written
//! often (twice per started instance at least). A temporary file renamed over the old one costs
//! an inode and a journalled rename each time (about 200 µs on ext4); overwriting a file that
//! already exists costs a few microseconds. Two slots, `engine.0` and `engine.1`, take the
//! writes in turn, each prefixed with a header naming its sequence number, length and SHA-256:
//!
//! ```text
//! rorqual-engine-state seq=42 len=12533 sha256=9f86d0…\n{"apps":{…},"instances":{…}}
//! ```
//!
//! A write only ever touches the older slot, so a crash or `kill -9` in the middle of one
//! leaves the other slot with the previous complete state; reading takes the complete slot
//! with the highest sequence number. A torn slot (the checksum does not match) is overwritten
//! by the next write. When neither slot holds a complete state the directory is refused with
//! an error naming the files; nothing is removed.
//!
//! A directory written by an earlier version has a single `engine.json`; it is read when
//! neither slot has been written yet.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The slots' file names.
const SLOTS: [&str; 2] = ["engine.0", "engine.1"];
/// The single state file of earlier versions.
pub(crate) const LEGACY_FILE: &str = "engine.json";
const MAGIC: &str = "rorqual-engine-state";

/// The two slots, open for writing.
#[derive(Debug)]
pub(crate) struct StateFile {
    dir: PathBuf,
    slots: [File; 2],
    /// The slot the next write goes to (never the one holding the newest complete state).
    next: usize,
    /// Sequence number of the newest write.
    seq: u64,
}

/// What reading the slots found.
#[derive(Debug)]
pub(crate) struct Loaded {
    /// The newest complete state's JSON, if any state was ever written.
    pub(crate) body: Option<Vec<u8>>,
    /// The file it came from (for errors about its content).
    pub(crate) path: PathBuf,
}

impl StateFile {
    /// Opens (creating them when missing) the slots in `dir` and reads the newest complete
    /// state. The directory must be locked by the caller.
    pub(crate) fn open(dir: &Path) -> Result<(StateFile, Loaded)> {
        let mut found: [Option<Slot>; 2] = [None, None];
        for (i, name) in SLOTS.iter().enumerate() {
            let path = dir.join(name);
            match std::fs::read(&path) {
                Ok(bytes) if bytes.is_empty() => {}
                Ok(bytes) => found[i] = Some(Slot::parse(&path, bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
            }
        }
        let newest = (0..2)
            .filter_map(|i| match &found[i] {
                Some(Slot::Complete { seq, .. }) => Some((*seq, i)),
                _ => None,
            })
            .max();
        let (seq, next, body, path) = match newest {
            Some((seq, i)) => {
                if let Some(Slot::Torn { reason, path }) = &found[1 - i] {
                    tracing::warn!(
                        slot = %path.display(),
                        %reason,
                        "ignoring a torn state slot (an interrupted write); the other slot is complete"
                    );
                }
                let body = match found[i].take() {
                    Some(Slot::Complete { body, .. }) => Some(body),
                    _ => None,
                };
                (seq, 1 - i, body, dir.join(SLOTS[i]))
            }
            None => {
                let torn: Vec<String> = found
                    .iter()
                    .flatten()
                    .filter_map(|s| match s {
                        Slot::Torn { reason, path } => {
                            Some(format!("{}: {reason}", path.display()))
                        }
                        Slot::Complete { .. } => None,
                    })
                    .collect();
                if !torn.is_empty() {
                    return Err(Error::CorruptState {
                        location: dir.display().to_string(),
                        reason: format!(
                            "no complete engine state: {}; refusing to start (nothing was changed)",
                            torn.join("; ")
                        ),
                    });
                }
                (0, 0, read_legacy(dir)?, dir.join(LEGACY_FILE))
            }
        };
        let mut created = false;
        let open = |name: &str, created: &mut bool| -> Result<File> {
            let path = dir.join(name);
            *created |= !path.exists();
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))
        };
        let slots = [open(SLOTS[0], &mut created)?, open(SLOTS[1], &mut created)?];
        if created {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io(format!("cannot sync {}", dir.display()), e))?;
        }
        Ok((
            StateFile {
                dir: dir.to_owned(),
                slots,
                next,
                seq,
            },
            Loaded { body, path },
        ))
    }

    /// Writes `body` into the older slot; with `durable`, waits until it is on disk.
    pub(crate) fn write(&mut self, body: &[u8], durable: bool) -> Result<()> {
        let seq = self.seq + 1;
        let mut bytes = header(seq, body).into_bytes();
        bytes.extend_from_slice(body);
        let slot = &self.slots[self.next];
        let path = || self.dir.join(SLOTS[self.next]).display().to_string();
        // The header gives the length, so bytes left over from a longer earlier state are
        // ignored even before the truncation.
        slot.write_all_at(&bytes, 0)
            .and_then(|()| slot.set_len(bytes.len() as u64))
            .and_then(|()| if durable { slot.sync_data() } else { Ok(()) })
            .map_err(|e| Error::io(format!("cannot write {}", path()), e))?;
        self.seq = seq;
        self.next = 1 - self.next;
        Ok(())
    }
}

fn header(seq: u64, body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{MAGIC} seq={seq} len={} sha256={hex}\n", body.len())
}

/// One slot's content.
#[derive(Debug)]
enum Slot {
    Complete { seq: u64, body: Vec<u8> },
    Torn { path: PathBuf, reason: String },
}

impl Slot {
    fn parse(path: &Path, mut bytes: Vec<u8>) -> Slot {
        match parse_header(&bytes) {
            Ok((seq, start, len)) => {
                bytes.truncate(start + len);
                bytes.drain(..start);
                Slot::Complete { seq, body: bytes }
            }
            Err(reason) => Slot::Torn {
                path: path.to_owned(),
                reason,
            },
        }
    }
}

/// Checks a slot: its header, its length and its checksum. Returns the sequence number and
/// where the body starts and how long it is.
fn parse_header(bytes: &[u8]) -> std::result::Result<(u64, usize, usize), String> {
    let end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no header line")?;
    let line = std::str::from_utf8(&bytes[..end]).map_err(|_| "header is not UTF-8")?;
    let mut fields = line.split(' ');
    if fields.next() != Some(MAGIC) {
        return Err(format!("not a {MAGIC} slot"));
    }
    let mut field = |key: &str| {
        fields
            .next()
            .and_then(|f| f.strip_prefix(key))
            .ok_or_else(|| format!("header lacks `{key}`"))
    };
    let seq: u64 = field("seq=")?.parse().map_err(|_| "bad seq in header")?;
    let len: usize = field("len=")?.parse().map_err(|_| "bad len in header")?;
    let sha = field("sha256=")?.to_owned();
    let start = end + 1;
    let body = bytes
        .get(start..start + len)
        .ok_or_else(|| format!("body is shorter than the {len} bytes its header gives"))?;
    if header(seq, body).trim_end().rsplit("sha256=").next() != Some(sha.as_str()) {
        return Err("checksum mismatch (an interrupted write)".to_owned());
    }
    Ok((seq, start, len))
}

fn read_legacy(dir: &Path) -> Result<Option<Vec<u8>>> {
    let path = dir.join(LEGACY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("cannot read {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(text: &str) -> Vec<u8> {
        text.as_bytes().to_vec()
    }

    #[test]
    fn the_newest_complete_slot_wins_and_a_torn_one_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut file, loaded) = StateFile::open(dir.path()).unwrap();
        assert!(loaded.body.is_none());
        file.write(&body(r#"{"n":1}"#), false).unwrap();
        file.write(&body(r#"{"n":2,"longer":true}"#), false)
            .unwrap();
        file.write(&body(r#"{"n":3}"#), true).unwrap();
        drop(file);
        let (_, loaded) = StateFile::open(dir.path()).unwrap();
        assert_eq!(loaded.body.unwrap(), body(r#"{"n":3}"#));

        // The write of 4 is interrupted: its slot is torn, so 3 is still read.
        let (mut file, _) = StateFile::open(dir.path()).unwrap();
        file.write(&body(r#"{"n":4}"#), false).unwrap();
        drop(file);
        let torn = dir.path().join("engine.1");
        let mut bytes = std::fs::read(&torn).unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains(r#"{"n":4}"#));
        let last = bytes.len() - 2;
        bytes[last] = b'5';
        std::fs::write(&torn, &bytes).unwrap();
        let (mut file, loaded) = StateFile::open(dir.path()).unwrap();
        assert_eq!(loaded.body.unwrap(), body(r#"{"n":3}"#));
        // The next write replaces the torn slot, not the complete one.
        file.write(&body(r#"{"n":6}"#), false).unwrap();
        drop(file);
        let (_, loaded) = StateFile::open(dir.path()).unwrap();
        assert_eq!(loaded.body.unwrap(), body(r#"{"n":6}"#));
    }

    #[test]
    fn no_complete_slot_is_an_error_and_nothing_is_changed() {
        let dir = tempfile::tempdir().unwrap();
        for name in SLOTS {
            std::fs::write(dir.path().join(name), "garbage").unwrap();
        }
        let err = StateFile::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no complete engine state"), "{err}");
        assert!(
            err.contains("engine.0") && err.contains("engine.1"),
            "{err}"
        );
        for name in SLOTS {
            assert_eq!(
                std::fs::read_to_string(dir.path().join(name)).unwrap(),
                "garbage"
            );
        }
    }

    #[test]
    fn an_earlier_versions_single_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LEGACY_FILE), r#"{"old":true}"#).unwrap();
        let (_, loaded) = StateFile::open(dir.path()).unwrap();
        assert_eq!(loaded.body.unwrap(), body(r#"{"old":true}"#));
    }

    #[test]
    fn headers_are_checked() {
        let good = format!("{}{}", header(7, b"{}"), "{}");
        assert_eq!(parse_header(good.as_bytes()), Ok((7, good.len() - 2, 2)));
        assert!(parse_header(b"{}").is_err());
        let short = good.replace("len=2", "len=9");
        assert!(
            parse_header(short.as_bytes())
                .unwrap_err()
                .contains("shorter")
        );
    }
}

//! [`FileStateStore`]: the LocalEngine's controller [`StateStore`], an append-only log of JSON
//! records written by one dedicated writer thread.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use rorqual_core::engine::{StateStore, Versioned, apply_cas, list_prefix};
use rorqual_core::error::{Error, Result};

const FORMAT: &str = "rorqual-state-store";
const VERSION: u32 = 2;
/// The log is compacted only once it holds at least this many records.
pub(crate) const COMPACT_MIN_RECORDS: usize = 1024;

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
}

/// One log record.
#[derive(Debug, Serialize, Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    k: std::borrow::Cow<'a, str>,
    v: u64,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    s: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    b: Option<std::borrow::Cow<'a, str>>,
}

/// The value part of a record, encoded before the map is locked.
#[derive(Debug)]
enum Encoded {
    Text(String),
    Base64(String),
}

impl Encoded {
    fn new(value: &[u8]) -> Self {
        match std::str::from_utf8(value) {
            Ok(s) => Encoded::Text(s.to_owned()),
            Err(_) => Encoded::Base64(base64::encode(value)),
        }
    }
}

/// A record on its way to the writer.
#[derive(Debug)]
struct Pending {
    key: String,
    version: u64,
    value: Option<Encoded>,
    ack: oneshot::Sender<Result<()>>,
}

/// Encodes one record line (with its newline).
fn record_line(key: &str, version: u64, value: Option<&Encoded>) -> Result<Vec<u8>> {
    let record = Record {
        k: key.into(),
        v: version,
        s: match value {
            Some(Encoded::Text(s)) => Some(s.as_str().into()),
            _ => None,
        },
        b: match value {
            Some(Encoded::Base64(b)) => Some(b.as_str().into()),
            _ => None,
        },
    };
    let mut line = serde_json::to_vec(&record).map_err(|e| Error::Codec {
        context: format!("cannot encode the record of key `{key}`"),
        source: e,
    })?;
    line.push(b'\n');
    Ok(line)
}

fn header_line() -> Vec<u8> {
    let mut line = format!("{{\"format\":\"{FORMAT}\",\"version\":{VERSION}}}").into_bytes();
    line.push(b'\n');
    line
}

fn corrupt(path: &Path, reason: impl Into<String>) -> Error {
    Error::CorruptState {
        location: path.display().to_string(),
        reason: reason.into(),
    }
}

/// What reading a store file found.
#[derive(Debug, Default)]
struct Replayed {
    map: BTreeMap<String, Versioned>,
    /// Records in the file (for compaction).
    records: usize,
    /// Length of the valid prefix (a torn final record starts there).
    valid_len: u64,
    /// The file is of an earlier version and must be rewritten.
    legacy: bool,
}

/// The format of version 1: one JSON object of every key.
#[derive(Debug, Deserialize)]
struct LegacyValue {
    value: Vec<u8>,
    version: u64,
}

fn replay(path: &Path, bytes: &[u8]) -> Result<Replayed> {
    let mut out = Replayed::default();
    if bytes.is_empty() {
        return Ok(out);
    }
    let header_end = bytes.iter().position(|&b| b == b'\n');
    let header: Option<Header> =
        header_end.and_then(|end| serde_json::from_slice(&bytes[..end]).ok());
    let Some(header) = header.filter(|h| h.format == FORMAT) else {
        // Perhaps a store of version 1: one JSON object.
        if let Ok(legacy) = serde_json::from_slice::<BTreeMap<String, LegacyValue>>(bytes) {
            out.map = legacy
                .into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        Versioned {
                            value: v.value,
                            version: v.version,
                        },
                    )
                })
                .collect();
            out.legacy = true;
            return Ok(out);
        }
        return Err(corrupt(
            path,
            format!(
                "not a rorqual state store: it does not start with a `{FORMAT}` header line; refusing to use it (nothing was changed)"
            ),
        ));
    };
    if header.version != VERSION {
        return Err(corrupt(
            path,
            format!(
                "state store version {}, expected {VERSION}; refusing to use it (nothing was changed)",
                header.version
            ),
        ));
    }
    let mut offset = header_end.map_or(bytes.len(), |e| e + 1);
    out.valid_len = offset as u64;
    let mut line_no = 1;
    while offset < bytes.len() {
        line_no += 1;
        let end = bytes[offset..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|e| offset + e);
        let line = &bytes[offset..end.unwrap_or(bytes.len())];
        let next = end.map_or(bytes.len(), |e| e + 1);
        match parse_record(line) {
            Ok((key, version, value)) => {
                if end.is_none() {
                    // A complete record whose newline did not make it: torn as well.
                    tracing::warn!(file = %path.display(), line = line_no, "ignoring the unterminated last record of the state store (an interrupted write)");
                    break;
                }
                match value {
                    Some(value) => {
                        out.map.insert(key, Versioned { value, version });
                    }
                    None => {
                        out.map.remove(&key);
                    }
                }
                out.records += 1;
                out.valid_len = next as u64;
            }
            Err(reason) if next >= bytes.len() => {
                tracing::warn!(file = %path.display(), line = line_no, %reason, "ignoring a torn last record of the state store (an interrupted write)");
                break;
            }
            Err(reason) => {
                return Err(corrupt(
                    path,
                    format!(
                        "record on line {line_no} is invalid ({reason}) and is not the last one; refusing to use the store (nothing was changed)"
                    ),
                ));
            }
        }
        offset = next;
    }
    Ok(out)
}

fn parse_record(line: &[u8]) -> std::result::Result<(String, u64, Option<Vec<u8>>), String> {
    let record: Record<'_> =
        serde_json::from_slice(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let value = match (record.s, record.b) {
        (Some(s), None) => Some(s.into_owned().into_bytes()),
        (None, Some(b)) => Some(base64::decode(&b).ok_or("invalid base64")?),
        (None, None) => None,
        (Some(_), Some(_)) => return Err("both `s` and `b`".to_owned()),
    };
    if value.is_some() == (record.v == 0) {
        return Err(format!(
            "version {} does not match the record's kind",
            record.v
        ));
    }
    Ok((record.k.into_owned(), record.v, value))
}

/// A [`StateStore`] in an append-only log file, written by one dedicated writer thread.
///
/// # The file
///
/// One line of JSON per record, after a header line:
///
/// ```text
/// {"format":"rorqual-state-store","version":2}
/// {"k":"rollouts/default/web","v":1,"s":"{\"step\":1}"}
/// {"k":"rollouts/default/web","v":2,"s":"{\"step\":2}"}
/// {"k":"rollouts/default/web","v":0}
/// ```
///
/// `k` is the key, `v` its new version (0: deleted), and the value is `s` (a UTF-8 string, as
/// controllers store JSON) or `b` (base64, for other bytes). Replaying the log from the top
/// gives the map; a write costs one appended line, whatever the number of keys.
///
/// # Writes
///
/// [`StateStore::compare_and_swap`] checks and applies the swap to the in-memory map under a
/// short lock (no I/O, no encoding under it) and hands the record to the writer thread, which
/// owns the file: it appends every record queued so far, syncs the file once (`fdatasync`) and
/// acknowledges each of them. Concurrent writers therefore share one sync (group commit); the
/// call returns once its record is on disk. A write is visible to readers from the moment it is
/// applied to the map, shortly before it is durable. When the log holds more superseded records
/// than live keys (and at least 1,024 records), the writer rewrites it with one
/// record per key (a temporary file, fsync, rename). If the disk fails, the write's caller gets
/// the error and the store refuses every later write (reopen it).
///
/// # Bad input
///
/// A file that is not a store log (another format, a bad record before the last one) is refused
/// with [`Error::CorruptState`] naming it, and is never modified. A bad final record is what a
/// crash in the middle of an append leaves: it is ignored (and cut off before the next append).
/// A file of an earlier version (one JSON object of all keys, values as arrays of numbers) is
/// read and rewritten as a log.
#[derive(Debug)]
pub struct FileStateStore {
    path: PathBuf,
    shared: Arc<Shared>,
    /// The writer's queue. Sent to under the map lock, so the log's order is the map's.
    writer: mpsc::Sender<Pending>,
}

#[derive(Debug)]
struct Shared {
    map: Mutex<BTreeMap<String, Versioned>>,
    /// Set when the writer failed; every later write is refused with this message.
    failed: Mutex<Option<String>>,
}

impl FileStateStore {
    /// Opens the store in `path`, creating it when the file does not exist, and starts its
    /// writer thread. A file that is not a store is refused with [`Error::CorruptState`] and
    /// left as it is.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
        };
        let replayed = replay(&path, &bytes)?;
        let file = if bytes.is_empty() || replayed.legacy {
            rewrite(&path, &replayed.map)?
        } else {
            let file = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
            if replayed.valid_len < bytes.len() as u64 {
                // Cut off the torn record, so that the next append starts a line.
                file.set_len(replayed.valid_len)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| Error::io(format!("cannot truncate {}", path.display()), e))?;
            }
            file
        };
        let records = if replayed.legacy {
            replayed.map.len()
        } else {
            replayed.records
        };
        let shared = Arc::new(Shared {
            map: Mutex::new(replayed.map),
            failed: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            path: path.clone(),
            file,
            records,
            shared: shared.clone(),
        };
        std::thread::Builder::new()
            .name("rorqual-state-store".to_owned())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::io("cannot start the state store's writer thread", e))?;
        Ok(FileStateStore {
            path,
            shared,
            writer: tx,
        })
    }

    /// The file the store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Writes `map` as a fresh log to `path` (temporary file, fsync, rename, fsync of the
/// directory) and opens it for appending.
fn rewrite(path: &Path, map: &BTreeMap<String, Versioned>) -> Result<File> {
    let io = |e| Error::io(format!("cannot write {}", path.display()), e);
    let mut buf = header_line();
    for (key, v) in map {
        buf.extend(record_line(key, v.version, Some(&Encoded::new(&v.value)))?);
    }
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io)?;
    f.write_all(&buf).and_then(|()| f.sync_all()).map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(parent).and_then(|d| d.sync_all()).map_err(io)?;
    }
    OpenOptions::new().append(true).open(path).map_err(io)
}

/// The thread that owns the file.
struct Writer {
    path: PathBuf,
    file: File,
    /// Records in the file.
    records: usize,
    shared: Arc<Shared>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Pending>) {
        // Ends when the store is dropped and its queue drained.
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            batch.extend(rx.try_iter());
            let result = self.append(&batch);
            if let Err(e) = &result {
                tracing::error!(error = %e, file = %self.path.display(), "the state store cannot write; it refuses writes from now on");
                *self.shared.failed.lock() = Some(e.to_string());
            }
            for p in batch {
                // The caller may have gone (its future was dropped): nothing to tell.
                let _ = p.ack.send(match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(Error::io(
                        format!("cannot write {}", self.path.display()),
                        std::io::Error::other(e.to_string()),
                    )),
                });
            }
            if result.is_ok()
                && let Err(e) = self.maybe_compact()
            {
                // The log is still complete: compaction is retried after the next write.
                tracing::warn!(error = %e, file = %self.path.display(), "cannot compact the state store");
            }
        }
    }

    fn append(&mut self, batch: &[Pending]) -> Result<()> {
        let mut buf = Vec::new();
        for p in batch {
            buf.extend(record_line(&p.key, p.version, p.value.as_ref())?);
        }
        let io = |e| Error::io(format!("cannot write {}", self.path.display()), e);
        self.file.write_all(&buf).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.records += batch.len();
        Ok(())
    }

    /// Rewrites the log when superseded records outnumber the live keys.
    fn maybe_compact(&mut self) -> Result<()> {
        let live = self.shared.map.lock().len();
        if self.records < COMPACT_MIN_RECORDS || self.records - live.min(self.records) <= live {
            return Ok(());
        }
        // The map may already hold records still queued: they are appended again after the
        // rewrite, which sets the same values again.
        let snapshot = self.shared.map.lock().clone();
        self.file = rewrite(&self.path, &snapshot)?;
        self.records = snapshot.len();
        tracing::debug!(file = %self.path.display(), keys = snapshot.len(), "compacted the state store");
        Ok(())
    }
}

#[async_trait]
impl StateStore for FileStateStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>> {
        Ok(self.shared.map.lock().get(key).cloned())
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Option<Vec<u8>>,
    ) -> Result<u64> {
        let encoded = value.as_deref().map(Encoded::new);
        let (ack, done) = oneshot::channel();
        let version = {
            let mut map = self.shared.map.lock();
            if let Some(reason) = self.shared.failed.lock().clone() {
                return Err(Error::io(
                    format!(
                        "state store {} failed earlier; reopen it",
                        self.path.display()
                    ),
                    std::io::Error::other(reason),
                ));
            }
            let version = apply_cas(&mut map, key, expected, value)?;
            let pending = Pending {
                key: key.to_owned(),
                version,
                value: encoded,
                ack,
            };
            if self.writer.send(pending).is_err() {
                return Err(Error::io(
                    format!("cannot write {}", self.path.display()),
                    std::io::Error::other("the state store's writer thread ended"),
                ));
            }
            version
        };
        match done.await {
            Ok(result) => result.map(|()| version),
            Err(_) => Err(Error::io(
                format!("cannot write {}", self.path.display()),
                std::io::Error::other("the state store's writer thread ended"),
            )),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>> {
        Ok(list_prefix(&self.shared.map.lock(), prefix))
    }
}

/// Standard base64 with padding (RFC 4648), for values that are not UTF-8.
mod base64 {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub(super) fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    // The shift and mask keep the index below 64.
                    out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    pub(super) fn decode(text: &str) -> Option<Vec<u8>> {
        let bytes = text.as_bytes();
        if !bytes.len().is_multiple_of(4) {
            return None;
        }
        let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
        for chunk in bytes.chunks(4) {
            let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
            if pad > 2 {
                return None;
            }
            let mut n = 0u32;
            for &c in &chunk[..4 - pad] {
                let v = ALPHABET.iter().position(|&a| a == c)?;
                n = (n << 6) | v as u32;
            }
            n <<= 6 * pad as u32;
            let got = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&got[..3 - pad]);
        }
        Some(out)
    }
}

//! [`FileStateStore`]: the LocalEngine's controller [`StateStore`], an append-only log of JSON
//! records written by one dedicated writer thread.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use rorqual_core::engine::{StateStore, Versioned, apply_cas, list_prefix};
use rorqual_core::error::{Error, Result};

const FORMAT: &str = "rorqual-state-store";
const VERSION: u32 = 2;
/// The log is compacted only once it holds at least this many records.
pub(crate) const COMPACT_MIN_RECORDS: usize = 1024;
/// Appended to the store's file name: the lock held while the store is open.
const LOCK_SUFFIX: &str = ".lock";
/// How long [`FileStateStore::open`] waits for the lock of a store still open: long enough for
/// a store being dropped (by tasks of an engine that just stopped) to finish, short enough that
/// a handle kept by mistake is reported rather than waited on forever.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Appended to the store's file name: the compaction's temporary file.
const COMPACT_SUFFIX: &str = ".compact.tmp";
/// Appended to the store's file name: the copy of a version 1 store kept before migrating it.
const BACKUP_V1_SUFFIX: &str = ".v1.bak";

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
            Err(_) => Encoded::Base64(BASE64.encode(value)),
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

/// `path` with `suffix` appended to its file name (`store.json` → `store.json.lock`). Unlike
/// [`Path::with_extension`], never `path` itself.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(OsString::from).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// The directory `path` is in, for syncing it after a rename.
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
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

/// The format of version 1: one JSON object of every key, each `{"value":[bytes],"version":n}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyValue {
    value: Vec<u8>,
    version: u64,
}

/// Reads `bytes` as a store of version 1, strictly: a non-empty object whose every member is
/// exactly `{"value":[bytes],"version":n}` with n ≥ 1. Anything else (`{}` included: nothing
/// tells it apart from a foreign file) is not one.
fn legacy_map(bytes: &[u8]) -> Option<BTreeMap<String, Versioned>> {
    let legacy: BTreeMap<String, LegacyValue> = serde_json::from_slice(bytes).ok()?;
    if legacy.is_empty() || legacy.values().any(|v| v.version == 0) {
        return None;
    }
    Some(
        legacy
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
            .collect(),
    )
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
        if let Some(map) = legacy_map(bytes) {
            out.map = map;
            out.legacy = true;
            return Ok(out);
        }
        return Err(corrupt(
            path,
            format!(
                "not a rorqual state store: it does not start with a `{FORMAT}` header line and is not a store of version 1 (a non-empty JSON object of `{{\"value\":[bytes],\"version\":n}}`); refusing to use it (nothing was changed)"
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
        let rest = &bytes[offset..];
        if rest.iter().all(|&b| b == 0) {
            // A file system may extend the file before the data reaches it.
            tracing::warn!(file = %path.display(), line = line_no, "ignoring the zero-filled tail of the state store (an interrupted write)");
            break;
        }
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            // Only an append that did not finish leaves a line without its newline; its
            // write was never acknowledged.
            tracing::warn!(file = %path.display(), line = line_no, "ignoring the unterminated last record of the state store (an interrupted write)");
            break;
        };
        let (key, version, value) = parse_record(&rest[..end]).map_err(|reason| {
            corrupt(
                path,
                format!(
                    "record on line {line_no} is invalid ({reason}); refusing to use the store (nothing was changed)"
                ),
            )
        })?;
        match value {
            Some(value) => {
                out.map.insert(key, Versioned { value, version });
            }
            None => {
                out.map.remove(&key);
            }
        }
        out.records += 1;
        offset += end + 1;
        out.valid_len = offset as u64;
    }
    Ok(out)
}

fn parse_record(line: &[u8]) -> std::result::Result<(String, u64, Option<Vec<u8>>), String> {
    let record: Record<'_> =
        serde_json::from_slice(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let value = match (record.s, record.b) {
        (Some(s), None) => Some(s.into_owned().into_bytes()),
        (None, Some(b)) => Some(
            BASE64
                .decode(b.as_bytes())
                .map_err(|e| format!("invalid base64 in `b`: {e}"))?,
        ),
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

/// What the writer writes with. The seam through which tests inject disk failures; the store
/// itself only ever uses [`RealDisk`].
trait Disk: Send + Sync + fmt::Debug + 'static {
    /// Writes all of `buf` to `file`, the log (`Target::Log`) or the compaction's temporary file.
    fn write(&self, target: Target, file: &mut File, buf: &[u8]) -> io::Result<()> {
        let _ = target;
        file.write_all(buf)
    }

    /// Syncs the directory `dir` (after a rename in it).
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    /// Opens `path` for appending.
    fn open_append(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new().append(true).open(path)
    }
}

/// The file a [`Disk::write`] goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The log: an appended batch.
    Log,
    /// The compaction's temporary file.
    Snapshot,
}

#[derive(Debug)]
struct RealDisk;

impl Disk for RealDisk {}

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
/// controllers store JSON) or `b` (standard base64 with padding, for other bytes). Replaying the
/// log from the top gives the map; a write costs one appended line, whatever the number of keys.
///
/// Beside the file `<name>` the store keeps `<name>.lock` (see *Opening*), `<name>.compact.tmp`
/// while compacting, and `<name>.v1.bak` after migrating a store of version 1.
///
/// # Opening
///
/// One store at a time uses a file: [`FileStateStore::open`] takes an exclusive lock on
/// `<name>.lock` and holds it until the store is dropped. Opening a file whose store is still
/// open, in this process or another, waits up to 2 seconds (blocking the calling thread) for
/// it to be dropped, which covers a store whose last `Arc` is being released by the tasks of an
/// engine that just stopped, then fails with an error naming the file. It does not wait longer
/// because the holder may be the caller itself (an `Arc` it still keeps) and waiting would never
/// end. Dropping the store (the last `Arc`) waits for the writer thread to finish the writes
/// already queued, so the file can be reopened as soon as the drop returns.
///
/// # Writes
///
/// [`StateStore::compare_and_swap`] checks and applies the swap to the in-memory map under a
/// short lock (no I/O, no encoding under it) and hands the record to the writer thread, which
/// owns the file: it appends every record queued so far, syncs the file once (`fdatasync`) and
/// acknowledges each of them. Concurrent writers therefore share one sync (group commit); the
/// call returns once its record is on disk. A write is visible to readers from the moment it is
/// applied to the map, shortly before it is durable. When the log holds more superseded records
/// than live keys (and at least 1,024 records), the writer rewrites it with one record per key
/// (a temporary file, fsync, rename, fsync of the directory) before it acknowledges the batch
/// that triggered it.
///
/// # Failures
///
/// When a write to the disk fails, the store stops writing: the file is cut back to its last
/// synced length (when the disk allows it), the failed batch and every write after it get an
/// error, and reads ([`StateStore::get`], [`StateStore::list`]) are refused too, because the map
/// may hold changes that never reached the disk. Reopen the store to read what is on disk. A
/// compaction that fails before its rename leaves the log as it was (it is retried after the
/// next write); one that fails after it (the directory sync or the reopen) fails the store the
/// same way, as the file the writer holds may no longer be the one on disk.
///
/// # Bad input
///
/// A file that is not a store log (another format, an invalid record on a complete line,
/// anywhere in the file) is refused with [`Error::CorruptState`] naming it and the line, and is
/// never modified. What a crash in the middle of an append leaves (a last line without its
/// newline, or a zero-filled tail) is ignored and cut off before the next append. A file of
/// version 1 (one non-empty JSON object of all keys, values as arrays of numbers) is copied to
/// `<name>.v1.bak` and rewritten as a log.
#[derive(Debug)]
pub struct FileStateStore {
    path: PathBuf,
    shared: Arc<Shared>,
    /// The writer's queue (`None` once closed). Sent to under the map lock, so the log's order
    /// is the map's.
    writer: Mutex<Option<mpsc::Sender<Pending>>>,
    /// The writer thread and the exclusive lock on `<name>.lock`, released (closed) after the
    /// writer is joined; taken by [`FileStateStore::close`].
    running: Mutex<Option<(JoinHandle<()>, File)>>,
}

#[derive(Debug)]
struct Shared {
    map: Mutex<BTreeMap<String, Versioned>>,
    /// Set when the writer failed (or its thread panicked); every later read and write is
    /// refused with this message.
    failed: Mutex<Option<String>>,
}

impl Shared {
    /// Refuses when the writer failed.
    fn check(&self, path: &Path) -> Result<()> {
        match &*self.failed.lock() {
            None => Ok(()),
            Some(reason) => Err(Error::io(
                format!(
                    "state store {} failed (a write to its file failed) and refuses reads and writes; reopen it",
                    path.display()
                ),
                io::Error::other(reason.clone()),
            )),
        }
    }
}

impl FileStateStore {
    /// Opens the store in `path`, creating it when the file does not exist, and starts its
    /// writer thread. A file that is not a store is refused with [`Error::CorruptState`] and
    /// left as it is; a file whose store is still open (in this process or another) 2 seconds
    /// later is refused with an I/O error of kind [`io::ErrorKind::WouldBlock`] naming it.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        Self::open_with(path.into(), Arc::new(RealDisk))
    }

    fn open_with(path: PathBuf, disk: Arc<dyn Disk>) -> Result<Self> {
        if path.file_name().is_none() {
            return Err(Error::io(
                format!("state store path {} names no file", path.display()),
                io::Error::from(io::ErrorKind::InvalidInput),
            ));
        }
        let lock = lock(&path)?;
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
        };
        let replayed = replay(&path, &bytes)?;
        let (file, len) = if bytes.is_empty() || replayed.legacy {
            if replayed.legacy {
                back_up(&path, &bytes)?;
            }
            rewrite(&*disk, &path, &replayed.map).map_err(Rewrite::into_error)?
        } else {
            let file = disk
                .open_append(&path)
                .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
            if replayed.valid_len < bytes.len() as u64 {
                // Cut off the torn record, so that the next append starts a line.
                file.set_len(replayed.valid_len)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| Error::io(format!("cannot truncate {}", path.display()), e))?;
            }
            (file, replayed.valid_len)
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
            disk,
            file: Some(file),
            synced_len: len,
            records,
            shared: shared.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("rorqual-state-store".to_owned())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::io("cannot start the state store's writer thread", e))?;
        Ok(FileStateStore {
            path,
            shared,
            writer: Mutex::new(Some(tx)),
            running: Mutex::new(Some((thread, lock))),
        })
    }

    /// The file the store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the store: waits until every queued write is on disk, stops the writer and
    /// releases the file's lock, so that another store may open it. Later writes fail; reads
    /// still answer from memory, which holds exactly what is on disk. Dropping the store closes
    /// it; an owner that hands out `Arc`s (such as `LocalEngine`) closes it when it is done,
    /// whoever still holds one. Closing twice does nothing.
    pub fn close(&self) {
        // Closing the queue ends the writer once it has written (and compacted) what is queued;
        // waiting for it means that whoever reopens the file afterwards is alone with it.
        drop(self.writer.lock().take());
        if let Some((thread, lock)) = self.running.lock().take() {
            if thread.join().is_err() {
                tracing::error!(file = %self.path.display(), "the state store's writer thread panicked");
            }
            drop(lock);
        }
    }
}

impl Drop for FileStateStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Takes the exclusive lock of the store in `path` (on `<name>.lock`, which compaction never
/// replaces), without waiting.
fn lock(path: &Path) -> Result<File> {
    let lock_path = sibling(path, LOCK_SUFFIX);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io(format!("cannot open {}", lock_path.display()), e))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(Error::io(
                    format!(
                        "state store {} is already open (its lock {} is still held after {} s, by this process or another); drop every handle to it before opening it again",
                        path.display(),
                        lock_path.display(),
                        LOCK_WAIT.as_secs()
                    ),
                    io::Error::from(io::ErrorKind::WouldBlock),
                ));
            }
            Err(TryLockError::Error(e)) => {
                return Err(Error::io(format!("cannot lock {}", lock_path.display()), e));
            }
        }
    }
}

/// Keeps `bytes`, a store of version 1 about to be migrated, in `<name>.v1.bak`. A backup left
/// by an interrupted migration of the same file is kept; one of other content is not replaced.
fn back_up(path: &Path, bytes: &[u8]) -> Result<()> {
    let backup = sibling(path, BACKUP_V1_SUFFIX);
    match std::fs::read(&backup) {
        Ok(existing) if existing == bytes => return Ok(()),
        Ok(_) => {
            return Err(corrupt(
                path,
                format!(
                    "a store of version 1 to migrate, but its backup {} already exists with other content; move it away to migrate (nothing was changed)",
                    backup.display()
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("cannot read {}", backup.display()), e)),
    }
    let io_err = |e| Error::io(format!("cannot write {}", backup.display()), e);
    let tmp = sibling(&backup, ".tmp");
    let mut f = File::create(&tmp).map_err(io_err)?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err)?;
    drop(f);
    std::fs::rename(&tmp, &backup).map_err(io_err)?;
    File::open(parent_dir(path))
        .and_then(|d| d.sync_all())
        .map_err(io_err)
}

/// How a [`rewrite`] failed.
#[derive(Debug)]
enum Rewrite {
    /// Before the rename: the file in place is the one it was.
    Before(Error),
    /// After the rename: the file in place is the new one, perhaps not durably, and the old
    /// one is deleted.
    After(Error),
}

impl Rewrite {
    fn into_error(self) -> Error {
        match self {
            Rewrite::Before(e) | Rewrite::After(e) => e,
        }
    }
}

/// Writes `map` as a fresh log to `path` (temporary file, fsync, rename, fsync of the
/// directory) and opens it for appending. Returns the file and its length.
fn rewrite(
    disk: &dyn Disk,
    path: &Path,
    map: &BTreeMap<String, Versioned>,
) -> std::result::Result<(File, u64), Rewrite> {
    let mut buf = header_line();
    for (key, v) in map {
        buf.extend(
            record_line(key, v.version, Some(&Encoded::new(&v.value))).map_err(Rewrite::Before)?,
        );
    }
    let tmp = sibling(path, COMPACT_SUFFIX);
    let before = |e| Rewrite::Before(Error::io(format!("cannot write {}", tmp.display()), e));
    let written = File::create(&tmp).and_then(|mut f| {
        disk.write(Target::Snapshot, &mut f, &buf)
            .and_then(|()| f.sync_all())
    });
    if let Err(e) = written {
        // Best effort: the next compaction replaces it anyway.
        let _ = std::fs::remove_file(&tmp);
        return Err(before(e));
    }
    std::fs::rename(&tmp, path).map_err(before)?;
    let after = |e| {
        Rewrite::After(Error::io(
            format!(
                "cannot finish replacing {} by its compacted log",
                path.display()
            ),
            e,
        ))
    };
    disk.sync_dir(parent_dir(path)).map_err(after)?;
    let file = disk.open_append(path).map_err(after)?;
    Ok((file, buf.len() as u64))
}

/// What [`Writer::maybe_compact`] did.
#[derive(Debug)]
enum Compaction {
    /// Nothing: the log is small enough.
    NotNeeded,
    /// Compacted. The records queued when the snapshot was taken are in it, durable.
    Done(Vec<Pending>),
    /// Failed before the rename: the log is as it was, and the records queued when the
    /// snapshot was taken are still to be appended.
    Failed(Error, Vec<Pending>),
    /// Failed after the rename: the store is failed, and the queued records are not durable.
    Broken(Vec<Pending>),
}

/// The thread that owns the file.
struct Writer {
    path: PathBuf,
    disk: Arc<dyn Disk>,
    /// The log; `None` once the writer failed: nothing is written after a failure.
    file: Option<File>,
    /// The length of the log up to its last synced record.
    synced_len: u64,
    /// Records in the file.
    records: usize,
    shared: Arc<Shared>,
}

/// Marks the store failed when the writer thread panics, so that reads and writes are
/// refused instead of waiting for a writer that is gone.
struct PanicGuard(Arc<Shared>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .failed
                .lock()
                .get_or_insert_with(|| "the state store's writer thread panicked".to_owned());
        }
    }
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Pending>) {
        let _guard = PanicGuard(self.shared.clone());
        // Records taken from the queue by a compaction that then failed before its rename.
        let mut carried = Vec::new();
        // Ends when the store is dropped and its queue drained.
        loop {
            let mut batch = std::mem::take(&mut carried);
            if batch.is_empty() {
                match rx.recv() {
                    Ok(first) => batch.push(first),
                    Err(mpsc::RecvError) => break,
                }
            }
            batch.extend(rx.try_iter());
            if self.file.is_none() {
                self.refuse(batch);
                continue;
            }
            if let Err(e) = self.append(&batch) {
                self.fail(&e);
                self.refuse(batch);
                continue;
            }
            // Compacting before acknowledging: once a write returns, the writer has nothing
            // left to do with the file for it.
            let compaction = self.maybe_compact(&rx);
            // The batch is durable whatever the compaction did: synced in the old log, and in
            // the snapshot, which was taken after it.
            ack_all(batch, || Ok(()));
            match compaction {
                Compaction::NotNeeded => {}
                Compaction::Done(drained) => ack_all(drained, || Ok(())),
                Compaction::Failed(e, drained) => {
                    // The log is still complete: compaction is retried after the next write.
                    tracing::warn!(error = %e, file = %self.path.display(), "cannot compact the state store");
                    carried = drained;
                }
                Compaction::Broken(drained) => self.refuse(drained),
            }
        }
    }

    /// Appends and syncs the batch.
    fn append(&mut self, batch: &[Pending]) -> Result<()> {
        let mut buf = Vec::new();
        for p in batch {
            buf.extend(record_line(&p.key, p.version, p.value.as_ref())?);
        }
        let io_err = |e| Error::io(format!("cannot write {}", self.path.display()), e);
        let Some(file) = self.file.as_mut() else {
            return Err(io_err(io::Error::other("the store failed earlier")));
        };
        self.disk
            .write(Target::Log, file, &buf)
            .and_then(|()| file.sync_data())
            .map_err(io_err)?;
        self.synced_len += buf.len() as u64;
        self.records += batch.len();
        Ok(())
    }

    /// Stops writing for good: marks the store failed (before anything else is acknowledged)
    /// and cuts off whatever part of an unacknowledged batch reached the log.
    fn fail(&mut self, e: &Error) {
        tracing::error!(error = %e, file = %self.path.display(), "the state store cannot write; it refuses reads and writes from now on");
        self.shared
            .failed
            .lock()
            .get_or_insert_with(|| error_chain(e));
        if let Some(file) = self.file.take()
            && let Err(te) = file
                .set_len(self.synced_len)
                .and_then(|()| file.sync_data())
        {
            tracing::error!(error = %te, file = %self.path.display(), "cannot cut the state store back to its last synced record; reopening it may refuse a bad last record");
        }
    }

    /// Fails each of `batch` with the reason the store failed.
    fn refuse(&self, batch: Vec<Pending>) {
        ack_all(batch, || self.shared.check(&self.path));
    }

    /// Rewrites the log when superseded records outnumber the live keys.
    fn maybe_compact(&mut self, rx: &mpsc::Receiver<Pending>) -> Compaction {
        let (drained, snapshot) = {
            let map = self.shared.map.lock();
            let live = map.len();
            if self.records < COMPACT_MIN_RECORDS || self.records - live.min(self.records) <= live {
                return Compaction::NotNeeded;
            }
            // Writers send under the map lock: taking the queue with the snapshot means the
            // snapshot holds exactly the records written so far and those taken.
            (rx.try_iter().collect::<Vec<_>>(), map.clone())
        };
        match rewrite(&*self.disk, &self.path, &snapshot) {
            Ok((file, len)) => {
                self.file = Some(file);
                self.synced_len = len;
                self.records = snapshot.len();
                tracing::debug!(file = %self.path.display(), keys = snapshot.len(), "compacted the state store");
                Compaction::Done(drained)
            }
            Err(Rewrite::Before(e)) => Compaction::Failed(e, drained),
            Err(Rewrite::After(e)) => {
                // The handle is to the old, deleted file: never write through it again.
                self.file = None;
                self.fail(&e);
                Compaction::Broken(drained)
            }
        }
    }
}

/// Acknowledges each of `batch` with `result()`.
fn ack_all(batch: Vec<Pending>, result: impl Fn() -> Result<()>) {
    for p in batch {
        // The caller may have gone (its future was dropped): nothing to tell.
        let _ = p.ack.send(result());
    }
}

/// `e` and its sources, for the message every later call is refused with.
fn error_chain(e: &Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[async_trait]
impl StateStore for FileStateStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>> {
        self.shared.check(&self.path)?;
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
            self.shared.check(&self.path)?;
            let version = apply_cas(&mut map, key, expected, value)?;
            let pending = Pending {
                key: key.to_owned(),
                version,
                value: encoded,
                ack,
            };
            let sent = match &*self.writer.lock() {
                Some(writer) => writer.send(pending).is_ok(),
                None => {
                    return Err(Error::io(
                        format!("cannot write {}", self.path.display()),
                        io::Error::other("the state store is closed"),
                    ));
                }
            };
            if !sent {
                return Err(Error::io(
                    format!("cannot write {}", self.path.display()),
                    io::Error::other("the state store's writer thread ended"),
                ));
            }
            version
        };
        match done.await {
            Ok(result) => result.map(|()| version),
            Err(_) => Err(Error::io(
                format!("cannot write {}", self.path.display()),
                io::Error::other("the state store's writer thread ended"),
            )),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>> {
        self.shared.check(&self.path)?;
        Ok(list_prefix(&self.shared.map.lock(), prefix))
    }
}

#[cfg(test)]
mod tests {
    //! Disk failures, injected through [`Disk`]. These tests use a temporary directory: the
    //! failures are injected, the file they leave behind is real and is reopened.
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    /// A [`Disk`] that fails on demand.
    #[derive(Debug, Default)]
    struct FaultyDisk {
        /// Appends write half their bytes, then fail with ENOSPC.
        fail_append: AtomicBool,
        /// The failing append waits here: it signals the first sender, then waits for the
        /// second receiver.
        gate: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
        /// Writes of the compaction's snapshot write half their bytes, then fail.
        fail_snapshot: AtomicBool,
        /// Writes of the compaction's snapshot are slowed down.
        slow_snapshot: AtomicBool,
        /// Syncing the directory fails.
        fail_sync_dir: AtomicBool,
        /// Reopening the log fails.
        fail_reopen: AtomicBool,
    }

    fn enospc() -> io::Error {
        io::Error::from_raw_os_error(nix::libc::ENOSPC)
    }

    impl Disk for FaultyDisk {
        fn write(&self, target: Target, file: &mut File, buf: &[u8]) -> io::Result<()> {
            let fail = match target {
                Target::Log => self.fail_append.load(Ordering::SeqCst),
                Target::Snapshot => {
                    if self.slow_snapshot.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    self.fail_snapshot.load(Ordering::SeqCst)
                }
            };
            if !fail {
                return file.write_all(buf);
            }
            file.write_all(&buf[..buf.len() / 2])?;
            if let Some((entered, release)) = self.gate.lock().take() {
                entered.send(()).unwrap();
                release.recv().unwrap();
            }
            Err(enospc())
        }

        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            if self.fail_sync_dir.load(Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(nix::libc::EIO));
            }
            RealDisk.sync_dir(dir)
        }

        fn open_append(&self, path: &Path) -> io::Result<File> {
            if self.fail_reopen.load(Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(nix::libc::EMFILE));
            }
            RealDisk.open_append(path)
        }
    }

    fn open_faulty(path: &Path) -> (FileStateStore, Arc<FaultyDisk>) {
        let disk = Arc::new(FaultyDisk::default());
        let store = FileStateStore::open_with(path.to_owned(), disk.clone()).unwrap();
        (store, disk)
    }

    /// Updates `key` until a write fails or `n` writes were made; returns the last version
    /// acknowledged and whether a write failed.
    async fn update(store: &FileStateStore, key: &str, n: usize) -> (u64, bool) {
        let mut version = store.get(key).await.unwrap().map(|v| v.version);
        for i in 0..n {
            match store
                .compare_and_swap(key, version, Some(i.to_string().into_bytes()))
                .await
            {
                Ok(v) => version = Some(v),
                Err(_) => return (version.unwrap_or(0), true),
            }
        }
        (version.unwrap_or(0), false)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_append_fails_the_queued_writes_and_leaves_a_readable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.json");
        let (store, disk) = open_faulty(&path);
        let store = Arc::new(store);
        store
            .compare_and_swap("a", None, Some(b"1".to_vec()))
            .await
            .unwrap();
        let good = std::fs::read(&path).unwrap();

        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        *disk.gate.lock() = Some((entered_tx, release_rx));
        disk.fail_append.store(true, Ordering::SeqCst);
        let s = store.clone();
        let b =
            tokio::spawn(async move { s.compare_and_swap("b", None, Some(b"2".to_vec())).await });
        // The writer is in the middle of the failing append: queue another write behind it.
        tokio::task::spawn_blocking(move || entered.recv().unwrap())
            .await
            .unwrap();
        let s = store.clone();
        let c =
            tokio::spawn(async move { s.compare_and_swap("c", None, Some(b"3".to_vec())).await });
        while store.get("c").await.unwrap().is_none() {
            tokio::task::yield_now().await;
        }
        disk.fail_append.store(false, Ordering::SeqCst);
        release.send(()).unwrap();

        let err = b.await.unwrap().unwrap_err();
        assert!(format!("{err:?}").contains("No space left"), "{err:?}");
        c.await.unwrap().unwrap_err();
        store
            .compare_and_swap("d", None, Some(b"4".to_vec()))
            .await
            .unwrap_err();
        // Reads are refused: the map holds `b` and `c`, which never reached the disk.
        store.get("a").await.unwrap_err();
        store.list("").await.unwrap_err();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            good,
            "cut back to the last synced record"
        );

        drop(store);
        let store = FileStateStore::open(&path).unwrap();
        let keys: Vec<_> = store
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["a"]);
        store
            .compare_and_swap("b", None, Some(b"2".to_vec()))
            .await
            .unwrap();
    }

    async fn a_failure_after_the_rename_fails_the_store(fault: impl Fn(&FaultyDisk)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.json");
        let (store, disk) = open_faulty(&path);
        fault(&disk);
        // One key updated: the log is compacted at its 1,024th record.
        let (acked, failed) = update(&store, "k", 2 * COMPACT_MIN_RECORDS).await;
        assert!(failed, "the compaction's failure fails the store");
        assert_eq!(
            acked, COMPACT_MIN_RECORDS as u64,
            "the batch that compacted was durable"
        );
        store.get("k").await.unwrap_err();
        drop(store);
        let store = FileStateStore::open(&path).unwrap();
        assert_eq!(
            store.get("k").await.unwrap().unwrap().version,
            acked,
            "every acknowledged write is in the file"
        );
    }

    #[tokio::test]
    async fn a_failed_directory_sync_after_the_compactions_rename_fails_the_store() {
        a_failure_after_the_rename_fails_the_store(|d| {
            d.fail_sync_dir.store(true, Ordering::SeqCst);
        })
        .await;
    }

    #[tokio::test]
    async fn a_failed_reopen_after_the_compactions_rename_fails_the_store() {
        a_failure_after_the_rename_fails_the_store(|d| {
            d.fail_reopen.store(true, Ordering::SeqCst);
        })
        .await;
    }

    #[tokio::test]
    async fn a_compaction_that_fails_before_its_rename_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // A name ending in `.tmp`: the compaction's temporary file must not be the store.
        let path = dir.path().join("state.tmp");
        let (store, disk) = open_faulty(&path);
        disk.fail_snapshot.store(true, Ordering::SeqCst);
        let (acked, failed) = update(&store, "k", COMPACT_MIN_RECORDS + 100).await;
        assert!(!failed);
        assert_eq!(store.get("k").await.unwrap().unwrap().version, acked);
        drop(store);
        let store = FileStateStore::open(&path).unwrap();
        assert_eq!(store.get("k").await.unwrap().unwrap().version, acked);
        assert!(!dir.path().join("state.tmp.compact.tmp").exists());
    }

    #[tokio::test]
    async fn a_reopen_right_after_a_compacting_write_keeps_later_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.json");
        let (store, disk) = open_faulty(&path);
        disk.slow_snapshot.store(true, Ordering::SeqCst);
        // The last of these writes triggers a (slow) compaction.
        let (acked, failed) = update(&store, "k", COMPACT_MIN_RECORDS).await;
        assert!(!failed);
        drop(store);
        let store = FileStateStore::open(&path).unwrap();
        store
            .compare_and_swap("after", None, Some(b"x".to_vec()))
            .await
            .unwrap();
        // Long enough for a compaction left running by the first store to finish.
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(store);
        let store = FileStateStore::open(&path).unwrap();
        assert_eq!(store.get("k").await.unwrap().unwrap().version, acked);
        assert!(store.get("after").await.unwrap().is_some(), "lost");
    }

    #[test]
    fn sibling_names_never_equal_the_store() {
        let p = Path::new("/var/lib/x/state.tmp");
        assert_eq!(
            sibling(p, COMPACT_SUFFIX),
            Path::new("/var/lib/x/state.tmp.compact.tmp")
        );
        assert_eq!(
            sibling(Path::new("store"), LOCK_SUFFIX),
            Path::new("store.lock")
        );
    }

    #[test]
    fn base64_is_strict() {
        let rec = |b: &str| parse_record(format!(r#"{{"k":"a","v":1,"b":"{b}"}}"#).as_bytes());
        assert_eq!(rec("AA==").unwrap().2, Some(vec![0]));
        for bad in ["AA==AA==", "AA", "A===", "AB==", "AA=A", "****"] {
            assert!(rec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_the_real_version_1_format_is_migrated() {
        assert!(legacy_map(br#"{"a":{"value":[104,105],"version":4}}"#).is_some());
        for foreign in [
            &br"{}"[..],
            br#"{"a":{}}"#,
            br#"{"a":{"value":[1],"version":1,"extra":true}}"#,
            br#"{"a":{"value":[256],"version":1}}"#,
            br#"{"a":{"value":"aGk=","version":1}}"#,
            br#"{"a":{"value":[1],"version":0}}"#,
            br#"[1,2]"#,
        ] {
            assert!(
                legacy_map(foreign).is_none(),
                "{}",
                String::from_utf8_lossy(foreign)
            );
        }
    }
}

//! The engine's state file, written in place into rotating slots.
//!
//! The engine records every process it starts before it relies on it, so the state is written
//! often (twice per started instance at least). A temporary file renamed over the old one costs
//! an inode and a journalled rename each time (about 200 µs on ext4); overwriting a file that
//! already exists costs a few microseconds. Three slot files, `engine.0` to `engine.2`, take
//! the writes, each prefixed with a header naming its sequence number, length and SHA-256:
//!
//! ```text
//! rorqual-engine-state seq=42 len=12533 sha256=9f86d0…\n{"apps":{…},"instances":{…}}
//! ```
//!
//! Reading takes the complete slot (its checksum matches) with the highest sequence number.
//! A write never touches the newest slot, so a crash or `kill -9` in the middle of one leaves
//! the previous state complete, and the torn slot is overwritten later. One slot, the
//! *anchor*, is known to be on disk (`fdatasync`): writes never touch it either, and at most
//! once a second (and for every durable write) the slot just written is synced and becomes the
//! anchor. After a power loss the engine therefore finds the last state written, or at worst
//! the anchor, at most about a second older. When no slot holds a complete state (the disk
//! itself lost data) the directory is refused with an error naming the files; nothing is
//! removed.
//!
//! A directory written by an earlier version has a single `engine.json`; it is read when no
//! slot has been written yet.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use sha2::{Digest, Sha256};

use rorqual_core::error::{Error, Result};

/// The slots' file names.
const SLOTS: [&str; 3] = ["engine.0", "engine.1", "engine.2"];
/// How old the anchor may get before a write syncs its slot and makes it the new anchor.
const ANCHOR_EVERY: Duration = Duration::from_secs(1);
/// The single state file of earlier versions.
pub(crate) const LEGACY_FILE: &str = "engine.json";
const MAGIC: &str = "rorqual-engine-state";

/// The slots, open for writing.
#[derive(Debug)]
pub(crate) struct StateFile {
    dir: PathBuf,
    slots: [File; 3],
    /// The slot holding the newest state (never written over by the next write).
    newest: Option<usize>,
    /// The slot known to be on disk, and since when (never written over).
    anchor: Option<(usize, Instant)>,
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
        let mut found: [Option<Slot>; 3] = [None, None, None];
        for (i, name) in SLOTS.iter().enumerate() {
            let path = dir.join(name);
            match std::fs::read(&path) {
                Ok(bytes) if bytes.is_empty() => {}
                Ok(bytes) => found[i] = Some(Slot::parse(&path, bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
            }
        }
        let newest = (0..SLOTS.len())
            .filter_map(|i| match &found[i] {
                Some(Slot::Complete { seq, .. }) => Some((*seq, i)),
                _ => None,
            })
            .max();
        for slot in found.iter().flatten() {
            if let (Slot::Torn { reason, path }, Some(_)) = (slot, newest) {
                tracing::warn!(
                    slot = %path.display(),
                    %reason,
                    "ignoring an incomplete state slot (an interrupted write); a complete one is used"
                );
            }
        }
        let (seq, newest, body, path) = match newest {
            Some((seq, i)) => {
                let body = match found[i].take() {
                    Some(Slot::Complete { body, .. }) => Some(body),
                    _ => None,
                };
                (seq, Some(i), body, dir.join(SLOTS[i]))
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
                (0, None, read_legacy(dir)?, dir.join(LEGACY_FILE))
            }
        };
        let mut created = false;
        let mut open = |name: &str| -> Result<File> {
            let path = dir.join(name);
            created |= !path.exists();
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))
        };
        let slots = [open(SLOTS[0])?, open(SLOTS[1])?, open(SLOTS[2])?];
        if created {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io(format!("cannot sync {}", dir.display()), e))?;
        }
        let mut file = StateFile {
            dir: dir.to_owned(),
            slots,
            newest,
            anchor: None,
            seq,
        };
        // What was read may still be only in the page cache (the engine was killed, not the
        // machine): make it the anchor.
        file.sync_newest()?;
        Ok((file, Loaded { body, path }))
    }

    /// Writes `body` into a slot that is neither the newest nor the anchor; with `durable`,
    /// or when the anchor is over a second old, waits until it is on disk and makes it the
    /// anchor.
    pub(crate) fn write(&mut self, body: &[u8], durable: bool) -> Result<()> {
        let anchor = self.anchor.map(|(i, _)| i);
        let target = (0..SLOTS.len())
            .find(|&i| Some(i) != self.newest && Some(i) != anchor)
            .unwrap_or(0); // three slots, at most two excluded
        let seq = self.seq + 1;
        let mut bytes = header(seq, body).into_bytes();
        bytes.extend_from_slice(body);
        let slot = &self.slots[target];
        // The header gives the length, so bytes left over from a longer earlier state are
        // ignored even before the truncation.
        slot.write_all_at(&bytes, 0)
            .and_then(|()| slot.set_len(bytes.len() as u64))
            .map_err(|e| self.io_error(target, e))?;
        self.seq = seq;
        self.newest = Some(target);
        let stale = self
            .anchor
            .is_none_or(|(_, since)| since.elapsed() >= ANCHOR_EVERY);
        if durable || stale {
            self.sync_newest()?;
        }
        Ok(())
    }

    /// Waits until the newest slot is on disk and makes it the anchor.
    pub(crate) fn sync_newest(&mut self) -> Result<()> {
        let Some(newest) = self.newest else {
            return Ok(());
        };
        if self.anchor.is_some_and(|(i, _)| i == newest) {
            return Ok(());
        }
        self.slots[newest]
            .sync_data()
            .map_err(|e| self.io_error(newest, e))?;
        self.anchor = Some((newest, Instant::now()));
        Ok(())
    }

    fn io_error(&self, slot: usize, e: std::io::Error) -> Error {
        Error::io(
            format!("cannot write {}", self.dir.join(SLOTS[slot]).display()),
            e,
        )
    }
}

fn header(seq: u64, body: &[u8]) -> String {
    format!(
        "{MAGIC} seq={seq} len={} sha256={}\n",
        body.len(),
        sha256_hex(body)
    )
}

fn sha256_hex(body: &[u8]) -> String {
    Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
    let body = start
        .checked_add(len)
        .and_then(|stop| bytes.get(start..stop))
        .ok_or_else(|| format!("body is shorter than the {len} bytes its header gives"))?;
    if sha256_hex(body) != sha {
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

/// What the writer thread writes to: the [`StateFile`] (a stand-in in tests).
pub(crate) trait Sink: Send + 'static {
    /// Writes `body` as the newest state ([`StateFile::write`]).
    fn write(&mut self, body: &[u8], durable: bool) -> Result<()>;
    /// Waits until the newest state is on disk ([`StateFile::sync_newest`]).
    fn sync_newest(&mut self) -> Result<()>;
}

impl Sink for StateFile {
    fn write(&mut self, body: &[u8], durable: bool) -> Result<()> {
        StateFile::write(self, body, durable)
    }

    fn sync_newest(&mut self) -> Result<()> {
        StateFile::sync_newest(self)
    }
}

/// The engine's state writer: a dedicated thread (`rorqual-engine-state`) that owns the state
/// file, so that no caller does file I/O (least of all under the engine's state lock on a
/// Tokio worker). [`Writer::submit`] leaves an encoded state in a latest-wins slot (the highest
/// sequence number wins) and wakes the thread; [`Writer::wait_durable`] waits until a state
/// at least that new is on disk and synced. Dropping or [closing](Writer::close) the writer
/// lets the thread write what is pending and joins it.
#[derive(Debug)]
pub(crate) struct Writer {
    shared: Arc<WriterShared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct WriterShared {
    state: Mutex<WriterState>,
    /// Wakes the thread: a state is pending, a durable write is wanted, or closing.
    wake: Condvar,
    /// Wakes durable waiters: the thread finished a durable write or exited.
    done: Condvar,
}

#[derive(Debug, Default)]
struct WriterState {
    /// The newest submitted state not yet taken by the thread: sequence number and bytes.
    pending: Option<(u64, Vec<u8>)>,
    /// Sequence number of the newest state the thread has taken (written or failed).
    taken: u64,
    /// The highest sequence number a durable waiter wants on disk.
    durable_wanted: u64,
    /// The highest sequence number whose durable write the thread finished (or failed and
    /// logged): waiters up to it return.
    durable_done: u64,
    closing: bool,
    exited: bool,
}

impl Writer {
    /// Starts the writer thread, which owns `sink`.
    pub(crate) fn spawn(sink: impl Sink) -> Result<Writer> {
        let shared = Arc::new(WriterShared::default());
        let thread = std::thread::Builder::new()
            .name("rorqual-engine-state".to_owned())
            .spawn({
                let shared = shared.clone();
                move || writer_loop(&shared, sink)
            })
            .map_err(|e| Error::io("cannot start the engine's state writer thread", e))?;
        Ok(Writer {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Leaves the state `bytes` numbered `seq` for the thread, unless a newer one was
    /// submitted already, and returns at once.
    pub(crate) fn submit(&self, seq: u64, bytes: Vec<u8>) {
        let mut st = self.shared.state.lock();
        if st.exited || seq <= st.taken || st.pending.as_ref().is_some_and(|(p, _)| *p >= seq) {
            return;
        }
        st.pending = Some((seq, bytes));
        drop(st);
        self.shared.wake.notify_one();
    }

    /// Waits until the state numbered `seq` (or a newer one) is written and synced, or its
    /// write failed (logged by the thread), or the thread exited.
    pub(crate) fn wait_durable(&self, seq: u64) {
        let mut st = self.shared.state.lock();
        if st.durable_wanted < seq {
            st.durable_wanted = seq;
            self.shared.wake.notify_one();
        }
        while st.durable_done < seq && !st.exited {
            self.shared.done.wait(&mut st);
        }
    }

    /// Lets the thread write what is pending, then stops and joins it. Later submissions are
    /// dropped.
    pub(crate) fn close(&self) {
        self.shared.state.lock().closing = true;
        self.shared.wake.notify_one();
        let thread = self.thread.lock().take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the local engine's state writer thread panicked");
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.close();
    }
}

/// Marks the writer exited (also when the thread panics), releasing every waiter.
struct ExitGuard<'a>(&'a WriterShared);

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state.lock();
        st.exited = true;
        st.pending = None;
        drop(st);
        self.0.done.notify_all();
    }
}

fn writer_loop(shared: &WriterShared, mut sink: impl Sink) {
    let _guard = ExitGuard(shared);
    loop {
        let (pending, durable) = {
            let mut st = shared.state.lock();
            while st.pending.is_none() && st.durable_wanted <= st.durable_done && !st.closing {
                shared.wake.wait(&mut st);
            }
            let pending = st.pending.take();
            if let Some((seq, _)) = &pending {
                st.taken = *seq;
            }
            let durable = (st.durable_wanted > st.durable_done).then_some(st.durable_wanted);
            if pending.is_none() && durable.is_none() {
                // Closing with nothing left to write.
                return;
            }
            (pending, durable)
        };
        let result = match &pending {
            Some((_, bytes)) => sink.write(bytes, durable.is_some()),
            None => sink.sync_newest(),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot persist the local engine's state");
        }
        if let Some(wanted) = durable {
            // A durable waiter's state was written before it asked (`taken` covered it), or
            // is the one just written (`pending` held the newest): either way it is synced now.
            let mut st = shared.state.lock();
            st.durable_done = st.durable_done.max(wanted);
            drop(st);
            shared.done.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(text: &str) -> Vec<u8> {
        text.as_bytes().to_vec()
    }

    /// A disk that takes `delay` per write or sync and records what reached it.
    struct SlowSink {
        delay: Duration,
        log: Arc<Mutex<Vec<(String, bool)>>>,
    }

    impl Sink for SlowSink {
        fn write(&mut self, body: &[u8], durable: bool) -> Result<()> {
            std::thread::sleep(self.delay);
            let text = String::from_utf8(body.to_vec()).unwrap();
            self.log.lock().push((text, durable));
            Ok(())
        }

        fn sync_newest(&mut self) -> Result<()> {
            std::thread::sleep(self.delay);
            self.log.lock().push(("sync".to_owned(), true));
            Ok(())
        }
    }

    #[test]
    fn submitting_never_waits_for_a_slow_disk_and_the_newest_state_wins() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let writer = Writer::spawn(SlowSink {
            delay: Duration::from_millis(300),
            log: log.clone(),
        })
        .unwrap();
        let started = Instant::now();
        for seq in 1..=50u64 {
            writer.submit(seq, body(&seq.to_string()));
        }
        // An older state handed over late is dropped.
        writer.submit(7, body("7"));
        assert!(
            started.elapsed() < Duration::from_millis(150),
            "submit waited for the disk: {:?}",
            started.elapsed()
        );
        // A durable wait returns once the newest state is written and synced.
        writer.wait_durable(50);
        let written = log.lock().clone();
        assert_eq!(
            written.last().map(|(t, d)| (t.as_str(), *d)),
            Some(("50", true))
        );
        // Coalesced: the first write (taken at once) and the newest one, nothing older after.
        assert!(written.len() <= 3, "{written:?}");
        assert!(!written.iter().any(|(t, _)| t == "7"), "{written:?}");
        // Closing writes what is pending and joins the thread; later states are dropped.
        writer.submit(51, body("51"));
        writer.close();
        assert_eq!(log.lock().last().unwrap().0, "51");
        writer.submit(52, body("52"));
        writer.wait_durable(52); // returns: the thread has exited
        assert_eq!(log.lock().last().unwrap().0, "51");
    }

    #[test]
    fn a_durable_wait_for_a_state_already_written_syncs_it() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = StateFile::open(dir.path()).unwrap();
        let writer = Writer::spawn(file).unwrap();
        writer.submit(1, body(r#"{"n":1}"#));
        writer.wait_durable(1);
        writer.submit(2, body(r#"{"n":2}"#));
        writer.wait_durable(2);
        writer.wait_durable(2);
        drop(writer);
        let (_, loaded) = StateFile::open(dir.path()).unwrap();
        assert_eq!(loaded.body.unwrap(), body(r#"{"n":2}"#));
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
        let torn = SLOTS
            .iter()
            .map(|name| dir.path().join(name))
            .find(|p| std::fs::read_to_string(p).unwrap().contains(r#"{"n":4}"#))
            .unwrap();
        let mut bytes = std::fs::read(&torn).unwrap();
        let last = bytes.len() - 2;
        bytes[last] = b'5';
        std::fs::write(&torn, &bytes).unwrap();
        let (mut file, loaded) = StateFile::open(dir.path()).unwrap();
        assert_eq!(loaded.body.unwrap(), body(r#"{"n":3}"#));
        // The next write replaces the torn slot, not the complete ones.
        file.write(&body(r#"{"n":6}"#), false).unwrap();
        assert!(
            std::fs::read_to_string(&torn)
                .unwrap()
                .contains(r#"{"n":6}"#)
        );
        drop(file);
        let (_, loaded) = StateFile::open(dir.path()).unwrap();
        assert_eq!(loaded.body.unwrap(), body(r#"{"n":6}"#));
    }

    #[test]
    fn writes_never_touch_the_newest_slot_or_the_anchor() {
        let dir = tempfile::tempdir().unwrap();
        let (mut file, _) = StateFile::open(dir.path()).unwrap();
        file.write(&body("1"), false).unwrap(); // the first write becomes the anchor
        let anchor = file.anchor.unwrap().0;
        for n in 2..10 {
            let before = file.newest;
            file.write(&body(&n.to_string()), false).unwrap();
            assert_ne!(file.newest, before);
            assert_ne!(file.newest, Some(anchor), "the anchor is kept for a second");
        }
        let anchored = std::fs::read_to_string(dir.path().join(SLOTS[anchor])).unwrap();
        assert!(anchored.ends_with("\n1"), "{anchored}");
        // A durable write moves the anchor to itself.
        file.write(&body("10"), true).unwrap();
        assert_eq!(file.anchor.map(|(i, _)| i), file.newest);
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

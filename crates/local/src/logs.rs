//! Reading and following log files of supervised processes (LocalEngine's instances, the
//! node agent's containers): the last lines of a file, then new lines as they are written.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rorqual_core::engine::LogStream;
use rorqual_core::error::{Error, Result};

/// The last `tail` lines (all when `None`) of the file and the offset after them (a missing
/// file has no lines).
///
/// # Errors
///
/// [`Error::Io`] when the file exists but cannot be read.
pub fn read_lines(path: &PathBuf, tail: Option<usize>) -> Result<(Vec<String>, u64)> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io(format!("cannot read log {}", path.display()), e)),
    };
    // Only complete lines; a partial last line is left for a follower to finish.
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let text = String::from_utf8_lossy(&bytes[..complete]);
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    if let Some(n) = tail {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    Ok((lines, complete as u64))
}

struct Follow {
    path: PathBuf,
    offset: u64,
    pending: VecDeque<String>,
    partial: Vec<u8>,
    alive: Arc<dyn Fn() -> bool + Send + Sync>,
    poll: Duration,
}

impl Follow {
    fn read_more(&mut self) -> Result<bool> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                return Err(Error::io(
                    format!("cannot read log {}", self.path.display()),
                    e,
                ));
            }
        };
        let io = |e| Error::io(format!("cannot read log {}", self.path.display()), e);
        file.seek(SeekFrom::Start(self.offset)).map_err(io)?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).map_err(io)?;
        if buf.is_empty() {
            return Ok(false);
        }
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        while let Some(i) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            self.pending
                .push_back(String::from_utf8_lossy(&line[..i]).into_owned());
        }
        Ok(true)
    }
}

/// A stream of `initial`, then of new lines appended after `offset`, until `alive` says the
/// instance is gone and everything was read (only `initial` when `follow` is false).
pub fn stream(
    path: PathBuf,
    initial: Vec<String>,
    offset: u64,
    follow: bool,
    alive: Arc<dyn Fn() -> bool + Send + Sync>,
) -> LogStream {
    let lines = futures::stream::iter(initial.into_iter().map(Ok));
    if !follow {
        return Box::pin(lines);
    }
    let state = Follow {
        path,
        offset,
        pending: VecDeque::new(),
        partial: Vec::new(),
        alive,
        poll: Duration::from_millis(100),
    };
    let rest = futures::stream::unfold(Some(state), |state| async move {
        let mut st = state?;
        loop {
            if let Some(line) = st.pending.pop_front() {
                return Some((Ok(line), Some(st)));
            }
            let still_alive = (st.alive)();
            match st.read_more() {
                Ok(true) => continue,
                Ok(false) if !still_alive => return None,
                Ok(false) => tokio::time::sleep(st.poll).await,
                Err(e) => return Some((Err(e), None)),
            }
        }
    });
    Box::pin(futures::StreamExt::chain(lines, rest))
}

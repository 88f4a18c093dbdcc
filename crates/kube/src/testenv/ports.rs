//! Free loopback ports for the control plane's listeners.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, TcpListener};
use std::ops::RangeInclusive;
use std::sync::Mutex;

/// Where ports come from: below Linux's ephemeral range (32768–60999), so an outgoing
/// connection elsewhere on the host cannot take one between the probe and the server's bind,
/// and apart from the ranges rorqual-local hands out (15000–19999 to servers, 20000–32767 to
/// instances).
const PORTS: RangeInclusive<u16> = 10000..=14999;

/// How many ports this process handed out recently and does not hand out again.
const RECENT: usize = 512;

/// A TCP port free on 127.0.0.1 now, probed from a random point of the range; not one this
/// process handed out in its last 512 calls. A server that binds it later may still lose a
/// race with another process: callers retry a start that fails with "address already in use".
pub(crate) fn free_port() -> std::io::Result<u16> {
    static RECENTLY: Mutex<VecDeque<u16>> = Mutex::new(VecDeque::new());
    let mut recent = RECENTLY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (start, end) = (u32::from(*PORTS.start()), u32::from(*PORTS.end()));
    let span = end - start + 1;
    let offset = random_u32() % span;
    for i in 0..span {
        let Ok(port) = u16::try_from(start + (offset + i) % span) else {
            continue;
        };
        if recent.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(port);
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free port on 127.0.0.1 in {PORTS:?}"),
    ))
}

/// A random number that is good enough to spread probes (the clock's nanoseconds mixed with
/// the process id).
fn random_u32() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

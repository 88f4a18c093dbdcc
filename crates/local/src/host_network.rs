//! Host networking: every instance shares the host's network namespace, at 127.0.0.1 with a
//! free host port per declared port, and [`free_loopback_port`] for servers that bind their own.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, TcpListener, UdpSocket};
use std::ops::RangeInclusive;

use async_trait::async_trait;
use parking_lot::Mutex;
use rorqual_core::error::{Error, Result};
use rorqual_core::model::Protocol;
use rorqual_core::network::{AttachRequest, Attachment, Network};

/// Host networking: address 127.0.0.1 and a free host port for every declared port.
///
/// Ports come from a range (default 20000–32767) and are checked free by binding them; a
/// previous attachment's ports are reused when still free, so a restarted stateful identity
/// keeps its ports.
#[derive(Debug)]
pub struct HostNetwork {
    range: RangeInclusive<u16>,
    state: Mutex<HostPorts>,
}

#[derive(Debug, Default)]
struct HostPorts {
    by_instance: BTreeMap<String, Attachment>,
    taken: BTreeSet<u16>,
    next: u16,
}

impl Default for HostNetwork {
    fn default() -> Self {
        HostNetwork::with_port_range(DEFAULT_PORT_RANGE)
    }
}

/// Host ports handed out by default: below Linux's default ephemeral range (32768–60999), so
/// that outgoing connections on the host never hold one.
pub const DEFAULT_PORT_RANGE: RangeInclusive<u16> = 20000..=32767;

/// Ports [`free_loopback_port`] hands out: below [`DEFAULT_PORT_RANGE`], so a server's port
/// never collides with a port [`HostNetwork`] gives an instance by default (an instance in
/// crash-loop backoff does not hold its port), and below the ephemeral range.
pub const SERVER_PORT_RANGE: RangeInclusive<u16> = 15000..=19999;

/// How many ports [`free_loopback_port`] remembers having handed out, and skips.
const RECENT_PORTS: usize = 1024;

/// A free TCP port on 127.0.0.1 from [`SERVER_PORT_RANGE`], probed from a random point.
///
/// For a server process that binds the port itself (nginx, etcd, Prometheus): unlike an
/// operating-system-chosen port (binding port 0), this one lies outside the ephemeral range,
/// so a client connection elsewhere on the host cannot take it before the server binds. The
/// last 1,024 ports it returned are not returned again by this process, so two callers here
/// never get the same port while their servers start. Another process can still pick the
/// same port in that window; callers that start a server on it should retry on a bind
/// failure.
///
/// # Errors
///
/// `AddrInUse` when no port in the range is free.
pub fn free_loopback_port() -> std::io::Result<u16> {
    static RECENT: Mutex<std::collections::VecDeque<u16>> =
        Mutex::new(std::collections::VecDeque::new());
    let mut recent = RECENT.lock();
    let (start, end) = (*SERVER_PORT_RANGE.start(), *SERVER_PORT_RANGE.end());
    let span = u32::from(end) - u32::from(start) + 1;
    let offset = fastrand::u32(0..span);
    for i in 0..span {
        let port = u16::try_from(u32::from(start) + (offset + i) % span).unwrap_or(start);
        if !recent.contains(&port) && port_is_free(port, Protocol::Tcp) {
            if recent.len() >= RECENT_PORTS {
                recent.pop_front();
            }
            recent.push_back(port);
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free loopback port in {start}-{end}"),
    ))
}

impl HostNetwork {
    /// Host networking with ports from `range`.
    ///
    /// The search for a free port starts at a random point of the range, so that several
    /// engines on one host (each with its own `HostNetwork`) rarely probe the same port at
    /// the same moment.
    pub fn with_port_range(range: RangeInclusive<u16>) -> Self {
        let span = u32::from(*range.end()).saturating_sub(u32::from(*range.start())) + 1;
        let next = u16::try_from(u32::from(*range.start()) + fastrand::u32(0..span))
            .unwrap_or(*range.start());
        HostNetwork {
            range,
            state: Mutex::new(HostPorts {
                next,
                ..HostPorts::default()
            }),
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HostPorts> {
        self.state.lock()
    }
}

fn port_is_free(port: u16, protocol: Protocol) -> bool {
    let addr = (Ipv4Addr::LOCALHOST, port);
    match protocol {
        Protocol::Tcp => TcpListener::bind(addr).is_ok(),
        Protocol::Udp => UdpSocket::bind(addr).is_ok(),
    }
}

#[async_trait]
impl Network for HostNetwork {
    async fn attach(&self, request: &AttachRequest) -> Result<Attachment> {
        let mut st = self.lock();
        if let Some(existing) = st.by_instance.get(&request.instance) {
            return Ok(existing.clone());
        }
        let mut ports = BTreeMap::new();
        let mut chosen = Vec::new();
        for spec in &request.ports {
            let wanted = request
                .previous
                .as_ref()
                .and_then(|p| p.ports.get(&spec.name))
                .copied();
            let port = match wanted {
                Some(p) if !st.taken.contains(&p) && port_is_free(p, spec.protocol) => Some(p),
                _ => {
                    let span = u32::from(*self.range.end()) - u32::from(*self.range.start()) + 1;
                    let mut found = None;
                    for _ in 0..span {
                        let candidate = st.next;
                        st.next = if candidate >= *self.range.end() {
                            *self.range.start()
                        } else {
                            candidate + 1
                        };
                        if !st.taken.contains(&candidate) && port_is_free(candidate, spec.protocol)
                        {
                            found = Some(candidate);
                            break;
                        }
                    }
                    found
                }
            };
            let Some(port) = port else {
                for p in &chosen {
                    st.taken.remove(p);
                }
                return Err(Error::Network {
                    operation: "attach",
                    instance: request.instance.clone(),
                    reason: format!(
                        "no free host port in {}-{}",
                        self.range.start(),
                        self.range.end()
                    ),
                });
            };
            st.taken.insert(port);
            chosen.push(port);
            ports.insert(spec.name.clone(), port);
        }
        let attachment = Attachment::new(IpAddr::V4(Ipv4Addr::LOCALHOST), ports);
        st.by_instance
            .insert(request.instance.clone(), attachment.clone());
        Ok(attachment)
    }

    async fn detach(&self, instance: &str) -> Result<()> {
        let mut st = self.lock();
        if let Some(a) = st.by_instance.remove(instance) {
            for p in a.ports.values() {
                st.taken.remove(p);
            }
        }
        Ok(())
    }

    async fn adopt(&self, instance: &str, attachment: &Attachment) -> Result<()> {
        let mut st = self.lock();
        st.taken.extend(attachment.ports.values().copied());
        st.by_instance
            .insert(instance.to_owned(), attachment.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rorqual_core::model::{AppKey, PortSpec};

    use super::*;

    fn req(id: &str) -> AttachRequest {
        let ports = vec![
            PortSpec {
                name: "http".into(),
                number: 80,
                protocol: Protocol::Tcp,
            },
            PortSpec {
                name: "game".into(),
                number: 7000,
                protocol: Protocol::Udp,
            },
        ];
        AttachRequest::new(id, AppKey::new("default", "web"), "node-1", ports)
    }

    #[tokio::test]
    async fn distinct_ports_idempotent_attach_and_reuse() {
        let net = HostNetwork::with_port_range(29000..=29999);
        let a = net.attach(&req("a")).await.unwrap();
        let b = net.attach(&req("b")).await.unwrap();
        assert_eq!(a.ports.len(), 2);
        assert!(a.ports.values().all(|p| !b.ports.values().any(|q| q == p)));
        assert_eq!(
            net.attach(&req("a")).await.unwrap(),
            a,
            "attach is idempotent"
        );
        net.detach("a").await.unwrap();
        net.detach("a").await.unwrap();
        let mut again = req("a");
        again.previous = Some(a.clone());
        assert_eq!(
            net.attach(&again).await.unwrap().ports,
            a.ports,
            "previous ports are kept"
        );
    }

    #[test]
    fn free_loopback_ports_are_below_the_ephemeral_range_and_not_repeated() {
        let mut seen = BTreeSet::new();
        for _ in 0..200 {
            let port = free_loopback_port().unwrap();
            assert!(SERVER_PORT_RANGE.contains(&port), "{port}");
            assert!(!DEFAULT_PORT_RANGE.contains(&port), "{port}");
            assert!(seen.insert(port), "{port} handed out twice");
            assert!(TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok());
        }
    }

    #[tokio::test]
    async fn exhausted_range_is_a_clear_error() {
        let net = HostNetwork::with_port_range(30000..=30002);
        net.attach(&req("a")).await.unwrap();
        let err = net.attach(&req("b")).await.unwrap_err().to_string();
        assert!(err.contains("no free host port in 30000-30002"), "{err}");
        // The failed attach gave back the one port it had taken.
        net.detach("a").await.unwrap();
        net.attach(&req("c")).await.unwrap();
    }
}

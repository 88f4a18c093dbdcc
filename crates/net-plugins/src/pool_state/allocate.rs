//! Allocation and release: the next free address (round robin from the cursor), owner
//! idempotence, claimed and requested addresses.

use std::net::IpAddr;

use super::layout::{Num, addr, num};
use super::{Claim, Entry, PoolState, holder};
use crate::error::PoolError;
use crate::model::{AllocRequest, Allocation, AllocationEvent, IpState, Owner};

impl PoolState {
    pub(super) fn exhausted(&self, now_ms: u64) -> PoolError {
        let u = self.usage_at(now_ms);
        PoolError::Exhausted {
            pool: self.spec.name.clone(),
            ranges: self.layout.describe(),
            active: u.active,
            reserved: u.reserved,
            disabled: u.disabled,
        }
    }

    /// The next free address after the cursor, round robin over the slots (an address
    /// Reserved by an expired claim is free).
    fn next_free(&self, now_ms: u64) -> Option<IpAddr> {
        let slots = &self.layout.slots;
        let (start_i, start_n) = match self.cursor.map(num).and_then(|c| {
            let i = self.layout.slot_of(c)?;
            Some((i, c.n))
        }) {
            Some((i, n)) if n < slots[i].hi => (i, n + 1),
            Some((i, _)) => ((i + 1) % slots.len(), slots[(i + 1) % slots.len()].lo),
            None => (0, slots[0].lo),
        };
        let (mut i, mut n) = (start_i, start_n);
        let mut wrapped = false;
        loop {
            if wrapped && (i > start_i || (i == start_i && n >= start_n)) {
                return None;
            }
            let s = &slots[i];
            let next_slot = |i: usize, wrapped: &mut bool| {
                let j = i + 1;
                if j == slots.len() {
                    *wrapped = true;
                    0
                } else {
                    j
                }
            };
            if n > s.hi {
                i = next_slot(i, &mut wrapped);
                n = slots[i].lo;
                continue;
            }
            let a = Num { v6: s.v6, n };
            if let Some(end) = self.layout.excluded_until(a) {
                if end >= s.hi {
                    i = next_slot(i, &mut wrapped);
                    n = slots[i].lo;
                } else {
                    n = end + 1;
                }
                continue;
            }
            let ip = addr(s.v6, n);
            let taken = self
                .entries
                .get(&ip)
                .is_some_and(|e| self.lapsed_holder(ip, e, now_ms).is_none());
            if taken || self.layout.is_gateway(ip) {
                if n == s.hi {
                    i = next_slot(i, &mut wrapped);
                    n = slots[i].lo;
                } else {
                    n += 1;
                }
                continue;
            }
            return Some(ip);
        }
    }

    /// Gives `request.owner` an address: the one it holds already (idempotent), its identity's
    /// claimed address, the requested one, or the next free one.
    ///
    /// Claims whose keep duration has passed at `now_ms` count as expired even when
    /// [`PoolState::expire_claims`] has not run (CNI 1.0.0 has no GC): the identity gets no
    /// preference, and its Reserved address is free for anyone. The claims this allocation
    /// touches are dropped with it (their events come first).
    pub fn allocate(
        &mut self,
        request: &AllocRequest,
        now_ms: u64,
    ) -> Result<(Allocation, Vec<AllocationEvent>), PoolError> {
        let pool = &self.spec.name;
        if let Some(&held) = self.owners.get(&request.owner) {
            if let Some(r) = request.ip
                && r != held
            {
                return Err(PoolError::AlreadyHolds {
                    pool: pool.clone(),
                    who: request.owner.to_string(),
                    held,
                    requested: r,
                });
            }
            let identity = self.entries.get(&held).and_then(|e| e.identity.clone());
            return Ok((
                self.allocation(held, request.owner.clone(), identity),
                vec![],
            ));
        }
        let claims_on = self.spec.claim_keep_secs > 0;
        let identity = request.identity.as_ref().filter(|_| claims_on);
        let own_lapsed = identity.is_some_and(|id| self.claim_lapsed(id, now_ms));
        let claimed = identity
            .filter(|_| !own_lapsed)
            .and_then(|id| self.claims.get(id).map(|c| c.ip));
        let (ip, automatic) = match (claimed, request.ip) {
            (Some(c), Some(r)) if c != r => {
                return Err(PoolError::AlreadyHolds {
                    pool: pool.clone(),
                    who: format!("identity `{}`", identity.map_or("", |s| s.as_str())),
                    held: c,
                    requested: r,
                });
            }
            (Some(c), _) => {
                if let Some(e) = self.entries.get(&c) {
                    match e.state {
                        IpState::Active => {
                            return Err(PoolError::ClaimBusy {
                                pool: pool.clone(),
                                identity: identity.cloned().unwrap_or_default(),
                                ip: c,
                                holder: e.owner.as_ref().map_or_else(String::new, Owner::to_string),
                            });
                        }
                        IpState::Reserved if e.identity.as_ref() == identity => {}
                        state => {
                            return Err(PoolError::Unavailable {
                                pool: pool.clone(),
                                ip: c,
                                state,
                                holder: holder(e),
                            });
                        }
                    }
                }
                (c, false)
            }
            (None, Some(r)) => {
                self.check_in_pool(r)?;
                if let Some(e) = self.entries.get(&r) {
                    let ok = e.state == IpState::Reserved
                        && (e.identity.is_none()
                            || e.identity.as_ref() == identity
                            || self.lapsed_holder(r, e, now_ms).is_some());
                    if !ok {
                        return Err(PoolError::Unavailable {
                            pool: pool.clone(),
                            ip: r,
                            state: e.state,
                            holder: holder(e),
                        });
                    }
                }
                (r, false)
            }
            (None, None) => match self.next_free(now_ms) {
                Some(ip) => (ip, true),
                None => return Err(self.exhausted(now_ms)),
            },
        };
        // Checks are done: commit, first dropping the expired claims this allocation touches.
        let mut events = Vec::new();
        if own_lapsed && let Some(id) = request.identity.as_deref() {
            events.extend(self.drop_claim(id));
        }
        let lapsed = self
            .entries
            .get(&ip)
            .and_then(|e| self.lapsed_holder(ip, e, now_ms))
            .map(str::to_owned);
        if let Some(id) = lapsed {
            events.extend(self.drop_claim(&id));
        }
        let from = self
            .entries
            .get(&ip)
            .map_or(IpState::Available, |e| e.state);
        self.put_entry(
            ip,
            Entry {
                state: IpState::Active,
                owner: Some(request.owner.clone()),
                identity: identity.cloned(),
                node: request.node.clone(),
                mac: request.mac,
                since_ms: now_ms,
            },
        );
        self.owners.insert(request.owner.clone(), ip);
        if let Some(id) = identity {
            self.claims.insert(
                id.clone(),
                Claim {
                    ip,
                    released_ms: None,
                },
            );
        }
        if automatic {
            self.cursor = Some(ip);
        }
        events.push(AllocationEvent {
            pool: self.spec.name.clone(),
            ip,
            from,
            to: IpState::Active,
            owner: Some(request.owner.clone()),
            identity: identity.cloned(),
            node: request.node.clone(),
            mac: Some(request.mac.unwrap_or_else(|| self.mac_of(ip))),
        });
        Ok((
            self.allocation(ip, request.owner.clone(), identity.cloned()),
            events,
        ))
    }

    /// Releases what `owner` holds (nothing held: no change). A claimed address goes back to
    /// Reserved for its identity, any other to Available.
    pub fn release(&mut self, owner: &Owner, now_ms: u64) -> Vec<AllocationEvent> {
        let Some(ip) = self.owners.remove(owner) else {
            return vec![];
        };
        let identity = self.entries.get(&ip).and_then(|e| e.identity.clone());
        let node = self.entries.get(&ip).and_then(|e| e.node.clone());
        let mac = self.entries.get(&ip).and_then(|e| e.mac);
        let claimed = identity
            .as_ref()
            .is_some_and(|id| self.claims.get(id).is_some_and(|c| c.ip == ip));
        let to = if claimed && self.spec.claim_keep_secs > 0 {
            if let Some(id) = &identity
                && let Some(c) = self.claims.get_mut(id)
            {
                c.released_ms = Some(now_ms);
            }
            self.put_entry(
                ip,
                Entry {
                    state: IpState::Reserved,
                    owner: None,
                    identity: identity.clone(),
                    node: None,
                    mac: None,
                    since_ms: now_ms,
                },
            );
            IpState::Reserved
        } else {
            self.remove_entry(ip);
            if let Some(id) = &identity {
                self.claims.remove(id);
            }
            IpState::Available
        };
        vec![AllocationEvent {
            pool: self.spec.name.clone(),
            ip,
            from: IpState::Active,
            to,
            owner: Some(owner.clone()),
            identity,
            node,
            mac: Some(mac.unwrap_or_else(|| self.mac_of(ip))),
        }]
    }
}

//! Operator changes of single addresses: bulk transfer between Available and Reserved,
//! disabling, and MAC assignment.

use std::net::IpAddr;

use super::{Entry, PoolState, TransferOutcome, holder};
use crate::error::{PoolError, TransferError};
use crate::mac::Mac;
use crate::model::{AllocationEvent, IpState, TransferTarget};

impl PoolState {
    /// Moves addresses between Available and Reserved, each on its own: the result says per
    /// address whether it moved.
    pub fn transfer(&mut self, ips: &[IpAddr], to: TransferTarget, now_ms: u64) -> TransferOutcome {
        let mut results = Vec::with_capacity(ips.len());
        let mut events = Vec::new();
        for &ip in ips {
            if self.check_in_pool(ip).is_err() {
                results.push((ip, Err(TransferError::NotInPool { ip })));
                continue;
            }
            let current = self.entries.get(&ip).cloned();
            let free_reserved = |e: &Entry| e.state == IpState::Reserved && e.identity.is_none();
            let r = match (to, current) {
                (TransferTarget::Reserved, None) => {
                    self.put_entry(
                        ip,
                        Entry {
                            state: IpState::Reserved,
                            owner: None,
                            identity: None,
                            node: None,
                            mac: None,
                            since_ms: now_ms,
                        },
                    );
                    events.push(self.event(ip, IpState::Available, IpState::Reserved));
                    Ok(())
                }
                (TransferTarget::Reserved, Some(e)) if free_reserved(&e) => Ok(()),
                (TransferTarget::Available, None) => Ok(()),
                (TransferTarget::Available, Some(e)) if free_reserved(&e) => {
                    self.remove_entry(ip);
                    events.push(self.event(ip, IpState::Reserved, IpState::Available));
                    Ok(())
                }
                (_, Some(e)) => Err(TransferError::WrongState {
                    ip,
                    state: e.state,
                    holder: holder(&e),
                }),
            };
            results.push((ip, r));
        }
        (results, events)
    }

    pub(super) fn event(&self, ip: IpAddr, from: IpState, to: IpState) -> AllocationEvent {
        AllocationEvent {
            pool: self.spec.name.clone(),
            ip,
            from,
            to,
            owner: None,
            identity: None,
            node: None,
            mac: None,
        }
    }

    /// Disables (`true`) or re-enables (`false`) a free or operator-reserved address.
    pub fn set_disabled(
        &mut self,
        ip: IpAddr,
        disabled: bool,
        now_ms: u64,
    ) -> Result<Vec<AllocationEvent>, PoolError> {
        self.check_in_pool(ip)?;
        let current = self.entries.get(&ip);
        let from = current.map_or(IpState::Available, |e| e.state);
        let movable = current.is_none_or(|e| {
            e.state == IpState::Disabled || (e.state == IpState::Reserved && e.identity.is_none())
        });
        if !movable {
            let e = current.cloned();
            return Err(PoolError::Unavailable {
                pool: self.spec.name.clone(),
                ip,
                state: from,
                holder: e.as_ref().map_or_else(String::new, holder),
            });
        }
        let to = if disabled {
            IpState::Disabled
        } else {
            IpState::Available
        };
        if from == to {
            return Ok(vec![]);
        }
        if disabled {
            self.put_entry(
                ip,
                Entry {
                    state: IpState::Disabled,
                    owner: None,
                    identity: None,
                    node: None,
                    mac: None,
                    since_ms: now_ms,
                },
            );
        } else {
            self.remove_entry(ip);
        }
        Ok(vec![AllocationEvent {
            pool: self.spec.name.clone(),
            ip,
            from,
            to,
            owner: None,
            identity: None,
            node: None,
            mac: None,
        }])
    }

    /// Assigns a MAC to an Available address (BCS allows changing MACs only while free).
    pub fn set_mac(&mut self, ip: IpAddr, mac: Mac) -> Result<(), PoolError> {
        self.check_in_pool(ip)?;
        if let Some(e) = self.entries.get(&ip) {
            return Err(PoolError::Unavailable {
                pool: self.spec.name.clone(),
                ip,
                state: e.state,
                holder: holder(e),
            });
        }
        self.spec.macs.insert(ip, mac);
        Ok(())
    }
}

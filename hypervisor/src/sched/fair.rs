//! The engine's run-time scheduler: deficit round robin over tenants whose vCPU is parked on an
//! engine request, with each unit's cost **measured after it ran** and charged to its tenant.
//!
//! The hypervisor cannot know what a unit costs before running it (an operation's or a token's
//! time depends on shapes, context length and caches), so this is DRR with post-charging: when a
//! tenant's turn comes its deficit grows by `weight * quantum`; it is served units while its
//! deficit is positive, each unit's measured cost subtracted afterwards, so a turn may overshoot
//! by less than one unit and the debt is carried into the next turn (never forgiven: a tenant
//! that goes idle keeps a negative deficit and loses only a positive one).
//!
//! With `C` the largest cost a unit had and `quantum >= C`:
//! - every turn serves at least one unit (after the top-up the deficit is above `w*quantum - C
//!   >= 0`), so [`Fair::pick`] returns a tenant while any is backlogged;
//! - a turn of tenant j serves less than `w_j * quantum + C`;
//! - **delay bound**: a tenant that becomes backlogged gets its first unit after less than
//!   `sum over other backlogged j of (w_j * quantum + C)` cost of other tenants' units
//!   ([`Fair::round_bound`]); a request of `n` units completes within `n` such rounds, and within
//!   `ceil(cost / (w * quantum - C)) + 1` rounds when `w * quantum > C`;
//! - while tenants stay backlogged, each one's share of the charged cost tends to its weight
//!   share, the error at any time below `w_i * quantum + C` per tenant.

use super::{SchedError, TenantSlot, MAX_WEIGHT};
use alloc::collections::VecDeque;
use alloc::vec::Vec;

/// What one tenant was given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Charged {
    pub units: u64,
    pub cost: u64,
}

struct Entry {
    weight: u32,
    deficit: i64,
    backlogged: bool,
    /// In the round-robin list or the tenant being served.
    listed: bool,
    charged: Charged,
}

pub struct Fair {
    tenants: Vec<Option<Entry>>,
    active: VecDeque<usize>,
    current: Option<usize>,
    quantum: u64,
    max_unit: u64,
    picks: u64,
}

impl Fair {
    /// `quantum`: cost per unit of weight per round (choose it at least the largest unit cost
    /// expected, for the one-unit-per-turn guarantee).
    pub fn new(quantum: u64) -> Result<Self, SchedError> {
        if quantum == 0 || quantum > i64::MAX as u64 / u64::from(MAX_WEIGHT) {
            return Err(SchedError::BadConfig { quantum, max_cost: quantum });
        }
        Ok(Self { tenants: Vec::new(), active: VecDeque::new(), current: None, quantum, max_unit: 0, picks: 0 })
    }

    pub fn quantum(&self) -> u64 {
        self.quantum
    }

    pub fn add(&mut self, weight: u32) -> Result<TenantSlot, SchedError> {
        if !(1..=MAX_WEIGHT).contains(&weight) {
            return Err(SchedError::BadWeight(weight));
        }
        let e = Entry { weight, deficit: 0, backlogged: false, listed: false, charged: Charged::default() };
        match self.tenants.iter().position(Option::is_none) {
            Some(i) => {
                self.tenants[i] = Some(e);
                Ok(TenantSlot(i))
            }
            None => {
                self.tenants.push(Some(e));
                Ok(TenantSlot(self.tenants.len() - 1))
            }
        }
    }

    /// Removes a tenant (stopped); its slot may be reused.
    pub fn remove(&mut self, t: TenantSlot) -> Result<(), SchedError> {
        self.tenants.get_mut(t.0).and_then(Option::take).ok_or(SchedError::NoSuchTenant(t))?;
        self.active.retain(|&i| i != t.0);
        if self.current == Some(t.0) {
            self.current = None;
        }
        Ok(())
    }

    fn entry(&mut self, t: TenantSlot) -> Result<&mut Entry, SchedError> {
        self.tenants.get_mut(t.0).and_then(Option::as_mut).ok_or(SchedError::NoSuchTenant(t))
    }

    /// The tenant has engine work (its request parked) or has none left (completed).
    pub fn set_backlogged(&mut self, t: TenantSlot, backlogged: bool) -> Result<(), SchedError> {
        let e = self.entry(t)?;
        e.backlogged = backlogged;
        if backlogged && !e.listed {
            e.listed = true;
            self.active.push_back(t.0);
        }
        Ok(())
    }

    pub fn backlogged(&self, t: TenantSlot) -> bool {
        self.tenants.get(t.0).and_then(Option::as_ref).is_some_and(|e| e.backlogged)
    }

    /// The tenant whose unit runs next; `None` when nobody is backlogged.
    pub fn pick(&mut self) -> Option<TenantSlot> {
        // Each pass serves or ends a turn; a deficit rises by at least `quantum` per turn, so
        // every backlogged tenant is served within a bounded number of passes.
        loop {
            if let Some(i) = self.current {
                match self.tenants.get_mut(i).and_then(Option::as_mut) {
                    Some(e) if e.backlogged && e.deficit > 0 => {
                        self.picks += 1;
                        return Some(TenantSlot(i));
                    }
                    Some(e) => {
                        // The turn is over.
                        if e.backlogged {
                            self.active.push_back(i);
                        } else {
                            e.deficit = e.deficit.min(0);
                            e.listed = false;
                        }
                    }
                    None => {}
                }
                self.current = None;
            }
            let i = self.active.pop_front()?;
            let quantum = self.quantum;
            let Some(e) = self.tenants.get_mut(i).and_then(Option::as_mut) else { continue };
            if !e.backlogged {
                e.deficit = e.deficit.min(0);
                e.listed = false;
                continue;
            }
            e.deficit = e.deficit.saturating_add((u64::from(e.weight) * quantum) as i64);
            self.current = Some(i);
        }
    }

    /// Charges a unit's measured cost to `t`.
    pub fn charge(&mut self, t: TenantSlot, cost: u64) -> Result<(), SchedError> {
        let e = self.entry(t)?;
        e.deficit = e.deficit.saturating_sub(i64::try_from(cost).unwrap_or(i64::MAX));
        e.charged.units += 1;
        e.charged.cost = e.charged.cost.saturating_add(cost);
        self.max_unit = self.max_unit.max(cost);
        Ok(())
    }

    pub fn charged(&self, t: TenantSlot) -> Charged {
        self.tenants.get(t.0).and_then(Option::as_ref).map_or(Charged::default(), |e| e.charged)
    }

    /// The largest cost one unit had so far.
    pub fn max_unit(&self) -> u64 {
        self.max_unit
    }

    /// How many units were picked.
    pub fn picks(&self) -> u64 {
        self.picks
    }

    /// The most cost of other tenants' units served before `t`, newly backlogged, gets its next
    /// turn, given that no unit costs more than `max_unit`:
    /// `sum over the other tenants j of (w_j * quantum + max_unit)`.
    pub fn round_bound(&self, t: TenantSlot, max_unit: u64) -> u64 {
        self.tenants
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != t.0)
            .filter_map(|(_, e)| e.as_ref())
            .map(|e| u64::from(e.weight) * self.quantum + max_unit)
            .sum()
    }
}

//! The engine scheduler: deficit round robin (Shreedhar and Varghese, "Efficient fair queuing
//! using deficit round robin", SIGCOMM 1995) over per-tenant queues of operations with costs.
//!
//! Every tenant has a weight (1..=1000, from the manifest), an in-flight limit (queued plus
//! running operations, the manifest's `quota.inflight_ops`) and a FIFO queue. Backlogged tenants
//! sit in a round-robin list; when a tenant's turn comes its deficit grows by `weight * quantum`
//! and it is served operations from its head while their cost fits in the deficit. A tenant
//! whose queue empties leaves the list and loses its deficit (no credit is saved up while idle).
//!
//! Guarantees, with `quantum >= max_cost` (which [`Scheduler::new`] enforces):
//! - every turn serves at least one operation, so [`Scheduler::dispatch`] is O(1) amortised and
//!   always returns work while any is queued;
//! - a turn serves at most `weight * quantum + max_cost - 1` cost units (the deficit left over
//!   from the previous turn is less than the head operation's cost);
//! - so while all tenants stay backlogged, tenant i's share of the served cost tends to
//!   `w_i / sum(w)`, the error at any moment being below `w_i * quantum + max_cost` per tenant;
//! - **delay bound**: an operation submitted by tenant i to an empty queue is dispatched after at
//!   most `sum over j != i of (w_j * quantum + max_cost - 1)` cost units of other tenants' work
//!   ([`Scheduler::delay_bound`]), however many operations those tenants have queued; its later
//!   operations wait at most one round (the same sum) each time its turn ends;
//! - a submission beyond the in-flight limit is refused with [`SchedError::QuotaExceeded`] at
//!   once: nothing blocks and nothing is queued.
//!
//! The scheduler is plain data: the hypervisor calls `submit` from the dispatcher, `dispatch` from
//! each engine worker and `complete` when an operation finishes; [`sim`] drives the same code
//! with simulated workers on the host.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;

pub mod fair;
pub mod harness;
pub mod sim;

pub const MAX_WEIGHT: u32 = 1000;

/// A tenant's slot in the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantSlot(pub usize);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedError {
    /// Quantum or maximum cost is zero, or the quantum is below the maximum cost.
    BadConfig { quantum: u64, max_cost: u64 },
    BadWeight(u32),
    /// An in-flight limit of zero.
    BadLimit,
    NoSuchTenant(TenantSlot),
    /// The operation's cost is zero or above the maximum.
    BadCost { cost: u64, max: u64 },
    /// The tenant already has `limit` operations queued or running.
    QuotaExceeded { tenant: TenantSlot, limit: u32 },
    /// `complete` without a running operation.
    NothingRunning(TenantSlot),
}

impl fmt::Display for SchedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchedError::BadConfig { quantum, max_cost } => {
                write!(f, "quantum {quantum} and maximum cost {max_cost} must be non-zero, the quantum at least the maximum cost")
            }
            SchedError::BadWeight(w) => write!(f, "weight {w} is outside 1..={MAX_WEIGHT}"),
            SchedError::BadLimit => write!(f, "an in-flight limit must be at least 1"),
            SchedError::NoSuchTenant(t) => write!(f, "no tenant in slot {}", t.0),
            SchedError::BadCost { cost, max } => write!(f, "operation cost {cost} is outside 1..={max}"),
            SchedError::QuotaExceeded { tenant, limit } => write!(f, "tenant slot {} has {limit} operations in flight already", tenant.0),
            SchedError::NothingRunning(t) => write!(f, "tenant slot {} has no running operation", t.0),
        }
    }
}

/// An operation handed to a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispatched<T> {
    pub tenant: TenantSlot,
    pub cost: u64,
    pub op: T,
}

/// Per-tenant totals the scheduler keeps (for accounting and the simulation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    pub ops: u64,
    pub cost: u64,
    pub refused: u64,
}

struct Queue<T> {
    weight: u32,
    limit: u32,
    ops: VecDeque<(u64, T)>,
    running: u32,
    deficit: u64,
    /// In the round-robin list or the tenant being served.
    listed: bool,
    served: Served,
}

pub struct Scheduler<T> {
    tenants: Vec<Option<Queue<T>>>,
    active: VecDeque<usize>,
    /// The tenant whose turn it is (its deficit already topped up for this turn).
    current: Option<usize>,
    quantum: u64,
    max_cost: u64,
}

impl<T> Scheduler<T> {
    /// `quantum`: cost units per unit of weight per round; `max_cost`: the largest cost one
    /// operation may have. `quantum >= max_cost` so that every turn serves something.
    pub fn new(quantum: u64, max_cost: u64) -> Result<Self, SchedError> {
        if quantum == 0 || max_cost == 0 || quantum < max_cost {
            return Err(SchedError::BadConfig { quantum, max_cost });
        }
        Ok(Self { tenants: Vec::new(), active: VecDeque::new(), current: None, quantum, max_cost })
    }

    pub fn max_cost(&self) -> u64 {
        self.max_cost
    }

    pub fn add_tenant(&mut self, weight: u32, inflight_limit: u32) -> Result<TenantSlot, SchedError> {
        if !(1..=MAX_WEIGHT).contains(&weight) {
            return Err(SchedError::BadWeight(weight));
        }
        if inflight_limit == 0 {
            return Err(SchedError::BadLimit);
        }
        let q = Queue { weight, limit: inflight_limit, ops: VecDeque::new(), running: 0, deficit: 0, listed: false, served: Served::default() };
        match self.tenants.iter().position(Option::is_none) {
            Some(i) => {
                self.tenants[i] = Some(q);
                Ok(TenantSlot(i))
            }
            None => {
                self.tenants.push(Some(q));
                Ok(TenantSlot(self.tenants.len() - 1))
            }
        }
    }

    /// Removes a tenant (stopped or exited); returns its queued operations so the caller can
    /// complete them with an error. Running ones finish on their workers; their `complete`
    /// calls then get `NoSuchTenant`, which the caller ignores.
    pub fn remove_tenant(&mut self, t: TenantSlot) -> Result<Vec<T>, SchedError> {
        let q = self.tenants.get_mut(t.0).and_then(Option::take).ok_or(SchedError::NoSuchTenant(t))?;
        self.active.retain(|&i| i != t.0);
        if self.current == Some(t.0) {
            self.current = None;
        }
        Ok(q.ops.into_iter().map(|(_, op)| op).collect())
    }

    fn queue(&mut self, t: TenantSlot) -> Result<&mut Queue<T>, SchedError> {
        self.tenants.get_mut(t.0).and_then(Option::as_mut).ok_or(SchedError::NoSuchTenant(t))
    }

    /// Queues an operation of `cost` for tenant `t`, or refuses it at once.
    pub fn submit(&mut self, t: TenantSlot, cost: u64, op: T) -> Result<(), SchedError> {
        let max = self.max_cost;
        let q = self.queue(t)?;
        if cost == 0 || cost > max {
            return Err(SchedError::BadCost { cost, max });
        }
        // `running + queued` fits in u32 + usize; compare in u64.
        if q.ops.len() as u64 + u64::from(q.running) >= u64::from(q.limit) {
            q.served.refused += 1;
            return Err(SchedError::QuotaExceeded { tenant: t, limit: q.limit });
        }
        q.ops.push_back((cost, op));
        if !q.listed {
            q.listed = true;
            self.active.push_back(t.0);
        }
        Ok(())
    }

    /// The next operation to run, by deficit round robin; `None` when nothing is queued.
    pub fn dispatch(&mut self) -> Option<Dispatched<T>> {
        // Each pass either serves an operation or ends a turn; a new turn always serves one
        // (quantum >= max_cost), so this loop ends within two passes per listed tenant.
        loop {
            let i = match self.current {
                Some(i) => i,
                None => {
                    let i = self.active.pop_front()?;
                    let quantum = self.quantum;
                    let Some(q) = self.tenants.get_mut(i).and_then(Option::as_mut) else { continue };
                    q.deficit = q.deficit.saturating_add(u64::from(q.weight).saturating_mul(quantum));
                    self.current = Some(i);
                    i
                }
            };
            let Some(q) = self.tenants.get_mut(i).and_then(Option::as_mut) else {
                self.current = None;
                continue;
            };
            let fits = q.ops.front().is_some_and(|&(cost, _)| cost <= q.deficit);
            if fits {
                if let Some((cost, op)) = q.ops.pop_front() {
                    q.deficit -= cost;
                    q.running += 1;
                    q.served.ops += 1;
                    q.served.cost += cost;
                    if q.ops.is_empty() {
                        q.deficit = 0;
                        q.listed = false;
                        self.current = None;
                    }
                    return Some(Dispatched { tenant: TenantSlot(i), cost, op });
                }
            }
            // The turn is over: back of the list if still backlogged.
            self.current = None;
            if q.ops.is_empty() {
                q.deficit = 0;
                q.listed = false;
            } else {
                self.active.push_back(i);
            }
        }
    }

    /// A worker finished one of `t`'s operations: frees an in-flight slot.
    pub fn complete(&mut self, t: TenantSlot) -> Result<(), SchedError> {
        let q = self.queue(t)?;
        if q.running == 0 {
            return Err(SchedError::NothingRunning(t));
        }
        q.running -= 1;
        Ok(())
    }

    pub fn queued(&self, t: TenantSlot) -> usize {
        self.tenants.get(t.0).and_then(Option::as_ref).map_or(0, |q| q.ops.len())
    }

    pub fn running(&self, t: TenantSlot) -> u32 {
        self.tenants.get(t.0).and_then(Option::as_ref).map_or(0, |q| q.running)
    }

    pub fn served(&self, t: TenantSlot) -> Served {
        self.tenants.get(t.0).and_then(Option::as_ref).map_or(Served::default(), |q| q.served)
    }

    /// The most cost units of other tenants' operations dispatched between tenant `t` queueing
    /// an operation on an empty queue and that operation's dispatch (see the module docs):
    /// `sum over the other tenants j of (w_j * quantum + max_cost - 1)`.
    pub fn delay_bound(&self, t: TenantSlot) -> u64 {
        self.tenants
            .iter()
            .enumerate()
            .filter(|&(i, q)| i != t.0 && q.is_some())
            .filter_map(|(_, q)| q.as_ref())
            .map(|q| u64::from(q.weight) * self.quantum + self.max_cost - 1)
            .sum()
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod engine_tests;

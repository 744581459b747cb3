//! A discrete-event simulation of the engine scheduler: `workers` engine workers, each running
//! one operation at a time, an operation of cost `c` taking `c` time units. The simulation drives
//! the real [`Scheduler`]; the host tests and `cargo xtask bench tenants` run it.

use super::{SchedError, Scheduler, TenantSlot};
use alloc::vec;
use alloc::vec::Vec;

/// xorshift64*: a small deterministic generator, so every run is reproducible.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform-enough in `1..=max` (max > 0).
    pub fn cost(&mut self, max: u64) -> u64 {
        1 + self.next_u64() % max.max(1)
    }
}

/// Workers: each `None` (idle) or `Some((finish time, tenant))`.
struct Workers(Vec<Option<(u64, TenantSlot)>>);

impl Workers {
    /// The earliest finish time, if any worker is busy.
    fn next_finish(&self) -> Option<u64> {
        self.0.iter().flatten().map(|&(t, _)| t).min()
    }
    /// Frees every worker finishing at `now`; returns their tenants.
    fn finish_at(&mut self, now: u64) -> Vec<TenantSlot> {
        let mut done = Vec::new();
        for w in &mut self.0 {
            if let Some((t, tenant)) = *w {
                if t == now {
                    done.push(tenant);
                    *w = None;
                }
            }
        }
        done
    }
}

/// The result of [`shares`].
#[derive(Clone, Debug, PartialEq)]
pub struct ShareReport {
    pub weights: Vec<u32>,
    /// Operations and cost units dispatched per tenant.
    pub ops: Vec<u64>,
    pub cost: Vec<u64>,
    /// Submissions refused with `QuotaExceeded` (the submitters keep their queues full).
    pub refused: Vec<u64>,
    /// True when every tenant had an operation queued at every dispatch.
    pub always_backlogged: bool,
}

impl ShareReport {
    /// Tenant `i`'s share of all dispatched cost.
    pub fn share(&self, i: usize) -> f64 {
        let total: u64 = self.cost.iter().sum();
        if total == 0 {
            0.0
        } else {
            self.cost[i] as f64 / total as f64
        }
    }
    /// Tenant `i`'s share by weight.
    pub fn weight_share(&self, i: usize) -> f64 {
        let total: u32 = self.weights.iter().sum();
        f64::from(self.weights[i]) / f64::from(total.max(1))
    }
    /// `share / weight_share - 1`: the relative error of tenant `i`'s share.
    pub fn relative_error(&self, i: usize) -> f64 {
        self.share(i) / self.weight_share(i) - 1.0
    }
}

/// All tenants backlogged: each submits operations of random cost in `1..=max_cost` until its
/// in-flight limit refuses one, before every dispatch; `total_ops` operations are dispatched.
pub fn shares(weights: &[u32], total_ops: u64, workers: usize, max_cost: u64, inflight: u32, seed: u64) -> Result<ShareReport, SchedError> {
    let mut s: Scheduler<()> = Scheduler::new(max_cost, max_cost)?;
    let slots = weights.iter().map(|&w| s.add_tenant(w, inflight)).collect::<Result<Vec<_>, _>>()?;
    let mut rng = Rng::new(seed);
    let mut pool = Workers(vec![None; workers.max(1)]);
    let mut refused = vec![0u64; slots.len()];
    let mut dispatched = 0u64;
    let mut always_backlogged = true;
    let mut now = 0u64;
    while dispatched < total_ops {
        for (i, &t) in slots.iter().enumerate() {
            loop {
                match s.submit(t, rng.cost(max_cost), ()) {
                    Ok(()) => {}
                    Err(SchedError::QuotaExceeded { .. }) => {
                        refused[i] += 1;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        for w in pool.0.iter_mut().filter(|w| w.is_none()) {
            if dispatched >= total_ops {
                break;
            }
            always_backlogged &= slots.iter().all(|&t| s.queued(t) > 0);
            let Some(d) = s.dispatch() else { break };
            *w = Some((now + d.cost, d.tenant));
            dispatched += 1;
        }
        let Some(t) = pool.next_finish() else { break };
        now = t;
        for tenant in pool.finish_at(now) {
            s.complete(tenant)?;
        }
    }
    Ok(ShareReport {
        weights: weights.to_vec(),
        ops: slots.iter().map(|&t| s.served(t).ops).collect(),
        cost: slots.iter().map(|&t| s.served(t).cost).collect(),
        refused,
        always_backlogged,
    })
}

/// The result of [`flood`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FloodReport {
    pub honest_ops: u64,
    pub flooder_ops: u64,
    /// Flooders' submissions refused with `QuotaExceeded`.
    pub flooder_refused: u64,
    /// The most cost units of the flooders' operations dispatched between an honest
    /// submission and its dispatch, and the scheduler's bound for it.
    pub max_cost_ahead: u64,
    pub cost_bound: u64,
    /// The longest time from an honest submission to its dispatch, and its bound
    /// `max_cost + cost_bound / workers` (all workers stay busy until the honest operation is
    /// dispatched, with at most one operation each already running at the submission).
    pub max_wait: u64,
    pub wait_bound: u64,
    /// Mean wait, in time units (rounded down).
    pub mean_wait: u64,
    /// The most cost units the flooders had queued when an honest operation arrived: what a
    /// first-come-first-served queue would have put ahead of it.
    pub max_queued_ahead: u64,
}

/// One honest tenant (weight `honest_weight`, one operation of cost `honest_cost` in flight at a
/// time, resubmitted as soon as it completes) against `flooder_weights.len()` flooders keeping
/// `flood_inflight` operations of the maximum cost in flight, until the honest tenant has
/// finished `honest_ops` operations.
pub fn flood(
    honest_weight: u32,
    honest_cost: u64,
    flooder_weights: &[u32],
    flood_inflight: u32,
    workers: usize,
    max_cost: u64,
    honest_ops: u64,
) -> Result<FloodReport, SchedError> {
    let mut s: Scheduler<u64> = Scheduler::new(max_cost, max_cost)?;
    let honest = s.add_tenant(honest_weight, 1)?;
    let flooders = flooder_weights.iter().map(|&w| s.add_tenant(w, flood_inflight)).collect::<Result<Vec<_>, _>>()?;
    let workers = workers.max(1);
    let mut pool = Workers(vec![None; workers]);
    let flooder_cost = |s: &Scheduler<u64>| flooders.iter().map(|&f| s.served(f).cost).sum::<u64>();
    let mut report = FloodReport {
        honest_ops: 0,
        flooder_ops: 0,
        flooder_refused: 0,
        max_cost_ahead: 0,
        cost_bound: s.delay_bound(honest),
        max_wait: 0,
        wait_bound: max_cost + s.delay_bound(honest) / workers as u64,
        mean_wait: 0,
        max_queued_ahead: 0,
    };
    let mut queued_cost = vec![0u64; flooders.len()];
    let mut total_wait = 0u64;
    let mut now = 0u64;
    // (submission time, flooders' dispatched cost at submission) of the honest operation.
    let mut pending: Option<(u64, u64)> = None;
    let mut honest_done = 0u64;
    while honest_done < honest_ops {
        if s.running(honest) == 0 && s.queued(honest) == 0 {
            s.submit(honest, honest_cost, 0)?;
            pending = Some((now, flooder_cost(&s)));
            report.max_queued_ahead = report.max_queued_ahead.max(queued_cost.iter().sum());
        }
        for (k, &f) in flooders.iter().enumerate() {
            loop {
                match s.submit(f, max_cost, max_cost) {
                    Ok(()) => queued_cost[k] += max_cost,
                    Err(SchedError::QuotaExceeded { .. }) => {
                        report.flooder_refused += 1;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        for w in pool.0.iter_mut().filter(|w| w.is_none()) {
            let Some(d) = s.dispatch() else { break };
            if d.tenant == honest {
                if let Some((at, cost_then)) = pending.take() {
                    let wait = now - at;
                    total_wait += wait;
                    report.max_wait = report.max_wait.max(wait);
                    report.max_cost_ahead = report.max_cost_ahead.max(flooder_cost(&s) - cost_then);
                }
            } else if let Some(k) = flooders.iter().position(|&f| f == d.tenant) {
                queued_cost[k] -= d.cost;
            }
            *w = Some((now + d.cost, d.tenant));
        }
        let Some(t) = pool.next_finish() else { break };
        now = t;
        for tenant in pool.finish_at(now) {
            s.complete(tenant)?;
            if tenant == honest {
                honest_done += 1;
            }
        }
    }
    report.honest_ops = s.served(honest).ops;
    report.flooder_ops = flooders.iter().map(|&f| s.served(f).ops).sum();
    report.mean_wait = total_wait / report.honest_ops.max(1);
    Ok(report)
}

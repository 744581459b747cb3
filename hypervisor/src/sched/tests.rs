use super::sim;
use super::*;
use alloc::vec;

#[test]
fn config_weight_limit_and_cost_are_checked() {
    assert!(matches!(Scheduler::<()>::new(0, 1), Err(SchedError::BadConfig { .. })));
    assert!(matches!(Scheduler::<()>::new(10, 11), Err(SchedError::BadConfig { .. })));
    let mut s: Scheduler<()> = Scheduler::new(100, 100).unwrap();
    assert_eq!(s.add_tenant(0, 4), Err(SchedError::BadWeight(0)));
    assert_eq!(s.add_tenant(1001, 4), Err(SchedError::BadWeight(1001)));
    assert_eq!(s.add_tenant(1, 0), Err(SchedError::BadLimit));
    let t = s.add_tenant(1, 4).unwrap();
    assert_eq!(s.submit(t, 0, ()), Err(SchedError::BadCost { cost: 0, max: 100 }));
    assert_eq!(s.submit(t, 101, ()), Err(SchedError::BadCost { cost: 101, max: 100 }));
    assert_eq!(s.submit(TenantSlot(7), 1, ()), Err(SchedError::NoSuchTenant(TenantSlot(7))));
    assert_eq!(s.complete(t), Err(SchedError::NothingRunning(t)));
}

#[test]
fn over_quota_is_an_immediate_error_and_completion_frees_a_slot() {
    let mut s: Scheduler<u32> = Scheduler::new(10, 10).unwrap();
    let t = s.add_tenant(1, 3).unwrap();
    for i in 0..3 {
        s.submit(t, 5, i).unwrap();
    }
    assert_eq!(s.submit(t, 5, 9), Err(SchedError::QuotaExceeded { tenant: t, limit: 3 }));
    // Running operations still count.
    let d = s.dispatch().unwrap();
    assert_eq!((d.tenant, d.op), (t, 0));
    assert_eq!(s.submit(t, 5, 9), Err(SchedError::QuotaExceeded { tenant: t, limit: 3 }));
    s.complete(t).unwrap();
    s.submit(t, 5, 3).unwrap();
    assert_eq!(s.served(t).refused, 2);
    let order: Vec<u32> = core::iter::from_fn(|| s.dispatch().map(|d| d.op)).collect();
    assert_eq!(order, [1, 2, 3], "FIFO within a tenant");
    assert!(s.dispatch().is_none());
}

#[test]
fn drr_serves_by_cost_and_weight_in_rounds() {
    // quantum 10: A (weight 1) gets 10 cost units a turn, B (weight 2) 20.
    let mut s: Scheduler<char> = Scheduler::new(10, 10).unwrap();
    let a = s.add_tenant(1, 100).unwrap();
    let b = s.add_tenant(2, 100).unwrap();
    for _ in 0..4 {
        s.submit(a, 5, 'a').unwrap();
        s.submit(b, 5, 'b').unwrap();
    }
    let order: alloc::string::String = core::iter::from_fn(|| s.dispatch().map(|d| d.op)).collect();
    assert_eq!(order, "aabbbbaa");
    // A cost that does not fit waits for the next turn, keeping its deficit.
    let mut s: Scheduler<char> = Scheduler::new(10, 10).unwrap();
    let a = s.add_tenant(1, 100).unwrap();
    let b = s.add_tenant(1, 100).unwrap();
    for c in [6, 6, 6] {
        s.submit(a, c, 'a').unwrap();
    }
    for _ in 0..3 {
        s.submit(b, 10, 'b').unwrap();
    }
    let order: alloc::string::String = core::iter::from_fn(|| s.dispatch().map(|d| d.op)).collect();
    // a: deficit 10 -> one 6 (4 left); b: 10; a: 14 -> 6 (8 left), 6 (2 left)... 
    assert_eq!(order, "abaabb");
}

#[test]
fn an_idle_tenant_saves_no_credit_and_removal_returns_queued_ops() {
    let mut s: Scheduler<u8> = Scheduler::new(10, 10).unwrap();
    let a = s.add_tenant(1, 100).unwrap();
    let b = s.add_tenant(1, 100).unwrap();
    s.submit(a, 3, 0).unwrap();
    assert_eq!(s.dispatch().unwrap().op, 0); // a's queue empties: its 7 left are dropped
    for i in 1..=4 {
        s.submit(a, 10, i).unwrap();
        s.submit(b, 10, 10 + i).unwrap();
    }
    let first: Vec<u8> = (0..2).map(|_| s.dispatch().unwrap().op).collect();
    assert_eq!(first, [1, 11], "a is served 10, not 17, in its turn");
    assert_eq!(s.remove_tenant(a).unwrap(), vec![2, 3, 4]);
    let rest: Vec<u8> = core::iter::from_fn(|| s.dispatch().map(|d| d.op)).collect();
    assert_eq!(rest, [12, 13, 14]);
    assert_eq!(s.complete(a), Err(SchedError::NoSuchTenant(a)));
    // The slot is reused.
    assert_eq!(s.add_tenant(5, 1).unwrap(), a);
}

#[test]
fn ten_thousand_ops_weights_1_2_4_shares_within_5_percent() {
    let r = sim::shares(&[1, 2, 4], 10_000, 4, 1000, 64, 7).unwrap();
    assert!(r.always_backlogged, "every tenant must stay backlogged: {r:?}");
    assert_eq!(r.ops.iter().sum::<u64>(), 10_000);
    for i in 0..3 {
        let err = r.relative_error(i);
        assert!(err.abs() <= 0.05, "tenant {i}: share {:.4} vs {:.4} ({:+.2}%)", r.share(i), r.weight_share(i), err * 100.0);
    }
    // Over quota the submitters were told so, many times, and nothing hung.
    assert!(r.refused.iter().all(|&n| n > 100));
    // Deficit round robin is much tighter than 5%: the error is below one turn per tenant.
    let total: u64 = r.cost.iter().sum();
    for i in 0..3 {
        let exact = total as f64 * r.weight_share(i);
        assert!((r.cost[i] as f64 - exact).abs() <= f64::from(r.weights[i] * 1000 + 1000) * 2.0, "{r:?}");
    }
}

#[test]
fn shares_hold_for_other_seeds_and_worker_counts() {
    for (seed, workers) in [(1, 1), (2, 2), (3, 8), (4, 3)] {
        let r = sim::shares(&[1, 2, 4], 10_000, workers, 1000, 32, seed).unwrap();
        assert!(r.always_backlogged);
        for i in 0..3 {
            assert!(r.relative_error(i).abs() <= 0.05, "seed {seed}, {workers} workers: {r:?}");
        }
    }
}

#[test]
fn a_flooding_tenant_delays_an_honest_one_at_most_by_the_bound() {
    // One worker; a flooder of weight 4 keeps 256 max-cost operations queued.
    let r = sim::flood(1, 10, &[4], 256, 1, 1000, 500).unwrap();
    assert_eq!(r.honest_ops, 500);
    assert_eq!(r.cost_bound, 4 * 1000 + 999);
    assert!(r.max_cost_ahead <= r.cost_bound, "{r:?}");
    assert!(r.max_wait <= r.wait_bound, "{r:?}");
    // The bound is attained (it is not loose): four max-cost flooder ops ahead each time.
    assert_eq!(r.max_cost_ahead, 4000);
    // A FIFO queue would have put ~256 flooder operations ahead.
    assert!(r.max_queued_ahead >= 200 * 1000, "{r:?}");
    assert!(r.flooder_refused > 0);

    // Several flooders and workers: the bound is the sum over the flooders.
    let r = sim::flood(1, 10, &[1, 1000, 7], 512, 4, 1000, 300).unwrap();
    assert_eq!(r.cost_bound, (1000 + 999) + (1_000_000 + 999) + (7000 + 999));
    assert!(r.max_cost_ahead <= r.cost_bound, "{r:?}");
    assert!(r.max_wait <= r.wait_bound, "{r:?}");
    assert_eq!(r.honest_ops, 300);
}

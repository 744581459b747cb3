//! Parallel work through a small trait: the host implements it with std threads
//! ([`crate::host::ThreadPool`]), the hypervisor with its CPUs.

/// Runs the same job on several workers.
pub trait Parallel: Sync {
    /// How many workers [`Parallel::run`] uses (at least 1).
    fn threads(&self) -> usize;
    /// Calls `job(i)` once for every `i` in `0..self.threads()`, possibly concurrently, and
    /// returns only after every call has returned.
    fn run(&self, job: &(dyn Fn(usize) + Sync));
}

/// Everything on the calling CPU.
pub struct Serial;

impl Parallel for Serial {
    fn threads(&self) -> usize {
        1
    }
    fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        job(0)
    }
}

/// The `i`-th of `n` nearly equal ranges of `0..len`, with boundaries rounded to `gran`.
pub fn split_range(len: usize, n: usize, i: usize, gran: usize) -> core::ops::Range<usize> {
    let units = len.div_ceil(gran);
    let start = (units * i / n * gran).min(len);
    let end = (units * (i + 1) / n * gran).min(len);
    start..end
}

/// Calls `f(i, &mut items[i])` for every item, the items split into contiguous shares, one per
/// worker, when there are at least `min_items` of them (otherwise all on the calling worker:
/// a parallel region costs more than a little work). Safe code: each share is a separate
/// `&mut` slice behind its own lock, taken only by the worker that owns it.
pub fn for_each_item<T: Send>(par: &dyn Parallel, items: &mut [T], min_items: usize, f: &(dyn Fn(usize, &mut T) + Sync)) {
    let threads = par.threads().clamp(1, items.len().max(1));
    if threads == 1 || items.len() < min_items {
        for (i, it) in items.iter_mut().enumerate() {
            f(i, it);
        }
        return;
    }
    let mut shares = alloc::vec::Vec::with_capacity(threads);
    let total = items.len();
    let mut rest = items;
    let mut first = 0;
    for i in 0..threads {
        let len = split_range(total, threads, i, 1).len();
        let (share, tail) = rest.split_at_mut(len);
        shares.push(spin::Mutex::new((first, share)));
        first += len;
        rest = tail;
    }
    par.run(&|w: usize| {
        let Some(slot) = shares.get(w) else { return };
        let mut slot = slot.lock();
        let (base, ref mut share) = *slot;
        for (k, it) in share.iter_mut().enumerate() {
            f(base + k, it);
        }
    });
}

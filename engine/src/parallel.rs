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

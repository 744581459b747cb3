//! Host-only helpers (`std` feature): a thread pool implementing [`Parallel`], file loading.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;
use std::thread::JoinHandle;
use std::vec::Vec;
use std::time::Instant;

use crate::parallel::Parallel;

/// Workers on long-lived std threads: each [`Parallel::run`] publishes the job, runs job 0 on
/// the calling thread and returns when every share is done. Between jobs a worker spins for
/// up to [`SPIN`] on an atomic generation before it sleeps on a condition variable: decode
/// runs one parallel product every 50-300 µs, and waking a sleeping thread costs tens of
/// microseconds on a VM (as does the caller's wait for the last share, which spins likewise).
pub struct ThreadPool {
    threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

/// How long a worker (or the caller waiting for the workers) spins before it sleeps.
const SPIN: Duration = Duration::from_micros(300);

/// A job reference whose lifetime was erased for the workers (see [`erase`]).
#[derive(Clone, Copy)]
struct Job(&'static (dyn Fn(usize) + Sync));

struct Shared {
    /// Bumped (under `job`'s lock) each time a job is published.
    generation: AtomicU64,
    /// Workers still running the current job.
    remaining: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    /// The current job; also the lock the condition variables use.
    job: Mutex<Option<Job>>,
    work: Condvar,
    done: Condvar,
}

/// Erases the lifetime of `job` so parked workers can call it.
///
/// The one `unsafe` outside the kernels. Sound because [`ThreadPool::run`] publishes the erased
/// reference, then does not return (not even by unwinding: [`WaitGuard`]) before every worker
/// has finished its share and the reference is withdrawn; workers never keep it past their call.
#[allow(unsafe_code)]
fn erase(job: &(dyn Fn(usize) + Sync)) -> Job {
    // SAFETY: see above: every use of the returned reference ends before `job`'s borrow does.
    Job(unsafe { core::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(job) })
}

impl ThreadPool {
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            remaining: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            job: Mutex::new(None),
            work: Condvar::new(),
            done: Condvar::new(),
        });
        let workers = (1..threads)
            .map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || worker(i, &shared))
            })
            .collect();
        Self { threads, shared, workers }
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, Option<Job>> {
    shared.job.lock().unwrap_or_else(|p| p.into_inner())
}

/// Spins until `ready()` or [`SPIN`] has passed; true if ready.
fn spin_until(ready: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    loop {
        for _ in 0..64 {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        if start.elapsed() > SPIN {
            return ready();
        }
        // On a busy machine the thread being waited for may need this CPU.
        std::thread::yield_now();
    }
}

fn worker(index: usize, shared: &Shared) {
    let mut seen = 0;
    loop {
        let fresh = || shared.generation.load(Ordering::Acquire) != seen || shared.shutdown.load(Ordering::Acquire);
        spin_until(fresh);
        let job = {
            let mut g = lock(shared);
            while !fresh() {
                g = shared.work.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            if shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            seen = shared.generation.load(Ordering::Acquire);
            *g
        };
        let ok = job.is_none_or(|j| catch_unwind(AssertUnwindSafe(|| (j.0)(index))).is_ok());
        if !ok {
            shared.panicked.store(true, Ordering::Release);
        }
        if shared.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Under the lock, so a caller that checked `remaining` and is about to sleep
            // cannot miss this.
            let _g = lock(shared);
            shared.done.notify_all();
        }
    }
}

/// Waits for the workers' shares and withdraws the job, also when job 0 unwinds.
struct WaitGuard<'a>(&'a Shared);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let finished = || self.0.remaining.load(Ordering::Acquire) == 0;
        spin_until(finished);
        let mut g = lock(self.0);
        while !finished() {
            g = self.0.done.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        *g = None;
    }
}

impl Parallel for ThreadPool {
    fn threads(&self) -> usize {
        self.threads
    }

    fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 {
            return job(0);
        }
        {
            let mut g = lock(&self.shared);
            *g = Some(erase(job));
            self.shared.panicked.store(false, Ordering::Release);
            self.shared.remaining.store(self.threads - 1, Ordering::Release);
            self.shared.generation.fetch_add(1, Ordering::AcqRel);
        }
        self.shared.work.notify_all();
        {
            let _wait = WaitGuard(&self.shared);
            job(0);
        }
        if self.shared.panicked.load(Ordering::Acquire) {
            panic!("a thread-pool worker panicked");
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        {
            let _g = lock(&self.shared);
            self.shared.shutdown.store(true, Ordering::Release);
        }
        self.shared.work.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Monotonic nanoseconds since the first call.
pub fn now_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_share_runs_once_per_call_and_borrows_stay_valid() {
        let pool = ThreadPool::new(3);
        for round in 0..2000 {
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            let local = [round; 3]; // borrowed by the job, gone after run returns
            pool.run(&|i| {
                hits[i].fetch_add(local[i] + 1 - round, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "round {round}");
        }
    }

    #[test]
    fn a_panicking_share_is_reported_and_the_pool_keeps_working() {
        let pool = ThreadPool::new(2);
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| pool.run(&|i| assert!(i != 1, "share 1 fails"))));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        pool.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }
}

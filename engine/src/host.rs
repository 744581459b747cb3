//! Host-only helpers (`std` feature): a thread pool implementing [`Parallel`], file loading.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::vec::Vec;
use std::time::Instant;

use crate::parallel::Parallel;

/// Workers on long-lived std threads: each [`Parallel::run`] wakes them (a condition variable,
/// a few microseconds, where spawning threads cost 36-48 µs each), runs job 0 on the calling
/// thread and returns when every share is done.
pub struct ThreadPool {
    threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

/// A job reference whose lifetime was erased for the workers (see [`erase`]).
#[derive(Clone, Copy)]
struct Job(&'static (dyn Fn(usize) + Sync));

struct State {
    generation: u64,
    job: Option<Job>,
    remaining: usize,
    panicked: bool,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
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
            state: Mutex::new(State { generation: 0, job: None, remaining: 0, panicked: false, shutdown: false }),
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

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.state.lock().unwrap_or_else(|p| p.into_inner())
}

fn worker(index: usize, shared: &Shared) {
    let mut seen = 0;
    loop {
        let job = {
            let mut st = lock(shared);
            while st.generation == seen && !st.shutdown {
                st = shared.work.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.shutdown {
                return;
            }
            seen = st.generation;
            st.job
        };
        let ok = job.is_none_or(|j| catch_unwind(AssertUnwindSafe(|| (j.0)(index))).is_ok());
        let mut st = lock(shared);
        st.panicked |= !ok;
        st.remaining -= 1;
        if st.remaining == 0 {
            shared.done.notify_all();
        }
    }
}

/// Waits for the workers' shares and withdraws the job, also when job 0 unwinds.
struct WaitGuard<'a>(&'a Shared);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let mut st = lock(self.0);
        while st.remaining > 0 {
            st = self.0.done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.job = None;
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
            let mut st = lock(&self.shared);
            st.job = Some(erase(job));
            st.remaining = self.threads - 1;
            st.panicked = false;
            st.generation += 1;
        }
        self.shared.work.notify_all();
        {
            let _wait = WaitGuard(&self.shared);
            job(0);
        }
        if lock(&self.shared).panicked {
            panic!("a thread-pool worker panicked");
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        lock(&self.shared).shutdown = true;
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

//! Host-only helpers (`std` feature): a thread pool implementing [`Parallel`], file loading.

use std::time::Instant;

use crate::parallel::Parallel;

/// Workers on std threads. Each [`Parallel::run`] call runs job 0 on the calling thread and
/// the others on scoped threads.
pub struct ThreadPool {
    threads: usize,
}

impl ThreadPool {
    pub fn new(threads: usize) -> Self {
        Self { threads: threads.max(1) }
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
        std::thread::scope(|s| {
            for i in 1..self.threads {
                s.spawn(move || job(i));
            }
            job(0);
        });
    }
}

/// Monotonic nanoseconds since the first call.
pub fn now_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

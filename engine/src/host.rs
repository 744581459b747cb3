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

/// Bytes in anonymous memory the kernel is asked to back with 2 MiB pages
/// (`madvise(MADV_HUGEPAGE)`; transparent huge pages are often `madvise`-only, as here).
/// A decoded token streams every weight once (~250 MB for Gemma 3 270M Q4_K_M): on 4 KiB
/// pages that is ~60,000 TLB misses per token and a hardware prefetcher that stops at every
/// page boundary. `tvgen` loads models into one, and measures the memory bandwidth bound on
/// one. Where the kernel gives no huge pages the buffer works the same, on small pages.
pub struct HugeBuf {
    ptr: *mut u8,
    len: usize,
    map_len: usize,
}

// SAFETY: the mapping is owned exclusively by this value; `&HugeBuf` gives only `&[u8]`.
#[allow(unsafe_code)]
unsafe impl Send for HugeBuf {}
// SAFETY: as above: shared access is read-only.
#[allow(unsafe_code)]
unsafe impl Sync for HugeBuf {}

const HUGE_PAGE: usize = 2 << 20;

impl HugeBuf {
    /// `len` zero bytes, starting on a 2 MiB boundary.
    pub fn zeroed(len: usize) -> std::io::Result<Self> {
        let map_len = len.max(1).div_ceil(HUGE_PAGE) * HUGE_PAGE;
        // Over-allocate by one huge page so the buffer can start on a 2 MiB boundary.
        let raw_len = map_len + HUGE_PAGE;
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        #[allow(unsafe_code)]
        let raw = unsafe {
            libc::mmap(core::ptr::null_mut(), raw_len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        if raw == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let start = (raw as usize).div_ceil(HUGE_PAGE) * HUGE_PAGE;
        let head = start - raw as usize;
        let tail = raw_len - head - map_len;
        // SAFETY: both ranges lie within the mapping made above and are never used.
        #[allow(unsafe_code)]
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((start + map_len) as *mut libc::c_void, tail);
            }
            // Only advice: where it is refused the pages stay small.
            libc::madvise(start as *mut libc::c_void, map_len, libc::MADV_HUGEPAGE);
        }
        Ok(HugeBuf { ptr: start as *mut u8, len, map_len })
    }

    /// The whole file at `path`.
    pub fn read(path: &std::path::Path) -> std::io::Result<Self> {
        use std::io::Read;
        let mut f = std::fs::File::open(path)?;
        let len = usize::try_from(f.metadata()?.len()).map_err(|_| std::io::Error::other("file too large"))?;
        let mut b = Self::zeroed(len)?;
        f.read_exact(&mut b)?;
        Ok(b)
    }
}

impl core::ops::Deref for HugeBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len` initialized (zero-filled or written) bytes while
        // `self` lives.
        #[allow(unsafe_code)]
        unsafe {
            core::slice::from_raw_parts(self.ptr, self.len)
        }
    }
}

impl core::ops::DerefMut for HugeBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `deref`, and `&mut self` makes this the only access.
        #[allow(unsafe_code)]
        unsafe {
            core::slice::from_raw_parts_mut(self.ptr, self.len)
        }
    }
}

impl Drop for HugeBuf {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `zeroed`, unmapped once.
        #[allow(unsafe_code)]
        unsafe {
            libc::munmap(self.ptr as *mut libc::c_void, self.map_len);
        }
    }
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

    /// A file read into a `HugeBuf` gives back its bytes, from a 2 MiB boundary; a zeroed one is
    /// zeros and writable; an empty one is empty; a missing file is an error.
    #[test]
    fn huge_buf_holds_a_file() {
        let path = std::env::temp_dir().join(std::format!("tv-hugebuf-{}", std::process::id()));
        let data: Vec<u8> = (0..3_000_017u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let b = HugeBuf::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(&b[..], &data[..]);
        assert_eq!(b.as_ptr() as usize % HUGE_PAGE, 0);
        let mut z = HugeBuf::zeroed(5000).unwrap();
        assert!(z.iter().all(|&x| x == 0));
        z[4999] = 9;
        assert_eq!(z[4999], 9);
        assert!(HugeBuf::zeroed(0).unwrap().is_empty());
        assert!(HugeBuf::read(std::path::Path::new("/nonexistent/tv-model.gguf")).is_err());
    }
}

//! The `linux` transport: the tensor ABI from an unmodified Linux guest's user space, with no
//! kernel module (feature `linux`).
//!
//! The hypervisor presents a PCI function ([`tensor_hcall::linux`]) whose BAR 0 is the
//! *hypercall page* and BAR 1 the tenant's *tensor window*. A program maps both through sysfs
//! (`resource0`, `resource1` of [`SYSFS_DEVICE`]), reads the window's guest-physical base from
//! the `resource` file and then:
//! - makes a hypercall with 8-byte stores of the arguments to `HP_ARG0..=HP_ARG3` of its vCPU's
//!   slot and of the call number to `HP_CALL`; the store traps, the hypervisor runs the call and
//!   leaves RAX in `HP_RESULT` and `HP_SEQUENCE + 1` before the store retires. The transport
//!   checks the sequence moved by exactly one, so a dropped store (not tensorvisor's page, or a
//!   store the hypervisor refused) is an error, never a stale result;
//! - stages descriptors in the first [`STAGE_BYTES`] of the window and hands out the rest as
//!   [`SharedRegion`]s with [`LinuxTransport::region`]: the program reaches window byte `i` at
//!   its mapping + `i`, the hypervisor at `window_base + i`, so `Session::generate` and the other
//!   SDK calls work unchanged.
//!
//! Mapping needs `mmap(2)`, which `std` does not offer: the `libc` crate provides it (and
//! `sched_getcpu`/`sched_setaffinity` to find and keep the vCPU slot); it is the smallest binding
//! of the C library that a static Rust program links anyway.
//!
//! One program at a time should use the page: two processes on the same vCPU could interleave
//! their argument stores (each vCPU has one set of argument registers, as it has one RAX).
//!
//! ```no_run
//! use guest_sdk::linux::LinuxTransport;
//! use guest_sdk::tensor::{abi_info, Sampling, Session};
//! use tensor_hcall::desc::RegionFlags;
//!
//! let mut t = LinuxTransport::open().expect("the tensorvisor PCI function");
//! let info = abi_info(&mut t).unwrap();
//! let io = t.region(4096, RegionFlags::READ | RegionFlags::WRITE).unwrap();
//! let s = Session::open(&mut t, 0, 128).unwrap();
//! let n = s.generate(&mut t, &io, &[2, 302], 8, &Sampling::default(), |tok| println!("{tok}")).unwrap();
//! # let _ = (info, n);
//! ```

use crate::tensor::SharedRegion;
use crate::{HcallError, HcallRegs, Transport, STAGE_BYTES};
use std::fmt;
use std::path::{Path, PathBuf};
use tensor_hcall::desc::RegionFlags;
pub use tensor_hcall::linux::SYSFS_DEVICE;
use tensor_hcall::linux::{
    HP_ARG0, HP_ARG1, HP_ARG2, HP_ARG3, HP_CALL, HP_RESULT, HP_SEQUENCE, HP_VCPU_STRIDE, HYPERCALL_PAGE_SIZE, PCI_DEVICE_ID,
    PCI_VENDOR_ID,
};

/// Why the transport could not be opened.
#[derive(Debug)]
pub enum LinuxError {
    /// The PCI function is not there: not a tensorvisor tenant, or the kernel sees no PCI
    /// (`pci=off`), or sysfs is not mounted.
    NoDevice(PathBuf),
    /// The function at the address is something else.
    WrongDevice { vendor: u16, device: u16 },
    /// A sysfs file could not be read, opened or mapped.
    Io { path: PathBuf, error: std::io::Error },
    /// The `resource` file does not describe the two BARs the contract promises.
    BadResources(String),
}

impl fmt::Display for LinuxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinuxError::NoDevice(p) => write!(
                f,
                "no tensorvisor PCI function at {} (not a tensorvisor Linux tenant, PCI disabled, or sysfs not mounted)",
                p.display()
            ),
            LinuxError::WrongDevice { vendor, device } => {
                write!(f, "the PCI function is {vendor:04x}:{device:04x}, not tensorvisor's {PCI_VENDOR_ID:04x}:{PCI_DEVICE_ID:04x}")
            }
            LinuxError::Io { path, error } => write!(f, "{}: {error}", path.display()),
            LinuxError::BadResources(why) => write!(f, "bad BARs: {why}"),
        }
    }
}

impl std::error::Error for LinuxError {}

/// A BAR as the `resource` file of a PCI function gives it (one line per resource:
/// `0x<start> 0x<end> 0x<flags>`, all zero for an unused BAR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    pub start: u64,
    pub size: u64,
    pub flags: u64,
}

/// `IORESOURCE_MEM` in the flags (Linux `include/linux/ioport.h`).
pub const IORESOURCE_MEM: u64 = 0x200;

/// Parses a `resource` file; returns BAR 0 (the hypercall page) and BAR 1 (the window), both
/// checked: memory BARs, page-aligned, the page exactly [`HYPERCALL_PAGE_SIZE`].
pub fn parse_resources(text: &str) -> Result<(Bar, Bar), LinuxError> {
    let bad = |why: String| LinuxError::BadResources(why);
    let mut bars = Vec::new();
    for (i, line) in text.lines().take(2).enumerate() {
        let f: Vec<u64> = line
            .split_whitespace()
            .map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16))
            .collect::<Result<_, _>>()
            .map_err(|e| bad(format!("line {}: {e}: {line:?}", i + 1)))?;
        let [start, end, flags] = f[..] else { return Err(bad(format!("line {}: want 3 numbers: {line:?}", i + 1))) };
        if start == 0 || end < start || flags & IORESOURCE_MEM == 0 {
            return Err(bad(format!("BAR {i} is not an assigned memory BAR: {line:?}")));
        }
        let size = end - start + 1;
        if start % 4096 != 0 || size % 4096 != 0 {
            return Err(bad(format!("BAR {i} [{start:#x}, {end:#x}] is not page-aligned")));
        }
        bars.push(Bar { start, size, flags });
    }
    let [page, window] = bars[..] else { return Err(bad(format!("{} BAR line(s), want 2", bars.len()))) };
    if page.size != HYPERCALL_PAGE_SIZE {
        return Err(bad(format!("BAR 0 is {:#x} bytes, the hypercall page is {HYPERCALL_PAGE_SIZE:#x}", page.size)));
    }
    if window.size <= STAGE_BYTES as u64 {
        return Err(bad(format!("BAR 1 (the window) is only {:#x} bytes", window.size)));
    }
    Ok((page, window))
}

/// The hypercall page as the transport uses it: 8-byte loads and stores at byte offsets. The
/// real one is MMIO ([`MmioPage`]); tests use a fake that plays the hypervisor.
pub trait HypercallPage {
    fn load(&self, offset: u64) -> u64;
    fn store(&mut self, offset: u64, value: u64);
}

/// The tensor window as this program sees it: guest-physical base, where it is mapped, size.
struct Window {
    gpa: u64,
    ptr: *mut u8,
    len: u64,
}

/// The `linux` transport over hypercall page `P` (the real [`MmioPage`] by default).
pub struct LinuxTransport<P: HypercallPage = MmioPage> {
    page: P,
    slot: u64,
    window: Window,
    /// Next free window offset for [`LinuxTransport::region`].
    next: u64,
    /// Calls whose sequence number did not move by exactly one.
    pub sequence_errors: u64,
    /// Keeps the mappings alive (the real transport only).
    _maps: Vec<Mapping>,
}

impl<P: HypercallPage> LinuxTransport<P> {
    /// A transport over `page` (using vCPU `vcpu`'s slot) and a window of `len` bytes at
    /// guest-physical `gpa`, reached at `ptr`.
    ///
    /// # Safety
    /// `[ptr, ptr + len)` must map exactly the guest-physical range `[gpa, gpa + len)`, stay
    /// mapped while the transport lives, and be used by nothing but this transport and the
    /// regions it hands out.
    pub unsafe fn from_raw(page: P, vcpu: u64, gpa: u64, ptr: *mut u8, len: u64) -> Self {
        Self { page, slot: vcpu * HP_VCPU_STRIDE, window: Window { gpa, ptr, len }, next: STAGE_BYTES as u64, sequence_errors: 0, _maps: Vec::new() }
    }

    /// The window's guest-physical base and size.
    pub fn window(&self) -> (u64, u64) {
        (self.window.gpa, self.window.len)
    }

    /// Where the window is mapped in this process.
    pub fn window_ptr(&self) -> *mut u8 {
        self.window.ptr
    }

    /// Registers the next `len` bytes of the window (64-byte aligned) as a shared region. Window
    /// memory is handed out once: regions never overlap each other or the staging area.
    pub fn region(&mut self, len: u64, flags: RegionFlags) -> Result<SharedRegion, HcallError> {
        let off = self.next.next_multiple_of(64);
        let end = off.checked_add(len).filter(|&e| len > 0 && e <= self.window.len).ok_or(HcallError::NoMemory)?;
        let (gpa, addr) = (self.window.gpa + off, self.window.ptr as u64 + off);
        // SAFETY: `[addr, addr + len)` maps `[gpa, gpa + len)` (from_raw's/open's contract), lies
        // inside the window (checked), and `next` moves past it, so nothing else gets it.
        let r = unsafe { SharedRegion::register_mapped(self, gpa, addr, len, flags)? };
        self.next = end;
        Ok(r)
    }

    fn window_write(&mut self, off: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: callers keep `off + len` within the staging area at the window's start,
            // which `from_raw`'s caller guarantees is mapped and ours.
            unsafe { core::ptr::write_volatile(self.window.ptr.add(off as usize + i), *b) };
        }
    }
}

impl<P: HypercallPage> Transport for LinuxTransport<P> {
    fn hypercall(&mut self, r: HcallRegs) -> u64 {
        let s = self.slot;
        let before = self.page.load(s + HP_SEQUENCE);
        self.page.store(s + HP_ARG0, r.rbx);
        self.page.store(s + HP_ARG1, r.rcx);
        self.page.store(s + HP_ARG2, r.rdx);
        self.page.store(s + HP_ARG3, r.rsi);
        self.page.store(s + HP_CALL, r.rax);
        let after = self.page.load(s + HP_SEQUENCE);
        if after != before.wrapping_add(1) {
            // The store did not run exactly one call: its result is not ours to report.
            self.sequence_errors += 1;
            return tensor_hcall::encode_result(Err(HcallError::Internal));
        }
        self.page.load(s + HP_RESULT)
    }

    fn cpuid(&mut self, leaf: u32) -> [u32; 4] {
        let r = core::arch::x86_64::__cpuid_count(leaf, 0);
        [r.eax, r.ebx, r.ecx, r.edx]
    }

    fn stage(&mut self, bytes: &[u8]) -> u64 {
        let n = bytes.len().min(STAGE_BYTES);
        self.window_write(0, &bytes[..n]);
        self.window.gpa
    }

    fn read_staged(&mut self, out: &mut [u8]) {
        for (i, b) in out.iter_mut().take(STAGE_BYTES).enumerate() {
            // SAFETY: `i` < STAGE_BYTES, inside the window's staging area (see `window_write`);
            // volatile, since the hypervisor wrote it during the last call.
            *b = unsafe { core::ptr::read_volatile(self.window.ptr.add(i)) };
        }
    }
}

/// A shared mapping of a sysfs resource file, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned and nothing uses them after drop.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn map_file(path: &Path, len: u64) -> Result<Mapping, LinuxError> {
    use std::os::fd::AsRawFd;
    let io = |error| LinuxError::Io { path: path.to_path_buf(), error };
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(io)?;
    let len = usize::try_from(len).map_err(|_| LinuxError::BadResources(format!("{} is too large to map", path.display())))?;
    // SAFETY: a fresh shared mapping chosen by the kernel; it aliases no Rust object. The fd may
    // close after mmap returns (the mapping keeps the file).
    let p = unsafe { libc::mmap(core::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, f.as_raw_fd(), 0) };
    if p == libc::MAP_FAILED {
        return Err(io(std::io::Error::last_os_error()));
    }
    Ok(Mapping { ptr: p.cast(), len })
}

/// The real hypercall page: BAR 0 mapped from `resource0`, reached with volatile 8-byte loads
/// and stores (one `mov` each, which the hypervisor decodes).
pub struct MmioPage {
    base: *mut u64,
}

impl HypercallPage for MmioPage {
    fn load(&self, offset: u64) -> u64 {
        debug_assert!(offset.is_multiple_of(8) && offset < HYPERCALL_PAGE_SIZE);
        // SAFETY: `base` maps the 4 KiB page for as long as the transport lives; offsets are
        // the contract's 8-byte-aligned registers inside it.
        unsafe { core::ptr::read_volatile(self.base.add((offset / 8) as usize)) }
    }

    fn store(&mut self, offset: u64, value: u64) {
        debug_assert!(offset.is_multiple_of(8) && offset < HYPERCALL_PAGE_SIZE);
        // SAFETY: as in `load`; the store traps to the hypervisor, which emulates it. Written
        // as one `mov m64, r64` so the instruction the hypervisor decodes is always that plain
        // form (a volatile write of a constant could become `mov m64, imm32`).
        unsafe {
            let p = self.base.add((offset / 8) as usize);
            core::arch::asm!("mov qword ptr [{p}], {v}", p = in(reg) p, v = in(reg) value, options(nostack, preserves_flags));
        }
    }
}

fn read_hex(path: &Path) -> Result<u64, LinuxError> {
    let text = std::fs::read_to_string(path).map_err(|error| LinuxError::Io { path: path.to_path_buf(), error })?;
    u64::from_str_radix(text.trim().trim_start_matches("0x"), 16)
        .map_err(|e| LinuxError::BadResources(format!("{}: {e}: {:?}", path.display(), text.trim())))
}

impl LinuxTransport<MmioPage> {
    /// Opens the function at [`SYSFS_DEVICE`].
    pub fn open() -> Result<Self, LinuxError> {
        Self::open_at(Path::new(SYSFS_DEVICE))
    }

    /// Opens the function whose sysfs directory is `dir`: checks its ids, reads its BARs, maps
    /// both, and pins this thread to the CPU it runs on (its slot in the page is per vCPU).
    pub fn open_at(dir: &Path) -> Result<Self, LinuxError> {
        if !dir.join("resource").exists() {
            return Err(LinuxError::NoDevice(dir.to_path_buf()));
        }
        let (vendor, device) = (read_hex(&dir.join("vendor"))? as u16, read_hex(&dir.join("device"))? as u16);
        if (vendor, device) != (PCI_VENDOR_ID, PCI_DEVICE_ID) {
            return Err(LinuxError::WrongDevice { vendor, device });
        }
        let res = dir.join("resource");
        let text = std::fs::read_to_string(&res).map_err(|error| LinuxError::Io { path: res.clone(), error })?;
        let (page_bar, window_bar) = parse_resources(&text)?;
        // Memory decoding on (PCI command register bit 1): no driver claims the function, so
        // nobody else enables it. Already enabled, or not permitted: the mapping tells.
        let _ = std::fs::write(dir.join("enable"), "1");
        let page = map_file(&dir.join("resource0"), page_bar.size)?;
        let window = map_file(&dir.join("resource1"), window_bar.size)?;
        // SAFETY: plain libc calls on this thread's own affinity; a CPU number from
        // sched_getcpu is a valid index into the set.
        let vcpu = unsafe {
            let cpu = libc::sched_getcpu().max(0) as usize;
            let mut set: libc::cpu_set_t = core::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set);
            cpu as u64
        };
        if (vcpu + 1) * HP_VCPU_STRIDE > HYPERCALL_PAGE_SIZE {
            return Err(LinuxError::BadResources(format!("CPU {vcpu} has no slot in the hypercall page")));
        }
        let mmio = MmioPage { base: page.ptr.cast() };
        // SAFETY: `window` maps BAR 1, which is guest-physical `[window_bar.start, + size)`; the
        // mapping moves into the transport and lives as long as it.
        let mut t = unsafe { Self::from_raw(mmio, vcpu, window_bar.start, window.ptr, window_bar.size) };
        t._maps = vec![page, window];
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::in_process::InProcess;
    use crate::tensor::{abi_info, model_info, Sampling, Session};
    use engine::cpu::CpuFeatures;
    use hypervisor::dispatch::{EngineHost, GuestMemory, Limits, Tenant};
    use std::cell::RefCell;
    use std::rc::Rc;
    use tensor_hcall::{CallNumber, Hypercall};

    /// Guest memory of the fake tenant: the window at a guest-physical base that is *not* its
    /// host address, so a transport that confused the two would fail.
    struct FakeWindow {
        gpa: u64,
        host: *mut u8,
        len: u64,
    }

    impl GuestMemory for FakeWindow {
        fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), HcallError> {
            let off = self.off(gpa, buf.len() as u64)?;
            for (i, b) in buf.iter_mut().enumerate() {
                // SAFETY: in bounds (checked by `off`); the test keeps the storage alive.
                *b = unsafe { core::ptr::read_volatile(self.host.add(off + i)) };
            }
            Ok(())
        }
        fn write(&self, gpa: u64, data: &[u8]) -> Result<(), HcallError> {
            let off = self.off(gpa, data.len() as u64)?;
            for (i, b) in data.iter().enumerate() {
                // SAFETY: as in `read`.
                unsafe { core::ptr::write_volatile(self.host.add(off + i), *b) };
            }
            Ok(())
        }
        fn accessible(&self, gpa: u64, len: u64, _write: bool) -> bool {
            self.off(gpa, len).is_ok()
        }
    }

    impl FakeWindow {
        fn off(&self, gpa: u64, len: u64) -> Result<usize, HcallError> {
            let end = gpa.checked_add(len).ok_or(HcallError::BadAddress)?;
            if gpa < self.gpa || end > self.gpa + self.len {
                return Err(HcallError::BadAddress);
            }
            Ok((gpa - self.gpa) as usize)
        }
    }

    /// The hypervisor's side of the page: keeps the registers, runs the real dispatcher on a
    /// store to `HP_CALL`, and records every store.
    struct FakePage {
        regs: [u64; 512],
        stores: Rc<RefCell<Vec<(u64, u64)>>>,
        mem: FakeWindow,
        tenant: Tenant,
        engine: EngineHost,
        /// Plays a page whose stores go nowhere (no hypervisor behind it).
        dead: bool,
    }

    impl HypercallPage for FakePage {
        fn load(&self, offset: u64) -> u64 {
            self.regs[(offset / 8) as usize]
        }
        fn store(&mut self, offset: u64, value: u64) {
            self.stores.borrow_mut().push((offset, value));
            if self.dead {
                return;
            }
            let slot = offset / HP_VCPU_STRIDE * HP_VCPU_STRIDE;
            match offset % HP_VCPU_STRIDE {
                HP_CALL => {
                    let a = |o: u64| self.regs[((slot + o) / 8) as usize];
                    let regs = HcallRegs { rax: value, rbx: a(HP_ARG0), rcx: a(HP_ARG1), rdx: a(HP_ARG2), rsi: a(HP_ARG3) };
                    let rax = self.tenant.hypercall(&regs, &self.mem, &mut self.engine);
                    self.regs[((slot + HP_RESULT) / 8) as usize] = rax;
                    self.regs[((slot + HP_SEQUENCE) / 8) as usize] += 1;
                }
                HP_ARG0 | HP_ARG1 | HP_ARG2 | HP_ARG3 => self.regs[(offset / 8) as usize] = value,
                _ => {}
            }
        }
    }

    const WINDOW_GPA: u64 = 0xc000_0000;

    type Stores = Rc<RefCell<Vec<(u64, u64)>>>;

    fn fake(vcpu: u64, dead: bool, storage: &mut [u64]) -> (LinuxTransport<FakePage>, Stores) {
        let len = (storage.len() * 8) as u64;
        let host = storage.as_mut_ptr().cast::<u8>();
        let stores = Rc::new(RefCell::new(Vec::new()));
        let page = FakePage {
            regs: [0; 512],
            stores: stores.clone(),
            mem: FakeWindow { gpa: WINDOW_GPA, host, len },
            tenant: Tenant::new(1, Limits::default()),
            engine: EngineHost::new(CpuFeatures::detect()),
            dead,
        };
        // SAFETY: `storage` outlives the transport in every test and nothing else touches it.
        (unsafe { LinuxTransport::from_raw(page, vcpu, WINDOW_GPA, host, len) }, stores)
    }

    #[test]
    fn a_call_is_four_argument_stores_then_the_call_number_in_the_vcpu_slot() {
        let mut storage = vec![0u64; 8192];
        let (mut t, stores) = fake(2, false, &mut storage);
        let regs = Hypercall::Query { kind: 0, out_gpa: 0x1111, out_len: 0x2222 }.to_regs();
        let _ = t.hypercall(regs);
        let base = 2 * HP_VCPU_STRIDE;
        let want = vec![
            (base + HP_ARG0, regs.rbx),
            (base + HP_ARG1, regs.rcx),
            (base + HP_ARG2, regs.rdx),
            (base + HP_ARG3, regs.rsi),
            (base + HP_CALL, CallNumber::Query as u64),
        ];
        assert_eq!(*stores.borrow(), want);
        // Staging goes to the window's first bytes and is named by guest-physical address.
        assert_eq!(t.stage(&[7, 8, 9]), WINDOW_GPA);
        let mut back = [0u8; 3];
        t.read_staged(&mut back);
        assert_eq!(back, [7, 8, 9]);
    }

    #[test]
    fn errors_come_back_decoded_and_a_dead_page_is_never_a_result() {
        let mut storage = vec![0u64; 8192];
        let (mut t, _) = fake(0, false, &mut storage);
        // The staging GPA outside the window: the dispatcher's BadAddress, through the page.
        let r = crate::call(&mut t, Hypercall::Query { kind: 0, out_gpa: 0x1000, out_len: 64 });
        assert_eq!(r, Err(HcallError::BadAddress));
        assert_eq!(crate::call(&mut t, Hypercall::SessionClose { session: 0xdead }), Err(HcallError::BadHandle));
        assert_eq!(t.sequence_errors, 0);

        let mut storage2 = vec![0u64; 8192];
        let (mut dead, stores) = fake(0, true, &mut storage2);
        assert_eq!(crate::call(&mut dead, Hypercall::SessionClose { session: 1 }), Err(HcallError::Internal));
        assert_eq!(dead.sequence_errors, 1);
        assert_eq!(stores.borrow().len(), 5, "the stores were made; nothing answered");
    }

    #[test]
    fn regions_come_from_the_window_and_never_overlap_or_overflow() {
        let mut storage = vec![0u64; 8192];
        let (mut t, _) = fake(0, false, &mut storage);
        let rw = RegionFlags::READ | RegionFlags::WRITE;
        let a = t.region(100, rw).unwrap();
        let b = t.region(4096, rw).unwrap();
        assert_eq!(a.gpa(), WINDOW_GPA + STAGE_BYTES as u64);
        assert!(b.gpa() >= a.gpa() + 100 && b.gpa() % 64 == 0);
        assert_eq!(t.region(65536, rw).err(), Some(HcallError::NoMemory));
        // Bytes written through the region land at the window offset the GPA names.
        b.write_bytes(0, b"abc").unwrap();
        let off = (b.gpa() - WINDOW_GPA) as usize;
        let bytes: Vec<u8> = storage.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(&bytes[off..off + 3], b"abc");
    }

    /// `Session::generate` through the page, window and real dispatcher + engine generates the
    /// same tokens as the in-process transport (the SDK's reference) for the tiny model.
    #[test]
    fn session_generate_through_the_page_matches_the_in_process_transport() {
        let gguf = engine::tiny::tiny_gemma3(1);
        let prompt = [2u32, 302, 275, 264];
        let sampling = Sampling::default();

        let mut storage = vec![0u64; 1 << 15];
        let (mut t, _) = fake(0, false, &mut storage);
        let g = engine::gguf::Gguf::parse(Box::leak(gguf.clone().into_boxed_slice())).unwrap();
        let model = engine::model::Model::from_gguf(&g).unwrap();
        let tok = engine::tokenizer::Tokenizer::from_gguf(&g).unwrap();
        t.page.engine.add("tiny.gguf", model, tok);
        let abi = abi_info(&mut t).unwrap();
        assert_eq!(abi.models, 1);
        let info = model_info(&mut t, 0).unwrap();
        assert!(info.name.starts_with(b"tiny.gguf"));
        let io = t.region(4096, RegionFlags::READ | RegionFlags::WRITE).unwrap();
        let s = Session::open(&mut t, info.id, 64).unwrap();
        let mut got = Vec::new();
        s.generate(&mut t, &io, &prompt, 6, &sampling, |x| got.push(x)).unwrap();
        s.close(&mut t).unwrap();

        let mut r = InProcess::new(1 << 20);
        let id = r.add_model("tiny.gguf", gguf).unwrap();
        let gpa = r.alloc(4096, 64);
        // SAFETY: from the transport's arena, used for nothing else.
        let rio = unsafe { SharedRegion::register(&mut r, gpa, 4096, RegionFlags::READ | RegionFlags::WRITE) }.unwrap();
        let rs = Session::open(&mut r, id, 64).unwrap();
        let mut want = Vec::new();
        rs.generate(&mut r, &rio, &prompt, 6, &sampling, |x| want.push(x)).unwrap();
        assert_eq!(got.len(), 6);
        assert_eq!(got, want);
        assert_eq!(t.sequence_errors, 0);
    }

    #[test]
    fn resource_files_are_parsed_and_checked() {
        let good = "0x00000000fe000000 0x00000000fe000fff 0x0000000000040200\n\
                    0x00000000fd000000 0x00000000fd3fffff 0x0000000000040200\n\
                    0x0000000000000000 0x0000000000000000 0x0000000000000000\n";
        let (page, window) = parse_resources(good).unwrap();
        assert_eq!((page.start, page.size), (0xfe00_0000, 0x1000));
        assert_eq!((window.start, window.size), (0xfd00_0000, 0x40_0000));
        let unassigned = good.replacen("0x00000000fd000000 0x00000000fd3fffff 0x0000000000040200", "0x0 0x0 0x0", 1);
        assert!(matches!(parse_resources(&unassigned), Err(LinuxError::BadResources(_))));
        let big_page = good.replacen("fe000fff", "fe001fff", 1);
        assert!(parse_resources(&big_page).unwrap_err().to_string().contains("hypercall page"));
        let io_bar = good.replacen("0x0000000000040200", "0x0000000000040100", 1);
        assert!(parse_resources(&io_bar).is_err());
        assert!(parse_resources("garbage\n").is_err());
        assert!(parse_resources(good.lines().next().unwrap()).is_err());
    }

    /// The real path (sysfs files, mmap, volatile MMIO accessors) on a fake sysfs directory of
    /// plain files: the mappings work, staging lands in the window's file, and since a plain
    /// file runs no hypercalls, every call is reported as unanswered, never as a result.
    #[test]
    fn open_at_maps_the_bars_and_a_page_without_a_hypervisor_answers_nothing() {
        let dir = std::env::temp_dir().join(format!("tv-fake-sysfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let resources = "0x00000000fe000000 0x00000000fe000fff 0x0000000000040200\n\
                         0x00000000fd000000 0x00000000fd00ffff 0x0000000000040200\n";
        for (f, v) in [("resource", resources), ("vendor", "0x7476\n"), ("device", "0x0001\n")] {
            std::fs::write(dir.join(f), v).unwrap();
        }
        std::fs::write(dir.join("resource0"), vec![0u8; 4096]).unwrap();
        std::fs::write(dir.join("resource1"), vec![0u8; 0x1_0000]).unwrap();
        {
            let mut t = LinuxTransport::open_at(&dir).expect("open the fake function");
            assert_eq!(t.window(), (0xfd00_0000, 0x1_0000));
            assert_eq!(t.stage(b"staged"), 0xfd00_0000);
            assert_eq!(crate::call(&mut t, Hypercall::SessionClose { session: 1 }), Err(HcallError::Internal));
            assert_eq!(t.sequence_errors, 1);
            assert_eq!(t.region(64, RegionFlags::READ).err(), Some(HcallError::Internal));
        }
        // Through the shared mappings, the stores reached the files: the call number in the
        // slot's HP_CALL, the descriptor in the window's staging area.
        let page = std::fs::read(dir.join("resource0")).unwrap();
        let slot = (LinuxTransport::open_at(&dir).unwrap().slot) as usize;
        let call_at = slot + HP_CALL as usize;
        assert_eq!(u64::from_le_bytes(page[call_at..call_at + 8].try_into().unwrap()), CallNumber::RegisterMemory as u64);
        assert_eq!(&std::fs::read(dir.join("resource1")).unwrap()[..6], b"staged");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn opening_without_the_function_says_so() {
        let dir = std::env::temp_dir().join(format!("tv-no-device-{}", std::process::id()));
        let e = LinuxTransport::open_at(&dir).err().expect("no device");
        assert!(matches!(e, LinuxError::NoDevice(_)));
        assert!(e.to_string().contains("no tensorvisor PCI function"));
        // A directory that looks like a PCI function but is another device.
        std::fs::create_dir_all(&dir).unwrap();
        for (f, v) in [("resource", "0x0 0x0 0x0\n"), ("vendor", "0x8086\n"), ("device", "0x1237\n")] {
            std::fs::write(dir.join(f), v).unwrap();
        }
        let e = LinuxTransport::open_at(&dir).err().expect("wrong device");
        assert!(matches!(e, LinuxError::WrongDevice { vendor: 0x8086, device: 0x1237 }), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Starting the application processors.
//!
//! The boot CPU copies a trampoline to physical page 0x8000, identity-maps that page, and for each
//! other CPU writes its start parameters (kernel CR3, EFER bits, stack, index) into the
//! trampoline and sends INIT, then two start-up IPIs with vector 0x08 through the local APIC
//! (Intel SDM Vol. 3A, 9.4.4; the MP start-up protocol). The AP runs the trampoline from real mode
//! to protected mode to long mode on the kernel's own page tables, then enters [`ap_main`], which
//! gives it its own GDT, TSS and interrupt stacks, the shared IDT, SSE, and (where the CPU has
//! VMX) VMX root operation, and reports in. APs are started one at a time.

use super::{cpu, cr, fpu, gdt, idt, memory, tsc};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Where the trampoline runs (SIPI vector 0x08 = 0x8000); inside the first megabyte, which the
/// frame allocator never hands out.
const TRAMPOLINE: u64 = 0x8000;
const IA32_APIC_BASE: u32 = 0x1b;
const APIC_ID: u64 = 0x20;
const APIC_ICR_LOW: u64 = 0x300;
const APIC_ICR_HIGH: u64 = 0x310;
const APIC_SVR: u64 = 0xf0;

core::arch::global_asm!(
    r#"
    .section .rodata.trampoline, "a"
    .global ap_trampoline_start, ap_trampoline_end, ap_tramp_cr3, ap_tramp_efer, ap_tramp_stack, ap_tramp_index, ap_tramp_entry
    .set TBASE, 0x8000
    .code16
ap_trampoline_start:
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl (ap_tramp_gdt_ptr - ap_trampoline_start + TBASE)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $(ap_tramp32 - ap_trampoline_start + TBASE)
    .code32
ap_tramp32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr4, %eax
    orl $(1 << 5), %eax
    movl %eax, %cr4
    movl (ap_tramp_cr3 - ap_trampoline_start + TBASE), %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl (ap_tramp_efer - ap_trampoline_start + TBASE), %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80010001, %eax
    movl %eax, %cr0
    ljmpl $0x18, $(ap_tramp64 - ap_trampoline_start + TBASE)
    .code64
ap_tramp64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movq (ap_tramp_stack - ap_trampoline_start + TBASE), %rsp
    movq (ap_tramp_index - ap_trampoline_start + TBASE), %rdi
    movq (ap_tramp_entry - ap_trampoline_start + TBASE), %rax
    xorl %ebp, %ebp
    callq *%rax
1:  cli
    hlt
    jmp 1b
    .balign 8
ap_tramp_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00af9a000000ffff
ap_tramp_gdt_ptr:
    .short 31
    .long ap_tramp_gdt - ap_trampoline_start + TBASE
    .balign 8
ap_tramp_cr3: .long 0
ap_tramp_efer: .long 0
ap_tramp_stack: .quad 0
ap_tramp_index: .quad 0
ap_tramp_entry: .quad 0
ap_trampoline_end:
    .text
"#,
    options(att_syntax)
);

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static ap_tramp_cr3: u8;
    static ap_tramp_efer: u8;
    static ap_tramp_stack: u8;
    static ap_tramp_index: u8;
    static ap_tramp_entry: u8;
}

/// The engine's work shared out to the application processors: a job, its generation, and how
/// many workers finished it.
static JOB: spin::Mutex<Option<&'static (dyn Fn(usize) + Sync)>> = spin::Mutex::new(None);
static JOB_GENERATION: AtomicU64 = AtomicU64::new(0);
static JOB_DONE: AtomicU32 = AtomicU32::new(0);
/// Worker indices are 1..WORKERS (the boot CPU is worker 0).
static WORKERS: AtomicU32 = AtomicU32::new(1);
static LAPIC_VIRT: AtomicU64 = AtomicU64::new(0);

/// The CPUs as the engine's workers ([`engine::parallel::Parallel`]): the boot CPU runs share 0
/// and wakes the parked application processors with an IPI for the others.
pub struct CpuPool;

impl engine::parallel::Parallel for CpuPool {
    fn threads(&self) -> usize {
        WORKERS.load(Ordering::Acquire) as usize
    }

    fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        let workers = WORKERS.load(Ordering::Acquire);
        if workers <= 1 {
            job(0);
            return;
        }
        // SAFETY: the reference is only used by the workers between the generation bump below
        // and their JOB_DONE increments; this function waits for all of them and clears JOB
        // before returning, so no use outlives the borrow `job` really has.
        let erased: &'static (dyn Fn(usize) + Sync) = unsafe { core::mem::transmute(job) };
        JOB_DONE.store(0, Ordering::Release);
        *JOB.lock() = Some(erased);
        JOB_GENERATION.fetch_add(1, Ordering::AcqRel);
        let base = LAPIC_VIRT.load(Ordering::Acquire);
        if base != 0 {
            // Only the engine's workers: a CPU running pinned vCPUs is left alone.
            let lapic = Lapic { base };
            for cpu in 1..MAX_CPUS {
                let apic = APIC_OF[cpu].load(Ordering::Acquire);
                if WORKER_OF[cpu].load(Ordering::Acquire) != NOT_A_WORKER && apic != NOT_UP {
                    lapic.ipi(apic, u32::from(idt::WAKE_VECTOR));
                }
            }
        }
        job(0);
        while JOB_DONE.load(Ordering::Acquire) < workers - 1 {
            core::hint::spin_loop();
        }
        *JOB.lock() = None;
    }
}

/// CPU numbers: 0 is the boot CPU, `i` the `i`-th other enabled MADT entry.
const MAX_CPUS: usize = 64;
const NOT_UP: u32 = u32::MAX;
const NOT_A_WORKER: u32 = u32::MAX;
/// The APIC id of each CPU that came up.
static APIC_OF: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(NOT_UP) }; MAX_CPUS];
/// The application processors (by CPU number) that came up in VMX root operation.
static VMX_UP: AtomicU64 = AtomicU64::new(0);
/// Each CPU's engine worker index (contiguous from 1; the boot CPU is 0), or NOT_A_WORKER.
static WORKER_OF: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(NOT_A_WORKER) }; MAX_CPUS];
/// A long task handed to one application processor (the loop of its pinned vCPUs), and
/// whether it has returned.
type Task = &'static (dyn Fn(u32) + Sync);
static TASK: [spin::Mutex<Option<Task>>; MAX_CPUS] = [const { spin::Mutex::new(None) }; MAX_CPUS];
static TASK_DONE: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// CPUs that reported in (the boot CPU counts as one).
static ONLINE: AtomicU32 = AtomicU32::new(1);
/// Application processors whose VMXON succeeded.
static VMX_ON: AtomicU32 = AtomicU32::new(0);
/// The index of the AP that last reported in (the boot CPU waits for it).
static STARTED: AtomicU64 = AtomicU64::new(0);

fn offset(sym: *const u8) -> u64 {
    sym as u64 - core::ptr::addr_of!(ap_trampoline_start) as u64
}

/// The local APIC's registers, mapped uncached.
struct Lapic {
    base: u64,
}

impl Lapic {
    fn new() -> Option<Self> {
        // SAFETY: IA32_APIC_BASE exists on every CPU with a local APIC (all x86_64 CPUs).
        let msr = unsafe { cr::rdmsr(IA32_APIC_BASE) };
        let phys = msr & 0x000f_ffff_ffff_f000;
        let base = memory::map_mmio(phys, 0x1000).ok()?;
        Some(Self { base })
    }

    fn read(&self, reg: u64) -> u32 {
        // SAFETY: `reg` is a local APIC register offset inside the mapped 4 KiB page.
        unsafe { core::ptr::read_volatile((self.base + reg) as *const u32) }
    }

    fn write(&self, reg: u64, v: u32) {
        // SAFETY: as in `read`; writing APIC registers is how IPIs are sent.
        unsafe { core::ptr::write_volatile((self.base + reg) as *mut u32, v) }
    }

    fn id(&self) -> u32 {
        self.read(APIC_ID) >> 24
    }

    /// Sends an IPI with `low` as the ICR low word to the APIC `dest`, waiting for delivery.
    fn ipi(&self, dest: u32, low: u32) {
        self.write(APIC_ICR_HIGH, dest << 24);
        self.write(APIC_ICR_LOW, low);
        for _ in 0..1_000_000 {
            if self.read(APIC_ICR_LOW) & (1 << 12) == 0 {
                break;
            }
            core::hint::spin_loop();
        }
    }
}

fn wait_us(us: u64) {
    let end = tsc::rdtsc() + us * (tsc::hz() / 1_000_000).max(1);
    while tsc::rdtsc() < end {
        core::hint::spin_loop();
    }
}

/// Starts every CPU in `apic_ids` other than the boot CPU; returns how many CPUs are online.
pub fn start_aps(apic_ids: &[u32]) -> u32 {
    let Some(lapic) = Lapic::new() else {
        log::error!("smp: cannot map the local APIC");
        return 1;
    };
    // Software-enable the boot CPU's APIC (spurious vector 0xff) so it can send IPIs.
    lapic.write(APIC_SVR, lapic.read(APIC_SVR) | 0x1ff);
    LAPIC_VIRT.store(lapic.base, Ordering::Release);
    idt::set_lapic_eoi(lapic.base + 0xb0);
    let me = lapic.id();
    APIC_OF[0].store(me, Ordering::Release);
    let start = core::ptr::addr_of!(ap_trampoline_start);
    let len = offset(core::ptr::addr_of!(ap_trampoline_end)) as usize;
    if memory::map_identity(TRAMPOLINE).is_err() {
        log::error!("smp: cannot map the trampoline page");
        return 1;
    }
    // SAFETY: page 0x8000 is in the reserved first megabyte (never handed out) and identity-
    // mapped writable just above; the trampoline is `len` (< 4 KiB) bytes of this image.
    unsafe { core::ptr::copy_nonoverlapping(start, TRAMPOLINE as *mut u8, len) };
    let var = |sym: *const u8| TRAMPOLINE + offset(sym);
    let efer_bits: u32 = (1 << 8) | if cpu::features().nx { 1 << 11 } else { 0 };
    // SAFETY: the variables lie inside the copied trampoline page (offsets below `len`).
    unsafe {
        core::ptr::write_volatile(var(core::ptr::addr_of!(ap_tramp_cr3)) as *mut u32, memory::kernel_cr3() as u32);
        core::ptr::write_volatile(var(core::ptr::addr_of!(ap_tramp_efer)) as *mut u32, efer_bits);
        core::ptr::write_volatile(var(core::ptr::addr_of!(ap_tramp_entry)) as *mut u64, ap_main as *const () as u64);
    }
    let mut index = 0u64;
    for &id in apic_ids.iter().filter(|&&id| id != me) {
        index += 1;
        if index as usize >= MAX_CPUS {
            log::warn!("smp: more than {MAX_CPUS} CPUs: APIC id {id} and beyond not started");
            break;
        }
        let stack = match memory::new_stack(16) {
            Ok(top) => top,
            Err(e) => {
                log::error!("smp: no stack for CPU {index}: {e:?}");
                break;
            }
        };
        // SAFETY: as above.
        unsafe {
            core::ptr::write_volatile(var(core::ptr::addr_of!(ap_tramp_stack)) as *mut u64, stack);
            core::ptr::write_volatile(var(core::ptr::addr_of!(ap_tramp_index)) as *mut u64, index);
        }
        let before = ONLINE.load(Ordering::Acquire);
        lapic.ipi(id, 0x4500); // INIT, level assert
        wait_us(10_000);
        for _ in 0..2 {
            lapic.ipi(id, 0x4600 | (TRAMPOLINE >> 12) as u32); // start-up, vector 0x08
            wait_us(200);
        }
        let deadline = tsc::rdtsc() + 500 * (tsc::hz() / 1000);
        while ONLINE.load(Ordering::Acquire) == before && tsc::rdtsc() < deadline {
            core::hint::spin_loop();
        }
        if STARTED.load(Ordering::Acquire) != index {
            log::error!("smp: CPU {index} (APIC id {id}) did not start");
        }
    }
    memory::unmap_identity(TRAMPOLINE);
    let online = ONLINE.load(Ordering::Acquire);
    WORKERS.store(online, Ordering::Release);
    online
}

/// How many application processors entered VMX root operation.
pub fn vmx_cpus() -> u32 {
    VMX_ON.load(Ordering::Acquire)
}

/// The CPUs that can run vCPUs: the boot CPU (bit 0) and every application processor that
/// came up in VMX root operation (bit = CPU number).
pub fn vmx_up() -> u64 {
    VMX_UP.load(Ordering::Acquire) | 1
}

/// The running CPU's number and APIC id, asked of the CPU itself (CPUID.01H:EBX[31:24], the
/// initial APIC id; SDM Vol. 2A, CPUID) and looked up among the CPUs started. CPU 0 when the
/// application processors were never started.
pub fn current_cpu() -> (u32, u32) {
    let apic = core::arch::x86_64::__cpuid(1).ebx >> 24;
    let cpu = (0..MAX_CPUS).find(|&c| APIC_OF[c].load(Ordering::Acquire) == apic).unwrap_or(0);
    (cpu as u32, apic)
}

/// Makes the CPUs in `cpus` (bit = CPU number; the boot CPU is always worker 0) the engine's
/// workers, numbered 1.. in CPU order; the others stay out of every matrix product. Called by
/// the boot CPU between engine jobs only.
pub fn set_engine_workers(cpus: u64) {
    let mut next = 1u32;
    for (cpu, w) in WORKER_OF.iter().enumerate().skip(1) {
        let up = APIC_OF[cpu].load(Ordering::Acquire) != NOT_UP;
        if up && cpus & (1 << cpu) != 0 {
            w.store(next, Ordering::Release);
            next += 1;
        } else {
            w.store(NOT_A_WORKER, Ordering::Release);
        }
    }
    WORKERS.store(next, Ordering::Release);
}

/// Sends the wake-up IPI to the CPUs in `cpus` (bit = CPU number): ends their [`idle`].
pub fn wake(cpus: u64) {
    let base = LAPIC_VIRT.load(Ordering::Acquire);
    if base == 0 {
        return;
    }
    for cpu in (0..MAX_CPUS).filter(|&c| cpus & (1 << c) != 0) {
        let apic = APIC_OF[cpu].load(Ordering::Acquire);
        if apic != NOT_UP {
            Lapic { base }.ipi(apic, u32::from(idt::WAKE_VECTOR));
        }
    }
}

/// Halts this CPU until an interrupt (a [`wake`] IPI) arrives. Check for work with interrupts
/// off before calling: a wake-up sent after that check still ends the HLT.
pub fn idle() {
    super::serial::pump();
    // SAFETY: STI's one-instruction shadow makes STI;HLT atomic, so a wake-up IPI pending since
    // the caller's check ends the HLT; the wake-up vector's handler only acknowledges it, and
    // interrupts are off again before this returns.
    unsafe { core::arch::asm!("sti; hlt; cli", options(nomem, nostack)) };
}

/// Runs `task(cpu)` on every application processor in `cpus` (bit = CPU number; each must have
/// come up) while the boot CPU runs `here`; returns `here`'s result once `here` and every task
/// have returned. Take those CPUs out of the engine's workers first ([`set_engine_workers`]).
pub fn run_on<R>(cpus: u64, task: &(dyn Fn(u32) + Sync), here: impl FnOnce() -> R) -> R {
    let targets: alloc::vec::Vec<usize> =
        (1..MAX_CPUS).filter(|&c| cpus & (1 << c) != 0 && APIC_OF[c].load(Ordering::Acquire) != NOT_UP).collect();
    // SAFETY: every CPU given the reference is waited for below (TASK_DONE) before this
    // function returns, and its slot is emptied when it takes the task, so no use outlives the
    // borrow `task` really has. (A panic ends the machine: there is no unwinding past here.)
    let erased: Task = unsafe { core::mem::transmute::<&(dyn Fn(u32) + Sync), Task>(task) };
    let base = LAPIC_VIRT.load(Ordering::Acquire);
    for &c in &targets {
        TASK_DONE[c].store(false, Ordering::Release);
        *TASK[c].lock() = Some(erased);
        if base != 0 {
            Lapic { base }.ipi(APIC_OF[c].load(Ordering::Acquire), u32::from(idt::WAKE_VECTOR));
        }
    }
    let r = here();
    for &c in &targets {
        while !TASK_DONE[c].load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
    }
    r
}

/// An application processor's first Rust code, on its own stack, interrupts off.
extern "C" fn ap_main(index: u64) -> ! {
    let ist = [memory::new_stack(4), memory::new_stack(4), memory::new_stack(4)];
    match ist {
        [Ok(a), Ok(b), Ok(c)] => gdt::init_ap([a, b, c]),
        _ => log::error!("smp: CPU {index}: no interrupt stacks"),
    }
    idt::load();
    fpu::enable();
    let lapic = Lapic::new();
    if let Some(l) = &lapic {
        l.write(APIC_SVR, l.read(APIC_SVR) | 0x1ff); // accept the wake-up IPI
        l.write(0x80, 0); // task priority 0
    }
    let apic = lapic.as_ref().map_or(u32::MAX, |l| l.id());
    APIC_OF[index as usize].store(apic, Ordering::Release);
    let vmx = match cpu::vmx_capabilities() {
        Some(caps) => match super::vmm::enable_on_this_cpu(&caps) {
            Ok(()) => {
                VMX_ON.fetch_add(1, Ordering::AcqRel);
                VMX_UP.fetch_or(1 << index, Ordering::AcqRel);
                "VMXON done"
            }
            Err(_) => "VMXON failed",
        },
        None => "no VMX",
    };
    log::info!("smp: CPU {index} online (APIC id {apic}), {vmx}");
    STARTED.store(index, Ordering::Release);
    // Worker ids are handed out in check-in order, so they are contiguous even if some CPU
    // failed to start.
    let worker = ONLINE.fetch_add(1, Ordering::AcqRel);
    WORKER_OF[index as usize].store(worker, Ordering::Release);
    worker_loop(index as usize)
}

/// Runs a task handed to this CPU ([`run_on`]), and engine jobs as they are published while it
/// is an engine worker; sleeps in HLT in between (the wake-up IPI ends it).
fn worker_loop(cpu: usize) -> ! {
    let mut seen = JOB_GENERATION.load(Ordering::Acquire);
    loop {
        let task = TASK[cpu].lock().take();
        if let Some(task) = task {
            task(cpu as u32);
            TASK_DONE[cpu].store(true, Ordering::Release);
            continue;
        }
        let generation = JOB_GENERATION.load(Ordering::Acquire);
        if generation != seen {
            seen = generation;
            let job = *JOB.lock();
            let index = WORKER_OF[cpu].load(Ordering::Acquire);
            if let Some(job) = job.filter(|_| index != NOT_A_WORKER) {
                job(index as usize);
                JOB_DONE.fetch_add(1, Ordering::AcqRel);
            }
            continue;
        }
        // SAFETY: STI's one-instruction shadow makes STI;HLT atomic: a wake-up IPI that arrives
        // after the check above still ends the HLT. The only interrupt this CPU accepts is the
        // wake-up vector, whose handler only acknowledges it.
        unsafe { core::arch::asm!("sti; hlt; cli", options(nomem, nostack)) };
    }
}

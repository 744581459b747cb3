//! The interrupt descriptor table and the CPU exception handlers.
//!
//! Every exception vector (0-31) has an assembly stub that pushes a uniform [`TrapFrame`] (a zero
//! error code where the CPU pushes none) and calls [`exception_entry`]. In the hypervisor itself
//! an exception is a bug: the handler prints the vector, error code, RIP, CR2 and every register,
//! names the stack whose guard page was hit if that is what happened, and stops the machine with
//! a failure status.

use super::gdt::{IST_DOUBLE_FAULT, IST_MACHINE_CHECK, IST_NMI, KERNEL_CS};
use core::cell::UnsafeCell;

/// Registers saved by the stubs, lowest address first, then what the CPU pushed.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

macro_rules! stubs {
    ($($n:literal $kind:ident),* $(,)?) => {
        core::arch::global_asm!(
            $( stubs!(@stub $n $kind), )*
            ".section .rodata",
            ".balign 8",
            ".global exception_stub_table",
            "exception_stub_table:",
            $( concat!(".quad exception_stub_", stringify!($n)), )*
            ".text",
        );
    };
    (@stub $n:literal noerr) => {
        concat!(".text\n exception_stub_", stringify!($n), ":\n push 0\n push ", stringify!($n), "\n jmp exception_common")
    };
    (@stub $n:literal err) => {
        concat!(".text\n exception_stub_", stringify!($n), ":\n push ", stringify!($n), "\n jmp exception_common")
    };
}

// The CPU pushes an error code for vectors 8, 10-14, 17, 21, 29 and 30 (SDM Vol. 3A, 6.15).
stubs!(
    0 noerr, 1 noerr, 2 noerr, 3 noerr, 4 noerr, 5 noerr, 6 noerr, 7 noerr,
    8 err, 9 noerr, 10 err, 11 err, 12 err, 13 err, 14 err, 15 noerr,
    16 noerr, 17 err, 18 noerr, 19 noerr, 20 noerr, 21 err, 22 noerr, 23 noerr,
    24 noerr, 25 noerr, 26 noerr, 27 noerr, 28 noerr, 29 err, 30 err, 31 noerr,
);

core::arch::global_asm!(
    ".text",
    "exception_common:",
    "push rax", "push rbx", "push rcx", "push rdx", "push rsi", "push rdi", "push rbp",
    "push r8", "push r9", "push r10", "push r11", "push r12", "push r13", "push r14", "push r15",
    "mov rdi, rsp",
    "cld",
    // 15 registers + vector + error code + the CPU's 5 words = 22 words: RSP stays 16-aligned.
    "call exception_entry",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop r11", "pop r10", "pop r9", "pop r8",
    "pop rbp", "pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rbx", "pop rax",
    "add rsp, 16",
    "iretq",
);

/// The wake-up IPI the boot CPU sends to parked application processors (see `smp`).
pub const WAKE_VECTOR: u8 = 0xf0;

/// The local APIC's EOI register, as mapped by `smp` (0 until then).
#[unsafe(no_mangle)]
static LAPIC_EOI_ADDR: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

core::arch::global_asm!(
    ".text",
    ".global wake_handler",
    // The wake-up IPI only ends a HLT: acknowledge it (EOI) and return.
    "wake_handler:",
    "push rax",
    "mov rax, [rip + LAPIC_EOI_ADDR]",
    "test rax, rax",
    "jz 2f",
    "mov dword ptr [rax], 0",
    "2:",
    "pop rax",
    "iretq",
);

unsafe extern "C" {
    static exception_stub_table: [u64; 32];
    fn wake_handler();
}

/// Records where the local APIC's EOI register is mapped (all CPUs map it at the same address).
pub fn set_lapic_eoi(addr: u64) {
    LAPIC_EOI_ADDR.store(addr, core::sync::atomic::Ordering::Release);
}

/// Ends the interrupt this CPU's local APIC is serving (a wake-up IPI that ended a VM exit
/// rather than a HLT).
pub fn eoi() {
    let addr = LAPIC_EOI_ADDR.load(core::sync::atomic::Ordering::Acquire);
    if addr != 0 {
        // SAFETY: `addr` is the EOI register of the local APIC page `smp` mapped uncached;
        // writing 0 to it is the EOI (SDM Vol. 3A, 11.8.5).
        unsafe { core::ptr::write_volatile(addr as *mut u32, 0) };
    }
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

const _: () = assert!(core::mem::size_of::<Gate>() == 16);

impl Gate {
    const MISSING: Self = Self { offset_low: 0, selector: 0, ist: 0, attributes: 0, offset_mid: 0, offset_high: 0, reserved: 0 };

    fn interrupt(handler: u64, ist: u8) -> Self {
        Self {
            offset_low: handler as u16,
            selector: KERNEL_CS,
            ist,
            attributes: 0x8e, // present, DPL 0, 64-bit interrupt gate
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt([Gate; 256]);

struct IdtCell(UnsafeCell<Idt>);

// SAFETY: written only by `init` on the boot CPU before interrupts are enabled; read by the CPU.
unsafe impl Sync for IdtCell {}

static IDT: IdtCell = IdtCell(UnsafeCell::new(Idt([Gate::MISSING; 256])));

/// Fills the exception gates and loads the IDT.
pub fn init() {
    // SAFETY: single-threaded boot; no other reference to IDT exists (see IdtCell).
    let idt = unsafe { &mut *IDT.0.get() };
    // SAFETY: the table is defined in the assembly above with 32 entries.
    let stubs = unsafe { &*core::ptr::addr_of!(exception_stub_table) };
    for (vector, &stub) in stubs.iter().enumerate() {
        let ist = match vector {
            2 => IST_NMI,
            8 => IST_DOUBLE_FAULT,
            18 => IST_MACHINE_CHECK,
            _ => 0,
        };
        idt.0[vector] = Gate::interrupt(stub, ist);
    }
    idt.0[WAKE_VECTOR as usize] = Gate::interrupt(wake_handler as *const () as u64, 0);
    load();
}

/// Loads the (shared, already filled) IDT on this CPU.
pub fn load() {
    #[repr(C, packed(2))]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let ptr = Pointer { limit: (core::mem::size_of::<Idt>() - 1) as u16, base: IDT.0.get() as u64 };
    // SAFETY: the IDT is 'static and every present gate points at a stub defined above.
    unsafe { core::arch::asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags)) };
}

/// The architectural name of an exception vector.
pub fn vector_name(vector: u64) -> &'static str {
    match vector {
        0 => "divide error (#DE)",
        1 => "debug (#DB)",
        2 => "non-maskable interrupt (NMI)",
        3 => "breakpoint (#BP)",
        4 => "overflow (#OF)",
        5 => "bound range exceeded (#BR)",
        6 => "invalid opcode (#UD)",
        7 => "device not available (#NM)",
        8 => "double fault (#DF)",
        10 => "invalid TSS (#TS)",
        11 => "segment not present (#NP)",
        12 => "stack-segment fault (#SS)",
        13 => "general protection (#GP)",
        14 => "page fault (#PF)",
        16 => "x87 floating-point error (#MF)",
        17 => "alignment check (#AC)",
        18 => "machine check (#MC)",
        19 => "SIMD floating-point (#XM)",
        20 => "virtualization exception (#VE)",
        21 => "control protection (#CP)",
        _ => "reserved vector",
    }
}

fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Called by the stubs with the saved frame.
#[unsafe(no_mangle)]
extern "C" fn exception_entry(frame: &mut TrapFrame) {
    super::serial::force_unlock_for_crash();
    let cr2 = read_cr2();
    log::error!(
        "CPU exception {}: {}, error code {:#x}, RIP {:#018x}, CR2 {:#018x}",
        frame.vector,
        vector_name(frame.vector),
        frame.error_code,
        frame.rip,
        cr2
    );
    if frame.vector == 14 {
        let e = frame.error_code;
        log::error!(
            "page fault: {} access, {}, {} mode{}",
            if e & 2 != 0 { "write" } else if e & 16 != 0 { "instruction fetch" } else { "read" },
            if e & 1 != 0 { "protection violation" } else { "page not present" },
            if e & 4 != 0 { "user" } else { "supervisor" },
            if e & 8 != 0 { ", reserved bit set" } else { "" },
        );
    }
    if matches!(frame.vector, 8 | 14) {
        if let Some(stack) = super::memory::guard_page_owner(cr2) {
            log::error!("stack overflow: CR2 is in the guard page below the {stack}");
        }
    }
    log::error!(
        "RAX {:#018x} RBX {:#018x} RCX {:#018x} RDX {:#018x}",
        frame.rax, frame.rbx, frame.rcx, frame.rdx
    );
    log::error!(
        "RSI {:#018x} RDI {:#018x} RBP {:#018x} RSP {:#018x}",
        frame.rsi, frame.rdi, frame.rbp, frame.rsp
    );
    log::error!(
        "R8  {:#018x} R9  {:#018x} R10 {:#018x} R11 {:#018x}",
        frame.r8, frame.r9, frame.r10, frame.r11
    );
    log::error!(
        "R12 {:#018x} R13 {:#018x} R14 {:#018x} R15 {:#018x}",
        frame.r12, frame.r13, frame.r14, frame.r15
    );
    log::error!(
        "CS {:#06x} SS {:#06x} RFLAGS {:#010x} CR3 {:#018x}",
        frame.cs, frame.ss, frame.rflags, read_cr3()
    );
    super::exit::exit(super::exit::ExitCode::Failure);
}

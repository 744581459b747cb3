//! The hypervisor's GDT and TSS: 64-bit code and data segments and a TSS whose interrupt stack
//! table gives the double fault, NMI and machine check their own stacks (each above a guard page),
//! so a kernel stack overflow is still reported.

use super::boot::symbol_addr;
use core::cell::UnsafeCell;
use core::mem::size_of;

pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
const TSS_SEL: u16 = 0x18;

/// IST slots (1-based, as the IDT names them).
pub const IST_DOUBLE_FAULT: u8 = 1;
pub const IST_NMI: u8 = 2;
pub const IST_MACHINE_CHECK: u8 = 3;

/// The 64-bit task-state segment (SDM Vol. 3A, 8.7).
#[repr(C, packed(4))]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}

const _: () = assert!(size_of::<Tss>() == 104);

#[repr(C, align(16))]
struct Tables {
    gdt: [u64; 5],
    tss: Tss,
}

/// Boot-time storage written once, before interrupts or other CPUs exist.
struct BootCell(UnsafeCell<Tables>);

// SAFETY: the tables are written only by `init`, on the boot CPU before interrupts are enabled or
// other CPUs are started; afterwards only the CPU reads them (and sets the TSS busy bit).
unsafe impl Sync for BootCell {}

static TABLES: BootCell = BootCell(UnsafeCell::new(Tables {
    gdt: [0; 5],
    tss: Tss { reserved0: 0, rsp: [0; 3], reserved1: 0, ist: [0; 7], reserved2: 0, reserved3: 0, iomap_base: 0 },
}));

#[repr(C, packed(2))]
struct Pointer {
    limit: u16,
    base: u64,
}

/// Installs the boot CPU's GDT (static storage, usable before the heap), reloads the segment
/// registers and loads the TSS.
pub fn init() {
    let tables = TABLES.0.get();
    // SAFETY: single-threaded boot, nothing else holds a reference to TABLES (see BootCell).
    let t = unsafe { &mut *tables };
    load(t, [symbol_addr!(ist1_top), symbol_addr!(ist2_top), symbol_addr!(ist3_top)]);
}

/// Installs a fresh GDT and TSS for an application processor, with its own interrupt stacks.
pub fn init_ap(ist_tops: [u64; 3]) {
    let t = alloc::boxed::Box::leak(alloc::boxed::Box::new(Tables {
        gdt: [0; 5],
        tss: Tss { reserved0: 0, rsp: [0; 3], reserved1: 0, ist: [0; 7], reserved2: 0, reserved3: 0, iomap_base: 0 },
    }));
    load(t, ist_tops);
}

fn load(t: &'static mut Tables, ist_tops: [u64; 3]) {
    t.tss.ist[(IST_DOUBLE_FAULT - 1) as usize] = ist_tops[0];
    t.tss.ist[(IST_NMI - 1) as usize] = ist_tops[1];
    t.tss.ist[(IST_MACHINE_CHECK - 1) as usize] = ist_tops[2];
    t.tss.iomap_base = size_of::<Tss>() as u16; // no I/O permission bitmap
    let tss_base = core::ptr::addr_of!(t.tss) as u64;
    let tss_limit = (size_of::<Tss>() - 1) as u64;
    t.gdt = [
        0,
        0x00af_9a00_0000_ffff, // 64-bit code, DPL 0
        0x00cf_9200_0000_ffff, // data, DPL 0
        (tss_limit & 0xffff)
            | ((tss_base & 0xff_ffff) << 16)
            | (0x89 << 40) // present, available 64-bit TSS
            | (((tss_limit >> 16) & 0xf) << 48)
            | (((tss_base >> 24) & 0xff) << 56),
        tss_base >> 32,
    ];
    let ptr = Pointer { limit: (size_of::<[u64; 5]>() - 1) as u16, base: core::ptr::addr_of!(t.gdt) as u64 };
    // SAFETY: the GDT above is valid and 'static; CS is reloaded through a far return to the
    // same code selector layout the boot GDT used, the data segments are reloaded, and the TSS
    // descriptor points at a valid, 'static TSS used by this CPU alone.
    unsafe {
        core::arch::asm!(
            "lgdt [{ptr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov ss, {ds:x}",
            "ltr {tss:x}",
            ptr = in(reg) &ptr,
            cs = in(reg) KERNEL_CS as u64,
            ds = in(reg) KERNEL_DS as u64,
            tss = in(reg) TSS_SEL as u64,
            tmp = out(reg) _,
        );
    }
}

/// The running CPU's TSS linear address (the VMCS host-state TR base), read from its GDT.
pub fn tss_base() -> u64 {
    let gdt = super::cr::gdtr_base();
    let at = |i: u64| {
        // SAFETY: the GDTR points at this CPU's 'static GDT, which has 5 entries; entries 3 and
        // 4 are the TSS descriptor.
        unsafe { core::ptr::read_volatile((gdt + 8 * i) as *const u64) }
    };
    let (lo, hi) = (at(3), at(4));
    ((lo >> 16) & 0xff_ffff) | (((lo >> 56) & 0xff) << 24) | (hi << 32)
}

/// The TSS selector.
pub const TSS_SELECTOR: u16 = TSS_SEL;

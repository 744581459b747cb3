//! A guest that drives a passed-through Intel 82540EM (e1000) through its memory BAR.
//!
//! With a device in its boot information it reads STATUS (0x08), the MAC address from the
//! EEPROM through the EEPROM Read register EERD (0x14: write the word address with START, poll
//! DONE, take the data from bits 31:16), programs receive address 0 (RAL0/RAH0 at
//! 0x5400/0x5404, Address Valid in bit 31) with it and reads it back, prints all of it and
//! exits 0 only if the link is up and both equal the `mac=` argument (PCI/PCI-X Family of
//! Gigabit Ethernet Controllers Software Developer's Manual: 13.4.2 STATUS, 13.4.4 EERD,
//! 13.5.2 RAL/RAH; EEPROM words 0-2 hold the Ethernet address, 5.6.1).
//! Then it takes the device's interrupt: binds its INTx to vector 0x60 (`DeviceIrqBind`),
//! enables one cause (RXDMT0) in IMS and [`ROUNDS`] times sets it through ICS (Interrupt Cause
//! Set), waits for the interrupt in its IDT handler, reads ICR (which clears the cause and
//! deasserts INTx: manual 13.4.17-13.4.20) and calls `DeviceIrqDone`. Then: the cause raised
//! with interrupts off must wait for STI; enabling the transmitter with an empty ring must bring
//! the device's own "transmit queue empty" interrupt (TXQE, raised by the device a little
//! later, not by a register write of the guest); the cause raised and serviced by nobody must bring
//! exactly one interrupt while the line stays asserted, even when binding again makes the
//! hypervisor rewrite the entry (it keeps it masked until DONE); DONE without clearing the cause must bring it again (a level line still asserted).
//! Without a device it reads guest-physical `probe=` (where the device would be), which the
//! hypervisor must stop, after checking that binding a device it was not given is refused.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};
use guest_sdk::arch::Vmcall;
use guest_sdk::console::exit;
use guest_sdk::{call, println, GuestBootInfo};
use tensor_hcall::{HcallError, Hypercall};

const INTEL: u16 = 0x8086;
const E1000_82540EM: u16 = 0x100e;
const STATUS: u64 = 0x08;
/// STATUS bit 0: full duplex; bit 1: link up (manual 13.4.2).
const STATUS_FD: u32 = 1 << 0;
const STATUS_LU: u32 = 1 << 1;
const EERD: u64 = 0x14;
const EERD_START: u32 = 1 << 0;
const EERD_DONE: u32 = 1 << 4;
const RAL0: u64 = 0x5400;
const RAH0: u64 = 0x5404;
/// RAH0 bit 31: address valid.
const RAH_AV: u32 = 1 << 31;
/// Interrupt Cause Read (read clears), Cause Set, Mask Set, Mask Clear (manual 13.4.17-20).
const ICR: u64 = 0xc0;
const ICS: u64 = 0xc8;
const IMS: u64 = 0xd0;
const IMC: u64 = 0xd8;
/// The cause the test raises: receive descriptor minimum threshold (bit 4).
const CAUSE_RXDMT0: u32 = 1 << 4;
/// Transmit queue empty (bit 1): raised by the device itself after transmit is enabled.
const CAUSE_TXQE: u32 = 1 << 1;
/// Transmit control (manual 13.4.33): bit 1 enables the transmitter.
const TCTL: u64 = 0x400;
const TCTL_EN: u32 = 1 << 1;
/// ICR bit 31: INT_ASSERTED, set while any cause is pending.
const ICR_ASSERTED: u32 = 1 << 31;
/// The guest's vector for the device.
const VECTOR: u8 = 0x60;
/// Serviced interrupts (ICS, wait, ICR, DONE).
const ROUNDS: u32 = 5;

/// Interrupts received on `VECTOR`.
#[unsafe(no_mangle)]
static DEVICE_IRQS: AtomicU32 = AtomicU32::new(0);

core::arch::global_asm!(
    ".global pcidev_irq_handler",
    "pcidev_irq_handler:",
    "lock inc dword ptr [rip + DEVICE_IRQS]",
    "iretq",
);

unsafe extern "C" {
    fn pcidev_irq_handler();
}

#[repr(C, align(16))]
struct Idt([u64; 2 * (VECTOR as usize + 1)]);

/// Our IDT: only `VECTOR` has a gate (an exception still ends in a triple fault).
static mut IDT: Idt = Idt([0; 2 * (VECTOR as usize + 1)]);

fn install_idt() {
    let h = pcidev_irq_handler as *const () as u64;
    // Present, DPL 0, 64-bit interrupt gate, selector 0x08 (the guest's code segment).
    let low = (h & 0xffff) | (0x08 << 16) | (0x8e << 40) | (((h >> 16) & 0xffff) << 48);
    // SAFETY: single-threaded guest; nothing else touches IDT; LIDT gets a 'static table whose
    // only present gate points at the handler above; STI only after it is loaded.
    unsafe {
        let idt = &raw mut IDT;
        (*idt).0[2 * VECTOR as usize] = low;
        (*idt).0[2 * VECTOR as usize + 1] = h >> 32;
        #[repr(C, packed)]
        struct Ptr {
            limit: u16,
            base: u64,
        }
        let p = Ptr { limit: (core::mem::size_of::<Idt>() - 1) as u16, base: idt as u64 };
        core::arch::asm!("lidt [{}]", "sti", in(reg) &p, options(nostack));
    }
}

fn irqs() -> u32 {
    DEVICE_IRQS.load(Ordering::SeqCst)
}

/// Spins until more than `seen` interrupts arrived, or gives up.
fn wait_for_irq(seen: u32) -> bool {
    (0..2_000_000).any(|_| {
        core::hint::spin_loop();
        irqs() > seen
    })
}

fn name(r: Result<u64, HcallError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(HcallError::InvalidArgument) => "InvalidArgument",
        Err(HcallError::BadHandle) => "BadHandle",
        Err(HcallError::NotSupported) => "NotSupported",
        Err(HcallError::Busy) => "Busy",
        Err(_) => "another error",
    }
}

/// The interrupt part (see the crate documentation); true if everything was as expected.
fn interrupts(regs: &Regs, bdf: u16) -> bool {
    let mut t = Vmcall::new();
    let bdf = u64::from(bdf);
    let early_done = call(&mut t, Hypercall::DeviceIrqDone { bdf });
    let low = call(&mut t, Hypercall::DeviceIrqBind { bdf, vector: 0x10 });
    println!("pcidev: DONE before BIND: {}; BIND to exception vector 0x10: {}", name(early_done), name(low));
    install_idt();
    let bound = call(&mut t, Hypercall::DeviceIrqBind { bdf, vector: u64::from(VECTOR) });
    println!("pcidev: DeviceIrqBind(vector {VECTOR:#x}): {}", name(bound));
    regs.write(IMS, CAUSE_RXDMT0);
    let mut icrs = [0u32; ROUNDS as usize];
    let mut received = 0;
    let mut dones = 0;
    for icr in icrs.iter_mut() {
        let seen = irqs();
        regs.write(ICS, CAUSE_RXDMT0);
        received += u32::from(wait_for_irq(seen));
        *icr = regs.read(ICR);
        dones += u32::from(call(&mut t, Hypercall::DeviceIrqDone { bdf }).is_ok());
    }
    let after = regs.read(ICR);
    let same = icrs.iter().all(|&i| i == icrs[0]);
    println!(
        "pcidev: {received}/{ROUNDS} ICS-triggered interrupts received on vector {VECTOR:#x} ({} in the handler), ICR {:#010x} each time: {}; {dones} DONE; ICR after {:#010x}",
        irqs(),
        icrs[0],
        if same { "same" } else { "DIFFERENT" },
        after
    );
    let spin = |n: u32| (0..n).for_each(|_| core::hint::spin_loop());
    // Raised while the guest has interrupts off: held (interrupt-window exiting) until STI.
    let seen = irqs();
    // SAFETY: only masks interrupts; STI below.
    unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
    regs.write(ICS, CAUSE_RXDMT0);
    spin(1_000_000);
    let held = irqs() == seen;
    // SAFETY: the IDT is loaded (install_idt).
    unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
    let after_sti = wait_for_irq(seen);
    let windowed_ok = regs.read(ICR) == ICR_ASSERTED | CAUSE_RXDMT0 && call(&mut t, Hypercall::DeviceIrqDone { bdf }).is_ok();
    println!("pcidev: raised with interrupts off: held while off: {held}, delivered after STI: {after_sti}");
    // Raised by the device on its own: enabling the transmitter with an empty ring makes it
    // report "transmit queue empty" a little later (after the console hypercall has begun).
    let seen = irqs();
    regs.write(IMS, CAUSE_TXQE);
    regs.write(TCTL, TCTL_EN);
    println!("pcidev: transmitter enabled with an empty ring");
    let from_device = wait_for_irq(seen);
    let tx_icr = regs.read(ICR);
    let tx_ok = call(&mut t, Hypercall::DeviceIrqDone { bdf }).is_ok();
    regs.write(TCTL, 0);
    regs.write(IMC, CAUSE_TXQE);
    println!("pcidev: interrupt raised by the device itself: {from_device}, ICR {tx_icr:#010x}");
    // Once more, serviced by nobody: the line stays asserted, the hypervisor keeps it masked.
    // Binding again makes the hypervisor rewrite the (masked) entry, which makes the I/O APIC
    // look at its asserted inputs again: an unmasked entry would deliver once more.
    let seen = irqs();
    regs.write(ICS, CAUSE_RXDMT0);
    let came = wait_for_irq(seen);
    let rebound = call(&mut t, Hypercall::DeviceIrqBind { bdf, vector: u64::from(VECTOR) }).is_ok();
    spin(4_000_000);
    let extra = irqs() - seen;
    println!("pcidev: unserviced cause (ICR not read, no DONE, bound again): {extra} interrupt(s) while the line stayed asserted");
    // DONE without clearing the cause: the level line is still asserted, so it comes again.
    let seen = irqs();
    let redone = call(&mut t, Hypercall::DeviceIrqDone { bdf }).is_ok();
    let again = wait_for_irq(seen);
    let last = regs.read(ICR);
    let closed = call(&mut t, Hypercall::DeviceIrqDone { bdf }).is_ok();
    spin(1_000_000);
    println!(
        "pcidev: DONE with the cause still set: delivered again: {again}; ICR {last:#010x} read, DONE; {} interrupt(s) in all",
        irqs()
    );
    regs.write(IMC, CAUSE_RXDMT0);
    // SAFETY: no more interrupts are wanted.
    unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
    bound.is_ok()
        && early_done == Err(HcallError::InvalidArgument)
        && low == Err(HcallError::InvalidArgument)
        && received == ROUNDS
        && same
        && icrs[0] == ICR_ASSERTED | CAUSE_RXDMT0
        && after == 0
        && dones == ROUNDS
        && held
        && after_sti
        && windowed_ok
        && came
        && rebound
        && extra == 1
        && redone
        && again
        && last == ICR_ASSERTED | CAUSE_RXDMT0
        && closed
        && from_device
        && tx_icr == ICR_ASSERTED | CAUSE_TXQE
        && tx_ok
        && irqs() == ROUNDS + 4
}

/// A register window: the BAR as the boot information lists it, accesses bounds-checked.
struct Regs {
    gpa: u64,
    len: u64,
}

impl Regs {
    fn read(&self, off: u64) -> u32 {
        assert!(off + 4 <= self.len);
        // SAFETY: [gpa, gpa + len) is the device's BAR, mapped uncached by the hypervisor and
        // reached through the identity map of the first GiB; the offset is inside and aligned.
        unsafe { core::ptr::read_volatile((self.gpa + off) as *const u32) }
    }
    fn write(&self, off: u64, v: u32) {
        assert!(off + 4 <= self.len);
        // SAFETY: as in `read`.
        unsafe { core::ptr::write_volatile((self.gpa + off) as *mut u32, v) }
    }
    /// One EEPROM word through EERD, or `None` if DONE never comes.
    fn eeprom(&self, word: u8) -> Option<u16> {
        self.write(EERD, (u32::from(word) << 8) | EERD_START);
        (0..100_000).map(|_| self.read(EERD)).find(|v| v & EERD_DONE != 0).map(|v| (v >> 16) as u16)
    }
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

struct Mac([u8; 6]);

impl core::fmt::Display for Mac {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

#[unsafe(no_mangle)]
#[unsafe(link_section = ".text._start")]
extern "C" fn _start(boot: &'static GuestBootInfo) -> ! {
    let devices = boot.devices();
    println!("pcidev: {} device window(s) in the boot information", devices.len());
    for d in devices {
        println!("pcidev: device {:04x}:{:04x} at {:02x}:{:02x}.{} BAR{} guest-physical {:#x}, {} KiB", d.vendor, d.device, d.bdf >> 8, (d.bdf >> 3) & 0x1f, d.bdf & 7, d.bar, d.gpa, d.len / 1024);
    }
    let Some(w) = devices.iter().find(|d| d.vendor == INTEL && d.device == E1000_82540EM && d.bar == 0) else {
        let Some(probe) = boot.arg("probe").and_then(|p| u64::from_str_radix(p.trim_start_matches("0x"), 16).ok()) else {
            println!("pcidev: no e1000 and no probe= address");
            exit(2)
        };
        // The e1000 at 00:02.0 is not ours: binding its interrupt is refused.
        let r = call(&mut Vmcall::new(), Hypercall::DeviceIrqBind { bdf: 0x10, vector: u64::from(VECTOR) });
        println!("pcidev: DeviceIrqBind for 00:02.0 (not given to this tenant): {}", name(r));
        println!("pcidev: no e1000 here; reading guest-physical {probe:#x} anyway");
        // SAFETY: deliberately reads where this guest has no device: the hypervisor stops it.
        let v = unsafe { core::ptr::read_volatile(probe as *const u32) };
        println!("pcidev: read {v:#010x} from a device this guest was not given");
        exit(3)
    };
    let regs = Regs { gpa: w.gpa, len: w.len };
    let status = regs.read(STATUS);
    println!("pcidev: STATUS {status:#010x} (link up: {}, full duplex: {})", status & STATUS_LU != 0, status & STATUS_FD != 0);
    // The MAC address from the EEPROM, as a driver finds it.
    let mut ee = [0u8; 6];
    let mut eeprom_ok = true;
    for word in 0..3u8 {
        match regs.eeprom(word) {
            Some(v) => ee[usize::from(word) * 2..usize::from(word) * 2 + 2].copy_from_slice(&v.to_le_bytes()),
            None => eeprom_ok = false,
        }
    }
    println!("pcidev: EEPROM words 0-2 through EERD: {} (done: {eeprom_ok})", Mac(ee));
    // Then, as the driver's initialisation does (manual 14.4), program receive address 0 with
    // it and read it back.
    let before = (regs.read(RAL0), regs.read(RAH0));
    regs.write(RAL0, u32::from_le_bytes([ee[0], ee[1], ee[2], ee[3]]));
    regs.write(RAH0, u32::from(u16::from_le_bytes([ee[4], ee[5]])) | RAH_AV);
    let (ral, rah) = (regs.read(RAL0), regs.read(RAH0));
    let ra = [ral as u8, (ral >> 8) as u8, (ral >> 16) as u8, (ral >> 24) as u8, rah as u8, (rah >> 8) as u8];
    println!(
        "pcidev: RAL0/RAH0 {:#010x}/{:#010x} before, {ral:#010x}/{rah:#010x} after programming: receive address {} (address valid: {})",
        before.0,
        before.1,
        Mac(ra),
        rah & RAH_AV != 0
    );
    let Some(want) = boot.arg("mac").and_then(parse_mac) else {
        println!("pcidev: no mac= argument to compare with");
        exit(2)
    };
    let ok = eeprom_ok && ee == want && ra == want && rah & RAH_AV != 0 && status & STATUS_LU != 0;
    println!("pcidev: {} the configured {}", if ok { "EEPROM and receive address match" } else { "MISMATCH with" }, Mac(want));
    let irq_ok = interrupts(&regs, w.bdf);
    println!("pcidev: device interrupts {}", if irq_ok { "forwarded as expected" } else { "NOT as expected" });
    exit(u32::from(!ok) | (u32::from(!irq_ok) << 1))
}

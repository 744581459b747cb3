//! A guest that drives a passed-through Intel 82540EM (e1000) through its memory BAR.
//!
//! With a device in its boot information it reads STATUS (0x08), the MAC address from the
//! EEPROM through the EEPROM Read register EERD (0x14: write the word address with START, poll
//! DONE, take the data from bits 31:16), programs receive address 0 (RAL0/RAH0 at
//! 0x5400/0x5404, Address Valid in bit 31) with it and reads it back, prints all of it and
//! exits 0 only if the link is up and both equal the `mac=` argument (PCI/PCI-X Family of
//! Gigabit Ethernet Controllers Software Developer's Manual: 13.4.2 STATUS, 13.4.4 EERD,
//! 13.5.2 RAL/RAH; EEPROM words 0-2 hold the Ethernet address, 5.6.1).
//! Without a device it reads guest-physical `probe=` (where the device would be), which the
//! hypervisor must stop.
#![no_std]
#![no_main]

use guest_sdk::console::exit;
use guest_sdk::{println, GuestBootInfo};

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
    exit(u32::from(!ok))
}

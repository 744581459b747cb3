//! PCI configuration-space access: ECAM windows from the ACPI MCFG (mapped one bus at a time,
//! uncached, when first touched), or the legacy 0xCF8/0xCFC ports when there is no MCFG.

use alloc::collections::BTreeMap;
use hypervisor::acpi::McfgEntry;
use hypervisor::pci::{Bdf, ConfigAccess};

/// The mechanism in use.
#[derive(Clone)]
pub enum Config {
    Ecam { window: McfgEntry, buses: BTreeMap<u8, u64> },
    Legacy,
}

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

fn outl(port: u16, v: u32) {
    // SAFETY: the hypervisor owns the PCI configuration ports (no guest is given them); OUT
    // touches no memory.
    unsafe { core::arch::asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags)) }
}

fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as in `outl`; IN touches no memory.
    unsafe { core::arch::asm!("in eax, dx", out("eax") v, in("dx") port, options(nomem, nostack, preserves_flags)) }
    v
}

impl Config {
    pub fn ecam(window: McfgEntry) -> Self {
        Self::Ecam { window, buses: BTreeMap::new() }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Ecam { .. } => "ECAM",
            Self::Legacy => "port I/O 0xcf8",
        }
    }

    /// The virtual address of `bdf`'s 4 KiB configuration space, mapping its bus when first seen.
    fn ecam_addr(&mut self, bdf: Bdf) -> Option<u64> {
        let Self::Ecam { window, buses } = self else { return None };
        let bus_base = window.config_address(bdf.bus, 0, 0)?;
        let virt = match buses.get(&bdf.bus) {
            Some(&v) => v,
            None => {
                let v = crate::kernel::memory::map_mmio(bus_base, 1 << 20).ok()?;
                buses.insert(bdf.bus, v);
                v
            }
        };
        Some(virt + (u64::from(bdf.dev) << 15) + (u64::from(bdf.func) << 12))
    }
}

impl ConfigAccess for Config {
    fn read32(&mut self, bdf: Bdf, offset: u16) -> u32 {
        let offset = offset & 0xffc;
        match self {
            Self::Ecam { .. } => match self.ecam_addr(bdf) {
                // SAFETY: `ecam_addr` returns the uncached mapping of this function's 4 KiB
                // configuration space inside the MCFG window; the offset is aligned and < 4096.
                Some(a) => unsafe { core::ptr::read_volatile((a + u64::from(offset)) as *const u32) },
                None => u32::MAX,
            },
            Self::Legacy => {
                if offset >= 256 {
                    return u32::MAX;
                }
                outl(CONFIG_ADDRESS, 0x8000_0000 | (u32::from(bdf.source_id()) << 8) | u32::from(offset));
                inl(CONFIG_DATA)
            }
        }
    }

    fn write32(&mut self, bdf: Bdf, offset: u16, value: u32) {
        let offset = offset & 0xffc;
        match self {
            Self::Ecam { .. } => {
                if let Some(a) = self.ecam_addr(bdf) {
                    // SAFETY: as in `read32`; the hypervisor owns configuration space.
                    unsafe { core::ptr::write_volatile((a + u64::from(offset)) as *mut u32, value) }
                }
            }
            Self::Legacy => {
                if offset < 256 {
                    outl(CONFIG_ADDRESS, 0x8000_0000 | (u32::from(bdf.source_id()) << 8) | u32::from(offset));
                    outl(CONFIG_DATA, value);
                }
            }
        }
    }
}

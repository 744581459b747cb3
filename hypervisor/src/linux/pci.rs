//! The PCI configuration space a Linux tenant sees, through configuration mechanism #1 (ports
//! 0xcf8/0xcfc, PCI Local Bus 3.0 §3.2.2.3.2): a host bridge at 00:00.0 and the tensor function
//! at 00:01.0 (the contract in `tensor_hcall::linux`). Nothing else answers: absent functions
//! read all ones.
//!
//! Each function has a type 0 header (§6.1): read-only ids, class and header type; a command
//! register whose only writable bits are Memory Space and Interrupt Disable; a read-only,
//! zero status (no capability list); a writable Interrupt Line; no interrupt pin. The tensor
//! function has two 32-bit memory BARs (§6.2.5.1): BAR0 the 4 KiB hypercall page, BAR1 the
//! tensor window (prefetchable: it is ordinary memory). Writing all ones to a BAR and reading it
//! back gives the size mask; writing an address moves the BAR, which is reported to the caller
//! ([`ConfigEvent::BarMoved`]) so the hypervisor can move or refuse the mapping.
//!
//! Byte writes to port 0xcf9 are the reset control register (FADT RESET_REG), not part of the
//! 0xcf8 address latch: the caller routes them before calling [`PciConfig::io_write`], which
//! ignores anything but 32-bit accesses to 0xcf8.

use tensor_hcall::linux as contract;

use crate::pci::{Bdf, ConfigAccess};

/// Address and data ports of configuration mechanism #1.
pub const CONFIG_ADDRESS: u16 = 0xcf8;
pub const CONFIG_DATA: u16 = 0xcfc;

/// The host bridge's device id (vendor = the contract's vendor id).
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0000;
/// Class code of a host bridge (06/00/00).
pub const HOST_BRIDGE_CLASS: u32 = 0x06_00_00;

const COMMAND_WRITABLE: u16 = crate::pci::command::MEMORY | crate::pci::command::INTX_DISABLE;
/// BAR bit 3: prefetchable.
const BAR_PREFETCHABLE: u32 = 1 << 3;

/// Something a configuration write changed that the hypervisor may need to act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigEvent {
    /// A BAR now holds a different address (sizing writes of all ones are not reported).
    BarMoved { bar: u8, address: u32 },
    /// Memory Space Enable changed.
    MemoryEnable(bool),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BarState {
    size: u32,
    flags: u32,
    /// The register's address bits (the all-ones mask while being sized).
    value: u32,
    /// The address last programmed (not changed by sizing).
    address: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Function {
    vendor: u16,
    device: u16,
    class: u32,
    command: u16,
    interrupt_line: u8,
    bars: [Option<BarState>; 6],
}

impl Function {
    fn read(&self, offset: u16) -> u32 {
        match offset & !3 {
            0x00 => u32::from(self.vendor) | (u32::from(self.device) << 16),
            0x04 => u32::from(self.command), // status 0: no capabilities, no errors
            0x08 => self.class << 8,         // revision 0
            0x0c => 0,                       // header type 0, single function; no BIST
            o @ 0x10..=0x24 => self.bars[usize::from((o - 0x10) / 4)]
                .map_or(0, |b| (b.value & !(b.size - 1)) | b.flags),
            0x2c => u32::from(self.vendor) | (u32::from(self.device) << 16), // subsystem ids
            0x3c => u32::from(self.interrupt_line), // interrupt pin 0: none
            _ => 0,
        }
    }

    /// Writes the bytes of `value` selected by `bytes` (bit i = byte i of the dword).
    fn write(&mut self, offset: u16, value: u32, bytes: u8) -> Option<ConfigEvent> {
        let at = offset & !3;
        let merged = {
            let old = self.read_raw(at);
            let mut m = old;
            for i in 0..4 {
                if bytes & (1 << i) != 0 {
                    let sh = 8 * i;
                    m = (m & !(0xff << sh)) | (value & (0xff << sh));
                }
            }
            m
        };
        match at {
            0x04 => {
                let old = self.command;
                self.command = merged as u16 & COMMAND_WRITABLE;
                let mem = crate::pci::command::MEMORY;
                (old & mem != self.command & mem)
                    .then_some(ConfigEvent::MemoryEnable(self.command & mem != 0))
            }
            0x10..=0x24 => {
                let i = usize::from((at - 0x10) / 4);
                let b = self.bars[i].as_mut()?;
                b.value = merged & !(b.size - 1) & !0xf;
                if b.value == !(b.size - 1) & !0xf || b.value == b.address {
                    return None; // sizing, or the address it already had
                }
                b.address = b.value;
                Some(ConfigEvent::BarMoved {
                    bar: i as u8,
                    address: b.address,
                })
            }
            0x3c => {
                self.interrupt_line = merged as u8;
                None
            }
            _ => None,
        }
    }

    /// The dword as stored (BARs without their flag bits), for merging partial writes.
    fn read_raw(&self, at: u16) -> u32 {
        match at {
            0x10..=0x24 => self.bars[usize::from((at - 0x10) / 4)].map_or(0, |b| b.value),
            _ => self.read(at),
        }
    }
}

/// The tenant's configuration space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciConfig {
    address: u32,
    host: Function,
    tensor: Function,
}

impl PciConfig {
    /// The platform with the hypercall page at `hypercall_page` and the tensor window at
    /// `window` (`(base, size)`; size a power of two ≥ 4 KiB, base aligned to it).
    pub fn new(hypercall_page: u32, window: (u32, u32)) -> Self {
        let bar = |base: u32, size: u32, flags| {
            let a = base & !(size - 1);
            Some(BarState {
                size,
                flags,
                value: a,
                address: a,
            })
        };
        let host = Function {
            vendor: contract::PCI_VENDOR_ID,
            device: HOST_BRIDGE_DEVICE_ID,
            class: HOST_BRIDGE_CLASS,
            command: crate::pci::command::MEMORY,
            interrupt_line: 0,
            bars: [None; 6],
        };
        let page = contract::HYPERCALL_PAGE_SIZE as u32;
        let tensor = Function {
            vendor: contract::PCI_VENDOR_ID,
            device: contract::PCI_DEVICE_ID,
            class: contract::PCI_CLASS,
            command: crate::pci::command::MEMORY,
            interrupt_line: 0,
            bars: [
                bar(hypercall_page, page, 0),
                bar(window.0, window.1.max(page), BAR_PREFETCHABLE),
                None,
                None,
                None,
                None,
            ],
        };
        Self {
            address: 0,
            host,
            tensor,
        }
    }

    fn function(&mut self, bdf: Bdf) -> Option<&mut Function> {
        let (b, d, f) = contract::PCI_BDF;
        match (bdf.bus, bdf.dev, bdf.func) {
            (0, 0, 0) => Some(&mut self.host),
            x if x == (b, d, f) => Some(&mut self.tensor),
            _ => None,
        }
    }

    /// The tensor function's BAR `i` address (0 or 1), as the guest last programmed it.
    pub fn bar_address(&self, i: usize) -> Option<u32> {
        self.tensor
            .bars
            .get(i)
            .copied()
            .flatten()
            .map(|b| b.address)
    }

    /// Whether the tensor function's memory decoding is on.
    pub fn memory_enabled(&self) -> bool {
        self.tensor.command & crate::pci::command::MEMORY != 0
    }

    /// The function selected by the address latch and the register offset, or `None` if the
    /// enable bit is clear (§3.2.2.3.2: bit 31 enable, 23:16 bus, 15:11 device, 10:8 function,
    /// 7:2 register).
    fn selected(&self) -> Option<(Bdf, u16)> {
        let a = self.address;
        (a & (1 << 31) != 0).then(|| {
            let bdf = Bdf {
                bus: (a >> 16) as u8,
                dev: ((a >> 11) & 31) as u8,
                func: ((a >> 8) & 7) as u8,
            };
            (bdf, (a & 0xfc) as u16)
        })
    }

    /// A guest `IN` of `size` bytes (1, 2, 4) from `port`.
    pub fn io_read(&mut self, port: u16, size: u8) -> u32 {
        let ones = if size >= 4 {
            u32::MAX
        } else {
            (1u32 << (8 * u32::from(size))) - 1
        };
        match port {
            CONFIG_ADDRESS if size == 4 => self.address,
            CONFIG_DATA..=0xcff => {
                let Some((bdf, reg)) = self.selected() else {
                    return ones;
                };
                let shift = 8 * u32::from(port - CONFIG_DATA);
                (self.read32(bdf, reg) >> shift) & ones
            }
            _ => ones,
        }
    }

    /// A guest `OUT` of `size` bytes to `port`.
    pub fn io_write(&mut self, port: u16, size: u8, value: u32) -> Option<ConfigEvent> {
        match port {
            CONFIG_ADDRESS if size == 4 => {
                // Reserved bits 30:24 and 1:0 read back as zero.
                self.address = value & 0x80ff_fffc;
                None
            }
            CONFIG_DATA..=0xcff => {
                let (bdf, reg) = self.selected()?;
                let lane = port - CONFIG_DATA;
                let bytes = (((1u16 << size.min(4)) - 1) << lane) as u8 & 0xf;
                self.function(bdf)?
                    .write(reg, value << (8 * u32::from(lane)), bytes)
            }
            _ => None,
        }
    }

    /// A full-dword configuration write, reporting what changed.
    pub fn config_write(&mut self, bdf: Bdf, offset: u16, value: u32) -> Option<ConfigEvent> {
        self.function(bdf)?.write(offset, value, 0xf)
    }
}

impl ConfigAccess for PciConfig {
    fn read32(&mut self, bdf: Bdf, offset: u16) -> u32 {
        self.function(bdf).map_or(u32::MAX, |f| f.read(offset))
    }
    fn write32(&mut self, bdf: Bdf, offset: u16, value: u32) {
        self.config_write(bdf, offset, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::{read_bars, reg, Bar, Header, HeaderKind};

    const PAGE: u32 = 0xc000_0000;
    const WIN: (u32, u32) = (0x0f00_0000, 0x0100_0000);
    const TENSOR: Bdf = Bdf {
        bus: 0,
        dev: 1,
        func: 0,
    };
    const HOST: Bdf = Bdf {
        bus: 0,
        dev: 0,
        func: 0,
    };

    fn addr(bdf: Bdf, reg: u16) -> u32 {
        (1 << 31)
            | (u32::from(bdf.bus) << 16)
            | (u32::from(bdf.dev) << 11)
            | (u32::from(bdf.func) << 8)
            | u32::from(reg)
    }

    #[test]
    fn headers_read_back_through_the_hypervisor_parser() {
        let mut p = PciConfig::new(PAGE, WIN);
        let h = Header::read(&mut p, TENSOR).unwrap();
        assert_eq!((h.vendor, h.device), (0x7476, 0x0001));
        assert_eq!((h.class, h.subclass, h.prog_if), (0x0b, 0x40, 0x00));
        assert_eq!(
            (h.kind, h.multifunction, h.interrupt_pin),
            (HeaderKind::Endpoint, false, 0)
        );
        let hb = Header::read(&mut p, HOST).unwrap();
        assert_eq!((hb.class, hb.subclass), (0x06, 0x00));
        // The parser sizes the BARs (all ones, read, restore) and finds both.
        let bars = read_bars(&mut p, TENSOR, HeaderKind::Endpoint);
        let bars: alloc::vec::Vec<_> = bars.into_iter().map(|(i, b)| (i, b.unwrap())).collect();
        assert_eq!(bars.len(), 2, "{bars:?}");
        assert!(
            matches!(
                bars[0],
                (
                    0,
                    Bar::Memory {
                        base: 0xc000_0000,
                        size: 0x1000,
                        prefetchable: false,
                        ..
                    }
                )
            ),
            "{bars:?}"
        );
        assert!(
            matches!(
                bars[1],
                (
                    1,
                    Bar::Memory {
                        base: 0x0f00_0000,
                        size: 0x0100_0000,
                        prefetchable: true,
                        ..
                    }
                )
            ),
            "{bars:?}"
        );
        // Sizing restored the addresses.
        assert_eq!(
            (p.bar_address(0), p.bar_address(1)),
            (Some(PAGE), Some(WIN.0))
        );
        assert!(read_bars(&mut p, HOST, HeaderKind::Endpoint).is_empty());
    }

    #[test]
    fn mechanism_one_ports() {
        let mut p = PciConfig::new(PAGE, WIN);
        // Linux's pci_check_type1: the latch reads back what was written.
        p.io_write(CONFIG_ADDRESS, 4, 0x8000_0000);
        assert_eq!(p.io_read(CONFIG_ADDRESS, 4), 0x8000_0000);
        p.io_write(CONFIG_ADDRESS, 4, addr(TENSOR, 0));
        assert_eq!(p.io_read(CONFIG_DATA, 4), 0x0001_7476);
        assert_eq!(p.io_read(CONFIG_DATA, 2), 0x7476);
        assert_eq!(p.io_read(CONFIG_DATA + 2, 2), 0x0001);
        assert_eq!(p.io_read(CONFIG_DATA + 3, 1), 0x00);
        // Class word at 0x0a on the host bridge (the sanity check Linux makes).
        p.io_write(CONFIG_ADDRESS, 4, addr(HOST, 0x08));
        assert_eq!(p.io_read(CONFIG_DATA + 2, 2), 0x0600);
        // Enable bit clear: data reads all ones.
        p.io_write(CONFIG_ADDRESS, 4, addr(TENSOR, 0) & !(1 << 31));
        assert_eq!(p.io_read(CONFIG_DATA, 4), u32::MAX);
        // Byte writes to 0xcf8..0xcfb do not touch the latch.
        p.io_write(CONFIG_ADDRESS, 4, addr(TENSOR, 0));
        p.io_write(0xcfb, 1, 0x01);
        assert_eq!(p.io_read(CONFIG_ADDRESS, 4), addr(TENSOR, 0));
    }

    #[test]
    fn absent_functions_read_all_ones() {
        let mut p = PciConfig::new(PAGE, WIN);
        for bdf in [
            Bdf {
                bus: 0,
                dev: 2,
                func: 0,
            },
            Bdf {
                bus: 0,
                dev: 1,
                func: 1,
            },
            Bdf {
                bus: 1,
                dev: 0,
                func: 0,
            },
        ] {
            assert_eq!(p.read32(bdf, 0), u32::MAX);
            assert!(Header::read(&mut p, bdf).is_none());
            p.io_write(CONFIG_ADDRESS, 4, addr(bdf, 0));
            assert_eq!(p.io_read(CONFIG_DATA, 4), u32::MAX);
            assert_eq!(p.io_read(CONFIG_DATA + 1, 1), 0xff);
            assert_eq!(p.io_write(CONFIG_DATA, 4, 0), None);
        }
    }

    #[test]
    fn read_only_fields_and_command() {
        let mut p = PciConfig::new(PAGE, WIN);
        p.write32(TENSOR, reg::VENDOR, 0x1234_5678);
        p.write32(TENSOR, reg::CLASS, 0);
        p.write32(TENSOR, 0x0c, 0x00ff_0000);
        assert_eq!(p.read32(TENSOR, reg::VENDOR), 0x0001_7476);
        assert_eq!(p.read32(TENSOR, reg::CLASS), 0x0b40_0000);
        assert_eq!(p.read32(TENSOR, 0x0c), 0);
        // Command: only Memory Space and Interrupt Disable stick; status stays 0.
        assert_eq!(
            p.config_write(TENSOR, reg::COMMAND, 0xffff_ffff),
            None,
            "memory was already on"
        );
        assert_eq!(p.read32(TENSOR, reg::COMMAND), u32::from(COMMAND_WRITABLE));
        assert_eq!(
            p.config_write(TENSOR, reg::COMMAND, 0),
            Some(ConfigEvent::MemoryEnable(false))
        );
        assert!(!p.memory_enabled());
        // A 16-bit write of the command register through the ports.
        p.io_write(CONFIG_ADDRESS, 4, addr(TENSOR, reg::COMMAND));
        assert_eq!(
            p.io_write(CONFIG_DATA, 2, 0x0002),
            Some(ConfigEvent::MemoryEnable(true))
        );
        // Interrupt line is writable (byte 0x3c), the pin is 0.
        p.io_write(CONFIG_ADDRESS, 4, addr(TENSOR, 0x3c));
        p.io_write(CONFIG_DATA, 1, 0x0b);
        p.io_write(CONFIG_DATA + 1, 1, 0x01);
        assert_eq!(p.read32(TENSOR, 0x3c), 0x0b);
        // Expansion ROM, capabilities pointer: none.
        p.write32(TENSOR, 0x30, 0xffff_f800);
        assert_eq!(p.read32(TENSOR, 0x30), 0);
        assert_eq!(p.read32(TENSOR, 0x34), 0);
    }

    #[test]
    fn bar_sizing_and_moves() {
        let mut p = PciConfig::new(PAGE, WIN);
        assert_eq!(
            p.config_write(TENSOR, 0x10, u32::MAX),
            None,
            "sizing is not a move"
        );
        assert_eq!(p.read32(TENSOR, 0x10), 0xffff_f000);
        assert_eq!(p.config_write(TENSOR, 0x14, u32::MAX), None);
        assert_eq!(p.read32(TENSOR, 0x14), 0xff00_0000 | 0x8);
        assert_eq!(
            p.config_write(TENSOR, 0x10, PAGE),
            None,
            "restoring after sizing"
        );
        assert_eq!(
            p.config_write(TENSOR, 0x14, 0x2000_0000 | 0x123),
            Some(ConfigEvent::BarMoved {
                bar: 1,
                address: 0x2000_0000
            })
        );
        assert_eq!(p.bar_address(1), Some(0x2000_0000));
        assert_eq!(p.read32(TENSOR, 0x14), 0x2000_0008);
        // Unaligned addresses lose their low bits; unimplemented BARs read 0.
        p.config_write(TENSOR, 0x10, 0xd000_0abc);
        assert_eq!(p.bar_address(0), Some(0xd000_0000));
        p.write32(TENSOR, 0x18, u32::MAX);
        assert_eq!(p.read32(TENSOR, 0x18), 0);
        // A byte write to the top of BAR0 through the ports moves it too.
        p.io_write(CONFIG_ADDRESS, 4, addr(TENSOR, 0x10));
        assert_eq!(
            p.io_write(CONFIG_DATA + 3, 1, 0xc0),
            Some(ConfigEvent::BarMoved {
                bar: 0,
                address: 0xc000_0000
            })
        );
    }
}

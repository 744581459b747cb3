//! The Linux tenant's PCI bus 0 through configuration mechanism #1 (ports 0xcf8/0xcfc, PCI Local
//! Bus spec 3.0 §3.2.2.3.2): a host bridge at 00:00.0 (so Linux's `pci_sanity_check` accepts the
//! mechanism) and the tensor function at 00:01.0 (`tensor_hcall::linux`), configuration space
//! only. Every other device reads all ones (no device answers: a master abort).

use tensor_hcall::linux::{HYPERCALL_PAGE_SIZE, PCI_CLASS, PCI_DEVICE_ID, PCI_VENDOR_ID};

/// Type-0 header offsets (PCI 3.0 §6.1).
const VENDOR: usize = 0x00;
const COMMAND: usize = 0x04;
const REVISION_CLASS: usize = 0x08;
const HEADER_TYPE: usize = 0x0e;
const BAR0: usize = 0x10;
const SUBSYSTEM: usize = 0x2c;
/// Command register bits a function may have set: I/O space, memory space, bus master.
const COMMAND_WRITABLE: u16 = 0b111;

/// One function's 256-byte configuration space and its BAR sizes (0: no BAR).
#[derive(Clone, Debug)]
struct Function {
    space: [u8; 256],
    bar_sizes: [u32; 6],
}

impl Function {
    fn new(vendor: u16, device: u16, class: u32) -> Self {
        let mut space = [0u8; 256];
        space[VENDOR..VENDOR + 2].copy_from_slice(&vendor.to_le_bytes());
        space[VENDOR + 2..VENDOR + 4].copy_from_slice(&device.to_le_bytes());
        space[REVISION_CLASS..REVISION_CLASS + 4].copy_from_slice(&(class << 8).to_le_bytes());
        space[HEADER_TYPE] = 0;
        space[SUBSYSTEM..SUBSYSTEM + 2].copy_from_slice(&vendor.to_le_bytes());
        space[SUBSYSTEM + 2..SUBSYSTEM + 4].copy_from_slice(&device.to_le_bytes());
        Self { space, bar_sizes: [0; 6] }
    }

    /// A 32-bit, non-prefetchable memory BAR at `base` of `size` bytes (a power of two).
    fn memory_bar(&mut self, index: usize, base: u32, size: u32) {
        self.bar_sizes[index] = size;
        let at = BAR0 + index * 4;
        self.space[at..at + 4].copy_from_slice(&base.to_le_bytes());
    }

    fn read(&self, offset: usize, size: usize) -> u32 {
        let mut v = 0u32;
        for i in 0..size {
            v |= u32::from(self.space[(offset + i) & 0xff]) << (8 * i);
        }
        v
    }

    fn write(&mut self, offset: usize, size: usize, value: u32) {
        // Only the command register and the BARs are writable; writes elsewhere are ignored.
        for i in 0..size {
            let at = (offset + i) & 0xff;
            let byte = (value >> (8 * i)) as u8;
            match at {
                COMMAND => self.space[at] = byte & COMMAND_WRITABLE as u8,
                0x10..=0x27 => {
                    let bar = (at - BAR0) / 4;
                    let size = self.bar_sizes[bar];
                    if size == 0 {
                        continue;
                    }
                    // The address bits below the size read back as zero (BAR sizing, §6.2.5.1);
                    // bits 3:0 (memory, 32-bit, non-prefetchable) stay 0.
                    let mask = !(size - 1) & !0xf;
                    let shift = 8 * ((at - BAR0) % 4);
                    self.space[at] = byte & (mask >> shift) as u8;
                }
                _ => {}
            }
        }
    }
}

/// Bus 0 of a Linux tenant.
#[derive(Clone, Debug)]
pub struct PciBus {
    address: u32,
    bridge: Function,
    tensor: Function,
}

impl PciBus {
    /// The bus with the tensor function's BAR 0 (hypercall page) at `hypercall_page` and BAR 1
    /// (the window) at `window_base` of `window_size` bytes (a power of two, base aligned).
    pub fn new(hypercall_page: u32, window_base: u32, window_size: u32) -> Self {
        let bridge = Function::new(0x8086, 0x1237, 0x06_00_00); // host bridge class
        let mut tensor = Function::new(PCI_VENDOR_ID, PCI_DEVICE_ID, PCI_CLASS);
        tensor.memory_bar(0, hypercall_page, HYPERCALL_PAGE_SIZE as u32);
        tensor.memory_bar(1, window_base, window_size);
        Self { address: 0, bridge, tensor }
    }

    fn function(&mut self) -> Option<&mut Function> {
        // Bit 31 enable; bus 23:16, device 15:11, function 10:8.
        if self.address & (1 << 31) == 0 {
            return None;
        }
        match (self.address >> 8) & 0xffff {
            0x0000 => Some(&mut self.bridge),
            0x0008 => Some(&mut self.tensor), // bus 0, device 1, function 0
            _ => None,
        }
    }

    /// An IN from 0xcf8 (the address latch) or 0xcfc..=0xcff (data).
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        if port == 0xcf8 {
            return if size == 4 { self.address } else { u32::MAX };
        }
        let offset = (self.address & 0xfc) as usize + usize::from(port - 0xcfc);
        match self.function() {
            Some(f) => f.read(offset, usize::from(size)),
            None => u32::MAX,
        }
    }

    pub fn write(&mut self, port: u16, size: u8, value: u32) {
        if port == 0xcf8 {
            if size == 4 {
                self.address = value & 0x80ff_fffc;
            }
            return;
        }
        let offset = (self.address & 0xfc) as usize + usize::from(port - 0xcfc);
        if let Some(f) = self.function() {
            f.write(offset, usize::from(size), value);
        }
    }
}

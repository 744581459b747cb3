//! A 16550A UART (the tenant's COM1 at I/O 0x3f8, IRQ 4), modelled after the TI/National
//! PC16550D data sheet, "Register Descriptions" (Table 2 and §8).
//!
//! Modelled: RBR/THR, IER (bits 3:0), IIR with the 16550A's priority order and FIFO bits,
//! FCR (FIFO enable and resets), LCR with DLAB and the divisor latch (DLL/DLM), MCR with
//! loopback (MSR then mirrors RTS/DTR/OUT1/OUT2 as CTS/DSR/RI/DCD, with delta bits), LSR (DR,
//! THRE, TEMT), MSR, SCR. Transmission is instantaneous: a byte written to THR is handed to the
//! caller at once (or looped back), so THR is always empty. Received bytes come from the host
//! console through [`Uart16550::receive`], which refuses bytes while the 16-byte FIFO (1 byte
//! with FIFOs off) is full, so the host keeps them and nothing is lost (no overrun errors).
//!
//! Not modelled: receive trigger levels and the character-timeout interrupt (a received byte
//! raises "received data available" at once), parity/framing errors and break, baud-rate
//! timing. The PC wiring gates the interrupt line with MCR.OUT2, as on PC serial ports.

use alloc::collections::VecDeque;

/// Register offsets from the base port.
pub mod reg {
    /// RBR (read), THR (write); DLL with LCR.DLAB.
    pub const DATA: u8 = 0;
    /// IER; DLM with LCR.DLAB.
    pub const IER: u8 = 1;
    /// IIR (read), FCR (write).
    pub const IIR_FCR: u8 = 2;
    pub const LCR: u8 = 3;
    pub const MCR: u8 = 4;
    pub const LSR: u8 = 5;
    pub const MSR: u8 = 6;
    pub const SCR: u8 = 7;
}

/// COM1's base port and interrupt.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u8 = 4;

const IER_RDA: u8 = 1 << 0;
const IER_THRE: u8 = 1 << 1;
const IER_RLS: u8 = 1 << 2;
const IER_MS: u8 = 1 << 3;
const LCR_DLAB: u8 = 1 << 7;
const MCR_DTR: u8 = 1 << 0;
const MCR_RTS: u8 = 1 << 1;
const MCR_OUT1: u8 = 1 << 2;
const MCR_OUT2: u8 = 1 << 3;
const MCR_LOOP: u8 = 1 << 4;
const FCR_ENABLE: u8 = 1 << 0;
const FCR_CLEAR_RX: u8 = 1 << 1;
/// LSR bits.
pub const LSR_DR: u8 = 1 << 0;
pub const LSR_THRE: u8 = 1 << 5;
pub const LSR_TEMT: u8 = 1 << 6;
/// Depth of the receive FIFO.
pub const FIFO_DEPTH: usize = 16;

/// The interrupt sources IIR reports, highest priority first (data sheet Table 4), as the
/// value of IIR bits 3:0 (bit 0 clear: pending).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptId {
    ReceiverLineStatus = 0b0110,
    ReceivedDataAvailable = 0b0100,
    TransmitterEmpty = 0b0010,
    ModemStatus = 0b0000,
}

/// The UART's state.
#[derive(Clone, Debug)]
pub struct Uart16550 {
    rx: VecDeque<u8>,
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fifo: bool,
    /// THRE interrupt latched (set when THR empties or ETBEI is enabled; cleared by reading IIR
    /// while it is the reported source, or by writing THR).
    thre_pending: bool,
    /// MSR delta bits 3:0.
    msr_delta: u8,
}

impl Default for Uart16550 {
    fn default() -> Self {
        Self::new()
    }
}

impl Uart16550 {
    /// The reset state (data sheet Table 5): divisor 0, LCR/MCR/IER 0, FIFOs off.
    pub fn new() -> Self {
        Self {
            rx: VecDeque::with_capacity(FIFO_DEPTH),
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            dll: 0,
            dlm: 0,
            fifo: false,
            thre_pending: false,
            msr_delta: 0,
        }
    }

    fn rx_capacity(&self) -> usize {
        if self.fifo {
            FIFO_DEPTH
        } else {
            1
        }
    }

    /// Offers a byte from the host console. `false`: the receiver is full (or in loopback,
    /// where the line is disconnected); keep the byte and offer it again later.
    pub fn receive(&mut self, byte: u8) -> bool {
        if self.mcr & MCR_LOOP != 0 || self.rx.len() >= self.rx_capacity() {
            return false;
        }
        self.rx.push_back(byte);
        true
    }

    /// Bytes the receiver can accept now.
    pub fn rx_space(&self) -> usize {
        if self.mcr & MCR_LOOP != 0 {
            0
        } else {
            self.rx_capacity() - self.rx.len()
        }
    }

    /// The divisor latch (baud = 115200 / divisor on a PC).
    pub fn divisor(&self) -> u16 {
        u16::from_le_bytes([self.dll, self.dlm])
    }

    fn modem_inputs(&self) -> u8 {
        if self.mcr & MCR_LOOP != 0 {
            // Loopback (data sheet §8.6): CTS = RTS, DSR = DTR, RI = OUT1, DCD = OUT2.
            let m = self.mcr;
            (u8::from(m & MCR_RTS != 0) << 4)
                | (u8::from(m & MCR_DTR != 0) << 5)
                | (u8::from(m & MCR_OUT1 != 0) << 6)
                | (u8::from(m & MCR_OUT2 != 0) << 7)
        } else {
            // A console that is always there: CTS, DSR and DCD asserted.
            0xb0
        }
    }

    /// The highest-priority pending interrupt among the enabled ones.
    pub fn pending(&self) -> Option<InterruptId> {
        if self.ier & IER_RDA != 0 && !self.rx.is_empty() {
            Some(InterruptId::ReceivedDataAvailable)
        } else if self.ier & IER_THRE != 0 && self.thre_pending {
            Some(InterruptId::TransmitterEmpty)
        } else if self.ier & IER_MS != 0 && self.msr_delta != 0 {
            Some(InterruptId::ModemStatus)
        } else {
            // ReceiverLineStatus never arises: there are no overrun, parity or framing errors.
            let _ = IER_RLS;
            None
        }
    }

    /// The level of the IRQ 4 line: an enabled interrupt is pending and MCR.OUT2 lets it out.
    pub fn interrupt_line(&self) -> bool {
        self.mcr & MCR_OUT2 != 0 && self.pending().is_some()
    }

    /// A guest `IN` from `base + offset` (offsets above 7 read as 0xff: nothing decodes them).
    pub fn read(&mut self, offset: u8) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            reg::DATA if dlab => self.dll,
            reg::DATA => self.rx.pop_front().unwrap_or(0),
            reg::IER if dlab => self.dlm,
            reg::IER => self.ier,
            reg::IIR_FCR => {
                let fifo_bits = if self.fifo { 0xc0 } else { 0 };
                match self.pending() {
                    Some(id) => {
                        if id == InterruptId::TransmitterEmpty {
                            self.thre_pending = false;
                        }
                        fifo_bits | id as u8
                    }
                    None => fifo_bits | 1,
                }
            }
            reg::LCR => self.lcr,
            reg::MCR => self.mcr,
            reg::LSR => u8::from(!self.rx.is_empty()) | LSR_THRE | LSR_TEMT,
            reg::MSR => {
                let v = self.modem_inputs() | self.msr_delta;
                self.msr_delta = 0;
                v
            }
            reg::SCR => self.scr,
            _ => 0xff,
        }
    }

    /// A guest `OUT` to `base + offset`. Returns the byte to transmit, if this write sends one.
    pub fn write(&mut self, offset: u8, value: u8) -> Option<u8> {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            reg::DATA if dlab => self.dll = value,
            reg::DATA => {
                // The byte leaves at once and THR is empty again: THRE re-arms.
                self.thre_pending = true;
                if self.mcr & MCR_LOOP != 0 {
                    if self.rx.len() < self.rx_capacity() {
                        self.rx.push_back(value);
                    }
                    return None;
                }
                return Some(value);
            }
            reg::IER if dlab => self.dlm = value,
            reg::IER => {
                let old = self.ier;
                self.ier = value & 0x0f;
                // Enabling ETBEI with THR empty raises THRE (data sheet §8.4).
                if old & IER_THRE == 0 && self.ier & IER_THRE != 0 {
                    self.thre_pending = true;
                }
            }
            reg::IIR_FCR => {
                let enable = value & FCR_ENABLE != 0;
                if enable != self.fifo || value & FCR_CLEAR_RX != 0 {
                    self.rx.clear();
                }
                self.fifo = enable;
            }
            reg::LCR => self.lcr = value,
            reg::MCR => {
                let before = self.modem_inputs();
                self.mcr = value & 0x1f;
                let after = self.modem_inputs();
                if self.mcr & MCR_LOOP != 0 || before != after {
                    // Delta CTS, DSR, DCD on change; trailing-edge RI (1 -> 0).
                    let ch = before ^ after;
                    self.msr_delta |= ((ch >> 4) & 0b1011) | (((before & !after) >> 4) & 0b0100);
                }
            }
            reg::SCR => self.scr = value,
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn transmit_and_line_status() {
        let mut u = Uart16550::new();
        assert_eq!(u.read(reg::LSR), LSR_THRE | LSR_TEMT);
        let out: Vec<u8> = b"hi\n"
            .iter()
            .filter_map(|&b| u.write(reg::DATA, b))
            .collect();
        assert_eq!(out, b"hi\n");
        assert_eq!(
            u.read(reg::LSR) & (LSR_THRE | LSR_TEMT),
            LSR_THRE | LSR_TEMT
        );
    }

    #[test]
    fn divisor_latch_shadows_data_and_ier() {
        let mut u = Uart16550::new();
        u.write(reg::IER, 0x05);
        u.write(reg::LCR, 0x80 | 0x03);
        assert_eq!(u.write(reg::DATA, 0x01), None, "DLL write sends nothing");
        u.write(reg::IER, 0x00);
        assert_eq!(u.divisor(), 1);
        assert_eq!((u.read(reg::DATA), u.read(reg::IER)), (0x01, 0x00));
        u.write(reg::LCR, 0x03);
        assert_eq!(u.read(reg::IER), 0x05, "IER kept while DLAB was set");
        assert_eq!(u.read(reg::LCR), 0x03);
        // Only IER bits 3:0 exist (Linux probes bit 6 to tell an XScale UART).
        u.write(reg::IER, 0xff);
        assert_eq!(u.read(reg::IER), 0x0f);
    }

    #[test]
    fn fifo_identifies_as_16550a_and_bounds_receive() {
        let mut u = Uart16550::new();
        assert_eq!(u.read(reg::IIR_FCR), 0x01, "no FIFO, no interrupt");
        assert!(u.receive(b'a'));
        assert!(!u.receive(b'b'), "one-byte holding register without FIFO");
        u.write(reg::IIR_FCR, 0x07); // enable + clear both
        assert_eq!(
            u.read(reg::IIR_FCR) & 0xc0,
            0xc0,
            "16550A: FIFOs enabled bits"
        );
        assert_eq!(u.read(reg::LSR) & LSR_DR, 0, "cleared");
        for i in 0..FIFO_DEPTH as u8 {
            assert!(u.receive(i));
        }
        assert!(!u.receive(99));
        assert_eq!(u.rx_space(), 0);
        assert_eq!(u.read(reg::LSR) & LSR_DR, LSR_DR);
        let got: Vec<u8> = (0..FIFO_DEPTH).map(|_| u.read(reg::DATA)).collect();
        assert_eq!(got, (0..FIFO_DEPTH as u8).collect::<Vec<_>>());
        assert_eq!(u.read(reg::LSR) & LSR_DR, 0);
        assert_eq!(u.rx_space(), FIFO_DEPTH);
    }

    #[test]
    fn interrupts_by_priority_gated_by_out2() {
        let mut u = Uart16550::new();
        u.write(reg::IIR_FCR, 0x01);
        u.receive(b'x');
        assert!(!u.interrupt_line(), "nothing enabled");
        u.write(reg::IER, IER_RDA | IER_THRE);
        assert_eq!(u.pending(), Some(InterruptId::ReceivedDataAvailable));
        assert!(!u.interrupt_line(), "OUT2 clear keeps IRQ 4 low");
        u.write(reg::MCR, MCR_OUT2 | MCR_RTS | MCR_DTR);
        assert!(u.interrupt_line());
        assert_eq!(u.read(reg::IIR_FCR), 0xc4, "RDA outranks THRE");
        assert_eq!(u.read(reg::DATA), b'x');
        // THRE (latched when ETBEI was enabled) is next; reading IIR clears it.
        assert_eq!(u.read(reg::IIR_FCR), 0xc2);
        assert_eq!(u.read(reg::IIR_FCR), 0xc1);
        assert!(!u.interrupt_line());
        // Writing THR re-arms it once the byte has left.
        assert_eq!(u.write(reg::DATA, b'y'), Some(b'y'));
        assert!(u.interrupt_line());
        // Disabling ETBEI lowers the line; re-enabling raises THRE again.
        u.write(reg::IER, IER_RDA);
        assert!(!u.interrupt_line());
        u.read(reg::IIR_FCR);
        u.write(reg::IER, IER_RDA | IER_THRE);
        assert_eq!(u.pending(), Some(InterruptId::TransmitterEmpty));
    }

    #[test]
    fn loopback_as_linux_probes_it() {
        let mut u = Uart16550::new();
        // serial8250 autoconfig: MCR = LOOP | OUT2 | RTS (0x1a) reads MSR[7:4] = 0x9 (DCD, CTS).
        u.write(reg::MCR, MCR_LOOP | 0x0a);
        assert_eq!(u.read(reg::MSR) & 0xf0, 0x90);
        // Looped-back data is received, not transmitted; the host cannot inject meanwhile.
        assert_eq!(u.write(reg::DATA, 0x55), None);
        assert!(!u.receive(1));
        assert_eq!(u.read(reg::DATA), 0x55);
        // Dropping RTS in loopback: delta CTS, then cleared by the MSR read.
        u.write(reg::MCR, MCR_LOOP | MCR_OUT2);
        assert_eq!(u.read(reg::MSR), 0x80 | 0x01);
        assert_eq!(u.read(reg::MSR), 0x80);
        // Raising then dropping OUT1 (RI): trailing-edge RI delta only on the fall.
        u.write(reg::MCR, MCR_LOOP | MCR_OUT1);
        assert_eq!(u.read(reg::MSR) & 0x0f, 0x08, "DCD fell (OUT2 off)");
        u.write(reg::MCR, MCR_LOOP);
        assert_eq!(u.read(reg::MSR) & 0x0f, 0x04, "TERI");
        u.write(reg::MCR, 0);
        assert_eq!(
            u.read(reg::MSR) & 0xf0,
            0xb0,
            "outside loopback: CTS, DSR, DCD"
        );
        assert_eq!(u.read(reg::SCR), 0);
        u.write(reg::SCR, 0xa5);
        assert_eq!(u.read(reg::SCR), 0xa5);
        assert_eq!(u.read(9), 0xff);
    }
}

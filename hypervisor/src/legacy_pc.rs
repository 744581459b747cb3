//! The legacy PC devices a Linux tenant gets, modelled in software behind trapped port I/O: the
//! 8259A interrupt-controller pair, channel 0 of the 8254 timer and a 16550A UART on COM1.
//! Nothing here touches real hardware: Bochs' own PIC, PIT and UART stay the hypervisor's.
//!
//! Facts used: Intel 8259A data sheet (ICW1–ICW4, OCW1–OCW3, fully nested priority), Intel
//! 82C54 data sheet (control word, modes 0/2/3/4, counter latch), TI/NS PC16550D data sheet
//! (register map, IIR priorities, LSR bits, FIFO control).

use alloc::collections::VecDeque;

/// One 8259A.
#[derive(Clone, Copy, Debug, Default)]
struct Chip {
    irr: u8,
    isr: u8,
    imr: u8,
    vector_base: u8,
    /// 0: ready; 1..=3: expecting ICW2..ICW4.
    init_step: u8,
    icw4: bool,
    single: bool,
    auto_eoi: bool,
    read_isr: bool,
}

impl Chip {
    /// The highest-priority request that is not masked and outranks everything in service
    /// (fully nested mode: IR0 highest).
    fn pending(&self) -> Option<u8> {
        let req = self.irr & !self.imr;
        if req == 0 {
            return None;
        }
        let irq = req.trailing_zeros() as u8;
        let in_service = if self.isr == 0 { 8 } else { self.isr.trailing_zeros() as u8 };
        (irq < in_service).then_some(irq)
    }

    fn write_command(&mut self, v: u8) {
        if v & 0x10 != 0 {
            // ICW1: starts initialisation; the mask and the requests are cleared.
            *self = Chip { init_step: 1, icw4: v & 1 != 0, single: v & 2 != 0, ..Chip::default() };
        } else if v & 0x08 != 0 {
            // OCW3: register select for the next read of the command port.
            if v & 0x02 != 0 {
                self.read_isr = v & 0x01 != 0;
            }
        } else {
            // OCW2: end of interrupt.
            match v >> 5 {
                0b001 | 0b101 => self.isr &= self.isr.wrapping_sub(1), // non-specific: lowest bit
                0b011 | 0b111 => self.isr &= !(1 << (v & 7)),          // specific
                _ => {}
            }
        }
    }

    fn write_data(&mut self, v: u8) {
        match self.init_step {
            1 => {
                self.vector_base = v & 0xf8;
                self.init_step = if !self.single { 2 } else if self.icw4 { 3 } else { 0 };
            }
            2 => self.init_step = if self.icw4 { 3 } else { 0 },
            3 => {
                self.auto_eoi = v & 0x02 != 0;
                self.init_step = 0;
            }
            _ => self.imr = v,
        }
    }
}

/// The cascaded 8259A pair (master at 0x20, slave at 0xa0 on the master's IR2).
#[derive(Clone, Debug, Default)]
pub struct Pic {
    chips: [Chip; 2],
}

impl Pic {
    /// Edge on interrupt request line `irq` (0..16): latched in IRR whatever the mask says.
    pub fn raise(&mut self, irq: u8) {
        let chip = usize::from(irq >= 8);
        self.chips[chip].irr |= 1 << (irq & 7);
    }

    /// The request the pair would present now: (chip, line).
    fn pending(&self) -> Option<(usize, u8)> {
        let master = &self.chips[0];
        let in_service = if master.isr == 0 { 8 } else { master.isr.trailing_zeros() as u8 };
        let slave_request = self.chips[1].pending().is_some() && master.imr & 0b100 == 0;
        let cascade = (slave_request && 2 < in_service).then_some(2u8);
        let irq = match (master.pending(), cascade) {
            (Some(m), Some(c)) => m.min(c),
            (m, c) => m.or(c)?,
        };
        if irq == 2 && slave_request {
            return Some((1, self.chips[1].pending()?));
        }
        Some((0, irq))
    }

    /// The vector the pair would present to the CPU now, if any.
    pub fn pending_vector(&self) -> Option<u8> {
        self.pending().map(|(chip, irq)| self.chips[chip].vector_base | irq)
    }

    /// The interrupt-acknowledge cycle for the vector [`Pic::pending_vector`] returned.
    pub fn acknowledge(&mut self) {
        let Some((chip, irq)) = self.pending() else { return };
        let c = &mut self.chips[chip];
        c.irr &= !(1 << irq);
        if !c.auto_eoi {
            c.isr |= 1 << irq;
        }
        if chip == 1 && !self.chips[0].auto_eoi {
            self.chips[0].isr |= 1 << 2;
        }
    }

    pub fn write(&mut self, port: u16, v: u8) {
        let chip = &mut self.chips[usize::from(port & 0x80 != 0)];
        if port & 1 == 0 { chip.write_command(v) } else { chip.write_data(v) }
    }

    pub fn read(&self, port: u16) -> u8 {
        let chip = &self.chips[usize::from(port & 0x80 != 0)];
        match (port & 1, chip.read_isr) {
            (0, true) => chip.isr,
            (0, false) => chip.irr,
            _ => chip.imr,
        }
    }
}

/// The 8254's input clock, Hz.
pub const PIT_HZ: u64 = 1_193_182;

/// Channel 0 of the 8254 (IRQ 0). Channels 1 and 2 and read-back are not modelled.
#[derive(Clone, Debug, Default)]
pub struct Pit {
    mode: u8,
    access: u8,
    reload: u32,
    low_written: Option<u8>,
    read_high_next: bool,
    latched: Option<u16>,
    /// TSC of the next terminal count, and the period for the periodic modes.
    deadline: Option<u64>,
    period: u64,
    started: u64,
}

impl Pit {
    fn ticks_to_tsc(ticks: u64, tsc_hz: u64) -> u64 {
        ((u128::from(ticks) * u128::from(tsc_hz)) / u128::from(PIT_HZ)).max(1) as u64
    }

    fn count_now(&self, now: u64, tsc_hz: u64) -> u16 {
        let elapsed = ((u128::from(now.saturating_sub(self.started)) * u128::from(PIT_HZ)) / u128::from(tsc_hz.max(1))) as u64;
        let reload = u64::from(self.reload.max(1));
        (reload - elapsed % reload) as u16
    }

    pub fn write(&mut self, port: u16, v: u8, now: u64, tsc_hz: u64) {
        match port {
            0x43 => {
                if v >> 6 != 0 {
                    return; // another channel or read-back
                }
                let access = (v >> 4) & 3;
                if access == 0 {
                    self.latched = Some(self.count_now(now, tsc_hz));
                    return;
                }
                self.access = access;
                self.mode = (v >> 1) & 7;
                self.low_written = None;
                self.read_high_next = false;
                self.deadline = None; // the counter waits for its new count
            }
            0x40 => {
                let count = match (self.access, self.low_written) {
                    (1, _) => Some(u32::from(v)),
                    (2, _) => Some(u32::from(v) << 8),
                    (_, None) => {
                        self.low_written = Some(v);
                        None
                    }
                    (_, Some(lo)) => {
                        self.low_written = None;
                        Some(u32::from(lo) | u32::from(v) << 8)
                    }
                };
                if let Some(c) = count {
                    self.reload = if c == 0 { 0x1_0000 } else { c };
                    let t = Self::ticks_to_tsc(u64::from(self.reload), tsc_hz);
                    self.started = now;
                    self.deadline = Some(now + t);
                    self.period = if matches!(self.mode, 2 | 3 | 6 | 7) { t } else { 0 };
                }
            }
            _ => {}
        }
    }

    pub fn read(&mut self, port: u16, now: u64, tsc_hz: u64) -> u8 {
        if port != 0x40 {
            return 0xff;
        }
        let value = self.latched.unwrap_or_else(|| self.count_now(now, tsc_hz));
        let byte = match self.access {
            1 => value as u8,
            2 => (value >> 8) as u8,
            _ => {
                let b = if self.read_high_next { (value >> 8) as u8 } else { value as u8 };
                self.read_high_next = !self.read_high_next;
                if self.read_high_next {
                    return b;
                }
                b
            }
        };
        self.latched = None;
        byte
    }

    /// Whether the output fired by `now` (an IRQ 0 edge); re-arms the periodic modes.
    pub fn poll(&mut self, now: u64) -> bool {
        match self.deadline {
            Some(d) if d <= now => {
                self.deadline = if self.period > 0 {
                    // Missed periods collapse into one interrupt, as a late tick would.
                    let mut next = d + self.period;
                    if next <= now {
                        next = now + self.period;
                    }
                    Some(next)
                } else {
                    None
                };
                true
            }
            _ => false,
        }
    }

    pub fn deadline(&self) -> Option<u64> {
        self.deadline
    }
}

/// Interrupt-enable bits (IER).
const IER_RDI: u8 = 1;
const IER_THRI: u8 = 2;
/// Line status: data ready, transmitter holding register empty, transmitter empty.
const LSR_DR: u8 = 0x01;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;
/// Modem status with the lines of a connected terminal: CTS, DSR, DCD.
const MSR_CONNECTED: u8 = 0xb0;
const MCR_LOOP: u8 = 0x10;

/// A 16550A whose transmitter is always ready (bytes leave at once) and whose receiver holds
/// what the host's console typed.
#[derive(Clone, Debug, Default)]
pub struct Uart {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fifo: bool,
    thr_empty_pending: bool,
    rx: VecDeque<u8>,
}

impl Uart {
    fn dlab(&self) -> bool {
        self.lcr & 0x80 != 0
    }

    /// The interrupt line (COM1 is IRQ 4).
    pub fn irq_line(&self) -> bool {
        (self.ier & IER_RDI != 0 && !self.rx.is_empty()) || (self.ier & IER_THRI != 0 && self.thr_empty_pending)
    }

    /// A register write at `offset` (0..8); returns a byte to transmit.
    pub fn write(&mut self, offset: u16, v: u8) -> Option<u8> {
        match offset {
            0 if self.dlab() => self.dll = v,
            0 => {
                self.thr_empty_pending = true;
                return (self.mcr & MCR_LOOP == 0).then_some(v);
            }
            1 if self.dlab() => self.dlm = v,
            1 => {
                if v & IER_THRI != 0 && self.ier & IER_THRI == 0 {
                    self.thr_empty_pending = true; // THR is empty: the interrupt is due now
                }
                self.ier = v & 0x0f;
            }
            2 => {
                self.fifo = v & 1 != 0;
                if v & 2 != 0 {
                    self.rx.clear();
                }
            }
            3 => self.lcr = v,
            4 => self.mcr = v & 0x1f,
            7 => self.scr = v,
            _ => {}
        }
        None
    }

    pub fn read(&mut self, offset: u16) -> u8 {
        match offset {
            0 if self.dlab() => self.dll,
            0 => self.rx.pop_front().unwrap_or(0),
            1 if self.dlab() => self.dlm,
            1 => self.ier,
            2 => {
                let fifo = if self.fifo { 0xc0 } else { 0 };
                let id = if self.ier & IER_RDI != 0 && !self.rx.is_empty() {
                    0x04
                } else if self.ier & IER_THRI != 0 && self.thr_empty_pending {
                    self.thr_empty_pending = false; // reading IIR clears the THRE source
                    0x02
                } else {
                    0x01
                };
                fifo | id
            }
            3 => self.lcr,
            4 => self.mcr,
            5 => LSR_THRE | LSR_TEMT | if self.rx.is_empty() { 0 } else { LSR_DR },
            6 if self.mcr & MCR_LOOP != 0 => {
                // Loopback: DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD.
                let m = self.mcr;
                ((m & 1) << 5) | ((m & 2) << 3) | ((m & 4) << 4) | ((m & 8) << 4)
            }
            6 => MSR_CONNECTED,
            7 => self.scr,
            _ => 0xff,
        }
    }

    /// Bytes typed on the host console.
    pub fn receive(&mut self, b: u8) {
        if self.rx.len() < 4096 {
            self.rx.push_back(b);
        }
    }
}

//! The legacy interrupt controller and timer a Linux tenant gets, modelled in software behind
//! trapped port I/O: the 8259A pair and channel 0 of the 8254. Nothing here touches real
//! hardware: Bochs' own PIC and PIT stay the hypervisor's. (COM1 is `hypervisor::linux::uart`.)
//! The pair's INTR output reaches the vCPU through its local APIC's LINT0 in ExtINT mode
//! (`hypervisor::linux::intr`).
//!
//! Facts used: Intel 8259A data sheet (ICW1–ICW4, OCW1–OCW3, fully nested priority), Intel
//! 82C54 data sheet (control word, modes 0/2/3/4, counter latch).

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

/// The cascaded 8259A pair (master at 0x20, slave at 0xa0 on the master's IR2), with the
/// PC's edge/level control registers (ELCR) at [`ELCR_PORTS`].
#[derive(Clone, Debug, Default)]
pub struct Pic {
    chips: [Chip; 2],
    elcr: [u8; 2],
}

/// The ELCR pair (Intel PIIX/ICH "Edge/Level Control Registers", one bit per IRQ, 1 = level):
/// 0x4d0 for IRQ 0–7, 0x4d1 for IRQ 8–15.
pub const ELCR_PORTS: [u16; 2] = [0x4d0, 0x4d1];
/// IRQs that are always edge-triggered (0, 1, 2, 8, 13): their ELCR bits read 0.
const ELCR_WRITABLE: [u8; 2] = [0xf8, 0xde];

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

    /// A write to an ELCR port ([`ELCR_PORTS`]). The setting is kept and reads back (Linux
    /// marks the ACPI SCI's IRQ level-triggered); requests stay edge-latched whatever it says,
    /// which matters for no source here: the only level-triggered line Linux configures, the
    /// SCI, is never asserted.
    pub fn write_elcr(&mut self, port: u16, v: u8) {
        let i = usize::from(port == ELCR_PORTS[1]);
        self.elcr[i] = v & ELCR_WRITABLE[i];
    }

    /// A read of an ELCR port: all edge (0) at reset.
    pub fn read_elcr(&self, port: u16) -> u8 {
        self.elcr[usize::from(port == ELCR_PORTS[1])]
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

/// The MC146818 real-time clock behind CMOS ports 0x70 (index) and 0x71 (data), read-only:
/// BCD, 24-hour, never mid-update, the date fixed at `EPOCH` and the time of day the seconds
/// since the hypervisor started (MC146818A data sheet, registers 0x00–0x0D; 0x32 century). The
/// kernel reads it once for the wall clock; without it Linux spins a second waiting for the
/// update-in-progress bit of a floating bus to clear, twice per boot.
#[derive(Clone, Debug, Default)]
pub struct Cmos {
    index: u8,
}

/// The date the tenant's clock shows: 2026-01-01 (a Thursday).
pub const EPOCH: (u8, u8, u8, u8) = (26, 1, 1, 5);

fn bcd(v: u64) -> u8 {
    (((v / 10 % 10) << 4) | (v % 10)) as u8
}

impl Cmos {
    pub fn write(&mut self, port: u16, v: u8) {
        if port == 0x70 {
            self.index = v & 0x7f; // bit 7 is the NMI mask
        }
    }

    /// `seconds`: the time of day to report (wraps at 24 h).
    pub fn read(&self, port: u16, seconds: u64) -> u8 {
        if port != 0x71 {
            return 0xff;
        }
        let s = seconds % 86_400;
        let (year, month, day, weekday) = EPOCH;
        match self.index {
            0x00 => bcd(s % 60),
            0x02 => bcd(s / 60 % 60),
            0x04 => bcd(s / 3600),
            0x06 => bcd(u64::from(weekday)),
            0x07 => bcd(u64::from(day)),
            0x08 => bcd(u64::from(month)),
            0x09 => bcd(u64::from(year)),
            0x32 => 0x20,
            0x0a => 0x26, // divider 32.768 kHz, rate 1024 Hz, UIP clear
            0x0b => 0x02, // 24-hour, BCD, no interrupts
            0x0d => 0x80, // valid RAM and time
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux's `init_8259A`: ICW1..ICW4 for both chips (vectors 0x30 and 0x38, cascade on IR2).
    fn linux_pic() -> Pic {
        let mut p = Pic::default();
        for (cmd, data, base, icw3) in [(0x20, 0x21, 0x30, 0x04), (0xa0, 0xa1, 0x38, 0x02)] {
            p.write(cmd, 0x11);
            p.write(data, base);
            p.write(data, icw3);
            p.write(data, 0x01);
        }
        p.write(0x21, 0xff);
        p.write(0xa1, 0xff);
        p
    }

    #[test]
    fn pic_masks_latch_and_deliver_in_priority_order() {
        let mut p = linux_pic();
        assert_eq!(p.read(0x21), 0xff, "the mask reads back (Linux's probe)");
        p.raise(4);
        p.raise(0);
        assert_eq!(p.pending_vector(), None, "masked requests wait in IRR");
        p.write(0x21, !0b1_0001);
        assert_eq!(p.pending_vector(), Some(0x30), "IR0 outranks IR4");
        p.acknowledge();
        assert_eq!(p.pending_vector(), None, "IR4 waits while IR0 is in service");
        p.write(0x20, 0x0b); // OCW3: read ISR
        assert_eq!(p.read(0x20), 0b1);
        p.write(0x20, 0x60); // specific EOI for IR0
        assert_eq!(p.pending_vector(), Some(0x34));
        p.acknowledge();
        p.write(0x20, 0x20); // non-specific EOI
        assert_eq!(p.read(0x20), 0, "nothing in service");
        assert_eq!(p.pending_vector(), None);
    }

    #[test]
    fn elcr_reads_back_with_the_edge_only_irqs_fixed() {
        let mut p = Pic::default();
        assert_eq!((p.read_elcr(0x4d0), p.read_elcr(0x4d1)), (0, 0), "all edge at reset");
        // Linux's acpi_pic_sci_set_trigger for SCI on IRQ 9: bit 1 of 0x4d1.
        p.write_elcr(0x4d1, 0x02);
        assert_eq!((p.read_elcr(0x4d0), p.read_elcr(0x4d1)), (0, 0x02));
        p.write_elcr(0x4d0, 0xff);
        p.write_elcr(0x4d1, 0xff);
        assert_eq!((p.read_elcr(0x4d0), p.read_elcr(0x4d1)), (0xf8, 0xde), "IRQ 0, 1, 2, 8, 13 stay edge");
    }

    #[test]
    fn pic_slave_requests_arrive_through_ir2() {
        let mut p = linux_pic();
        p.write(0x21, !0b100);
        p.write(0xa1, !0b1000);
        p.raise(11);
        assert_eq!(p.pending_vector(), Some(0x3b));
        p.acknowledge();
        p.write(0x20, 0x0b);
        assert_eq!(p.read(0x20), 0b100, "the cascade line is in service on the master");
        p.write(0xa0, 0x0b);
        assert_eq!(p.read(0xa0), 0b1000);
        p.write(0xa0, 0x20);
        p.write(0x20, 0x20);
        p.raise(11);
        assert_eq!(p.pending_vector(), Some(0x3b), "deliverable again after both EOIs");
        p.write(0x21, 0xff);
        assert_eq!(p.pending_vector(), None, "masking IR2 hides the slave");
    }

    const HZ: u64 = 1_193_182_000; // a TSC 1000 times the PIT clock: one PIT tick = 1000 TSC

    #[test]
    fn pit_periodic_mode_fires_every_period() {
        let mut t = Pit::default();
        t.write(0x43, 0x34, 0, HZ); // channel 0, lobyte/hibyte, mode 2
        t.write(0x40, 100, 0, HZ);
        assert_eq!(t.deadline(), None, "armed only when the whole count is written");
        t.write(0x40, 0, 0, HZ);
        assert_eq!(t.deadline(), Some(100_000));
        assert!(!t.poll(99_999));
        assert!(t.poll(100_000));
        assert_eq!(t.deadline(), Some(200_000));
        // Far behind: one interrupt, then the next period from now.
        assert!(t.poll(1_000_000));
        assert_eq!(t.deadline(), Some(1_100_000));
    }

    #[test]
    fn pit_one_shot_fires_once_and_latches_the_count() {
        let mut t = Pit::default();
        t.write(0x43, 0x38, 0, HZ); // mode 4, Linux's one-shot
        t.write(0x40, 0xe8, 0, HZ);
        t.write(0x40, 0x03, 0, HZ); // 1000 ticks
        t.write(0x43, 0x00, 250_000, HZ); // latch after 250 ticks
        let lo = t.read(0x40, 900_000, HZ);
        let hi = t.read(0x40, 900_000, HZ);
        assert_eq!(u16::from(lo) | u16::from(hi) << 8, 750, "the latched count, not the current one");
        assert!(t.poll(1_000_000));
        assert!(!t.poll(2_000_000), "one-shot");
        assert_eq!(t.deadline(), None);
        t.write(0x43, 0xb0, 0, HZ); // channel 2: not modelled, changes nothing
        assert_eq!(t.deadline(), None);
    }

    #[test]
    fn cmos_clock_reads_bcd_time_and_never_updates() {
        let mut c = Cmos::default();
        let at = |c: &mut Cmos, reg: u8, secs: u64| {
            c.write(0x70, 0x80 | reg);
            c.read(0x71, secs)
        };
        let t = 13 * 3600 + 45 * 60 + 7;
        assert_eq!((at(&mut c, 4, t), at(&mut c, 2, t), at(&mut c, 0, t)), (0x13, 0x45, 0x07));
        assert_eq!((at(&mut c, 9, t), at(&mut c, 8, t), at(&mut c, 7, t), at(&mut c, 0x32, t)), (0x26, 0x01, 0x01, 0x20));
        assert_eq!(at(&mut c, 0x0a, t) & 0x80, 0, "update in progress is never set");
        assert_eq!(at(&mut c, 0x0b, t), 0x02, "24-hour BCD");
        assert_eq!(at(&mut c, 0, 86_400 + 59), 0x59, "the time of day wraps");
        assert_eq!(c.read(0x70, 0), 0xff);
    }
}

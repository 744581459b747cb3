//! The cascaded 8259A pair of a PC (master at 0x20/0x21, slave at 0xa0/0xa1 on the master's
//! IR2), after the Intel 8259A data sheet: initialisation (ICW1–ICW4), the mask (OCW1), EOIs
//! (OCW2: non-specific and specific; the rotating variants retire the same way, without
//! rotating priorities), register selection and poll mode (OCW3), fully nested priority (IR0
//! highest), automatic EOI, and the interrupt-acknowledge sequence including the cascade.
//!
//! Inputs are edge-triggered: [`Pic::raise`] latches a request in IRR whatever the mask says
//! (an edge while masked is delivered once unmasked, as on the chip). Not modelled: level
//! mode (ICW1.LTIM, ELCR), special mask and special fully nested modes, priority rotation,
//! buffered mode.

/// One 8259A.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Chip {
    irr: u8,
    isr: u8,
    imr: u8,
    vector_base: u8,
    /// Next initialisation word expected: 0 none, 2..=4 ICW2..ICW4.
    expect: u8,
    needs_icw4: bool,
    single: bool,
    auto_eoi: bool,
    read_isr: bool,
    poll: bool,
}

impl Chip {
    /// Highest-priority unmasked request above everything in service (fully nested mode).
    fn pending(&self, extra_request: u8) -> Option<u8> {
        let req = (self.irr | extra_request) & !self.imr;
        if req == 0 {
            return None;
        }
        let irq = req.trailing_zeros() as u8;
        let in_service = if self.isr == 0 {
            8
        } else {
            self.isr.trailing_zeros() as u8
        };
        (irq < in_service).then_some(irq)
    }

    fn command(&mut self, v: u8) {
        if v & 0x10 != 0 {
            // ICW1 (data sheet "Initialization Command Words"): clears IMR, ISR and IRR (the edge
            // sense is reset), selects IR7 as lowest priority, special mask off, status read =
            // IRR.
            *self = Chip {
                expect: 2,
                needs_icw4: v & 1 != 0,
                single: v & 2 != 0,
                ..Chip::default()
            };
        } else if v & 0x08 != 0 {
            // OCW3.
            if v & 0x02 != 0 {
                self.read_isr = v & 0x01 != 0;
            }
            self.poll = v & 0x04 != 0;
        } else {
            // OCW2: R SL EOI in bits 7:5.
            match v >> 5 {
                0b001 | 0b101 => {
                    // Non-specific EOI: the highest-priority in-service level.
                    self.isr &= self.isr.wrapping_sub(1);
                }
                0b011 | 0b111 => self.isr &= !(1 << (v & 7)),
                _ => {} // set priority / rotate in automatic EOI mode: no priority rotation
            }
        }
    }

    fn data(&mut self, v: u8) {
        match self.expect {
            2 => {
                self.vector_base = v & 0xf8;
                self.expect = if !self.single {
                    3
                } else if self.needs_icw4 {
                    4
                } else {
                    0
                };
            }
            3 => self.expect = if self.needs_icw4 { 4 } else { 0 },
            4 => {
                self.auto_eoi = v & 0x02 != 0;
                self.expect = 0;
            }
            _ => self.imr = v,
        }
    }

    /// INTA for `irq`: IRR → ISR (unless automatic EOI).
    fn acknowledge(&mut self, irq: u8) {
        self.irr &= !(1 << irq);
        if !self.auto_eoi {
            self.isr |= 1 << irq;
        }
    }
}

/// The cascaded pair.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pic {
    chips: [Chip; 2],
}

/// IRQ line of the slave on the master.
const CASCADE: u8 = 2;

impl Pic {
    /// An edge on IRQ `irq` (0..16).
    pub fn raise(&mut self, irq: u8) {
        let irq = irq & 15;
        self.chips[usize::from(irq >> 3)].irr |= 1 << (irq & 7);
    }

    /// What the pair presents now: (chip, line on that chip).
    fn pending(&self) -> Option<(usize, u8)> {
        let slave = self.chips[1].pending(0);
        let master = self.chips[0].pending(if slave.is_some() { 1 << CASCADE } else { 0 })?;
        match (master, slave) {
            (CASCADE, Some(s)) => Some((1, s)),
            (m, _) => Some((0, m)),
        }
    }

    /// The vector the pair would deliver now, if any.
    pub fn pending_vector(&self) -> Option<u8> {
        self.pending()
            .map(|(c, irq)| self.chips[c].vector_base | irq)
    }

    /// The interrupt-acknowledge cycle for [`Pic::pending_vector`]'s vector. Returns the vector
    /// acknowledged, or `None` if nothing was pending.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let (c, irq) = self.pending()?;
        let vector = self.chips[c].vector_base | irq;
        self.chips[c].acknowledge(irq);
        if c == 1 {
            self.chips[0].acknowledge(CASCADE);
        }
        Some(vector)
    }

    fn chip(port: u16) -> usize {
        usize::from(port & 0x80 != 0)
    }

    /// A guest `OUT` to 0x20, 0x21, 0xa0 or 0xa1.
    pub fn write(&mut self, port: u16, v: u8) {
        let c = &mut self.chips[Self::chip(port)];
        if port & 1 == 0 {
            c.command(v)
        } else {
            c.data(v)
        }
    }

    /// A guest `IN` from 0x20, 0x21, 0xa0 or 0xa1: IMR on the data port; IRR or ISR (OCW3) on the
    /// command port, or after an OCW3 poll command the poll word (bit 7 = request, 2:0 = level),
    /// which acknowledges that request.
    pub fn read(&mut self, port: u16) -> u8 {
        let i = Self::chip(port);
        if port & 1 != 0 {
            return self.chips[i].imr;
        }
        if self.chips[i].poll {
            self.chips[i].poll = false;
            return match self.chips[i].pending(0) {
                Some(irq) => {
                    self.chips[i].acknowledge(irq);
                    0x80 | irq
                }
                None => 0,
            };
        }
        if self.chips[i].read_isr {
            self.chips[i].isr
        } else {
            self.chips[i].irr
        }
    }

    /// The vector base each chip was programmed with (ICW2), master then slave.
    pub fn vector_bases(&self) -> (u8, u8) {
        (self.chips[0].vector_base, self.chips[1].vector_base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux's init_8259A: ICW1 0x11, ICW2 0x30/0x38, ICW3 0x04/0x02, ICW4 0x01, then masks.
    fn linux_pic() -> Pic {
        let mut p = Pic::default();
        for (port, v) in [
            (0x21, 0xff),
            (0xa1, 0xff),
            (0x20, 0x11),
            (0x21, 0x30),
            (0x21, 0x04),
            (0x21, 0x01),
        ] {
            p.write(port, v);
        }
        for (port, v) in [(0xa0, 0x11), (0xa1, 0x38), (0xa1, 0x02), (0xa1, 0x01)] {
            p.write(port, v);
        }
        p.write(0x21, 0xfb); // everything masked but the cascade
        p.write(0xa1, 0xff);
        p
    }

    #[test]
    fn initialisation_sequence_and_mask() {
        let mut p = linux_pic();
        assert_eq!(p.vector_bases(), (0x30, 0x38));
        assert_eq!((p.read(0x21), p.read(0xa1)), (0xfb, 0xff));
        p.raise(4);
        assert_eq!(p.pending_vector(), None, "masked");
        assert_eq!(p.read(0x20), 0x10, "IRR shows the masked request");
        p.write(0x21, 0xeb); // unmask IRQ 4
        assert_eq!(p.pending_vector(), Some(0x34));
        // ICW1 again clears requests and masks.
        p.write(0x20, 0x11);
        assert_eq!((p.read(0x21), p.read(0x20)), (0, 0));
    }

    #[test]
    fn nesting_and_eois() {
        let mut p = linux_pic();
        p.write(0x21, 0x00);
        p.raise(4);
        assert_eq!(p.acknowledge(), Some(0x34));
        p.raise(3);
        p.raise(5);
        assert_eq!(
            p.pending_vector(),
            Some(0x33),
            "IR3 outranks IR4 in service"
        );
        assert_eq!(p.acknowledge(), Some(0x33));
        assert_eq!(p.pending_vector(), None, "IR5 waits behind IR3 and IR4");
        p.write(0x20, 0x0b); // OCW3: read ISR
        assert_eq!(p.read(0x20), 0x18);
        p.write(0x20, 0x20); // non-specific EOI retires IR3
        assert_eq!(p.read(0x20), 0x10);
        p.write(0x20, 0x64); // specific EOI for IR4
        assert_eq!(p.read(0x20), 0);
        p.write(0x20, 0x0a); // back to IRR
        assert_eq!(p.read(0x20), 0x20);
        assert_eq!(p.acknowledge(), Some(0x35));
        assert_eq!(p.acknowledge(), None);
    }

    #[test]
    fn slave_through_the_cascade() {
        let mut p = linux_pic();
        p.write(0xa1, 0xfe); // unmask IRQ 8
        p.raise(8);
        assert_eq!(p.pending_vector(), Some(0x38));
        p.write(0x21, 0xff); // masking the cascade line hides the slave
        assert_eq!(p.pending_vector(), None);
        p.write(0x21, 0xfa); // cascade and IRQ 0 open
        p.raise(0);
        assert_eq!(p.acknowledge(), Some(0x30), "IRQ 0 outranks the cascade");
        assert_eq!(p.pending_vector(), None, "IR2 below IR0 in service");
        p.write(0x20, 0x20);
        assert_eq!(p.acknowledge(), Some(0x38));
        p.write(0x20, 0x0b);
        p.write(0xa0, 0x0b);
        assert_eq!(
            (p.read(0x20), p.read(0xa0)),
            (0x04, 0x01),
            "in service on both chips"
        );
        p.write(0xa0, 0x20);
        p.write(0x20, 0x20);
        assert_eq!((p.read(0x20), p.read(0xa0)), (0, 0));
    }

    #[test]
    fn auto_eoi_and_poll() {
        let mut p = Pic::default();
        for (port, v) in [(0x20, 0x13), (0x21, 0x08), (0x21, 0x03), (0x21, 0x00)] {
            p.write(port, v); // single chip, ICW4 with AEOI
        }
        p.raise(1);
        assert_eq!(p.acknowledge(), Some(0x09));
        p.write(0x20, 0x0b);
        assert_eq!(p.read(0x20), 0, "automatic EOI: nothing in service");
        p.raise(6);
        p.write(0x20, 0x0c); // poll
        assert_eq!(p.read(0x20), 0x86);
        assert_eq!(p.pending_vector(), None, "the poll read acknowledged it");
        p.write(0x20, 0x0c);
        assert_eq!(p.read(0x20), 0, "poll with nothing pending");
    }
}

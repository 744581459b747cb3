//! Where a Linux tenant's next interrupt comes from: its local APIC ([`super::lapic`]) or the
//! 8259A pair (`crate::legacy_pc::Pic`) wired to the APIC's LINT0 pin.
//!
//! The platform has no I/O APIC, so the ISA interrupts (COM1 on IRQ 4, the 8254 on IRQ 0) reach
//! the CPU the way a PC's "virtual wire" mode routes them (Intel MultiProcessor Specification
//! 1.4, §3.6.2.2; SDM Vol. 3A 10.5.1): the 8259A's INTR output drives LINT0, and with LVT LINT0
//! in **ExtINT** mode the processor runs an INTA cycle on the 8259A, which supplies the vector.
//! Such an interrupt bypasses the APIC's IRR, ISR and priority (PPR): it is acknowledged and
//! EOI-ed at the 8259A only. Linux sets LINT0 to ExtINT on the boot CPU when it has no I/O APIC
//! to route through (`noapic`, or none in the MADT: `setup_local_APIC`), and LINT0 masked
//! otherwise; while LINT0 is masked (always, while the APIC is software-disabled, SDM
//! 10.4.7.2), the 8259A's requests wait in its IRR.
//!
//! Fixed interrupts of the APIC itself (its timer, self-IPIs, the error LVT) go through IRR/ISR
//! and are taken only when their priority class exceeds the PPR (10.8.3.1).
//!
//! Which one first: an ExtINT request, when there is one, before the APIC's IRR. The hardware
//! presents an ExtINT to the core directly rather than through the APIC's priority logic
//! (10.8.1), so the PPR cannot hold it back; taking it first keeps the legacy devices' latency
//! independent of how busy the APIC's vectors are. A LINT0 programmed as a fixed interrupt,
//! NMI, SMI or INIT is not a mode Linux uses for the 8259A; those requests stay in the 8259A's
//! IRR (not delivered, as while masked).

use super::lapic::{LocalApic, LvtDelivery};
use crate::legacy_pc::Pic;

/// The interrupt to inject next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The 8259A's vector through LINT0 in ExtINT mode.
    Pic(u8),
    /// A fixed interrupt from the local APIC's IRR.
    Apic(u8),
}

impl Source {
    pub fn vector(self) -> u8 {
        match self {
            Source::Pic(v) | Source::Apic(v) => v,
        }
    }
}

/// The vCPU's interrupt controllers: its local APIC and the 8259A pair behind LINT0.
#[derive(Clone, Debug)]
pub struct Interrupts {
    pub apic: LocalApic,
    pub pic: Pic,
}

impl Interrupts {
    pub fn new(apic: LocalApic) -> Self {
        Self { apic, pic: Pic::default() }
    }

    /// The interrupt the vCPU would take now (if its RFLAGS.IF and interruptibility allow).
    pub fn next(&self) -> Option<Source> {
        if self.apic.lint0() == Some(LvtDelivery::ExtInt) {
            if let Some(v) = self.pic.pending_vector() {
                return Some(Source::Pic(v));
            }
        }
        self.apic.pending_vector().map(Source::Apic)
    }

    /// `source` (what [`Interrupts::next`] returned) was injected: the 8259A's INTA cycle, or
    /// the APIC's IRR → ISR.
    pub fn delivered(&mut self, source: Source) {
        match source {
            Source::Pic(_) => self.pic.acknowledge(),
            Source::Apic(v) => self.apic.ack(v),
        }
    }

    /// Time passes: the APIC timer fires if its deadline is reached.
    pub fn poll(&mut self, now_tsc: u64) {
        self.apic.poll(now_tsc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::lapic::reg::*;
    use crate::linux::lapic::SVR_ENABLE;

    const TSC_HZ: u64 = 1_000_000_000;

    /// The 8259A pair as Linux programs it: vectors 0x30.. and 0x38.., 8086 mode, all unmasked.
    fn linux_pic() -> Pic {
        let mut p = Pic::default();
        for (port, base) in [(0x20u16, 0x30u8), (0xa0, 0x38)] {
            p.write(port, 0x11);
            p.write(port + 1, base);
            p.write(port + 1, if port == 0x20 { 0x04 } else { 0x02 });
            p.write(port + 1, 0x01);
            p.write(port + 1, 0x00);
        }
        p
    }

    /// What `setup_local_APIC` does without an I/O APIC: software-enable with spurious vector
    /// 0xff, LINT0 ExtINT, LINT1 NMI; the timer in TSC-deadline mode on vector 0xec.
    fn linux_apic(i: &mut Interrupts) {
        i.apic.write(SVR, SVR_ENABLE | 0xff, 0);
        i.apic.write(LVT_LINT0, 0x700, 0);
        i.apic.write(LVT_LINT1, 0x400, 0);
        i.apic.write(LVT_TIMER, (2 << 17) | 0xec, 0);
    }

    fn eoi_pic(i: &mut Interrupts) {
        i.pic.write(0x20, 0x20);
    }

    #[test]
    fn pic_requests_wait_while_lint0_is_masked() {
        let mut i = Interrupts::new(LocalApic::new(0, TSC_HZ, TSC_HZ));
        i.pic = linux_pic();
        i.pic.raise(4);
        // Reset state: the APIC is software-disabled, every LVT masked.
        assert_eq!(i.next(), None);
        // Enabled, LINT0 still masked.
        i.apic.write(SVR, SVR_ENABLE | 0xff, 0);
        assert_eq!(i.next(), None);
        // LINT0 as a fixed interrupt is not the virtual wire: still nothing.
        i.apic.write(LVT_LINT0, 0x40, 0);
        assert_eq!(i.next(), None);
        // ExtINT: the 8259A's vector for IRQ 4, and the request was latched all along.
        i.apic.write(LVT_LINT0, 0x700, 0);
        assert_eq!(i.next(), Some(Source::Pic(0x34)));
    }

    #[test]
    fn extint_is_acknowledged_at_the_8259a_and_bypasses_the_ppr() {
        let mut i = Interrupts::new(LocalApic::new(0, TSC_HZ, TSC_HZ));
        i.pic = linux_pic();
        linux_apic(&mut i);
        // A high TPR blocks every fixed vector, not the ExtINT.
        i.apic.write(TPR, 0xf0, 0);
        i.apic.accept(0xec, false);
        i.pic.raise(4);
        assert_eq!(i.next(), Some(Source::Pic(0x34)));
        i.delivered(Source::Pic(0x34));
        // In service at the 8259A, untouched in the APIC.
        assert_eq!(i.pic.read(0x20) & (1 << 4), 0, "IRR bit cleared by INTA");
        i.pic.write(0x20, 0x0b);
        assert_eq!(i.pic.read(0x20), 1 << 4, "ISR bit set");
        assert_eq!(i.apic.read(ISR + 0x70, 0), 0, "nothing in the APIC's ISR");
        assert_eq!(i.next(), None, "0xec is under the TPR, the 8259A has nothing new");
        // IRQ 4 again is held by the 8259A's own in-service bit until its EOI.
        i.pic.raise(4);
        assert_eq!(i.next(), None);
        eoi_pic(&mut i);
        assert_eq!(i.next(), Some(Source::Pic(0x34)));
        // TPR 0: the ExtINT still goes first, then the APIC vector.
        i.apic.write(TPR, 0, 0);
        assert_eq!(i.next(), Some(Source::Pic(0x34)));
        i.delivered(Source::Pic(0x34));
        assert_eq!(i.next(), Some(Source::Apic(0xec)));
    }

    #[test]
    fn deadline_timer_through_irr_isr_and_eoi() {
        let mut i = Interrupts::new(LocalApic::new(0, TSC_HZ, TSC_HZ));
        i.pic = linux_pic();
        linux_apic(&mut i);
        i.apic.write_tsc_deadline(10_000, 0);
        i.poll(9_999);
        assert_eq!(i.next(), None);
        i.poll(10_000);
        assert_eq!(i.next(), Some(Source::Apic(0xec)));
        i.delivered(Source::Apic(0xec));
        assert_eq!(i.apic.read(ISR + 0x70, 0), 1 << (0xec - 0xe0));
        // A lower-class vector waits for the EOI; the 8259A (ExtINT) does not.
        i.apic.accept(0x41, false);
        assert_eq!(i.next(), None);
        i.pic.raise(0);
        assert_eq!(i.next(), Some(Source::Pic(0x30)));
        i.delivered(Source::Pic(0x30));
        i.apic.mmio_write(EOI, 4, 0, 10_100);
        assert_eq!(i.apic.read(ISR + 0x70, 0), 0);
        assert_eq!(i.next(), Some(Source::Apic(0x41)));
    }

    #[test]
    fn slave_irqs_cascade_through_irq2() {
        let mut i = Interrupts::new(LocalApic::new(0, TSC_HZ, TSC_HZ));
        i.pic = linux_pic();
        linux_apic(&mut i);
        i.pic.raise(9);
        assert_eq!(i.next(), Some(Source::Pic(0x39)));
    }
}

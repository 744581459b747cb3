use super::reg::*;
use super::*;

const TSC_HZ: u64 = 2_000_000_000;
const BUS_HZ: u64 = 1_000_000_000; // two TSC ticks per timer tick

fn apic() -> LocalApic {
    let mut a = LocalApic::new(0, TSC_HZ, BUS_HZ);
    a.write(SVR, SVR_ENABLE | 0xff, 0);
    a
}

fn irr_bit(a: &mut LocalApic, v: u8) -> bool {
    a.read(IRR + u32::from(v >> 5) * 0x10, 0) & (1 << (v & 31)) != 0
}

#[test]
fn reset_state_and_software_disable() {
    let mut a = LocalApic::new(3, TSC_HZ, BUS_HZ);
    assert_eq!(a.read(ID, 0), 3 << 24);
    assert_eq!(a.read(VERSION, 0), 0x0005_0014);
    assert_eq!(a.read(DFR, 0), u32::MAX);
    assert_eq!(a.read(SVR, 0), 0xff);
    for l in [
        LVT_TIMER,
        LVT_THERMAL,
        LVT_PERF,
        LVT_LINT0,
        LVT_LINT1,
        LVT_ERROR,
    ] {
        assert_eq!(a.read(l, 0), LVT_MASKED);
    }
    // While software-disabled, LVT mask bits cannot be cleared.
    a.write(LVT_LINT0, 0x700, 0);
    assert_eq!(a.read(LVT_LINT0, 0), 0x700 | LVT_MASKED);
    a.write(SVR, SVR_ENABLE | 0xff, 0);
    a.write(LVT_LINT0, 0x700, 0);
    assert_eq!(a.read(LVT_LINT0, 0), 0x700);
    // Disabling again masks every LVT.
    a.write(SVR, 0xff, 0);
    assert_eq!(a.read(LVT_LINT0, 0), 0x700 | LVT_MASKED);
    // Read-only registers ignore writes.
    a.write(ID, 0x0500_0000, 0);
    a.write(VERSION, 0, 0);
    assert_eq!(
        (a.read(ID, 0), a.read(VERSION, 0)),
        (3 << 24, VERSION_VALUE)
    );
    a.write(LDR, 0x0123_4567, 0);
    a.write(DFR, 0x0000_0000, 0);
    assert_eq!((a.read(LDR, 0), a.read(DFR, 0)), (0x0100_0000, 0x0fff_ffff));
}

#[test]
fn priorities_ack_and_eoi() {
    let mut a = apic();
    a.accept(0x31, false);
    a.accept(0x51, false);
    assert!(irr_bit(&mut a, 0x31) && irr_bit(&mut a, 0x51));
    assert_eq!(a.pending_vector(), Some(0x51));
    a.ack(0x51);
    assert!(!irr_bit(&mut a, 0x51));
    assert_eq!(a.read(ISR + 2 * 0x10, 0), 1 << (0x51 - 64));
    assert_eq!(a.ppr(), 0x50);
    assert_eq!(
        a.pending_vector(),
        None,
        "0x31's class is below the one in service"
    );
    a.accept(0x52, false);
    assert_eq!(
        a.pending_vector(),
        None,
        "same class as in service: not deliverable"
    );
    a.accept(0x61, false);
    assert_eq!(a.pending_vector(), Some(0x61));
    a.ack(0x61);
    assert_eq!(a.write(EOI, 0, 0), WriteEffect::None);
    assert_eq!(
        a.ppr(),
        0x50,
        "EOI retired the highest in-service vector (0x61)"
    );
    a.write(EOI, 0, 0);
    assert_eq!(a.pending_vector(), Some(0x52));
    // TPR masks classes at or below it.
    a.write(TPR, 0x5f, 0);
    assert_eq!((a.ppr(), a.pending_vector()), (0x5f, None));
    a.write(TPR, 0x40, 0);
    assert_eq!(a.pending_vector(), Some(0x52));
    // Level-triggered: TMR set, EOI reports it.
    let mut a = apic();
    a.accept(0x24, true);
    assert_ne!(a.read(TMR + 0x10, 0) & (1 << 4), 0);
    a.ack(0x24);
    assert_eq!(a.write(EOI, 0, 0), WriteEffect::LevelEoi { vector: 0x24 });
    assert_eq!(a.read(TMR + 0x10, 0), 0);
    assert_eq!(
        a.write(EOI, 0, 0),
        WriteEffect::None,
        "EOI with nothing in service"
    );
}

#[test]
fn ipis_to_itself_only() {
    let mut a = apic();
    // Shorthand self, fixed, vector 0xf3.
    assert_eq!(a.write(ICR_LOW, (1 << 18) | 0xf3, 0), WriteEffect::None);
    assert_eq!(a.pending_vector(), Some(0xf3));
    // Physical destination = own id (0) through ICR high.
    a.write(ICR_HIGH, 0, 0);
    a.write(ICR_LOW, 0x41, 0);
    assert!(irr_bit(&mut a, 0x41));
    assert_eq!(a.read(ICR_LOW, 0), 0x41);
    // Another APIC id, or INIT/SIPI, is not delivered and is reported.
    a.write(ICR_HIGH, 1 << 24, 0);
    assert_eq!(
        a.write(ICR_LOW, 0x42, 0),
        WriteEffect::UnsupportedIpi {
            icr: (1 << 56) | 0x42
        }
    );
    assert!(!irr_bit(&mut a, 0x42));
    assert!(matches!(
        a.write(ICR_LOW, (1 << 18) | 0x500, 0),
        WriteEffect::UnsupportedIpi { .. }
    ));
    // Logical flat destination matching LDR.
    a.write(LDR, 0x0400_0000, 0);
    a.write(ICR_HIGH, 0x0c00_0000, 0);
    assert_eq!(a.write(ICR_LOW, (1 << 11) | 0x43, 0), WriteEffect::None);
    assert!(irr_bit(&mut a, 0x43));
    // All excluding self reaches nobody; all including self reaches this APIC.
    assert_eq!(a.write(ICR_LOW, (3 << 18) | 0x44, 0), WriteEffect::None);
    assert!(!irr_bit(&mut a, 0x44));
    a.write(ICR_LOW, (2 << 18) | 0x45, 0);
    assert!(irr_bit(&mut a, 0x45));
}

#[test]
fn errors_latch_into_esr_and_raise_the_error_lvt() {
    let mut a = apic();
    a.write(ICR_LOW, (1 << 18) | 0x03, 0); // self-IPI with an illegal vector
    assert_eq!(a.read(ESR, 0), 0, "ESR shows errors only after a write");
    a.write(ESR, 0, 0);
    assert_eq!(a.read(ESR, 0), esr::SEND_ILLEGAL_VECTOR);
    a.write(ESR, 0, 0);
    assert_eq!(a.read(ESR, 0), 0);
    a.write(LVT_ERROR, 0xfe, 0);
    assert_eq!(a.read(0x010, 0), 0, "undefined register");
    a.write(ESR, 0, 0);
    assert_eq!(a.read(ESR, 0), esr::ILLEGAL_REGISTER);
    assert_eq!(a.pending_vector(), Some(0xfe), "error interrupt");
    a.accept(5, false);
    a.write(ESR, 0, 0);
    assert_eq!(a.read(ESR, 0), esr::RECEIVE_ILLEGAL_VECTOR);
}

#[test]
fn divide_configuration() {
    let mut a = apic();
    for (v, d) in [
        (0, 2),
        (1, 4),
        (2, 8),
        (3, 16),
        (8, 32),
        (9, 64),
        (10, 128),
        (11, 1),
    ] {
        a.write(TIMER_DIVIDE, v, 0);
        assert_eq!(a.divisor(), d, "divide config {v:#x}");
        assert_eq!(a.read(TIMER_DIVIDE, 0), v);
    }
}

#[test]
fn one_shot_timer() {
    let mut a = apic();
    a.write(TIMER_DIVIDE, 0xb, 0); // divide by 1
    a.write(LVT_TIMER, 0xec, 0);
    a.write(TIMER_INITIAL, 1000, 10_000);
    assert_eq!(
        a.next_deadline(),
        Some(12_000),
        "1000 ticks at 2 TSC ticks each"
    );
    assert_eq!(a.read(TIMER_CURRENT, 11_000), 500);
    a.poll(11_999);
    assert_eq!(a.pending_vector(), None);
    a.poll(12_000);
    assert_eq!(a.pending_vector(), Some(0xec));
    assert_eq!(a.next_deadline(), None);
    assert_eq!(a.read(TIMER_CURRENT, 13_000), 0);
    assert_eq!(a.read(TIMER_INITIAL, 13_000), 1000);
    // Masked: counts and expires, but raises nothing. Writing 0 stops it.
    let mut a = apic();
    a.write(LVT_TIMER, LVT_MASKED | 0xec, 0);
    a.write(TIMER_INITIAL, 10, 0);
    a.poll(1_000_000);
    assert_eq!(a.pending_vector(), None);
    a.write(TIMER_INITIAL, 10, 0);
    a.write(TIMER_INITIAL, 0, 5);
    assert_eq!(a.next_deadline(), None);
}

#[test]
fn periodic_timer_rearms_and_coalesces() {
    let mut a = apic();
    a.write(TIMER_DIVIDE, 3, 0); // divide by 16
    a.write(LVT_TIMER, (1 << 17) | 0xef, 0);
    assert_eq!(a.timer_mode(), TimerMode::Periodic);
    a.write(TIMER_INITIAL, 100, 0); // period = 100 * 16 * 2 = 3200 TSC ticks
    assert_eq!(a.next_deadline(), Some(3200));
    assert_eq!(a.read(TIMER_CURRENT, 1600), 50);
    a.poll(3200);
    assert_eq!(a.pending_vector(), Some(0xef));
    assert_eq!(a.next_deadline(), Some(6400));
    a.ack(0xef);
    a.write(EOI, 0, 3300);
    assert_eq!(a.read(TIMER_CURRENT, 3200 + 320), 90);
    // Missed periods: one interrupt, next deadline on the period grid.
    a.poll(10_000);
    assert_eq!(a.pending_vector(), Some(0xef));
    assert_eq!(a.next_deadline(), Some(12_800));
    // Changing the divider keeps the remaining count: at 11_200 half a period (50) is left;
    // at divide 1 that is 100 TSC ticks.
    a.write(TIMER_DIVIDE, 0xb, 11_200);
    assert_eq!(a.next_deadline(), Some(11_300));
    assert_eq!(a.read(TIMER_CURRENT, 11_200), 50);
}

#[test]
fn tsc_deadline_timer() {
    let mut a = apic();
    a.write_tsc_deadline(5000, 0);
    assert_eq!(
        (a.read_tsc_deadline(), a.next_deadline()),
        (0, None),
        "ignored outside deadline mode"
    );
    a.write(LVT_TIMER, (2 << 17) | 0xec, 0);
    assert_eq!(a.timer_mode(), TimerMode::TscDeadline);
    a.write(TIMER_INITIAL, 1000, 0);
    assert_eq!(
        (a.read(TIMER_INITIAL, 0), a.next_deadline()),
        (0, None),
        "initial count ignored"
    );
    a.write_tsc_deadline(5000, 1000);
    assert_eq!(
        (a.read_tsc_deadline(), a.next_deadline()),
        (5000, Some(5000))
    );
    a.poll(4999);
    assert_eq!(a.pending_vector(), None);
    a.poll(5000);
    assert_eq!(a.pending_vector(), Some(0xec));
    assert_eq!(
        (a.read_tsc_deadline(), a.next_deadline()),
        (0, None),
        "fires once"
    );
    // A deadline in the past fires at once; 0 disarms.
    a.ack(0xec);
    a.write(EOI, 0, 6000);
    a.write_tsc_deadline(100, 6000);
    assert_eq!(a.pending_vector(), Some(0xec));
    a.ack(0xec);
    a.write(EOI, 0, 6000);
    a.write_tsc_deadline(9000, 6000);
    a.write_tsc_deadline(0, 6000);
    assert_eq!(a.next_deadline(), None);
    // Leaving deadline mode disarms.
    a.write_tsc_deadline(9000, 6000);
    a.write(LVT_TIMER, 0xec, 6000);
    assert_eq!(a.next_deadline(), None);
}

#[test]
fn x2apic_msrs() {
    let mut a = LocalApic::new(0x23, TSC_HZ, BUS_HZ);
    a.x2apic_write(0x80f, u64::from(SVR_ENABLE | 0xff), 0)
        .unwrap();
    assert_eq!(a.x2apic_read(0x802, 0), Ok(0x23), "full x2APIC id");
    assert_eq!(
        a.x2apic_read(0x80d, 0),
        Ok((2 << 16) | (1 << 3)),
        "LDR: cluster 2, bit 3"
    );
    assert_eq!(a.x2apic_read(0x803, 0), Ok(u64::from(VERSION_VALUE)));
    // Not in x2APIC mode, write-only, or read-only: #GP.
    assert_eq!(a.x2apic_read(0x80e, 0), Err(X2apicFault), "DFR");
    assert_eq!(a.x2apic_read(0x831, 0), Err(X2apicFault), "ICR high");
    assert_eq!(
        a.x2apic_read(0x80b, 0),
        Err(X2apicFault),
        "EOI is write-only"
    );
    assert_eq!(
        a.x2apic_read(0x83f, 0),
        Err(X2apicFault),
        "SELF IPI is write-only"
    );
    assert_eq!(a.x2apic_read(0x801, 0), Err(X2apicFault), "undefined");
    assert_eq!(a.x2apic_write(0x802, 0, 0), Err(X2apicFault));
    assert_eq!(a.x2apic_write(0x80d, 0, 0), Err(X2apicFault));
    assert_eq!(
        a.x2apic_write(0x808, 1 << 32, 0),
        Err(X2apicFault),
        "reserved upper half"
    );
    assert_eq!(a.x2apic_write(0x900, 0, 0), Err(X2apicFault));
    // SELF IPI and the 64-bit ICR with a 32-bit destination.
    assert_eq!(a.x2apic_write(0x83f, 0x51, 0), Ok(WriteEffect::None));
    assert_eq!(a.pending_vector(), Some(0x51));
    a.ack(0x51);
    assert_eq!(
        a.x2apic_write(0x80b, 1, 0),
        Err(X2apicFault),
        "EOI must be 0"
    );
    assert_eq!(a.x2apic_write(0x80b, 0, 0), Ok(WriteEffect::None));
    assert_eq!(
        a.x2apic_write(0x830, (0x23 << 32) | 0x61, 0),
        Ok(WriteEffect::None)
    );
    assert_eq!(a.pending_vector(), Some(0x61));
    assert_eq!(a.x2apic_read(0x830, 0), Ok((0x23 << 32) | 0x61));
    let other = (0x123u64 << 32) | 0x62;
    assert_eq!(
        a.x2apic_write(0x830, other, 0),
        Ok(WriteEffect::UnsupportedIpi { icr: other })
    );
    // Logical: cluster 2, bit 3.
    assert_eq!(
        a.x2apic_write(0x830, (0x0002_0008u64 << 32) | (1 << 11) | 0x63, 0),
        Ok(WriteEffect::None)
    );
    assert_eq!(
        a.x2apic_read(0x820 + 3, 0).unwrap() & 0x8,
        0x8,
        "IRR bit of 0x63"
    );
    // The timer through MSRs.
    a.x2apic_write(0x83e, 0xb, 0).unwrap();
    a.x2apic_write(0x832, 0xec, 0).unwrap();
    a.x2apic_write(0x838, 1000, 0).unwrap();
    assert_eq!(a.x2apic_read(0x839, 1000), Ok(500));
    assert_eq!(
        a.x2apic_write(0x839, 5, 0),
        Err(X2apicFault),
        "current count is read-only"
    );
}

#[test]
fn mmio_accesses_of_every_width() {
    let mut a = apic();
    // A 32-bit store at a register boundary reaches it; loads of 4 and 8 bytes read it whole.
    assert_eq!(a.mmio_write(TPR, 4, 0x1234_5620, 0), WriteEffect::None);
    assert_eq!(a.mmio_read(TPR, 4, 0), 0x20);
    assert_eq!(a.mmio_read(ID, 8, 0), 0, "ID 0, upper half 0");
    assert_eq!(a.mmio_read(VERSION, 4, 0), u64::from(VERSION_VALUE));
    // Narrow loads see the addressed bytes; bytes 4..15 of a slot read 0.
    assert_eq!(a.mmio_read(VERSION, 1, 0), 0x14);
    assert_eq!(a.mmio_read(VERSION + 2, 2, 0), 0x0005);
    assert_eq!(a.mmio_read(VERSION + 4, 4, 0), 0);
    // Misaligned or narrow stores are dropped, the register keeps its value.
    assert_eq!(a.mmio_write(TPR + 1, 4, 0xff, 0), WriteEffect::Dropped);
    assert_eq!(a.mmio_write(TPR, 2, 0xff, 0), WriteEffect::Dropped);
    assert_eq!(a.mmio_write(TPR, 1, 0xff, 0), WriteEffect::Dropped);
    assert_eq!(a.mmio_read(TPR, 4, 0), 0x20);
    // An 8-byte store writes the low 32 bits.
    a.mmio_write(TPR, 8, 0xffff_ffff_0000_0030, 0);
    assert_eq!(a.mmio_read(TPR, 4, 0), 0x30);
    // EOI through MMIO retires the in-service vector.
    a.accept(0x51, false);
    a.ack(0x51);
    assert_eq!(a.mmio_read(ISR + 0x20, 4, 0), 1 << (0x51 - 0x40));
    a.mmio_write(EOI, 4, 0, 0);
    assert_eq!(a.mmio_read(ISR + 0x20, 4, 0), 0);
}

#[test]
fn cr8_is_the_tpr_priority_class() {
    let mut a = apic();
    a.write(TPR, 0x5a, 0);
    assert_eq!(a.cr8(), 5);
    a.set_cr8(0x1c);
    assert_eq!(a.read(TPR, 0), 0xc0, "CR8[3:0] into TPR[7:4], TPR[3:0] cleared");
    a.accept(0xc1, false);
    assert_eq!(a.pending_vector(), None, "class 0xc is not above TPR class 0xc");
    a.set_cr8(0xb);
    assert_eq!(a.pending_vector(), Some(0xc1));
}

#[test]
fn lint0_delivery_modes() {
    let mut a = LocalApic::new(0, TSC_HZ, BUS_HZ);
    assert_eq!(a.lint0(), None, "masked at reset");
    a.write(SVR, SVR_ENABLE | 0xff, 0);
    a.write(LVT_LINT0, 0x700, 0);
    assert_eq!(a.lint0(), Some(LvtDelivery::ExtInt));
    a.write(LVT_LINT0, 0x031, 0);
    assert_eq!(a.lint0(), Some(LvtDelivery::Fixed(0x31)));
    a.write(LVT_LINT0, 0x400, 0);
    assert_eq!(a.lint0(), Some(LvtDelivery::Nmi));
    a.write(LVT_LINT0, 0x700 | LVT_MASKED, 0);
    assert_eq!(a.lint0(), None);
    a.write(LVT_LINT0, 0x700, 0);
    a.write(SVR, 0xff, 0);
    assert_eq!(a.lint0(), None, "software disable masks it");
}

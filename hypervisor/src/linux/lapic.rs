//! A local APIC for one vCPU, through its xAPIC MMIO page (Intel SDM Vol. 3A chapter 10 —
//! numbered 11 in recent editions: "Advanced Programmable Interrupt Controller (APIC)").
//!
//! Modelled registers (Table 10-1): ID, version, TPR, APR (0), PPR (computed, 10.8.3.1), EOI,
//! RRD (0), LDR, DFR, SVR (software enable, 10.4.7.2: LVTs stay masked while disabled), ISR,
//! TMR, IRR (256 bits each), ESR (write latches accumulated errors, 10.5.3), ICR (fixed IPIs to
//! this APIC only: shorthand self, all-including-self, or a physical/logical destination that
//! names this APIC; all-excluding-self reaches nobody in a one-vCPU tenant), the LVT entries
//! (timer, thermal, performance, LINT0, LINT1, error) and the timer (10.5.4): one-shot,
//! periodic, and TSC-deadline (IA32_TSC_DEADLINE, 10.5.4.1), with the divide configuration and
//! the current count computed from the time the caller passes in (TSC ticks; the timer counts
//! at `bus_hz`, the core-crystal frequency the CPUID policy reports in leaf 0x15).
//!
//! Interrupt flow: a source calls [`LocalApic::accept`] (or the timer, an error or a self-IPI
//! raises a vector); [`LocalApic::pending_vector`] is the highest IRR vector whose priority
//! class is above the PPR; the hypervisor injects it and calls [`LocalApic::ack`] (IRR → ISR);
//! the guest's EOI write retires the highest ISR vector (reported if it was level-triggered, for
//! the interrupt source to re-arm). The same registers are reachable as x2APIC MSRs
//! ([`LocalApic::x2apic_read`], [`LocalApic::x2apic_write`]: 64-bit ICR, SELF IPI, read-only
//! LDR, no DFR). Not modelled: NMI/SMI/INIT/SIPI delivery modes, IPIs to other CPUs
//! (reported as [`WriteEffect::UnsupportedIpi`]), APIC base relocation.

/// Register offsets in the xAPIC page.
pub mod reg {
    pub const ID: u32 = 0x020;
    pub const VERSION: u32 = 0x030;
    pub const TPR: u32 = 0x080;
    pub const APR: u32 = 0x090;
    pub const PPR: u32 = 0x0a0;
    pub const EOI: u32 = 0x0b0;
    pub const RRD: u32 = 0x0c0;
    pub const LDR: u32 = 0x0d0;
    pub const DFR: u32 = 0x0e0;
    pub const SVR: u32 = 0x0f0;
    pub const ISR: u32 = 0x100;
    pub const TMR: u32 = 0x180;
    pub const IRR: u32 = 0x200;
    pub const ESR: u32 = 0x280;
    pub const ICR_LOW: u32 = 0x300;
    pub const ICR_HIGH: u32 = 0x310;
    pub const LVT_TIMER: u32 = 0x320;
    pub const LVT_THERMAL: u32 = 0x330;
    pub const LVT_PERF: u32 = 0x340;
    pub const LVT_LINT0: u32 = 0x350;
    pub const LVT_LINT1: u32 = 0x360;
    pub const LVT_ERROR: u32 = 0x370;
    pub const TIMER_INITIAL: u32 = 0x380;
    pub const TIMER_CURRENT: u32 = 0x390;
    pub const TIMER_DIVIDE: u32 = 0x3e0;
}

/// Version register: version 0x14 (integrated APIC), max LVT entry 5 (six entries).
pub const VERSION_VALUE: u32 = 0x0005_0014;
/// LVT mask bit.
pub const LVT_MASKED: u32 = 1 << 16;
/// SVR APIC software enable.
pub const SVR_ENABLE: u32 = 1 << 8;

/// ESR bits (10.5.3).
pub mod esr {
    pub const SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
    pub const RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
    pub const ILLEGAL_REGISTER: u32 = 1 << 7;
}

/// The timer mode (LVT timer bits 18:17).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
}

/// An LVT entry's delivery mode (bits 10:8, SDM Vol. 3A 10.5.1, Figure 10-8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LvtDelivery {
    /// 000: the entry's vector, through IRR/ISR like any fixed interrupt.
    Fixed(u8),
    /// 010
    Smi,
    /// 100
    Nmi,
    /// 101
    Init,
    /// 111: the external 8259A-compatible controller supplies the vector (INTA cycle),
    /// bypassing IRR, ISR and the PPR.
    ExtInt,
    /// 001, 011, 110: reserved.
    Reserved(u8),
}

impl LvtDelivery {
    fn from_lvt(lvt: u32) -> Self {
        match (lvt >> 8) & 7 {
            0 => Self::Fixed(lvt as u8),
            2 => Self::Smi,
            4 => Self::Nmi,
            5 => Self::Init,
            7 => Self::ExtInt,
            m => Self::Reserved(m as u8),
        }
    }
}

/// What a register write asks of the hypervisor beyond the APIC's own state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteEffect {
    None,
    /// An EOI retired a level-triggered vector: the source (e.g. an I/O APIC pin) may re-arm.
    LevelEoi {
        vector: u8,
    },
    /// An IPI this model does not deliver (another CPU, or NMI/INIT/SIPI/...): the raw ICR.
    UnsupportedIpi {
        icr: u64,
    },
    /// An MMIO store that is not a 32-bit store at a register boundary: dropped.
    Dropped,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Bits256([u32; 8]);

impl Bits256 {
    fn set(&mut self, v: u8) {
        self.0[usize::from(v >> 5)] |= 1 << (v & 31);
    }
    fn clear(&mut self, v: u8) {
        self.0[usize::from(v >> 5)] &= !(1 << (v & 31));
    }
    fn get(&self, v: u8) -> bool {
        self.0[usize::from(v >> 5)] & (1 << (v & 31)) != 0
    }
    fn highest(&self) -> Option<u8> {
        (0..8)
            .rev()
            .find(|&i| self.0[i] != 0)
            .map(|i| (i as u32 * 32 + 31 - self.0[i].leading_zeros()) as u8)
    }
}

/// One vCPU's local APIC.
#[derive(Clone, Debug)]
pub struct LocalApic {
    id: u8,
    tsc_hz: u64,
    bus_hz: u64,
    tpr: u32,
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: Bits256,
    irr: Bits256,
    tmr: Bits256,
    esr: u32,
    esr_pending: u32,
    icr: u64,
    lvt_timer: u32,
    lvt_thermal: u32,
    lvt_perf: u32,
    lvt_lint0: u32,
    lvt_lint1: u32,
    lvt_error: u32,
    divide_reg: u32,
    initial: u32,
    /// TSC at which the current one-shot/periodic count started (or the last period began).
    start_tsc: u64,
    /// Armed expiry: the TSC of the next timer interrupt.
    deadline: Option<u64>,
    /// IA32_TSC_DEADLINE as written (0 = disarmed).
    tsc_deadline: u64,
}

impl LocalApic {
    /// An APIC in its reset state (10.4.7.1) with `id`, timed by a TSC of `tsc_hz` and a timer
    /// clock of `bus_hz`.
    pub fn new(id: u8, tsc_hz: u64, bus_hz: u64) -> Self {
        Self {
            id,
            tsc_hz: tsc_hz.max(1),
            bus_hz: bus_hz.max(1),
            tpr: 0,
            ldr: 0,
            dfr: u32::MAX,
            svr: 0xff,
            isr: Bits256::default(),
            irr: Bits256::default(),
            tmr: Bits256::default(),
            esr: 0,
            esr_pending: 0,
            icr: 0,
            lvt_timer: LVT_MASKED,
            lvt_thermal: LVT_MASKED,
            lvt_perf: LVT_MASKED,
            lvt_lint0: LVT_MASKED,
            lvt_lint1: LVT_MASKED,
            lvt_error: LVT_MASKED,
            divide_reg: 0,
            initial: 0,
            start_tsc: 0,
            deadline: None,
            tsc_deadline: 0,
        }
    }

    fn enabled(&self) -> bool {
        self.svr & SVR_ENABLE != 0
    }

    /// The divide value from the divide configuration register (10.5.4, Figure 10-10:
    /// bits 3,1:0 = 000 → 2, 001 → 4, 010 → 8, 011 → 16, 100 → 32, 101 → 64, 110 → 128, 111 → 1).
    pub fn divisor(&self) -> u64 {
        let v = (self.divide_reg & 3) | ((self.divide_reg >> 1) & 4);
        if v == 7 {
            1
        } else {
            2 << v
        }
    }

    pub fn timer_mode(&self) -> TimerMode {
        match (self.lvt_timer >> 17) & 3 {
            1 => TimerMode::Periodic,
            2 => TimerMode::TscDeadline,
            _ => TimerMode::OneShot, // 3 is reserved; treated as one-shot
        }
    }

    fn tsc_per_count(&self) -> u128 {
        // TSC ticks for one decrement of the count, scaled by bus_hz to stay exact.
        u128::from(self.divisor()) * u128::from(self.tsc_hz)
    }

    /// TSC ticks (rounded up) for `counts` decrements.
    fn tsc_for_counts(&self, counts: u64) -> u64 {
        let t = u128::from(counts) * self.tsc_per_count();
        t.div_ceil(u128::from(self.bus_hz))
            .min(u128::from(u64::MAX)) as u64
    }

    /// Whole decrements in `tsc` ticks.
    fn counts_in(&self, tsc: u64) -> u64 {
        (u128::from(tsc) * u128::from(self.bus_hz) / self.tsc_per_count()).min(u128::from(u64::MAX))
            as u64
    }

    fn error(&mut self, bits: u32) {
        self.esr_pending |= bits;
        if self.lvt_error & LVT_MASKED == 0 {
            self.raise((self.lvt_error & 0xff) as u8, false);
        }
    }

    /// Sets an IRR bit (with TMR for level-triggered), or records an illegal vector (0..15).
    fn raise(&mut self, vector: u8, level: bool) {
        if vector < 16 {
            self.esr_pending |= esr::RECEIVE_ILLEGAL_VECTOR;
            return;
        }
        self.irr.set(vector);
        if level {
            self.tmr.set(vector);
        } else {
            self.tmr.clear(vector);
        }
    }

    /// An interrupt from outside (I/O APIC, a device model): sets IRR.
    pub fn accept(&mut self, vector: u8, level_triggered: bool) {
        self.raise(vector, level_triggered);
    }

    /// PPR (10.8.3.1): TPR if its class is at least the highest in-service class, else that
    /// class.
    pub fn ppr(&self) -> u32 {
        let isrv = u32::from(self.isr.highest().unwrap_or(0));
        if (self.tpr & 0xf0) >= (isrv & 0xf0) {
            self.tpr & 0xff
        } else {
            isrv & 0xf0
        }
    }

    /// The vector to inject now, if any: the highest IRR vector whose class exceeds PPR's.
    pub fn pending_vector(&self) -> Option<u8> {
        let v = self.irr.highest()?;
        (u32::from(v) & 0xf0 > self.ppr() & 0xf0).then_some(v)
    }

    /// The hypervisor injected `vector`: IRR → ISR.
    pub fn ack(&mut self, vector: u8) {
        self.irr.clear(vector);
        self.isr.set(vector);
    }

    /// The TSC of the next timer interrupt, for arming the preemption timer.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadline
    }

    /// Fires the timer if `now_tsc` reached its deadline (periodic timers re-arm at the next
    /// period boundary; missed periods coalesce into one IRR bit, as on hardware).
    pub fn poll(&mut self, now_tsc: u64) {
        let Some(d) = self.deadline else { return };
        if now_tsc < d {
            return;
        }
        if self.lvt_timer & LVT_MASKED == 0 {
            self.raise((self.lvt_timer & 0xff) as u8, false);
        }
        match self.timer_mode() {
            TimerMode::Periodic if self.initial != 0 => {
                let period = self.tsc_for_counts(u64::from(self.initial)).max(1);
                let periods = (now_tsc - self.start_tsc) / period;
                self.start_tsc += periods * period;
                self.deadline = Some(self.start_tsc + period);
            }
            TimerMode::TscDeadline => {
                self.tsc_deadline = 0;
                self.deadline = None;
            }
            _ => self.deadline = None,
        }
    }

    fn current_count(&self, now: u64) -> u32 {
        if self.initial == 0 || self.timer_mode() == TimerMode::TscDeadline {
            return 0;
        }
        let elapsed = self.counts_in(now.saturating_sub(self.start_tsc));
        match self.timer_mode() {
            TimerMode::Periodic => self.initial - (elapsed % u64::from(self.initial)) as u32,
            _ if self.deadline.is_none() => 0,
            _ => self
                .initial
                .saturating_sub(elapsed.min(u64::from(u32::MAX)) as u32),
        }
    }

    fn start_count(&mut self, now: u64) {
        self.start_tsc = now;
        self.deadline = (self.initial != 0)
            .then(|| now.saturating_add(self.tsc_for_counts(u64::from(self.initial))));
    }

    /// IA32_TSC_DEADLINE write (MSR 0x6e0): arms (or, with 0, disarms) the deadline timer; ignored
    /// outside TSC-deadline mode (10.5.4.1).
    pub fn write_tsc_deadline(&mut self, value: u64, now_tsc: u64) {
        if self.timer_mode() != TimerMode::TscDeadline {
            return;
        }
        self.tsc_deadline = value;
        self.deadline = (value != 0).then_some(value);
        self.poll(now_tsc);
    }

    /// IA32_TSC_DEADLINE read: the armed deadline, 0 once fired or outside deadline mode.
    pub fn read_tsc_deadline(&self) -> u64 {
        if self.timer_mode() == TimerMode::TscDeadline {
            self.tsc_deadline
        } else {
            0
        }
    }

    fn bank(offset: u32, base: u32) -> Option<usize> {
        (base..base + 0x80)
            .contains(&offset)
            .then(|| ((offset - base) >> 4) as usize)
    }

    /// A 32-bit read of the register at `offset` (16-byte aligned, below 0x400). Undefined
    /// offsets read 0 and set ESR's illegal-register bit.
    pub fn read(&mut self, offset: u32, now_tsc: u64) -> u32 {
        use reg::*;
        if offset & 0xf != 0 {
            self.error(esr::ILLEGAL_REGISTER);
            return 0;
        }
        if let Some(i) = Self::bank(offset, ISR) {
            return self.isr.0[i];
        }
        if let Some(i) = Self::bank(offset, TMR) {
            return self.tmr.0[i];
        }
        if let Some(i) = Self::bank(offset, IRR) {
            return self.irr.0[i];
        }
        match offset {
            ID => u32::from(self.id) << 24,
            VERSION => VERSION_VALUE,
            TPR => self.tpr,
            APR | RRD | EOI => 0,
            PPR => self.ppr(),
            LDR => self.ldr,
            DFR => self.dfr,
            SVR => self.svr,
            ESR => self.esr,
            ICR_LOW => self.icr as u32 & !(1 << 12), // delivery status: always idle
            ICR_HIGH => (self.icr >> 32) as u32,
            LVT_TIMER => self.lvt_timer,
            LVT_THERMAL => self.lvt_thermal,
            LVT_PERF => self.lvt_perf,
            LVT_LINT0 => self.lvt_lint0,
            LVT_LINT1 => self.lvt_lint1,
            LVT_ERROR => self.lvt_error,
            TIMER_INITIAL => self.initial,
            TIMER_CURRENT => self.current_count(now_tsc),
            TIMER_DIVIDE => self.divide_reg,
            _ => {
                self.error(esr::ILLEGAL_REGISTER);
                0
            }
        }
    }

    fn lvt_write(&self, value: u32, writable: u32) -> u32 {
        let v = value & writable;
        if self.enabled() {
            v
        } else {
            v | LVT_MASKED
        }
    }

    /// A 32-bit write of `value` to the register at `offset`, at TSC `now_tsc`.
    pub fn write(&mut self, offset: u32, value: u32, now_tsc: u64) -> WriteEffect {
        use reg::*;
        self.poll(now_tsc);
        match offset {
            TPR => self.tpr = value & 0xff,
            EOI => {
                if let Some(v) = self.isr.highest() {
                    self.isr.clear(v);
                    if self.tmr.get(v) {
                        self.tmr.clear(v);
                        return WriteEffect::LevelEoi { vector: v };
                    }
                }
            }
            LDR => self.ldr = value & 0xff00_0000,
            DFR => self.dfr = value | 0x0fff_ffff,
            SVR => {
                self.svr = value & (0xff | SVR_ENABLE | (1 << 9));
                if !self.enabled() {
                    for l in [
                        &mut self.lvt_timer,
                        &mut self.lvt_thermal,
                        &mut self.lvt_perf,
                        &mut self.lvt_lint0,
                        &mut self.lvt_lint1,
                        &mut self.lvt_error,
                    ] {
                        *l |= LVT_MASKED;
                    }
                }
            }
            ESR => {
                self.esr = self.esr_pending;
                self.esr_pending = 0;
            }
            ICR_HIGH => {
                self.icr = (self.icr & 0xffff_ffff) | (u64::from(value & 0xff00_0000) << 32)
            }
            ICR_LOW => {
                self.icr = (self.icr & !0xffff_ffff) | u64::from(value & 0x000c_cfff);
                return self.send_ipi();
            }
            LVT_TIMER => {
                let old = self.timer_mode();
                self.lvt_timer = self.lvt_write(value, 0x0007_00ff);
                let new = self.timer_mode();
                if (old == TimerMode::TscDeadline) != (new == TimerMode::TscDeadline) {
                    // Switching to or from TSC-deadline mode disarms the timer (10.5.4.1).
                    self.deadline = None;
                    self.tsc_deadline = 0;
                    self.initial = 0;
                }
            }
            LVT_THERMAL => self.lvt_thermal = self.lvt_write(value, 0x0001_07ff),
            LVT_PERF => self.lvt_perf = self.lvt_write(value, 0x0001_07ff),
            LVT_LINT0 => {
                self.lvt_lint0 = self.lvt_write(value, 0x0001_a7ff) | (self.lvt_lint0 & (1 << 14))
            }
            LVT_LINT1 => {
                self.lvt_lint1 = self.lvt_write(value, 0x0001_a7ff) | (self.lvt_lint1 & (1 << 14))
            }
            LVT_ERROR => self.lvt_error = self.lvt_write(value, 0x0001_00ff),
            TIMER_INITIAL => {
                if self.timer_mode() != TimerMode::TscDeadline {
                    self.initial = value;
                    self.start_count(now_tsc);
                }
            }
            TIMER_DIVIDE => {
                // Keep the remaining count and continue it at the new rate.
                let remaining = self.current_count(now_tsc);
                self.divide_reg = value & 0xb;
                if self.deadline.is_some() && self.timer_mode() != TimerMode::TscDeadline {
                    let start = now_tsc;
                    self.start_tsc = start;
                    self.deadline =
                        Some(start.saturating_add(self.tsc_for_counts(u64::from(remaining))));
                    if self.timer_mode() == TimerMode::Periodic {
                        // The next periods run at full length from the new phase.
                        let period = self.tsc_for_counts(u64::from(self.initial));
                        self.start_tsc = self.deadline.unwrap_or(start).saturating_sub(period);
                    }
                }
            }
            ID | VERSION | APR | PPR | RRD | TIMER_CURRENT => {}
            o if (ISR..IRR + 0x80).contains(&o) && o & 0xf == 0 => {}
            _ => self.error(esr::ILLEGAL_REGISTER),
        }
        WriteEffect::None
    }

    /// The TPR as CR8 shows it (SDM Vol. 3A 10.8.6.1: `CR8[3:0] = TPR[7:4]`).
    pub fn cr8(&self) -> u64 {
        u64::from(self.tpr >> 4) & 0xf
    }

    /// A MOV to CR8: `TPR[7:4] = CR8[3:0]`, `TPR[3:0] = 0` (10.8.6.1).
    pub fn set_cr8(&mut self, cr8: u64) {
        self.tpr = ((cr8 & 0xf) as u32) << 4;
    }

    /// How LINT0 delivers what arrives on it (LVT LINT0, 10.5.1), or `None` while it is masked
    /// (always, while the APIC is software-disabled: 10.4.7.2).
    pub fn lint0(&self) -> Option<LvtDelivery> {
        (self.lvt_lint0 & LVT_MASKED == 0).then(|| LvtDelivery::from_lvt(self.lvt_lint0))
    }

    /// A load of `size` bytes (1, 2, 4 or 8) at `offset` in the xAPIC page (10.4.1: registers
    /// sit at 16-byte boundaries and are meant for 32-bit accesses). Narrower loads get the
    /// addressed bytes of the 32-bit register; bytes 4..15 of each 16-byte slot read 0.
    pub fn mmio_read(&mut self, offset: u32, size: u8, now_tsc: u64) -> u64 {
        let slot = offset & 0xff0;
        let value = u64::from(self.read(slot, now_tsc));
        let byte = offset & 0xf;
        let bytes = if byte < 4 { value >> (8 * byte) } else { 0 };
        match size {
            1 => bytes & 0xff,
            2 => bytes & 0xffff,
            4 => bytes & 0xffff_ffff,
            _ => bytes,
        }
    }

    /// A store of `size` bytes at `offset` in the xAPIC page. Only a 32-bit (or wider: the low
    /// 32 bits) store at a register's 16-byte boundary reaches the register; anything else is
    /// dropped and reported as [`WriteEffect::Dropped`] (the SDM leaves it model specific).
    pub fn mmio_write(&mut self, offset: u32, size: u8, value: u64, now_tsc: u64) -> WriteEffect {
        if offset & 0xf != 0 || size < 4 || offset >= 0x1000 {
            return WriteEffect::Dropped;
        }
        self.write(offset, value as u32, now_tsc)
    }

    /// Whether the ICR's destination names this APIC (10.6.2).
    fn names_me(&self, dest: u8, logical: bool) -> bool {
        if !logical {
            return dest == self.id || dest == 0xff;
        }
        let ldr = (self.ldr >> 24) as u8;
        if (self.dfr >> 28) == 0xf {
            dest & ldr != 0 // flat model
        } else {
            dest == 0xff || ((dest >> 4) == (ldr >> 4) && dest & ldr & 0xf != 0)
            // cluster model
        }
    }

    fn send_ipi(&mut self) -> WriteEffect {
        let icr = self.icr;
        let names_me = self.names_me((icr >> 56) as u8, icr & (1 << 11) != 0);
        self.deliver_ipi(icr, names_me)
    }

    /// Delivers a fixed IPI described by `icr` to this APIC if its shorthand or destination
    /// (`dest_is_me`) names it; anything else is reported.
    fn deliver_ipi(&mut self, icr: u64, dest_is_me: bool) -> WriteEffect {
        let vector = icr as u8;
        let delivery = (icr >> 8) & 7;
        let shorthand = (icr >> 18) & 3;
        let to_me = match shorthand {
            0 => dest_is_me,
            1 | 2 => true,
            _ => false, // all excluding self: no other vCPU in this tenant
        };
        if delivery != 0 || (shorthand == 0 && !to_me) {
            return WriteEffect::UnsupportedIpi { icr };
        }
        if to_me {
            if vector < 16 {
                self.error(esr::SEND_ILLEGAL_VECTOR);
            } else {
                self.raise(vector, false);
            }
        }
        WriteEffect::None
    }

    /// The x2APIC logical id (10.12.10.2): cluster (id 19:4) in 31:16, one bit of 15:0.
    pub fn x2apic_ldr(&self) -> u32 {
        ((u32::from(self.id) >> 4) << 16) | (1 << (self.id & 0xf))
    }

    /// An RDMSR of x2APIC register `msr` (0x800..=0x8ff, SDM Vol. 3A 10.12.1.2, Table 10-6).
    /// Registers that do not exist in x2APIC mode or are write-only raise #GP.
    pub fn x2apic_read(&mut self, msr: u32, now_tsc: u64) -> Result<u64, X2apicFault> {
        use reg::*;
        let offset = x2apic_offset(msr)?;
        match offset {
            ID => Ok(u64::from(self.id)),
            LDR => Ok(u64::from(self.x2apic_ldr())),
            ICR_LOW => Ok(self.icr & !(1 << 12)),
            APR | RRD | EOI | DFR | ICR_HIGH | X2APIC_SELF_IPI => Err(X2apicFault),
            // Undefined registers are #GP in x2APIC mode, not an ESR error.
            o if !defined(o) => Err(X2apicFault),
            _ => Ok(u64::from(self.read(offset, now_tsc))),
        }
    }

    /// A WRMSR of `value` to x2APIC register `msr`. Read-only registers, EOI with a non-zero
    /// value, and reserved bits in the upper half of 32-bit registers raise #GP.
    pub fn x2apic_write(
        &mut self,
        msr: u32,
        value: u64,
        now_tsc: u64,
    ) -> Result<WriteEffect, X2apicFault> {
        use reg::*;
        let offset = x2apic_offset(msr)?;
        if offset != ICR_LOW && value >> 32 != 0 {
            return Err(X2apicFault);
        }
        match offset {
            ID | VERSION | APR | PPR | RRD | LDR | DFR | ICR_HIGH | TIMER_CURRENT => {
                Err(X2apicFault)
            }
            o if (ISR..IRR + 0x80).contains(&o) => Err(X2apicFault),
            EOI if value != 0 => Err(X2apicFault),
            ICR_LOW => {
                self.poll(now_tsc);
                self.icr = value & 0xffff_ffff_000c_cfff;
                let dest = (value >> 32) as u32;
                let me = if value & (1 << 11) == 0 {
                    dest == u32::from(self.id) || dest == u32::MAX
                } else {
                    let ldr = self.x2apic_ldr();
                    dest == u32::MAX || ((dest >> 16) == (ldr >> 16) && dest & ldr & 0xffff != 0)
                };
                Ok(self.deliver_ipi(self.icr, me))
            }
            X2APIC_SELF_IPI => {
                self.poll(now_tsc);
                Ok(self.deliver_ipi((1 << 18) | (value & 0xff), true))
            }
            o if !defined(o) => Err(X2apicFault),
            _ => Ok(self.write(offset, value as u32, now_tsc)),
        }
    }
}

/// The x2APIC SELF IPI register's offset (MSR 0x83f).
const X2APIC_SELF_IPI: u32 = 0x3f0;

/// An x2APIC MSR access that raises #GP(0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct X2apicFault;

/// Whether `offset` is a register of this model (Table 10-1).
fn defined(offset: u32) -> bool {
    use reg::*;
    offset & 0xf == 0
        && (matches!(
            offset,
            ID | VERSION
                | TPR
                | APR
                | PPR
                | EOI
                | RRD
                | LDR
                | DFR
                | SVR
                | ESR
                | ICR_LOW
                | ICR_HIGH
                | LVT_TIMER
                | LVT_THERMAL
                | LVT_PERF
                | LVT_LINT0
                | LVT_LINT1
                | LVT_ERROR
                | TIMER_INITIAL
                | TIMER_CURRENT
                | TIMER_DIVIDE
        ) || (ISR..IRR + 0x80).contains(&offset))
}

/// The xAPIC offset of x2APIC MSR `msr` (MSR = 0x800 + offset / 16).
fn x2apic_offset(msr: u32) -> Result<u32, X2apicFault> {
    if (0x800..=0x8ff).contains(&msr) {
        Ok((msr - 0x800) << 4)
    } else {
        Err(X2apicFault)
    }
}

#[cfg(test)]
mod tests;

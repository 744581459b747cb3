//! The time-stamp counter as the kernel's clock: its frequency comes from CPUID leaf 0x15 when the
//! CPU reports its crystal, otherwise from a 10 ms calibration against PIT channel 2.

use super::port::{inb, outb};
use core::sync::atomic::{AtomicU64, Ordering};

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static TSC_AT_BOOT: AtomicU64 = AtomicU64::new(0);

/// Reads the TSC.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the counter (CR4.TSD is clear in ring 0 anyway).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// How the frequency was found, for the boot log.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    CpuidCrystal,
    PitCalibration,
}

/// Records the boot time and measures the TSC frequency.
pub fn init() -> (u64, Source) {
    TSC_AT_BOOT.store(rdtsc(), Ordering::Relaxed);
    let cpuid = raw_cpuid::CpuId::new();
    let from_cpuid = cpuid.get_tsc_info().and_then(|t| t.tsc_frequency()).filter(|&hz| hz > 0);
    let (hz, source) = match from_cpuid {
        Some(hz) => (hz, Source::CpuidCrystal),
        None => (calibrate_with_pit(), Source::PitCalibration),
    };
    TSC_HZ.store(hz.max(1), Ordering::Relaxed);
    (hz, source)
}

/// Counts TSC ticks over 10 ms of PIT channel 2 (1.193182 MHz) in one-shot mode.
fn calibrate_with_pit() -> u64 {
    const PIT_HZ: u64 = 1_193_182;
    const TICKS: u64 = PIT_HZ / 100;
    // SAFETY: the PIT and port 0x61 (speaker gate) are legacy devices the hypervisor owns; this
    // is their documented one-shot programming sequence.
    unsafe {
        let gate = inb(0x61);
        outb(0x61, (gate & !0x02) | 0x01); // speaker off, channel 2 gate on
        outb(0x43, 0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
        outb(0x42, (TICKS & 0xff) as u8);
        outb(0x42, (TICKS >> 8) as u8);
        let start = rdtsc();
        let mut spins = 0u64;
        while inb(0x61) & 0x20 == 0 {
            spins += 1;
            if spins > 100_000_000 {
                break; // no PIT: fall back to an assumed 1 GHz below
            }
        }
        let end = rdtsc();
        outb(0x61, gate);
        if spins > 100_000_000 {
            return 1_000_000_000;
        }
        (end - start) * 100
    }
}

/// The TSC frequency in Hz.
pub fn hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed).max(1)
}

/// Microseconds since boot.
pub fn micros_since_boot() -> u64 {
    let ticks = rdtsc().wrapping_sub(TSC_AT_BOOT.load(Ordering::Relaxed));
    ((ticks as u128 * 1_000_000) / hz() as u128) as u64
}

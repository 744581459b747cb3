//! What CPUID and the MSRs show a Linux tenant, as data (Intel SDM Vol. 2A "CPUID"; Vol. 4
//! "Model-Specific Registers").
//!
//! **CPUID** is an allow list over the host's values: a feature bit reaches the guest only if it
//! is listed here and the host has it; everything Linux would drive through MSRs or VMX controls
//! this platform does not provide is hidden: VMX and SMX, MONITOR/MWAIT, thermal and power
//! management (no APERF/MPERF; leaf 6 shows only ARAT, the always-running APIC timer), MCE/MCA (no machine-check MSRs), MTRRs, the performance
//! monitoring leaf, speculation-control MSRs, PCID/INVPCID, XSAVE/AVX (the guest uses FXSAVE and
//! never XSETBV; its x87/SSE registers, like every vCPU's, are switched at each exit and entry by
//! `kernel::fpu::GuestFpu`), RDTSCP/RDPID (no TSC_AUX), TSX,
//! LA57. Added: the hypervisor bit (leaf 1 `ECX[31]`) with our signature leaves 0x4000_0000/1
//! (`tensor_hcall::cpuid`), TSC-deadline (leaf 1 `ECX[24]`), the invariant TSC (0x8000_0007
//! `EDX[8]`), the TSC and timer frequencies in leaves 0x15 and 0x16 (Linux's
//! `native_calibrate_tsc` then knows the TSC without calibrating against a PIT it does not have,
//! and sets the APIC timer period from the crystal), and one CPU in the topology (leaf 1 EBX,
//! leaf 4, leaf 0xB). x2APIC is shown only if the configuration asks for it.
//!
//! **MSRs** not listed by [`msr_rule`] raise #GP. Listed ones say where their value lives and
//! what a write may do ([`MsrRule`], [`check_write`]).

use tensor_hcall::cpuid as hv;
use tensor_hcall::{cpuid::Features, AbiVersion};

/// The configuration the policy needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuPolicy {
    /// TSC frequency in Hz.
    pub tsc_hz: u64,
    /// The core crystal (= local APIC timer) frequency in Hz; a multiple of 1 kHz keeps
    /// Linux's kHz arithmetic exact.
    pub crystal_hz: u32,
    /// This vCPU's APIC id.
    pub apic_id: u8,
    /// Show x2APIC (leaf 1 `ECX[21]`).
    pub x2apic: bool,
    /// The tensor ABI offered in the hypervisor leaves.
    pub abi: AbiVersion,
    pub features: Features,
}

/// Highest basic leaf shown (0x16: processor frequency).
pub const MAX_BASIC_LEAF: u32 = 0x16;
/// Highest extended leaf shown.
pub const MAX_EXTENDED_LEAF: u32 = 0x8000_0008;

/// Leaf 1 ECX bits passed through: SSE3, PCLMULQDQ, SSSE3, CX16, SSE4.1, SSE4.2, MOVBE,
/// POPCNT, AES-NI, RDRAND.
pub const LEAF1_ECX_ALLOWED: u32 = (1 << 0)
    | (1 << 1)
    | (1 << 9)
    | (1 << 13)
    | (1 << 19)
    | (1 << 20)
    | (1 << 22)
    | (1 << 23)
    | (1 << 25)
    | (1 << 30);
pub const LEAF1_ECX_X2APIC: u32 = 1 << 21;
pub const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
pub const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 6 `EAX[2]`: APIC timer always running (ARAT).
pub const LEAF6_EAX_ARAT: u32 = 1 << 2;
/// Leaf 1 EDX bits passed through: FPU, VME, DE, PSE, TSC, MSR, PAE, CX8, APIC, SEP, PGE, CMOV,
/// PAT, PSE-36, CLFSH, MMX, FXSR, SSE, SSE2. (Not MCE 7, MTRR 12, MCA 14, PSN 18, DS 21, ACPI 22,
/// SS 27, HTT 28, TM 29, PBE 31.)
pub const LEAF1_EDX_ALLOWED: u32 = (1 << 0)
    | (1 << 1)
    | (1 << 2)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 8)
    | (1 << 9)
    | (1 << 11)
    | (1 << 13)
    | (1 << 15)
    | (1 << 16)
    | (1 << 17)
    | (1 << 19)
    | (1 << 23)
    | (1 << 24)
    | (1 << 25)
    | (1 << 26);
/// Leaf 7.0 EBX: FSGSBASE, BMI1, SMEP, BMI2, ERMS, RDSEED, ADX, SMAP, CLFLUSHOPT, CLWB, SHA.
pub const LEAF7_EBX_ALLOWED: u32 = (1 << 0)
    | (1 << 3)
    | (1 << 7)
    | (1 << 8)
    | (1 << 9)
    | (1 << 18)
    | (1 << 19)
    | (1 << 20)
    | (1 << 23)
    | (1 << 24)
    | (1 << 29);
/// Leaf 7.0 EDX: FSRM, MD_CLEAR.
pub const LEAF7_EDX_ALLOWED: u32 = (1 << 4) | (1 << 10);
/// 0x8000_0001 ECX: LAHF/SAHF, LZCNT, PREFETCHW.
pub const EXT1_ECX_ALLOWED: u32 = (1 << 0) | (1 << 5) | (1 << 8);
/// 0x8000_0001 EDX: SYSCALL, NX, 1 GiB pages, long mode.
pub const EXT1_EDX_ALLOWED: u32 = (1 << 11) | (1 << 20) | (1 << 26) | (1 << 29);
/// 0x8000_0007 `EDX[8]`: invariant TSC.
pub const EXT7_EDX_INVARIANT_TSC: u32 = 1 << 8;

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Leaf 0x15 (SDM Vol. 2A, "Time Stamp Counter and Nominal Core Crystal Clock Information"):
/// EAX = denominator, EBX = numerator, ECX = crystal Hz, with TSC = crystal × EBX / EAX. The
/// ratio is reduced; if it still does not fit 32 bits it is scaled down (an error of at most a
/// few parts per billion).
pub fn leaf_0x15(tsc_hz: u64, crystal_hz: u32) -> [u32; 4] {
    let c = u64::from(crystal_hz.max(1));
    let g = gcd(tsc_hz, c).max(1);
    let (mut num, mut den) = (tsc_hz / g, c / g);
    let k = num.max(den).div_ceil(u64::from(u32::MAX));
    if k > 1 {
        num = (num + k / 2) / k;
        den = ((den + k / 2) / k).max(1);
    }
    [den as u32, num as u32, crystal_hz, 0]
}

/// The registers CPUID leaf `leaf`, subleaf `sub` returns in the tenant, given the host's answer
/// for the same leaf (`host`).
pub fn cpuid(p: &CpuPolicy, leaf: u32, sub: u32, host: impl Fn(u32, u32) -> [u32; 4]) -> [u32; 4] {
    match leaf {
        0 => {
            let [_, b, c, d] = host(0, 0);
            [MAX_BASIC_LEAF, b, c, d]
        }
        1 => {
            let [a, b, c, d] = host(1, 0);
            // EBX: APIC id 31:24, one logical processor 23:16, CLFLUSH line size and brand kept.
            let b = (u32::from(p.apic_id) << 24) | (1 << 16) | (b & 0xffff);
            let mut c = (c & LEAF1_ECX_ALLOWED) | LEAF1_ECX_TSC_DEADLINE | LEAF1_ECX_HYPERVISOR;
            if p.x2apic {
                c |= LEAF1_ECX_X2APIC;
            }
            [a, b, c, d & LEAF1_EDX_ALLOWED]
        }
        2 => host(2, 0),
        4 => {
            // Cache descriptors with one core and one thread sharing each cache (EAX 31:26 and
            // 25:14 are "count - 1").
            let [a, b, c, d] = host(4, sub);
            [a & 0x3ff, b, c, d]
        }
        7 if sub == 0 => {
            let [_, b, _, d] = host(7, 0);
            [0, b & LEAF7_EBX_ALLOWED, 0, d & LEAF7_EDX_ALLOWED]
        }
        0xb => {
            // Extended topology: SMT level (1 thread), core level (1 core), then invalid.
            let level_type = match sub {
                0 => 1,
                1 => 2,
                _ => 0,
            };
            let ebx = u32::from(level_type != 0);
            [
                0,
                ebx,
                (sub & 0xff) | (level_type << 8),
                u32::from(p.apic_id),
            ]
        }
        // Thermal and power management: only ARAT, the local APIC timer keeps running in every
        // idle state (the emulated one runs on the TSC), so Linux needs no broadcast timer.
        6 => [LEAF6_EAX_ARAT, 0, 0, 0],
        0x15 => leaf_0x15(p.tsc_hz, p.crystal_hz),
        0x16 => {
            let mhz = (p.tsc_hz / 1_000_000).min(0xffff) as u32;
            [mhz, mhz, p.crystal_hz / 1_000_000, 0]
        }
        hv::SIGNATURE_LEAF..=0x4000_00ff => hv::leaf(leaf, p.abi, p.features).unwrap_or([0; 4]),
        0x8000_0000 => [MAX_EXTENDED_LEAF, 0, 0, 0],
        0x8000_0001 => {
            let [_, _, c, d] = host(0x8000_0001, 0);
            [0, 0, c & EXT1_ECX_ALLOWED, d & EXT1_EDX_ALLOWED]
        }
        0x8000_0002..=0x8000_0006 => host(leaf, 0),
        0x8000_0007 => [0, 0, 0, EXT7_EDX_INVARIANT_TSC],
        0x8000_0008 => {
            // Physical and linear address widths; nothing else (EBX feature bits hidden).
            // A host without the leaf gets the architectural minimum of 36/48 bits.
            let [a, ..] = host(0x8000_0008, 0);
            let a = if host(0x8000_0000, 0)[0] >= 0x8000_0008 && a & 0xff != 0 {
                a & 0xffff
            } else {
                0x3024
            };
            [a, 0, 0, 0]
        }
        _ => [0; 4],
    }
}

/// MSR numbers the policy names.
pub mod msr {
    pub const TSC: u32 = 0x10;
    pub const PLATFORM_ID: u32 = 0x17;
    pub const APIC_BASE: u32 = 0x1b;
    pub const FEATURE_CONTROL: u32 = 0x3a;
    pub const BIOS_SIGN_ID: u32 = 0x8b;
    pub const SYSENTER_CS: u32 = 0x174;
    pub const SYSENTER_ESP: u32 = 0x175;
    pub const SYSENTER_EIP: u32 = 0x176;
    pub const MISC_ENABLE: u32 = 0x1a0;
    pub const DEBUGCTL: u32 = 0x1d9;
    pub const PAT: u32 = 0x277;
    pub const TSC_DEADLINE: u32 = 0x6e0;
    pub const EFER: u32 = 0xc000_0080;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SFMASK: u32 = 0xc000_0084;
    pub const FS_BASE: u32 = 0xc000_0100;
    pub const GS_BASE: u32 = 0xc000_0101;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
}

/// What a write must satisfy (else #GP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteCheck {
    /// Only these bits may be set.
    Mask(u64),
    /// A canonical address (48-bit).
    Canonical,
    /// Eight valid memory types (0, 1, 4, 5, 6, 7), SDM Vol. 3A 11.12.2.
    Pat,
    /// SCE, LME, NXE writable; LMA (bit 10) is the processor's and is kept by the caller.
    Efer,
}

/// Model-owned MSRs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrDevice {
    /// IA32_TSC: reads the guest TSC; a write sets the TSC offset.
    Tsc,
    /// IA32_APIC_BASE: 0xfee0_0000 | EN (bit 11) | BSP (bit 8) (| EXTD, bit 10, with x2APIC).
    /// Only a write of the current value is accepted (no relocation, no disabling).
    ApicBase,
    /// IA32_TSC_DEADLINE: the local APIC model's deadline ([`super::lapic`]).
    TscDeadline,
}

/// How one MSR behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrRule {
    /// Guest state (a VMCS guest field or a value the hypervisor saves and loads around the
    /// guest): reads return the last accepted write, from `reset`.
    State {
        reset: u64,
        check: WriteCheck,
    },
    /// A fixed value; writes are #GP, or ignored when `ignore_writes`.
    Constant {
        value: u64,
        ignore_writes: bool,
    },
    Device(MsrDevice),
}

/// IA32_FEATURE_CONTROL as shown: locked (bit 0) with VMX disabled in and outside SMX.
pub const FEATURE_CONTROL_VALUE: u64 = 1;
/// IA32_MISC_ENABLE as shown: fast strings (0), BTS unavailable (11), PEBS unavailable (12).
pub const MISC_ENABLE_VALUE: u64 = (1 << 0) | (1 << 11) | (1 << 12);
/// IA32_APIC_BASE as shown (SDM Vol. 3A 10.4.4): the xAPIC page at 0xfee0_0000, enabled (EN,
/// bit 11), this CPU the bootstrap processor (BSP, bit 8), not in x2APIC mode. A write of any
/// other value (relocation, disabling, x2APIC) raises #GP.
pub const APIC_BASE_VALUE: u64 = 0xfee0_0000 | (1 << 11) | (1 << 8);
/// The PAT's power-up value (SDM Vol. 3A 11.12.4).
pub const PAT_RESET: u64 = 0x0007_0406_0007_0406;

/// The rule for `msr`, or `None`: the access raises #GP.
pub fn msr_rule(msr: u32) -> Option<MsrRule> {
    use msr::*;
    use MsrRule::*;
    let state = |check| State { reset: 0, check };
    Some(match msr {
        TSC => Device(MsrDevice::Tsc),
        APIC_BASE => Device(MsrDevice::ApicBase),
        TSC_DEADLINE => Device(MsrDevice::TscDeadline),
        // Read by the microcode loader and CPU identification; nothing to load.
        PLATFORM_ID | BIOS_SIGN_ID => Constant {
            value: 0,
            ignore_writes: true,
        },
        FEATURE_CONTROL => Constant {
            value: FEATURE_CONTROL_VALUE,
            ignore_writes: false,
        },
        MISC_ENABLE => Constant {
            value: MISC_ENABLE_VALUE,
            ignore_writes: true,
        },
        SYSENTER_CS => state(WriteCheck::Mask(0xffff_ffff)),
        SYSENTER_ESP | SYSENTER_EIP | LSTAR | CSTAR | FS_BASE | GS_BASE | KERNEL_GS_BASE => {
            state(WriteCheck::Canonical)
        }
        // No branch tracing or LBRs: DEBUGCTL reads 0 and accepts only 0.
        DEBUGCTL => state(WriteCheck::Mask(0)),
        PAT => State {
            reset: PAT_RESET,
            check: WriteCheck::Pat,
        },
        EFER => state(WriteCheck::Efer),
        STAR => state(WriteCheck::Mask(u64::MAX)),
        SFMASK => state(WriteCheck::Mask(0xffff_ffff)),
        _ => return None,
    })
}

/// Why a write is refused: the guest gets #GP(0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GeneralProtection;

/// Checks a write and returns the value to store: for `State`, after its check (EFER keeps
/// `current`'s LMA bit); for a `Constant`, its own value when writes are ignored, else #GP; for
/// a `Device`, `value` unchanged (the device model applies its own rules).
pub fn check_write(rule: MsrRule, current: u64, value: u64) -> Result<u64, GeneralProtection> {
    let MsrRule::State { check, .. } = rule else {
        return match rule {
            MsrRule::Constant {
                ignore_writes: true,
                value: v,
            } => Ok(v),
            MsrRule::Device(_) => Ok(value),
            _ => Err(GeneralProtection),
        };
    };
    let ok = match check {
        WriteCheck::Mask(m) => value & !m == 0,
        WriteCheck::Canonical => ((value as i64) << 16 >> 16) as u64 == value,
        WriteCheck::Pat => value
            .to_le_bytes()
            .iter()
            .all(|t| matches!(t, 0 | 1 | 4 | 5 | 6 | 7)),
        WriteCheck::Efer => value & !(1 | (1 << 8) | (1 << 10) | (1 << 11)) == 0,
    };
    if !ok {
        return Err(GeneralProtection);
    }
    Ok(match check {
        WriteCheck::Efer => (value & !(1 << 10)) | (current & (1 << 10)),
        _ => value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host that reports every feature bit set (and a few real values), so the tests see
    /// exactly what the policy lets through.
    fn host(leaf: u32, sub: u32) -> [u32; 4] {
        match leaf {
            0 => [
                0x1b,
                u32::from_le_bytes(*b"Genu"),
                u32::from_le_bytes(*b"ntel"),
                u32::from_le_bytes(*b"ineI"),
            ],
            1 => [
                0x000806c1,
                0x0010_0800 | 0xff00_0000 | 0x00ff_0000,
                u32::MAX,
                u32::MAX,
            ],
            4 => [0xfc00_4121 | (sub << 5), 0x01c0_003f, 0x3f, 0],
            0x8000_0000 => [0x8000_0008, 0, 0, 0],
            0x8000_0008 => [0x3027, u32::MAX, 0, 0],
            _ => [u32::MAX; 4],
        }
    }

    const P: CpuPolicy = CpuPolicy {
        tsc_hz: 2_900_000_000,
        crystal_hz: 25_000_000,
        apic_id: 0,
        x2apic: false,
        abi: tensor_hcall::ABI_VERSION,
        features: Features::CONSOLE,
    };

    #[test]
    fn leaf1_hides_vmx_shows_hypervisor_and_deadline() {
        let [a, b, c, d] = cpuid(&P, 1, 0, host);
        assert_eq!(a, 0x000806c1, "family/model/stepping kept");
        assert_eq!(c & (1 << 5), 0, "VMX hidden");
        assert_eq!(c & (1 << 6), 0, "SMX hidden");
        assert_eq!(c & (1 << 3), 0, "MONITOR hidden");
        assert_eq!(c & (1 << 21), 0, "no x2APIC unless asked");
        assert_eq!(
            c & (1 << 26 | 1 << 27 | 1 << 28),
            0,
            "XSAVE, OSXSAVE, AVX hidden"
        );
        assert_ne!(c & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(c & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_eq!(
            c,
            LEAF1_ECX_ALLOWED | LEAF1_ECX_HYPERVISOR | LEAF1_ECX_TSC_DEADLINE
        );
        assert_eq!(d, LEAF1_EDX_ALLOWED);
        assert_eq!(
            d & ((1 << 7) | (1 << 12) | (1 << 14) | (1 << 28)),
            0,
            "MCE, MTRR, MCA, HTT hidden"
        );
        assert_ne!(d & (1 << 9), 0, "APIC present");
        assert_eq!(b >> 16, 1, "APIC id 0, one logical processor");
        assert_eq!(b & 0xffff, 0x0800, "CLFLUSH size kept");
        let x = CpuPolicy {
            x2apic: true,
            apic_id: 2,
            ..P
        };
        let [_, b, c, _] = cpuid(&x, 1, 0, host);
        assert_ne!(c & LEAF1_ECX_X2APIC, 0);
        assert_eq!(b >> 24, 2);
    }

    #[test]
    fn hypervisor_leaves_carry_our_signature() {
        let [max, b, c, d] = cpuid(&P, 0x4000_0000, 0, host);
        assert_eq!(max, hv::MAX_LEAF);
        let mut sig = [0u8; 12];
        sig[..4].copy_from_slice(&b.to_le_bytes());
        sig[4..8].copy_from_slice(&c.to_le_bytes());
        sig[8..].copy_from_slice(&d.to_le_bytes());
        assert_eq!(&sig, b"TensorVisor\0");
        let [v, f, ..] = cpuid(&P, 0x4000_0001, 0, host);
        assert_eq!(v, tensor_hcall::ABI_VERSION.to_u32());
        assert_eq!(u64::from(f), Features::CONSOLE.bits());
        assert_eq!(cpuid(&P, 0x4000_0002, 0, host), [0; 4]);
    }

    #[test]
    fn tsc_and_crystal_frequencies() {
        let [den, num, crystal, _] = cpuid(&P, 0x15, 0, host);
        assert_eq!((den, num, crystal), (1, 116, 25_000_000));
        // Linux: crystal_khz = ecx / 1000; tsc_khz = crystal_khz * ebx / eax.
        assert_eq!(
            u64::from(crystal / 1000) * u64::from(num) / u64::from(den),
            2_900_000
        );
        assert_eq!(cpuid(&P, 0x16, 0, host), [2900, 2900, 25, 0]);
        // A TSC that is not a multiple of the crystal: the reduced exact ratio.
        let [den, num, c, _] = leaf_0x15(2_904_012_000, 25_000_000);
        assert_eq!(
            u64::from(c) * u64::from(num) / u64::from(den),
            2_904_012_000
        );
        assert_eq!(u64::from(c) * u64::from(num) % u64::from(den), 0);
        // A ratio that does not fit 32 bits even reduced is scaled down, staying within 1 ppm.
        let [den, num, c, _] = leaf_0x15(5_000_000_003, 24_000_001);
        assert!(u64::from(num) > u64::from(u32::MAX) / 2 && den > 1);
        let tsc = u64::from(c) * u64::from(num) / u64::from(den);
        assert!(tsc.abs_diff(5_000_000_003) <= 5_000, "{tsc}");
        assert_eq!(cpuid(&P, 0, 0, host)[0], 0x16, "max leaf covers 0x15/0x16");
    }

    #[test]
    fn topology_is_one_cpu() {
        assert_eq!(cpuid(&P, 0xb, 0, host), [0, 1, 0x100, 0]);
        assert_eq!(cpuid(&P, 0xb, 1, host), [0, 1, 0x201, 0]);
        assert_eq!(cpuid(&P, 0xb, 2, host), [0, 0, 2, 0]);
        let [a, ..] = cpuid(&P, 4, 1, host);
        assert_eq!(a >> 14, 0, "no sharing, one core");
        assert_eq!(a & 0x3ff, (0x4121 | (1 << 5)) & 0x3ff);
    }

    #[test]
    fn hidden_leaves_and_extended_features() {
        assert_eq!(cpuid(&P, 6, 0, host), [LEAF6_EAX_ARAT, 0, 0, 0], "leaf 6: ARAT only");
        for leaf in [5, 0xa, 0xd, 0x14, 0x17, 0x1f, 0x8000_0009] {
            assert_eq!(cpuid(&P, leaf, 0, host), [0; 4], "leaf {leaf:#x}");
        }
        let [_, b, c, d] = cpuid(&P, 7, 0, host);
        assert_eq!((b, c, d), (LEAF7_EBX_ALLOWED, 0, LEAF7_EDX_ALLOWED));
        assert_eq!(
            b & ((1 << 5) | (1 << 10) | (1 << 11)),
            0,
            "AVX2, INVPCID, RTM hidden"
        );
        assert_eq!(
            d & (1 << 26 | 1 << 29),
            0,
            "SPEC_CTRL, ARCH_CAPABILITIES hidden"
        );
        assert_eq!(cpuid(&P, 7, 1, host), [0; 4]);
        let [_, _, c, d] = cpuid(&P, 0x8000_0001, 0, host);
        assert_eq!((c, d), (EXT1_ECX_ALLOWED, EXT1_EDX_ALLOWED));
        assert_eq!(d & (1 << 27), 0, "RDTSCP hidden");
        assert_eq!(cpuid(&P, 0x8000_0007, 0, host), [0, 0, 0, 1 << 8]);
        assert_eq!(cpuid(&P, 0x8000_0008, 0, host), [0x3027, 0, 0, 0]);
        assert_eq!(cpuid(&P, 0x8000_0000, 0, host)[0], 0x8000_0008);
        let old_host = |leaf: u32, _| {
            if leaf == 0x8000_0000 {
                [0x8000_0004, 0, 0, 0]
            } else {
                [0; 4]
            }
        };
        assert_eq!(cpuid(&P, 0x8000_0008, 0, old_host), [0x3024, 0, 0, 0]);
    }

    #[test]
    fn msr_allow_list_and_write_checks() {
        assert_eq!(msr_rule(0x48), None, "SPEC_CTRL: #GP");
        assert_eq!(msr_rule(0x179), None, "MCG_CAP: #GP");
        assert_eq!(msr_rule(0xe7), None, "MPERF: #GP");
        assert_eq!(msr_rule(0x802), None, "x2APIC MSRs: #GP");
        assert_eq!(msr_rule(0xfe), None, "MTRRcap: #GP (MTRRs hidden)");
        assert_eq!(
            msr_rule(msr::APIC_BASE),
            Some(MsrRule::Device(MsrDevice::ApicBase))
        );
        assert_eq!(
            msr_rule(msr::TSC_DEADLINE),
            Some(MsrRule::Device(MsrDevice::TscDeadline))
        );
        // Constants.
        let fc = msr_rule(msr::FEATURE_CONTROL).unwrap();
        assert_eq!(
            fc,
            MsrRule::Constant {
                value: 1,
                ignore_writes: false
            }
        );
        assert_eq!(check_write(fc, 1, 5), Err(GeneralProtection));
        let me = msr_rule(msr::MISC_ENABLE).unwrap();
        assert_eq!(
            check_write(me, 0, 1 << 34),
            Ok(MISC_ENABLE_VALUE),
            "writes ignored"
        );
        // State with checks.
        let lstar = msr_rule(msr::LSTAR).unwrap();
        assert_eq!(
            check_write(lstar, 0, 0xffff_ffff_8100_0000),
            Ok(0xffff_ffff_8100_0000)
        );
        assert_eq!(
            check_write(lstar, 0, 0x0000_8000_0000_0000),
            Err(GeneralProtection)
        );
        let pat = msr_rule(msr::PAT).unwrap();
        assert_eq!(
            pat,
            MsrRule::State {
                reset: PAT_RESET,
                check: WriteCheck::Pat
            }
        );
        assert_eq!(
            check_write(pat, 0, 0x0007_0106_0007_0406),
            Ok(0x0007_0106_0007_0406)
        );
        assert_eq!(
            check_write(pat, 0, 0x0007_0206_0007_0406),
            Err(GeneralProtection),
            "type 2 reserved"
        );
        let efer = msr_rule(msr::EFER).unwrap();
        assert_eq!(
            check_write(efer, 1 << 10, (1 << 11) | (1 << 8) | 1),
            Ok(0xd01),
            "LMA kept"
        );
        assert_eq!(check_write(efer, 0, 0xd01), Ok(0x901), "LMA not writable");
        assert_eq!(
            check_write(efer, 0, 1 << 12),
            Err(GeneralProtection),
            "SVME"
        );
        let dbg = msr_rule(msr::DEBUGCTL).unwrap();
        assert_eq!(check_write(dbg, 0, 0), Ok(0));
        assert_eq!(check_write(dbg, 0, 1), Err(GeneralProtection));
        let sfmask = msr_rule(msr::SFMASK).unwrap();
        assert_eq!(check_write(sfmask, 0, 1 << 32), Err(GeneralProtection));
        assert_eq!(
            check_write(MsrRule::Device(MsrDevice::Tsc), 0, 5),
            Ok(5),
            "devices decide themselves"
        );
    }
}

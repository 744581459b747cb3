//! A Linux tenant's VM exits: CPUID and MSR policy, port I/O onto the emulated legacy devices
//! and the ACPI PM1 registers, the local APIC's xAPIC page (EPT violations decoded with
//! `linux::decode`), control-register writes, HLT that sleeps until the next interrupt, reset and
//! power-off, and interrupt injection from the local APIC or, through LINT0 in ExtINT mode, the
//! 8259A (`linux::intr`).

use super::super::services::ExitServices;
use super::super::vcpu::Vcpu;
use hypervisor::legacy_pc::{Cmos, Pit};
use hypervisor::linux::acpi_tables::{Pm1, SleepRequest, LOCAL_APIC_ADDRESS};
use hypervisor::linux::intr::Interrupts;
use hypervisor::linux::lapic::{LocalApic, WriteEffect};
use hypervisor::linux::pci::{ConfigEvent, PciConfig};
use hypervisor::linux::uart::Uart16550;
use super::super::ram::GuestRam;
use hypervisor::dispatch::DISPATCH_FEATURES;
use hypervisor::linux::policy::{self, CpuPolicy, MsrDevice, MsrRule};
use tensor_hcall::ABI_VERSION;
use hypervisor::linux::decode::{decode, MmioAccess, MmioOp, MAX_INSTRUCTION_LEN};
use hypervisor::linux::gva::{fetch_instruction as fetch, PagingMode};
use tensor_hcall::linux::{HP_ARG0, HP_ARG3, HP_CALL, HP_RESULT, HP_SEQUENCE, HYPERCALL_PAGE_SIZE};
use hypervisor::vcpu::{Decision, GuestRegs, Services, StopReason};
use vmx::exit_info::Exit;
use vmx::fields::*;
use vmx::qual::{CrAccessType, Gpr, IoQualification};
use vmx::cr::FixedBits;
use vmx::{PrimaryControls, VmFail};

/// The VMX fixed bits of CR0 and CR4 for this CPU.
#[derive(Clone, Copy, Debug)]
pub struct CrPolicy {
    pub cr0: FixedBits,
    pub cr4: FixedBits,
}

const CR4_VMXE: u64 = 1 << 13;

// MSR numbers (Intel SDM Vol. 4, table 2-2), as the policy names them.
use policy::msr::{
    DEBUGCTL as MSR_DEBUGCTL, EFER as MSR_EFER, FS_BASE as MSR_FS_BASE, GS_BASE as MSR_GS_BASE, KERNEL_GS_BASE as MSR_KERNEL_GS_BASE,
    CSTAR as MSR_CSTAR, LSTAR as MSR_LSTAR, PAT as MSR_PAT, SFMASK as MSR_SFMASK, STAR as MSR_STAR, SYSENTER_CS as MSR_SYSENTER_CS,
    SYSENTER_EIP as MSR_SYSENTER_EIP, SYSENTER_ESP as MSR_SYSENTER_ESP,
};

/// MSRs the tenant owns while it runs and the hypervisor never uses: written to the CPU when the
/// tenant writes them and when its slice starts, read back when it ends. The read-back matters
/// for IA32_KERNEL_GS_BASE: SWAPGS exchanges it with the GS base without an exit (SDM Vol. 2B,
/// SWAPGS), so a slice that ends in user mode leaves the kernel's per-CPU base there, not the
/// value the tenant last wrote.
const PASSED_MSRS: [u32; 5] = [MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_SFMASK, MSR_KERNEL_GS_BASE];

/// One Linux tenant's platform.
pub struct Platform {
    /// The local APIC and the 8259A pair behind its LINT0.
    intr: Interrupts,
    pit: Pit,
    pm1: Pm1,
    cmos: Cmos,
    uart: Uart16550,
    uart_line: bool,
    pci: PciConfig,
    /// Guest-physical address of the hypercall page (BAR 0) and its offset in the tenant's
    /// memory block, where the hypervisor writes results.
    hp_gpa: u64,
    hp_block_offset: u64,
    hp_args: [u64; 4],
    hp_sequence: u64,
    /// A call through the page parked on an engine request: its result and the sequence go into
    /// the page when the request completes ([`Platform::finish_page_call`]), before the vCPU
    /// runs again.
    hp_parked: bool,
    /// Accesses outside the tenant's memory and BARs (reads all ones, writes dropped).
    pub stray_accesses: u64,
    pub page_calls: u64,
    tsc_hz: u64,
    cr: CrPolicy,
    pat: u64,
    passed: [u64; 5],
    /// The vCPU executed HLT with interrupts on and waits for one.
    halted: bool,
    pub uart_bytes: u64,
    pub injected: u64,
    /// Loads and stores the local APIC's page took (each an EPT violation).
    pub apic_accesses: u64,
    /// IPIs the local APIC model does not deliver, and xAPIC stores it dropped (logged first).
    apic_unsupported: u64,
    /// COM1's bytes go to the hypervisor's console as they are (an interactive shell), not as
    /// `[NAME] line` log lines.
    pub raw_console: bool,
}

/// Reads general-purpose register `r` (RSP lives in the VMCS).
fn gpr(regs: &GuestRegs, r: Gpr) -> u64 {
    match r {
        Gpr::Rax => regs.rax,
        Gpr::Rcx => regs.rcx,
        Gpr::Rdx => regs.rdx,
        Gpr::Rbx => regs.rbx,
        Gpr::Rsp => GuestNatural::Rsp.read(&Vcpu::vmcs()).unwrap_or(0),
        Gpr::Rbp => regs.rbp,
        Gpr::Rsi => regs.rsi,
        Gpr::Rdi => regs.rdi,
        Gpr::R8 => regs.r8,
        Gpr::R9 => regs.r9,
        Gpr::R10 => regs.r10,
        Gpr::R11 => regs.r11,
        Gpr::R12 => regs.r12,
        Gpr::R13 => regs.r13,
        Gpr::R14 => regs.r14,
        Gpr::R15 => regs.r15,
    }
}

fn set_gpr(regs: &mut GuestRegs, r: Gpr, v: u64) {
    let slot = match r {
        Gpr::Rax => &mut regs.rax,
        Gpr::Rcx => &mut regs.rcx,
        Gpr::Rdx => &mut regs.rdx,
        Gpr::Rbx => &mut regs.rbx,
        Gpr::Rsp => {
            let _ = GuestNatural::Rsp.write(&mut Vcpu::vmcs(), v);
            return;
        }
        Gpr::Rbp => &mut regs.rbp,
        Gpr::Rsi => &mut regs.rsi,
        Gpr::Rdi => &mut regs.rdi,
        Gpr::R8 => &mut regs.r8,
        Gpr::R9 => &mut regs.r9,
        Gpr::R10 => &mut regs.r10,
        Gpr::R11 => &mut regs.r11,
        Gpr::R12 => &mut regs.r12,
        Gpr::R13 => &mut regs.r13,
        Gpr::R14 => &mut regs.r14,
        Gpr::R15 => &mut regs.r15,
    };
    *slot = v;
}

/// The CPUID a Linux tenant sees: `hypervisor::linux::policy` (host features through allow
/// lists, the local APIC with its TSC-deadline timer and ARAT, the TSC frequency in leaf 0x15
/// so Linux calibrates nothing, our hypervisor leaves). No x2APIC: Linux 6.1 would not use it
/// without interrupt remapping, so the xAPIC page is the one interface.
pub fn linux_cpuid(leaf: u32, subleaf: u32, tsc_hz: u64) -> [u32; 4] {
    let p = CpuPolicy { tsc_hz, crystal_hz: CRYSTAL_HZ, apic_id: 0, x2apic: false, abi: ABI_VERSION, features: DISPATCH_FEATURES };
    policy::cpuid(&p, leaf, subleaf, |l, s| {
        let c = core::arch::x86_64::__cpuid_count(l, s);
        [c.eax, c.ebx, c.ecx, c.edx]
    })
}

/// The core-crystal frequency leaf 0x15 reports (a common Intel value; any kHz multiple works),
/// also the local APIC timer's clock in its one-shot and periodic modes.
const CRYSTAL_HZ: u32 = 25_000_000;
/// The local APIC's page (SDM Vol. 3A 10.4.1): not mapped in the tenant's EPT, so every access
/// exits as an EPT violation and is emulated.
const APIC_PAGE: core::ops::Range<u64> = LOCAL_APIC_ADDRESS as u64..LOCAL_APIC_ADDRESS as u64 + 0x1000;

impl Platform {
    pub fn new(tsc_hz: u64, cr: CrPolicy, ram_end: u64, window: u64, hp_gpa: u64, hp_block_offset: u64) -> Self {
        Self {
            pci: PciConfig::new(hp_gpa as u32, (ram_end as u32, window as u32)),
            hp_gpa,
            hp_block_offset,
            hp_args: [0; 4],
            hp_sequence: 0,
            hp_parked: false,
            stray_accesses: 0,
            page_calls: 0,
            intr: Interrupts::new(LocalApic::new(0, tsc_hz, u64::from(CRYSTAL_HZ))),
            pit: Pit::default(),
            pm1: Pm1::default(),
            cmos: Cmos::default(),
            uart: Uart16550::new(),
            uart_line: false,
            tsc_hz,
            cr,
            pat: 0x0007_0406_0007_0406,
            passed: [0; 5],
            halted: false,
            uart_bytes: 0,
            injected: 0,
            apic_accesses: 0,
            apic_unsupported: 0,
            raw_console: false,
        }
    }

    /// The tenant's slice starts on this CPU: its syscall MSRs (its x87/SSE state is the vCPU's,
    /// switched at every entry and exit by `Vcpu::run`).
    pub fn enter_slice(&mut self) {
        for (msr, v) in PASSED_MSRS.iter().zip(self.passed) {
            // SAFETY: these MSRs exist on every x86_64 CPU and only matter to code that uses
            // SYSCALL or SWAPGS, which the hypervisor and the Rust guests never execute.
            unsafe { super::super::cr::wrmsr(*msr, v) };
        }
    }

    /// The slice ends: its syscall MSRs as the CPU holds them now.
    pub fn leave_slice(&mut self) {
        for (msr, v) in PASSED_MSRS.iter().zip(self.passed.iter_mut()) {
            // SAFETY: reading MSRs every x86_64 CPU has (see `enter_slice`) has no side effect.
            *v = unsafe { super::super::cr::rdmsr(*msr) };
        }
    }

    /// Time passes: raise IRQ 0 if the PIT fired, fire the APIC timer if its deadline passed,
    /// and inject the interrupt `linux::intr` says is next if the vCPU can take it (or ask for
    /// an interrupt-window exit). Returns the TSC of the next timer event, so the run loop can
    /// bound the slice (and a halted vCPU sleeps until then).
    pub fn before_entry(&mut self, vcpu: &mut Vcpu, now: u64) -> Result<Option<u64>, VmFail> {
        if self.pit.poll(now) {
            self.intr.pic.raise(0);
        }
        self.intr.poll(now);
        if let Some(source) = self.intr.next() {
            if vcpu.offer_interrupt(source.vector())? {
                self.intr.delivered(source);
                self.injected += 1;
                if self.halted {
                    Guest32::ActivityState.write(&mut Vcpu::vmcs(), 0)?;
                    self.halted = false;
                }
            }
        } else {
            // Nothing to deliver: no interrupt-window exits.
            let v = &mut Vcpu::vmcs();
            let primary = Control32::PrimaryProcessorBasedControls.read(v)?;
            Control32::PrimaryProcessorBasedControls.write(v, primary & !PrimaryControls::INTERRUPT_WINDOW_EXITING.bits())?;
        }
        Ok(match (self.pit.deadline(), self.intr.apic.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Decides about one exit of the Linux vCPU.
    pub fn handle(&mut self, exit: &Exit, vcpu: &mut Vcpu, services: &mut ExitServices<'_>, cpl: u8) -> Decision {
        let regs = &mut vcpu.regs;
        match *exit {
            Exit::Cpuid => {
                let r = linux_cpuid(regs.rax as u32, regs.rcx as u32, self.tsc_hz);
                regs.rax = u64::from(r[0]);
                regs.rbx = u64::from(r[1]);
                regs.rcx = u64::from(r[2]);
                regs.rdx = u64::from(r[3]);
                Decision::Advance
            }
            Exit::Rdmsr => match self.read_msr(regs.rcx as u32) {
                Some(v) => {
                    regs.rax = v & 0xffff_ffff;
                    regs.rdx = v >> 32;
                    Decision::Advance
                }
                None => Decision::InjectGp,
            },
            Exit::Wrmsr => {
                let v = (regs.rdx << 32) | (regs.rax & 0xffff_ffff);
                if self.write_msr(regs.rcx as u32, v) { Decision::Advance } else { Decision::InjectGp }
            }
            Exit::Io(io) => self.port_io(&io, regs, services),
            Exit::CrAccess(cr) => self.cr_access(cr.cr, cr.access, regs),
            Exit::Hlt => {
                let rflags = GuestNatural::Rflags.read(&Vcpu::vmcs()).unwrap_or(0);
                if rflags & (1 << 9) == 0 {
                    return Decision::Stop(StopReason::PowerOff { how: "HLT with interrupts off" });
                }
                // Sleep in the HLT activity state until the next interrupt is injected.
                self.halted = true;
                // HLT retires: the STI/MOV-SS shadow ends with it, and VM entry refuses the HLT
                // activity state under that blocking (SDM 26.3.1.5).
                let v = &mut Vcpu::vmcs();
                let blocking = Guest32::InterruptibilityState.read(v).unwrap_or(0) & !0b11;
                let _ = Guest32::InterruptibilityState.write(v, blocking);
                match Guest32::ActivityState.write(v, 1) {
                    Ok(()) => Decision::Advance,
                    Err(_) => Decision::Stop(StopReason::EntryFailed),
                }
            }
            Exit::Vmcall => {
                let r = services.hypercall(regs, cpl);
                match r {
                    Ok(()) => Decision::Advance,
                    Err(stop) => Decision::Stop(stop),
                }
            }
            Exit::TripleFault => Decision::Stop(StopReason::Reset { how: "triple fault" }),
            Exit::EptViolation { qualification, guest_physical, .. } => self.ept_violation(guest_physical, qualification.write, vcpu, services),
            Exit::Xsetbv => Decision::InjectGp,
            Exit::ExternalInterrupt { .. } | Exit::InterruptWindow | Exit::ExceptionOrNmi { .. } => Decision::Resume,
            // The run loop decides between the next timer event and the end of the slice.
            Exit::PreemptionTimer => Decision::Yield,
            _ => hypervisor::vcpu::decide(exit, regs, 0, cpl, None, services),
        }
    }

    /// RDMSR: which MSRs exist and what the constant ones read is `linux::policy::msr_rule`;
    /// this only knows where the tenant's state lives (VMCS guest fields, the PAT copy, the
    /// syscall MSRs loaded around its slices). `None`: #GP.
    fn read_msr(&self, msr: u32) -> Option<u64> {
        match policy::msr_rule(msr)? {
            MsrRule::Constant { value, .. } => Some(value),
            MsrRule::Device(MsrDevice::Tsc) => Some(super::super::tsc::rdtsc()),
            MsrRule::Device(MsrDevice::ApicBase) => Some(policy::APIC_BASE_VALUE),
            MsrRule::Device(MsrDevice::TscDeadline) => Some(self.intr.apic.read_tsc_deadline()),
            MsrRule::State { .. } => self.state_msr(msr),
        }
    }

    /// The current value of a `State` MSR.
    fn state_msr(&self, msr: u32) -> Option<u64> {
        let v = &Vcpu::vmcs();
        Some(match msr {
            MSR_PAT => self.pat,
            MSR_EFER => Guest64::Ia32Efer.read(v).ok()?,
            MSR_FS_BASE => GuestNatural::FsBase.read(v).ok()?,
            MSR_GS_BASE => GuestNatural::GsBase.read(v).ok()?,
            MSR_SYSENTER_CS => u64::from(Guest32::Ia32SysenterCs.read(v).ok()?),
            MSR_SYSENTER_ESP => GuestNatural::Ia32SysenterEsp.read(v).ok()?,
            MSR_SYSENTER_EIP => GuestNatural::Ia32SysenterEip.read(v).ok()?,
            MSR_DEBUGCTL => Guest64::Ia32Debugctl.read(v).ok()?,
            m => {
                PASSED_MSRS.iter().position(|&p| p == m)?;
                // Exits are handled inside the tenant's slice: the CPU holds its current value
                // (SWAPGS may have changed IA32_KERNEL_GS_BASE since the last WRMSR).
                // SAFETY: one of the MSRs every x86_64 CPU has; reading it has no side effect.
                unsafe { super::super::cr::rdmsr(m) }
            }
        })
    }

    /// WRMSR: the policy's rule checks the value (#GP when it refuses); accepted values of
    /// `State` MSRs go where the tenant's state lives. `false`: #GP.
    fn write_msr(&mut self, msr: u32, value: u64) -> bool {
        let Some(rule) = policy::msr_rule(msr) else { return false };
        let current = match rule {
            MsrRule::State { .. } => match self.state_msr(msr) {
                Some(c) => c,
                None => return false,
            },
            _ => 0,
        };
        let Ok(value) = policy::check_write(rule, current, value) else { return false };
        let v = &mut Vcpu::vmcs();
        let ok = match rule {
            // Ignored writes (microcode revision, MISC_ENABLE) and the TSC, which a tenant may
            // not move: accepted and dropped, as a VM may.
            MsrRule::Constant { .. } | MsrRule::Device(MsrDevice::Tsc) => Ok(()),
            // No relocation, no disabling, no x2APIC mode: only the value it has.
            MsrRule::Device(MsrDevice::ApicBase) => {
                if value != policy::APIC_BASE_VALUE {
                    return false;
                }
                Ok(())
            }
            MsrRule::Device(MsrDevice::TscDeadline) => {
                self.intr.apic.write_tsc_deadline(value, super::super::tsc::rdtsc());
                Ok(())
            }
            MsrRule::State { .. } => match msr {
                MSR_PAT => {
                    self.pat = value;
                    Ok(())
                }
                // Long mode stays on: the tenant cannot leave it under this VMCS.
                MSR_EFER => Guest64::Ia32Efer.write(v, value | 1 << 10 | 1 << 8),
                MSR_FS_BASE => GuestNatural::FsBase.write(v, value),
                MSR_GS_BASE => GuestNatural::GsBase.write(v, value),
                MSR_SYSENTER_CS => Guest32::Ia32SysenterCs.write(v, value as u32),
                MSR_SYSENTER_ESP => GuestNatural::Ia32SysenterEsp.write(v, value),
                MSR_SYSENTER_EIP => GuestNatural::Ia32SysenterEip.write(v, value),
                MSR_DEBUGCTL => Guest64::Ia32Debugctl.write(v, value),
                m => {
                    let Some(i) = PASSED_MSRS.iter().position(|&p| p == m) else { return false };
                    self.passed[i] = value;
                    // SAFETY: see `enter_slice`: these MSRs are the tenant's while it runs, and
                    // the policy checked the value (canonical addresses, SFMASK's width).
                    unsafe { super::super::cr::wrmsr(m, value) };
                    Ok(())
                }
            },
        };
        ok.is_ok()
    }

    fn cr_access(&mut self, cr: u8, access: CrAccessType, regs: &mut GuestRegs) -> Decision {
        let v = &mut Vcpu::vmcs();
        let r = match (cr, access) {
            (0, CrAccessType::MovToCr(g)) => {
                let value = gpr(regs, g);
                GuestNatural::Cr0.write(v, self.cr.cr0.apply(value)).and_then(|()| ControlNatural::Cr0ReadShadow.write(v, value))
            }
            (4, CrAccessType::MovToCr(g)) => {
                let value = gpr(regs, g);
                if value & CR4_VMXE != 0 {
                    return Decision::InjectGp;
                }
                GuestNatural::Cr4.write(v, self.cr.cr4.apply(value | CR4_VMXE)).and_then(|()| ControlNatural::Cr4ReadShadow.write(v, value))
            }
            // CR8 is the local APIC's TPR (SDM Vol. 3A 10.8.6.1).
            (8, CrAccessType::MovToCr(g)) => {
                let value = gpr(regs, g);
                if value >> 4 != 0 {
                    return Decision::InjectGp;
                }
                self.intr.apic.set_cr8(value);
                Ok(())
            }
            (8, CrAccessType::MovFromCr(g)) => {
                set_gpr(regs, g, self.intr.apic.cr8());
                Ok(())
            }
            (0, CrAccessType::Clts) => GuestNatural::Cr0.read(v).and_then(|c| GuestNatural::Cr0.write(v, c & !8)),
            _ => return Decision::InjectGp,
        };
        if r.is_ok() { Decision::Advance } else { Decision::Stop(StopReason::EntryFailed) }
    }

    fn uart_edge(&mut self) {
        let line = self.uart.interrupt_line();
        if line && !self.uart_line {
            self.intr.pic.raise(4);
        }
        self.uart_line = line;
    }

    /// Room in COM1's receiver (bytes beyond it would be lost: the caller leaves them waiting).
    pub fn rx_space(&self) -> usize {
        self.uart.rx_space()
    }

    /// Bytes typed on the host's console, for COM1's receiver.
    pub fn receive(&mut self, b: u8) {
        // A full receive FIFO drops the byte, as an overrun would.
        let _ = self.uart.receive(b);
        self.uart_edge();
    }

    /// An access the EPT did not allow: the local APIC's page is emulated by the APIC model; a
    /// store to the hypercall page runs the ABI; anything else outside the tenant's memory is a
    /// master abort (loads read all ones, stores are dropped, counted and the first few logged)
    /// so a stray program cannot stop the kernel. An instruction that cannot be decoded gets #GP.
    fn ept_violation(&mut self, gpa: u64, write: bool, vcpu: &mut Vcpu, services: &mut ExitServices<'_>) -> Decision {
        let Some((bytes, n)) = fetch_instruction(services.tenant.ram()) else { return Decision::InjectGp };
        let v = &Vcpu::vmcs();
        let bitness = if Guest32::CsAccessRights.read(v).unwrap_or(0) & (1 << 13) != 0 { 64 } else { 32 };
        let Ok(access) = decode(bitness, &bytes[..n]) else { return Decision::InjectGp };
        let regs = &mut vcpu.regs;
        let in_page = gpa.wrapping_sub(self.hp_gpa);
        if APIC_PAGE.contains(&gpa) {
            self.apic_accesses += 1;
            let offset = (gpa - APIC_PAGE.start) as u32;
            let now = super::super::tsc::rdtsc();
            match access.op {
                MmioOp::Load { size, .. } => {
                    let value = self.intr.apic.mmio_read(offset, size, now);
                    apply_load(&access, regs, value);
                }
                MmioOp::Store { size, .. } => {
                    let value = access.store_value(|i| gpr_by_index(regs, i)).unwrap_or(0);
                    match self.intr.apic.mmio_write(offset, size, value, now) {
                        WriteEffect::None | WriteEffect::LevelEoi { .. } => {}
                        effect => {
                            self.apic_unsupported += 1;
                            if self.apic_unsupported <= 8 {
                                log::warn!("linux: local APIC store of {value:#x} ({size} bytes) at offset {offset:#x} not carried out: {effect:?}");
                            }
                        }
                    }
                }
            }
        } else if write && in_page < HYPERCALL_PAGE_SIZE {
            if let Some(value) = access.store_value(|i| gpr_by_index(regs, i)) {
                let size = match access.op { MmioOp::Store { size, .. } => size, MmioOp::Load { .. } => 0 };
                if let Err(stop) = self.page_store(in_page, size, value, services) {
                    return Decision::Stop(stop);
                }
            }
        } else {
            self.stray_accesses += 1;
            if self.stray_accesses <= 8 {
                log::warn!("linux: stray {} of guest-physical {gpa:#x} (outside memory and BARs): {}", if write { "store" } else { "load" }, if write { "dropped" } else { "reads all ones" });
            }
            apply_load(&access, regs, u64::MAX);
        }
        let v = &mut Vcpu::vmcs();
        match GuestNatural::Rip.read(v).and_then(|rip| GuestNatural::Rip.write(v, rip.wrapping_add(u64::from(access.len)))) {
            Ok(()) => Decision::Resume,
            Err(_) => Decision::Stop(StopReason::EntryFailed),
        }
    }

    /// A store to the hypercall page (`tensor_hcall::linux`): 8-byte aligned stores to the
    /// arguments, and to HP_CALL to run the call with the page's arguments. The page is the
    /// sanctioned path for programs the tenant's root lets map the BAR, so it runs the call
    /// with kernel privilege; VMCALL from user mode stays under the tenant's policy.
    fn page_store(&mut self, offset: u64, size: u8, value: u64, services: &mut ExitServices<'_>) -> Result<(), StopReason> {
        if size != 8 || !offset.is_multiple_of(8) || !(HP_CALL..=HP_ARG3).contains(&offset) {
            services.tenant.tensors.counters.errors += 1;
            return Ok(());
        }
        let hp = self.hp_block_offset;
        let ram = services.tenant.ram_mut();
        if offset >= HP_ARG0 {
            self.hp_args[((offset - HP_ARG0) / 8) as usize] = value;
            let _ = ram.load(hp + offset, &value.to_le_bytes());
            return Ok(());
        }
        let _ = ram.load(hp + HP_CALL, &value.to_le_bytes());
        let [rbx, rcx, rdx, rsi] = self.hp_args;
        let mut call = GuestRegs { rax: value, rbx, rcx, rdx, rsi, ..GuestRegs::default() };
        let r = services.hypercall(&mut call, 0);
        r?;
        if services.tenant.parked {
            // Engine work: the store retires now (the caller advances RIP), but the vCPU stays
            // parked until the engine scheduler has run the request's units; the result is
            // written then, so the program still finds it when its next instruction runs.
            self.hp_parked = true;
            return Ok(());
        }
        self.publish_page_result(call.rax, services.tenant.ram_mut());
        Ok(())
    }

    /// Whether the vCPU is parked on a call made through the hypercall page (rather than a
    /// VMCALL, whose result goes to RAX).
    pub fn page_call_parked(&self) -> bool {
        self.hp_parked
    }

    /// The engine request of a parked page call completed with `rax`: its result and the next
    /// sequence number go into the page.
    pub fn finish_page_call(&mut self, rax: u64, ram: &mut GuestRam) {
        self.hp_parked = false;
        self.publish_page_result(rax, ram);
    }

    fn publish_page_result(&mut self, rax: u64, ram: &mut GuestRam) {
        let hp = self.hp_block_offset;
        self.page_calls += 1;
        self.hp_sequence += 1;
        let _ = ram.load(hp + HP_RESULT, &rax.to_le_bytes());
        let _ = ram.load(hp + HP_SEQUENCE, &self.hp_sequence.to_le_bytes());
    }

    fn port_io(&mut self, io: &IoQualification, regs: &mut GuestRegs, services: &mut ExitServices<'_>) -> Decision {
        let mask: u64 = match io.size {
            1 => 0xff,
            2 => 0xffff,
            _ => 0xffff_ffff,
        };
        if io.string {
            // No emulated device does string I/O: OUTS goes nowhere, INS reads nothing.
            return Decision::Advance;
        }
        let port = io.port;
        let now = super::super::tsc::rdtsc();
        if io.input {
            let value: u64 = match port {
                0x3f8..=0x3ff => {
                    let b = self.uart.read((port - 0x3f8) as u8);
                    self.uart_edge();
                    u64::from(b)
                }
                0x20 | 0x21 | 0xa0 | 0xa1 => u64::from(self.intr.pic.read(port)),
                0x4d0 | 0x4d1 if io.size == 1 => u64::from(self.intr.pic.read_elcr(port)),
                p if Pm1::claims(p) => u64::from(self.pm1.read(p, io.size)),
                0x40 => u64::from(self.pit.read(port, now, self.tsc_hz)),
                0x71 => u64::from(self.cmos.read(port, super::super::tsc::rdtsc() / self.tsc_hz.max(1))),
                0xcf8 | 0xcfc..=0xcff => u64::from(self.pci.io_read(port, io.size)),
                _ => mask,
            };
            regs.rax = if io.size == 4 { value & mask } else { (regs.rax & !mask) | (value & mask) };
            return Decision::Advance;
        }
        let value = regs.rax & mask;
        match port {
            0x3f8..=0x3ff => {
                if let Some(b) = self.uart.write((port - 0x3f8) as u8, value as u8) {
                    self.uart_bytes += 1;
                    if self.raw_console {
                        // The tenant's tty already turns "\n" into "\r\n".
                        super::super::super::serial::CONSOLE.lock().write_byte(b);
                    } else {
                        services.tenant.console_byte(b);
                    }
                }
                self.uart_edge();
            }
            0x20 | 0x21 | 0xa0 | 0xa1 => self.intr.pic.write(port, value as u8),
            0x4d0 | 0x4d1 if io.size == 1 => self.intr.pic.write_elcr(port, value as u8),
            0x40 | 0x43 => self.pit.write(port, value as u8, now, self.tsc_hz),
            0x70 => self.cmos.write(port, value as u8),
            0xcf8 | 0xcfc..=0xcff => {
                // The hypercall page stays where the hypervisor mapped it: a moved BAR 0 or 1
                // would leave the function unreachable, so it is logged.
                if let Some(ConfigEvent::BarMoved { bar, address }) = self.pci.io_write(port, io.size, value as u32) {
                    log::warn!("linux: the tenant moved BAR {bar} of the tensor function to {address:#x}; the hypervisor keeps it at the original address");
                }
            }
            // Reset: the reset control register (CF9h, bit 2 with bit 1 "hard"), the keyboard
            // controller's CPU-reset pulse (command 0xFE), the fast-reset bit of port 92h.
            0xcf9 if value & 0x4 != 0 => return Decision::Stop(StopReason::Reset { how: "port 0xcf9" }),
            0x64 if value == 0xfe => return Decision::Stop(StopReason::Reset { how: "keyboard controller pulse" }),
            0x92 if value & 1 != 0 => return Decision::Stop(StopReason::Reset { how: "port 0x92" }),
            // The FADT's PM1a registers: SLP_EN with `\_S5`'s SLP_TYP powers off.
            p if Pm1::claims(p) => match self.pm1.write(p, io.size, value as u32) {
                SleepRequest::PowerOff => return Decision::Stop(StopReason::PowerOff { how: "ACPI S5" }),
                SleepRequest::Unsupported { slp_typ } => log::warn!("linux: sleep type {slp_typ} requested; only S5 (power-off) exists"),
                SleepRequest::None => {}
            },
            _ => {}
        }
        Decision::Advance
    }
}

/// A decoded load's result into its destination register (narrow destinations keep their other
/// bits, 32-bit ones zero-extend: `MmioAccess::load_result`). Stores change no register.
fn apply_load(access: &MmioAccess, regs: &mut GuestRegs, data: u64) {
    if let MmioOp::Load { dst, .. } = access.op {
        if let Some((dst, value)) = access.load_result(gpr_by_index(regs, dst.index), data) {
            set_gpr_by_index(regs, dst.index, value);
        }
    }
}

fn gpr_by_index(regs: &GuestRegs, i: u8) -> u64 {
    gpr(regs, Gpr::from_low_bits(u64::from(i)))
}

fn set_gpr_by_index(regs: &mut GuestRegs, i: u8, v: u64) {
    set_gpr(regs, Gpr::from_low_bits(u64::from(i)), v)
}

/// The bytes at the guest's RIP through its page tables (`hypervisor::linux::gva`; execute
/// rights checked at its CPL; fewer than 15 at the end of fetchable memory).
fn fetch_instruction(ram: &GuestRam) -> Option<([u8; MAX_INSTRUCTION_LEN], usize)> {
    let v = &Vcpu::vmcs();
    let rip = GuestNatural::Rip.read(v).ok()?.wrapping_add(GuestNatural::CsBase.read(v).ok()?);
    let cr0 = GuestNatural::Cr0.read(v).ok()?;
    let mode = PagingMode {
        paging: cr0 & (1 << 31) != 0,
        cr3: GuestNatural::Cr3.read(v).ok()?,
        write_protect: cr0 & (1 << 16) != 0,
        nxe: Guest64::Ia32Efer.read(v).ok()? & (1 << 11) != 0,
        phys_bits: (core::arch::x86_64::__cpuid(0x8000_0008).eax & 0xff) as u8,
    };
    let user = (Guest32::SsAccessRights.read(v).ok()? >> 5) & 3 == 3;
    let mut mem = |gpa: u64, buf: &mut [u8]| ram.read(gpa, buf).is_ok();
    fetch(&mut mem, &mode, rip, user).ok()
}

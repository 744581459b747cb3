//! One virtual CPU: its VMCS (programmed for a 64-bit guest under EPT and VPID), the assembly
//! that enters the guest and saves its registers on exit, and the report printed when VM entry
//! fails.

use super::super::fpu::GuestFpu;
use super::super::{cr, gdt, memory::PHYS_OFFSET};
use alloc::boxed::Box;
use hypervisor::vcpu::GuestRegs;
use vmx::exit_info::ExitInfo;
use vmx::fields::*;
use vmx::instr::{vmclear, vmptrld, CurrentVmcs};
use vmx::region::VmcsRegion;
use vmx::{
    ControlError, EntryControls, ExitControls, PinBasedControls, PrimaryControls, SecondaryControls, VmFail,
    VmxCapabilities,
};

core::arch::global_asm!(
    ".text",
    ".global vmx_enter",
    // vmx_enter(regs: *mut GuestRegs [rdi], launched: u64 [rsi]) -> u64 [rax]
    // Returns 0 after a VM exit (guest registers saved into *regs), 1 when VMLAUNCH/VMRESUME
    // failed (VMfailInvalid or VMfailValid; the caller reads the VM-instruction error).
    "vmx_enter:",
    "push rbp", "push rbx", "push r12", "push r13", "push r14", "push r15",
    "push rdi",
    "mov rax, 0x6c14", // HOST_RSP: the exit lands on this stack, with *regs at [rsp]
    "vmwrite rax, rsp",
    "test rsi, rsi", // flags survive the MOVs below
    "mov rbx, [rdi + 8]", "mov rcx, [rdi + 16]", "mov rdx, [rdi + 24]", "mov rsi, [rdi + 32]",
    "mov rbp, [rdi + 48]", "mov r8, [rdi + 56]", "mov r9, [rdi + 64]", "mov r10, [rdi + 72]",
    "mov r11, [rdi + 80]", "mov r12, [rdi + 88]", "mov r13, [rdi + 96]", "mov r14, [rdi + 104]",
    "mov r15, [rdi + 112]", "mov rax, [rdi + 0]", "mov rdi, [rdi + 40]",
    "jnz 2f",
    "vmlaunch",
    "jmp 3f",
    "2:",
    "vmresume",
    "3:",
    // Entry failed: nothing of the guest ran.
    "pop rdi",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop rbx", "pop rbp",
    "mov eax, 1",
    "ret",
    ".global vmx_exit_landing",
    "vmx_exit_landing:",
    "push rdi",
    "mov rdi, [rsp + 8]",
    "mov [rdi + 0], rax", "mov [rdi + 8], rbx", "mov [rdi + 16], rcx", "mov [rdi + 24], rdx",
    "mov [rdi + 32], rsi", "mov [rdi + 48], rbp", "mov [rdi + 56], r8", "mov [rdi + 64], r9",
    "mov [rdi + 72], r10", "mov [rdi + 80], r11", "mov [rdi + 88], r12", "mov [rdi + 96], r13",
    "mov [rdi + 104], r14", "mov [rdi + 112], r15",
    "pop rax",
    "mov [rdi + 40], rax",
    "pop rdi",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop rbx", "pop rbp",
    "xor eax, eax",
    "ret",
);

unsafe extern "C" {
    fn vmx_enter(regs: *mut GuestRegs, launched: u64) -> u64;
    fn vmx_exit_landing();
}

/// Where the guest starts and what it runs on.
#[derive(Clone, Copy, Debug)]
pub struct GuestStart {
    pub rip: u64,
    pub rsp: u64,
    pub cr3: u64,
    pub gdt_base: u64,
    pub gdt_limit: u32,
    /// RDI at entry (the boot-information address).
    pub rdi: u64,
    /// A Linux tenant (64-bit boot protocol): `__BOOT_CS` 0x10 and `__BOOT_DS` 0x18, RSI =
    /// boot_params (`rdi` carries that address), CR8 accesses trapped (the tenant's TPR is
    /// emulated, never the host's).
    pub linux: bool,
}

/// Why a vCPU could not be set up.
#[derive(Debug)]
pub enum VcpuError {
    Control(ControlError),
    Vmx(&'static str, VmFail),
    Fpu(hypervisor::xstate::XstateError),
}

impl core::fmt::Display for VcpuError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VcpuError::Control(e) => write!(f, "{e}"),
            VcpuError::Vmx(what, e) => write!(f, "{what}: {e:?}"),
            VcpuError::Fpu(e) => write!(f, "vector state: {e}"),
        }
    }
}

/// Guest segment access rights (SDM 25.4.1): 64-bit code, data, busy 64-bit TSS, unusable.
const AR_CODE64: u32 = 0xa09b;
const AR_DATA: u32 = 0xc093;
const AR_TSS64_BUSY: u32 = 0x008b;
const AR_UNUSABLE: u32 = 1 << 16;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// A vCPU and its VMCS.
pub struct Vcpu {
    vmcs: Box<VmcsRegion>,
    launched: bool,
    pub regs: GuestRegs,
    /// VMX-preemption timer rate: the timer counts TSC >> this.
    timer_shift: u8,
    /// Its x87/SSE/AVX registers between its exits and entries (VMX does not switch them).
    fpu: GuestFpu,
}

fn virt_to_phys<T>(p: &T) -> u64 {
    p as *const T as u64 - PHYS_OFFSET
}

impl Vcpu {
    /// Creates the VMCS and programs every control, host and guest field for a 64-bit guest.
    pub fn new(caps: &VmxCapabilities, eptp: u64, vpid: u16, start: GuestStart) -> Result<Self, VcpuError> {
        let mut vmcs = Box::new(VmcsRegion::zeroed());
        vmcs.init(caps.revision_id, false);
        let phys = virt_to_phys(&*vmcs);
        // SAFETY: `vmcs` is a 4 KiB-aligned heap region (in the direct map, so `phys` is its
        // physical address) formatted with this CPU's revision id, and we are in VMX root
        // operation (VMXON succeeded before any vCPU is created).
        unsafe {
            vmclear(phys).map_err(|e| VcpuError::Vmx("VMCLEAR", e))?;
            vmptrld(phys).map_err(|e| VcpuError::Vmx("VMPTRLD", e))?;
        }
        // The Linux 64-bit boot protocol takes boot_params in RSI (Documentation/x86/boot.rst).
        let regs = if start.linux { GuestRegs { rsi: start.rdi, ..Default::default() } } else { GuestRegs { rdi: start.rdi, ..Default::default() } };
        let fpu = GuestFpu::new().map_err(VcpuError::Fpu)?;
        let mut vcpu = Self { vmcs, launched: false, regs, timer_shift: caps.misc.preemption_timer_tsc_shift, fpu };
        vcpu.program(caps, eptp, vpid, start)?;
        Ok(vcpu)
    }

    /// Makes this vCPU's VMCS current on this CPU.
    pub fn load(&self) -> Result<(), VmFail> {
        // SAFETY: the region was formatted in `new` and VMX root operation is on.
        unsafe { vmptrld(virt_to_phys(&*self.vmcs)) }
    }

    pub(super) fn vmcs() -> CurrentVmcs {
        // SAFETY: only called between `load`/`new` (which made this vCPU's VMCS current) and the
        // next VMPTRLD, in VMX root operation at CPL 0.
        unsafe { CurrentVmcs::assume_current() }
    }

    fn program(&mut self, caps: &VmxCapabilities, eptp: u64, vpid: u16, start: GuestStart) -> Result<(), VcpuError> {
        let v = &mut Self::vmcs();
        let w = |e: VmFail| VcpuError::Vmx("VMWRITE", e);
        let pin = caps
            .adjust(PinBasedControls::EXTERNAL_INTERRUPT_EXITING | PinBasedControls::NMI_EXITING | PinBasedControls::VMX_PREEMPTION_TIMER)
            .map_err(VcpuError::Control)?;
        // No MSR bitmap: every RDMSR/WRMSR exits and meets the allow list.
        let mut wanted = PrimaryControls::HLT_EXITING | PrimaryControls::UNCONDITIONAL_IO_EXITING | PrimaryControls::ACTIVATE_SECONDARY_CONTROLS;
        if start.linux {
            // Without a TPR shadow, MOV CR8 would reach the host's own TPR.
            wanted |= PrimaryControls::CR8_LOAD_EXITING | PrimaryControls::CR8_STORE_EXITING;
        }
        let primary = caps.adjust(wanted).map_err(VcpuError::Control)?;
        let secondary = caps.adjust(SecondaryControls::ENABLE_EPT | SecondaryControls::ENABLE_VPID).map_err(VcpuError::Control)?;
        let exit = caps
            .adjust(ExitControls::HOST_ADDRESS_SPACE_SIZE | ExitControls::ACK_INTERRUPT_ON_EXIT | ExitControls::SAVE_EFER | ExitControls::LOAD_EFER)
            .map_err(VcpuError::Control)?;
        let entry = caps.adjust(EntryControls::IA32E_MODE_GUEST | EntryControls::LOAD_EFER).map_err(VcpuError::Control)?;
        Control32::PinBasedControls.write(v, pin.bits()).map_err(w)?;
        Control32::PrimaryProcessorBasedControls.write(v, primary.bits()).map_err(w)?;
        Control32::SecondaryProcessorBasedControls.write(v, secondary.bits()).map_err(w)?;
        Control32::ExitControls.write(v, exit.bits()).map_err(w)?;
        Control32::EntryControls.write(v, entry.bits()).map_err(w)?;
        Control32::ExceptionBitmap.write(v, 0).map_err(w)?;
        Control32::Cr3TargetCount.write(v, 0).map_err(w)?;
        Control64::EptPointer.write(v, eptp).map_err(w)?;
        Control16::Vpid.write(v, vpid).map_err(w)?;

        // Host state: this CPU as it runs now; exits land in `vmx_exit_landing`.
        let efer = {
            // SAFETY: IA32_EFER exists on every CPU that runs in long mode.
            unsafe { cr::rdmsr(cr::IA32_EFER) }
        };
        Host16::CsSelector.write(v, gdt::KERNEL_CS).map_err(w)?;
        for f in [Host16::SsSelector, Host16::DsSelector, Host16::EsSelector] {
            f.write(v, gdt::KERNEL_DS).map_err(w)?;
        }
        Host16::FsSelector.write(v, 0).map_err(w)?;
        Host16::GsSelector.write(v, 0).map_err(w)?;
        Host16::TrSelector.write(v, gdt::TSS_SELECTOR).map_err(w)?;
        HostNatural::Cr0.write(v, cr::read_cr0()).map_err(w)?;
        HostNatural::Cr3.write(v, cr::read_cr3()).map_err(w)?;
        HostNatural::Cr4.write(v, cr::read_cr4()).map_err(w)?;
        HostNatural::FsBase.write(v, 0).map_err(w)?;
        HostNatural::GsBase.write(v, 0).map_err(w)?;
        HostNatural::TrBase.write(v, gdt::tss_base()).map_err(w)?;
        HostNatural::GdtrBase.write(v, cr::gdtr_base()).map_err(w)?;
        HostNatural::IdtrBase.write(v, cr::idtr_base()).map_err(w)?;
        HostNatural::Ia32SysenterEsp.write(v, 0).map_err(w)?;
        HostNatural::Ia32SysenterEip.write(v, 0).map_err(w)?;
        HostNatural::Rip.write(v, vmx_exit_landing as *const () as u64).map_err(w)?;
        Host32::Ia32SysenterCs.write(v, 0).map_err(w)?;
        Host64::Ia32Efer.write(v, efer).map_err(w)?;

        // Guest state: 64-bit mode, flat segments, interrupts off, paging on the loader's tables.
        let cr0 = caps.guest_cr0_fixed(false).apply(CR0_PE | CR0_ET | CR0_NE | CR0_WP | CR0_PG);
        let cr4 = caps.cr4_fixed().apply(CR4_PAE | cr::CR4_VMXE);
        GuestNatural::Cr0.write(v, cr0).map_err(w)?;
        GuestNatural::Cr3.write(v, start.cr3).map_err(w)?;
        GuestNatural::Cr4.write(v, cr4).map_err(w)?;
        // The guest sees CR4.VMXE clear and cannot change the bits VMX fixes.
        ControlNatural::Cr0GuestHostMask.write(v, caps.cr0_fixed().fixed0 | !caps.cr0_fixed().fixed1).map_err(w)?;
        ControlNatural::Cr0ReadShadow.write(v, cr0).map_err(w)?;
        ControlNatural::Cr4GuestHostMask.write(v, caps.cr4_fixed().fixed0 | !caps.cr4_fixed().fixed1 | cr::CR4_VMXE).map_err(w)?;
        ControlNatural::Cr4ReadShadow.write(v, cr4 & !cr::CR4_VMXE).map_err(w)?;
        let nxe = efer & EFER_NXE;
        Guest64::Ia32Efer.write(v, EFER_LME | EFER_LMA | nxe).map_err(w)?;
        Guest64::VmcsLinkPointer.write(v, u64::MAX).map_err(w)?;
        Guest64::Ia32Debugctl.write(v, 0).map_err(w)?;

        let (cs, ds, tr) = if start.linux { (0x10, 0x18, 0x20) } else { (0x08, 0x10, 0x18) };
        Guest16::CsSelector.write(v, cs).map_err(w)?;
        Guest32::CsLimit.write(v, 0xffff_ffff).map_err(w)?;
        Guest32::CsAccessRights.write(v, AR_CODE64).map_err(w)?;
        GuestNatural::CsBase.write(v, 0).map_err(w)?;
        let data = [
            (Guest16::SsSelector, Guest32::SsLimit, Guest32::SsAccessRights, GuestNatural::SsBase),
            (Guest16::DsSelector, Guest32::DsLimit, Guest32::DsAccessRights, GuestNatural::DsBase),
            (Guest16::EsSelector, Guest32::EsLimit, Guest32::EsAccessRights, GuestNatural::EsBase),
            (Guest16::FsSelector, Guest32::FsLimit, Guest32::FsAccessRights, GuestNatural::FsBase),
            (Guest16::GsSelector, Guest32::GsLimit, Guest32::GsAccessRights, GuestNatural::GsBase),
        ];
        for (sel, limit, ar, base) in data {
            sel.write(v, ds).map_err(w)?;
            limit.write(v, 0xffff_ffff).map_err(w)?;
            ar.write(v, AR_DATA).map_err(w)?;
            base.write(v, 0).map_err(w)?;
        }
        Guest16::LdtrSelector.write(v, 0).map_err(w)?;
        Guest32::LdtrLimit.write(v, 0).map_err(w)?;
        Guest32::LdtrAccessRights.write(v, AR_UNUSABLE).map_err(w)?;
        GuestNatural::LdtrBase.write(v, 0).map_err(w)?;
        Guest16::TrSelector.write(v, tr).map_err(w)?;
        Guest32::TrLimit.write(v, 0x67).map_err(w)?;
        Guest32::TrAccessRights.write(v, AR_TSS64_BUSY).map_err(w)?;
        GuestNatural::TrBase.write(v, 0).map_err(w)?;
        GuestNatural::GdtrBase.write(v, start.gdt_base).map_err(w)?;
        Guest32::GdtrLimit.write(v, start.gdt_limit).map_err(w)?;
        // No IDT: an exception in the guest becomes a triple fault, which stops it.
        GuestNatural::IdtrBase.write(v, 0).map_err(w)?;
        Guest32::IdtrLimit.write(v, 0).map_err(w)?;
        GuestNatural::Dr7.write(v, 0x400).map_err(w)?;
        GuestNatural::Rsp.write(v, start.rsp).map_err(w)?;
        GuestNatural::Rip.write(v, start.rip).map_err(w)?;
        GuestNatural::Rflags.write(v, 0x2).map_err(w)?;
        GuestNatural::PendingDebugExceptions.write(v, 0).map_err(w)?;
        GuestNatural::Ia32SysenterEsp.write(v, 0).map_err(w)?;
        GuestNatural::Ia32SysenterEip.write(v, 0).map_err(w)?;
        Guest32::Ia32SysenterCs.write(v, 0).map_err(w)?;
        Guest32::InterruptibilityState.write(v, 0).map_err(w)?;
        Guest32::ActivityState.write(v, 0).map_err(w)?;
        Ok(())
    }

    /// Runs the guest until its next VM exit (or for at most `slice_tsc` TSC ticks, by the
    /// preemption timer). The VMCS must be current. `Err` means VM entry itself failed.
    pub fn run(&mut self, slice_tsc: u64) -> Result<ExitInfo, EntryFailure> {
        let v = &mut Self::vmcs();
        let timer = (slice_tsc >> self.timer_shift).clamp(1, u64::from(u32::MAX)) as u32;
        Guest32::PreemptionTimerValue.write(v, timer).map_err(EntryFailure::Vmx)?;
        // Its vector registers go in just before the entry and come out right after the exit,
        // before the hypervisor (the engine's kernels) or another vCPU can use them.
        self.fpu.restore();
        // SAFETY: this vCPU's VMCS is current with complete host and guest state; `regs` is a
        // valid GuestRegs that outlives the call; the assembly saves and restores every
        // callee-saved register and returns on this stack (HOST_RSP is written inside).
        let failed = unsafe { vmx_enter(&mut self.regs, u64::from(self.launched)) };
        self.fpu.save();
        if failed != 0 {
            let err = ReadOnly32::VmInstructionError.read(v).unwrap_or(0);
            return Err(EntryFailure::Instruction { launched: self.launched, error: err });
        }
        self.launched = true;
        ExitInfo::read(v).map_err(EntryFailure::Vmx)
    }

    /// Guest RIP, RFLAGS and CPL (from SS's DPL) at the last exit.
    pub fn rip(&self) -> u64 {
        GuestNatural::Rip.read(&Self::vmcs()).unwrap_or(0)
    }

    pub fn rflags(&self) -> u64 {
        GuestNatural::Rflags.read(&Self::vmcs()).unwrap_or(0)
    }

    pub fn cpl(&self) -> u8 {
        ((Guest32::SsAccessRights.read(&Self::vmcs()).unwrap_or(0) >> 5) & 3) as u8
    }

    /// Moves RIP past the instruction that exited.
    pub fn advance(&mut self) -> Result<(), VmFail> {
        let v = &mut Self::vmcs();
        let len = ReadOnly32::ExitInstructionLength.read(v)?;
        let rip = GuestNatural::Rip.read(v)?;
        GuestNatural::Rip.write(v, rip.wrapping_add(u64::from(len)))
    }

    /// Injects #GP(0) on the next entry (SDM 27.6: hardware exception, error code delivered).
    pub fn inject_gp(&mut self) -> Result<(), VmFail> {
        let v = &mut Self::vmcs();
        // Valid (31), deliver error code (11), type 3 = hardware exception, vector 13.
        Control32::EntryInterruptionInfo.write(v, (1 << 31) | (1 << 11) | (3 << 8) | 13)?;
        Control32::EntryExceptionErrorCode.write(v, 0)
    }

    /// Injects external interrupt `vector` on the next entry if the guest can take it now
    /// (RFLAGS.IF set, no STI/MOV-SS blocking, no other event queued); otherwise arms
    /// interrupt-window exiting so the hypervisor hears when it can. Returns whether it injected.
    pub fn offer_interrupt(&mut self, vector: u8) -> Result<bool, VmFail> {
        let v = &mut Self::vmcs();
        let can = GuestNatural::Rflags.read(v)? & (1 << 9) != 0
            && Guest32::InterruptibilityState.read(v)? & 0b11 == 0
            && Control32::EntryInterruptionInfo.read(v)? & (1 << 31) == 0;
        let primary = Control32::PrimaryProcessorBasedControls.read(v)?;
        let window = PrimaryControls::INTERRUPT_WINDOW_EXITING.bits();
        if can {
            // Valid (31), type 0 = external interrupt, the vector (SDM 27.6).
            Control32::EntryInterruptionInfo.write(v, (1 << 31) | u32::from(vector))?;
            Control32::PrimaryProcessorBasedControls.write(v, primary & !window)?;
        } else {
            Control32::PrimaryProcessorBasedControls.write(v, primary | window)?;
        }
        Ok(can)
    }

    /// Logs the guest state that VM-entry checks look at, so a failed entry can be diagnosed.
    pub fn report_guest_state(&self, name: &str) {
        let v = &Self::vmcs();
        let n = |f: GuestNatural| f.read(v).unwrap_or(u64::MAX);
        log::error!(
            "guest {name}: entry state: CR0 {:#x} CR3 {:#x} CR4 {:#x} EFER {:#x} RIP {:#x} RSP {:#x} RFLAGS {:#x}",
            n(GuestNatural::Cr0),
            n(GuestNatural::Cr3),
            n(GuestNatural::Cr4),
            Guest64::Ia32Efer.read(v).unwrap_or(u64::MAX),
            n(GuestNatural::Rip),
            n(GuestNatural::Rsp),
            n(GuestNatural::Rflags)
        );
        log::error!(
            "guest {name}: CS {:#x}/{:#x} SS {:#x}/{:#x} TR {:#x}/{:#x} LDTR ar {:#x} GDTR {:#x}+{:#x} activity {} interruptibility {:#x}",
            Guest16::CsSelector.read(v).unwrap_or(0),
            Guest32::CsAccessRights.read(v).unwrap_or(0),
            Guest16::SsSelector.read(v).unwrap_or(0),
            Guest32::SsAccessRights.read(v).unwrap_or(0),
            Guest16::TrSelector.read(v).unwrap_or(0),
            Guest32::TrAccessRights.read(v).unwrap_or(0),
            Guest32::LdtrAccessRights.read(v).unwrap_or(0),
            n(GuestNatural::GdtrBase),
            Guest32::GdtrLimit.read(v).unwrap_or(0),
            Guest32::ActivityState.read(v).unwrap_or(0),
            Guest32::InterruptibilityState.read(v).unwrap_or(0),
        );
        log::error!(
            "guest {name}: controls: pin {:#x} primary {:#x} secondary {:#x} exit {:#x} entry {:#x} EPTP {:#x} VPID {}",
            Control32::PinBasedControls.read(v).unwrap_or(0),
            Control32::PrimaryProcessorBasedControls.read(v).unwrap_or(0),
            Control32::SecondaryProcessorBasedControls.read(v).unwrap_or(0),
            Control32::ExitControls.read(v).unwrap_or(0),
            Control32::EntryControls.read(v).unwrap_or(0),
            Control64::EptPointer.read(v).unwrap_or(0),
            Control16::Vpid.read(v).unwrap_or(0),
        );
    }
}

/// Why VM entry did not happen.
#[derive(Clone, Copy, Debug)]
pub enum EntryFailure {
    /// VMLAUNCH/VMRESUME failed with this VM-instruction error number.
    Instruction { launched: bool, error: u32 },
    /// Reading or writing the VMCS failed.
    Vmx(VmFail),
}

//! What the hypervisor does about each VM exit: the policy half of exit handling, as a plain
//! function of the decoded exit, the guest's registers and the tenant's services, so the host
//! tests exercise exactly the decisions the hypervisor makes.
//!
//! The `vmx` crate decodes the exit (architecture); [`decide`] chooses (policy); the bare-metal
//! run loop applies the [`Decision`] (advance RIP, inject #GP, switch to another vCPU, or stop
//! the guest with one log line). Nothing a guest does can make the hypervisor panic: an exit we
//! do not handle stops that guest with [`StopReason::Unhandled`].

use core::fmt;
use vmx::exit_info::Exit;
use vmx::qual::{CrAccess, IoQualification, VmxInstruction};
use vmx::ExitReason;

/// The guest's general-purpose registers, saved and restored around VM entry by the run loop
/// (RSP and RIP live in the VMCS). The layout is used by the assembly: do not reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

const _: () = assert!(core::mem::size_of::<GuestRegs>() == 15 * 8);

/// Why a guest was stopped. Each is logged once, with the guest's name and RIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest asked to exit with this status.
    Exited { status: u64 },
    /// The guest triple-faulted (an exception it could not deliver).
    TripleFault,
    /// An access to guest-physical memory the guest does not have, or with a permission it does
    /// not have (a write to read-only memory, a fetch from non-executable memory).
    EptViolation { gpa: u64, read: bool, write: bool, fetch: bool, mapped: bool },
    /// An EPT misconfiguration: a hypervisor bug, reported as such.
    EptMisconfiguration { gpa: u64 },
    /// A VMX instruction (VMXON, VMREAD, ...): guests get no nested virtualization.
    VmxInstruction { instruction: VmxInstruction },
    /// HLT with nothing to wake the guest (no interrupts are delivered to guests yet).
    Halted,
    /// The guest used up its CPU budget (e.g. spinning with interrupts off).
    CpuBudgetExceeded { budget_ms: u64, interrupts_enabled: bool },
    /// VM entry failed; the log holds the guest-state report.
    EntryFailed,
    /// An exit the hypervisor does not handle.
    Unhandled { reason: ExitReason },
    /// A Linux tenant asked its platform for a reset (port 0xcf9, the keyboard controller's
    /// pulse on port 0x64, port 0x92) or a triple fault ended it: the tenant stops, nothing restarts.
    Reset { how: &'static str },
    /// A Linux tenant powered off (ACPI S5 on port 0x604 or 0xb004, or HLT with interrupts off).
    PowerOff { how: &'static str },
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            StopReason::Exited { status } => write!(f, "exited with status {status}"),
            StopReason::TripleFault => write!(f, "triple fault"),
            StopReason::EptViolation { gpa, read, write, fetch, mapped } => write!(
                f,
                "EPT violation: {} of GPA {gpa:#x} ({})",
                if write { "write" } else if fetch { "instruction fetch" } else if read { "read" } else { "access" },
                if mapped { "not permitted" } else { "not guest memory" }
            ),
            StopReason::EptMisconfiguration { gpa } => write!(f, "EPT misconfiguration at GPA {gpa:#x} (hypervisor bug)"),
            StopReason::VmxInstruction { instruction } => write!(f, "executed the VMX instruction {instruction:?}"),
            StopReason::Halted => write!(f, "HLT with no interrupt to wake it"),
            StopReason::CpuBudgetExceeded { budget_ms, interrupts_enabled } => write!(
                f,
                "exceeded its CPU budget of {budget_ms} ms (preemption timer; interrupts {})",
                if interrupts_enabled { "on" } else { "off" }
            ),
            StopReason::EntryFailed => write!(f, "VM entry failed"),
            StopReason::Unhandled { reason } => write!(f, "unhandled exit {reason:?}"),
            StopReason::Reset { how } => write!(f, "reset requested ({how})"),
            StopReason::PowerOff { how } => write!(f, "powered off ({how})"),
        }
    }
}

/// What the run loop does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Skip the exiting instruction and resume.
    Advance,
    /// Resume at the same instruction (e.g. after an interrupt exit).
    Resume,
    /// Inject #GP(0) at the exiting instruction, as real hardware would fault.
    InjectGp,
    /// The time slice ended: run another vCPU, then this one again.
    Yield,
    /// Stop this guest for good.
    Stop(StopReason),
}

/// The hypervisor's signature in CPUID leaf 0x4000_0000 and the features leaf after it come from
/// the ABI crate; the hypercalls themselves are handled by the caller's [`Services`].
pub trait Services {
    /// The host's CPUID for `leaf`/`subleaf`, as `[eax, ebx, ecx, edx]`.
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];
    /// Our hypervisor leaves (0x4000_0000..): `None` for leaves we do not define.
    fn hypervisor_cpuid(&self, leaf: u32) -> Option<[u32; 4]>;
    /// A guest-readable MSR's value, or `None` (#GP) for MSRs the guest may not read.
    fn read_msr(&self, msr: u32) -> Option<u64>;
    /// Handles a VMCALL from CPL `cpl`; sets the result registers; may stop the guest.
    fn hypercall(&mut self, regs: &mut GuestRegs, cpl: u8) -> Result<(), StopReason>;
}

/// CPUID.1:ECX bits the guest sees changed: VMX hidden (no nested virtualization), the
/// "hypervisor present" bit set.
const CPUID1_ECX_VMX: u32 = 1 << 5;
const CPUID1_ECX_HYPERVISOR: u32 = 1 << 31;

/// The CPUID values a guest sees.
pub fn guest_cpuid(services: &dyn Services, leaf: u32, subleaf: u32) -> [u32; 4] {
    if (0x4000_0000..=0x4000_00ff).contains(&leaf) {
        return services.hypervisor_cpuid(leaf).unwrap_or([0; 4]);
    }
    let mut r = services.host_cpuid(leaf, subleaf);
    if leaf == 1 {
        r[2] = (r[2] & !CPUID1_ECX_VMX) | CPUID1_ECX_HYPERVISOR;
    }
    r
}

fn lo32(v: u64) -> u64 {
    v & 0xffff_ffff
}

/// Decides what to do about `exit`. `rflags` is the guest's, `cpl` its privilege level at the
/// exit, `slice_exhausted_budget` tells whether the CPU budget is used up (the run loop keeps
/// the time accounts).
pub fn decide(
    exit: &Exit,
    regs: &mut GuestRegs,
    rflags: u64,
    cpl: u8,
    budget_exhausted: Option<u64>,
    services: &mut dyn Services,
) -> Decision {
    match *exit {
        Exit::Cpuid => {
            let r = guest_cpuid(services, regs.rax as u32, regs.rcx as u32);
            regs.rax = u64::from(r[0]);
            regs.rbx = u64::from(r[1]);
            regs.rcx = u64::from(r[2]);
            regs.rdx = u64::from(r[3]);
            Decision::Advance
        }
        Exit::Vmcall => match services.hypercall(regs, cpl) {
            Ok(()) => Decision::Advance,
            Err(stop) => Decision::Stop(stop),
        },
        Exit::Rdmsr => match services.read_msr(regs.rcx as u32) {
            Some(v) => {
                regs.rax = lo32(v);
                regs.rdx = v >> 32;
                Decision::Advance
            }
            None => Decision::InjectGp,
        },
        // No MSR is guest-writable yet: writes fault as on a CPU without that MSR.
        Exit::Wrmsr => Decision::InjectGp,
        // XCR0 stays the host's: guests here use no extended state (x86_64-unknown-none).
        Exit::Xsetbv => Decision::InjectGp,
        Exit::CrAccess(CrAccess { .. }) => Decision::InjectGp,
        Exit::Io(io) => io_exit(&io, regs),
        Exit::Hlt => Decision::Stop(StopReason::Halted),
        Exit::TripleFault => Decision::Stop(StopReason::TripleFault),
        Exit::EptViolation { qualification, guest_physical, .. } => {
            let q = qualification;
            Decision::Stop(StopReason::EptViolation {
                gpa: guest_physical,
                read: q.read,
                write: q.write,
                fetch: q.fetch,
                mapped: q.readable || q.writable || q.executable,
            })
        }
        Exit::EptMisconfiguration { guest_physical } => {
            Decision::Stop(StopReason::EptMisconfiguration { gpa: guest_physical })
        }
        Exit::VmxInstruction(v) => Decision::Stop(StopReason::VmxInstruction { instruction: v.instruction }),
        Exit::PreemptionTimer => match budget_exhausted {
            Some(budget_ms) => Decision::Stop(StopReason::CpuBudgetExceeded {
                budget_ms,
                interrupts_enabled: rflags & (1 << 9) != 0,
            }),
            None => Decision::Yield,
        },
        // Host interrupts are acknowledged on exit and dropped (guests get no devices yet); an
        // NMI is the host's and changes nothing for the guest.
        Exit::ExternalInterrupt { .. } => Decision::Resume,
        // The guest can take an interrupt now: the run loop injects the pending one.
        Exit::InterruptWindow => Decision::Resume,
        Exit::ExceptionOrNmi { .. } => Decision::Resume,
        Exit::InvalidGuestState(_) | Exit::MsrLoadingFailed { .. } | Exit::MachineCheckDuringEntry => {
            Decision::Stop(StopReason::EntryFailed)
        }
        Exit::Other { reason, .. } => Decision::Stop(StopReason::Unhandled { reason }),
        _ => Decision::Stop(StopReason::Unhandled { reason: exit_reason_of(exit) }),
    }
}

fn exit_reason_of(exit: &Exit) -> ExitReason {
    match exit {
        Exit::Init => ExitReason::InitSignal,
        Exit::Sipi { .. } => ExitReason::StartupIpi,
        Exit::NmiWindow => ExitReason::NmiWindow,
        Exit::MovDr(_) => ExitReason::MovDr,
        _ => ExitReason::TripleFault,
    }
}

/// Port I/O: guests own no ports. Reads see a floating bus (all ones), writes are dropped; string
/// I/O is not emulated and faults.
fn io_exit(io: &IoQualification, regs: &mut GuestRegs) -> Decision {
    if io.string || io.rep {
        return Decision::InjectGp;
    }
    if io.input {
        let ones: u64 = match io.size {
            1 => 0xff,
            2 => 0xffff,
            _ => 0xffff_ffff,
        };
        regs.rax = if io.size == 4 { ones } else { (regs.rax & !ones) | ones };
    }
    Decision::Advance
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmx::qual::EptViolation;

    struct Fake {
        calls: usize,
    }

    impl Services for Fake {
        fn host_cpuid(&self, leaf: u32, _: u32) -> [u32; 4] {
            [leaf, 0x11, !CPUID1_ECX_HYPERVISOR, 0x22]
        }
        fn hypervisor_cpuid(&self, leaf: u32) -> Option<[u32; 4]> {
            (leaf == 0x4000_0000).then_some([0x4000_0001, 1, 2, 3])
        }
        fn read_msr(&self, msr: u32) -> Option<u64> {
            (msr == 0x10).then_some(0x1234_5678_9abc_def0)
        }
        fn hypercall(&mut self, regs: &mut GuestRegs, cpl: u8) -> Result<(), StopReason> {
            self.calls += 1;
            if regs.rax == 99 {
                return Err(StopReason::Exited { status: regs.rbx });
            }
            regs.rax = u64::from(cpl);
            Ok(())
        }
    }

    fn run(exit: Exit, regs: &mut GuestRegs) -> Decision {
        decide(&exit, regs, 0x2, 0, None, &mut Fake { calls: 0 })
    }

    #[test]
    fn cpuid_hides_vmx_and_shows_our_leaves() {
        let mut r = GuestRegs { rax: 1, ..Default::default() };
        assert_eq!(run(Exit::Cpuid, &mut r), Decision::Advance);
        assert_eq!(r.rcx as u32 & CPUID1_ECX_VMX, 0);
        assert_ne!(r.rcx as u32 & CPUID1_ECX_HYPERVISOR, 0);
        let mut r = GuestRegs { rax: 0x4000_0000, ..Default::default() };
        run(Exit::Cpuid, &mut r);
        assert_eq!((r.rax, r.rbx, r.rcx, r.rdx), (0x4000_0001, 1, 2, 3));
        let mut r = GuestRegs { rax: 0x4000_0042, rbx: 7, ..Default::default() };
        run(Exit::Cpuid, &mut r);
        assert_eq!((r.rax, r.rbx, r.rcx, r.rdx), (0, 0, 0, 0));
    }

    #[test]
    fn msrs_are_allow_listed() {
        let mut r = GuestRegs { rcx: 0x10, ..Default::default() };
        assert_eq!(run(Exit::Rdmsr, &mut r), Decision::Advance);
        assert_eq!((r.rax, r.rdx), (0x9abc_def0, 0x1234_5678));
        let mut r = GuestRegs { rcx: 0x3a, ..Default::default() };
        assert_eq!(run(Exit::Rdmsr, &mut r), Decision::InjectGp);
        assert_eq!(run(Exit::Wrmsr, &mut r), Decision::InjectGp);
    }

    #[test]
    fn hypercalls_go_to_the_services_with_the_cpl() {
        let mut fake = Fake { calls: 0 };
        let mut r = GuestRegs { rax: 5, ..Default::default() };
        assert_eq!(decide(&Exit::Vmcall, &mut r, 2, 3, None, &mut fake), Decision::Advance);
        assert_eq!((r.rax, fake.calls), (3, 1));
        let mut r = GuestRegs { rax: 99, rbx: 42, ..Default::default() };
        assert_eq!(
            decide(&Exit::Vmcall, &mut r, 2, 0, None, &mut fake),
            Decision::Stop(StopReason::Exited { status: 42 })
        );
    }

    #[test]
    fn faults_and_vmx_instructions_stop_the_guest() {
        let mut r = GuestRegs::default();
        assert_eq!(run(Exit::TripleFault, &mut r), Decision::Stop(StopReason::TripleFault));
        assert_eq!(run(Exit::Hlt, &mut r), Decision::Stop(StopReason::Halted));
        let q = EptViolation::decode(0b010_010);
        let d = run(Exit::EptViolation { qualification: q, guest_physical: 0x1000, guest_linear: None }, &mut r);
        assert_eq!(
            d,
            Decision::Stop(StopReason::EptViolation { gpa: 0x1000, read: false, write: true, fetch: false, mapped: true })
        );
        let q = EptViolation::decode(0b000_001);
        let d = run(Exit::EptViolation { qualification: q, guest_physical: 0x4000_0000, guest_linear: None }, &mut r);
        assert!(matches!(d, Decision::Stop(StopReason::EptViolation { mapped: false, read: true, .. })));
        assert!(d.to_string_contains("not guest memory"));
    }

    #[test]
    fn the_preemption_timer_yields_until_the_budget_is_spent() {
        let mut r = GuestRegs::default();
        let mut f = Fake { calls: 0 };
        assert_eq!(decide(&Exit::PreemptionTimer, &mut r, 0x2, 0, None, &mut f), Decision::Yield);
        assert_eq!(
            decide(&Exit::PreemptionTimer, &mut r, 0x2, 0, Some(500), &mut f),
            Decision::Stop(StopReason::CpuBudgetExceeded { budget_ms: 500, interrupts_enabled: false })
        );
    }

    trait ToStringContains {
        fn to_string_contains(&self, s: &str) -> bool;
    }
    impl ToStringContains for Decision {
        fn to_string_contains(&self, s: &str) -> bool {
            match self {
                Decision::Stop(r) => std::format!("{r}").contains(s),
                _ => false,
            }
        }
    }
}

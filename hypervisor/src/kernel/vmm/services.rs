//! What the hypervisor offers one tenant's vCPU: its CPUID view, its readable MSRs and its
//! hypercalls. Guest memory is reached only through the tenant's [`GuestRam`] accessors.

use super::ram::GuestRam;
use super::tsc;
use alloc::string::String;
use alloc::vec::Vec;
use hypervisor::dispatch::{Begun, EngineHost, GuestMemory, Limits, Tenant, DISPATCH_FEATURES};
use hypervisor::vcpu::{GuestRegs, Services, StopReason};
use tensor_hcall::boot::{MSR_TENANT_ID, MSR_VCPU};
use tensor_hcall::call::MAX_CONSOLE_WRITE;
use tensor_hcall::cpuid::{self, Features};
use tensor_hcall::{encode_result, HcallError, HcallRegs, Hypercall, ABI_VERSION};

/// The features this hypervisor offers guests.
const FEATURES: Features = DISPATCH_FEATURES.union(Features::DEVICE_INTERRUPTS);

/// Console lines longer than this are split.
const MAX_LINE: usize = 512;

pub struct TenantServices {
    name: String,
    tenant_id: u32,
    ram: GuestRam,
    /// The console line each vCPU is writing (vCPU index): two vCPUs of the tenant that
    /// print at once get a line each instead of one line cut into by the other.
    lines: Vec<String>,
    /// The tensor hypercall state: handles, quotas, ring, sessions.
    pub tensors: Tenant,
    /// Whether the guest's user mode (CPL 3) may make hypercalls (tenant policy).
    user_mode_hypercalls: bool,
    /// Set when a hypercall parked as an engine request: the run loop must not advance RIP
    /// and the vCPU waits for the engine scheduler (see `run_guests`).
    pub parked: bool,
    /// Whether engine calls may park (the run loop resumes the vCPU at completion; a Linux
    /// tenant's hypercall-page result is written into the page then). Off: they run to
    /// completion inside the call. Every tenant the VMM loads parks.
    pub may_park: bool,
}

/// The models all tenants share, reachable from any CPU's exits: one lock.
pub trait SharedEngine: Sync {
    /// Runs `f` with the engine locked.
    fn with(&self, f: &mut dyn FnMut(&mut EngineHost));
}

impl SharedEngine for spin::Mutex<&mut EngineHost> {
    fn with(&self, f: &mut dyn FnMut(&mut EngineHost)) {
        f(&mut self.lock())
    }
}

/// A tenant's services together with the models all tenants share, for one exit.
pub struct ExitServices<'a> {
    pub tenant: &'a mut TenantServices,
    pub models: &'a dyn SharedEngine,
    /// What [`MSR_VCPU`] reads: the exiting vCPU and the CPU handling the exit.
    pub placement: tensor_hcall::boot::VcpuPlacement,
}

impl GuestMemory for GuestRam {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), HcallError> {
        GuestRam::read(self, gpa, buf).map_err(|_| HcallError::BadAddress)
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), HcallError> {
        self.write_shared(gpa, data).map_err(|_| HcallError::BadAddress)
    }

    fn accessible(&self, gpa: u64, len: u64, write: bool) -> bool {
        self.check_access(gpa, len, write)
    }
}

impl TenantServices {
    pub fn new(name: &str, tenant_id: u32, ram: GuestRam, limits: Limits, user_mode_hypercalls: bool) -> Self {
        let tensors = Tenant::new(tenant_id as u16, limits).with_kernels(crate::kernel::simd::features());
        Self { name: name.into(), tenant_id, ram, lines: Vec::new(), tensors, user_mode_hypercalls, parked: false, may_park: false }
    }

    /// Runs one unit of the parked engine request against this tenant's memory.
    pub fn engine_step(&mut self, models: &mut EngineHost) -> hypervisor::dispatch::Step {
        self.tensors.step(&self.ram, models)
    }

    /// Prints what is left of every unterminated console line.
    pub fn flush_console(&mut self) {
        for vcpu in 0..self.lines.len() {
            self.flush_line(vcpu);
        }
    }

    fn flush_line(&mut self, vcpu: usize) {
        if let Some(line) = self.lines.get_mut(vcpu).filter(|l| !l.is_empty()) {
            log::info!("[{}] {}", self.name, line);
            line.clear();
        }
    }

    /// One byte of vCPU `vcpu`'s console output: a newline ends its line, control characters
    /// other than newline are shown as '?' (so a guest cannot forge log lines or terminal
    /// escapes), and a line is cut at [`MAX_LINE`].
    fn console_push(&mut self, vcpu: usize, b: u8) {
        if self.lines.len() <= vcpu {
            self.lines.resize(vcpu + 1, String::new());
        }
        match b {
            b'\n' => self.flush_line(vcpu),
            b'\r' => {}
            b if b < 0x20 || b == 0x7f => self.lines[vcpu].push('?'),
            b => self.lines[vcpu].push(if b.is_ascii() { b as char } else { '?' }),
        }
        if self.lines[vcpu].len() >= MAX_LINE {
            self.flush_line(vcpu);
        }
    }

    /// The tenant's memory.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    pub fn ram_mut(&mut self) -> &mut GuestRam {
        &mut self.ram
    }

    /// One byte from a Linux tenant's UART (its one vCPU), shown line by line like
    /// [`Self::console_write`].
    pub fn console_byte(&mut self, b: u8) {
        self.console_push(0, b);
    }

    /// `ConsoleWrite` from vCPU `vcpu`.
    fn console_write(&mut self, vcpu: usize, gpa: u64, len: u64) -> Result<u64, HcallError> {
        if len > MAX_CONSOLE_WRITE {
            return Err(HcallError::InvalidArgument);
        }
        // Copy once into hypervisor memory, then use the copy.
        let mut buf = alloc::vec![0u8; len as usize];
        self.ram.read(gpa, &mut buf).map_err(|_| HcallError::BadAddress)?;
        for &b in &buf {
            self.console_push(vcpu, b);
        }
        Ok(len)
    }
}

impl Services for ExitServices<'_> {
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
        [r.eax, r.ebx, r.ecx, r.edx]
    }

    fn hypervisor_cpuid(&self, leaf: u32) -> Option<[u32; 4]> {
        cpuid::leaf(leaf, ABI_VERSION, FEATURES)
    }

    fn read_msr(&self, msr: u32) -> Option<u64> {
        match msr {
            MSR_TENANT_ID => Some(u64::from(self.tenant.tenant_id)),
            MSR_VCPU => Some(self.placement.to_msr()),
            0x10 => Some(tsc::rdtsc()), // IA32_TIME_STAMP_COUNTER
            _ => None,
        }
    }

    fn hypercall(&mut self, regs: &mut GuestRegs, cpl: u8) -> Result<(), StopReason> {
        let hregs = HcallRegs { rax: regs.rax, rbx: regs.rbx, rcx: regs.rcx, rdx: regs.rdx, rsi: regs.rsi };
        // The dispatcher counts the calls it handles; the ones answered here are counted here.
        let result = if cpl != 0 && !self.tenant.user_mode_hypercalls {
            Err(HcallError::PermissionDenied)
        } else {
            match Hypercall::decode(&hregs) {
                Ok(Hypercall::Exit { status }) => {
                    self.tenant.tensors.counters.hypercalls += 1;
                    return Err(StopReason::Exited { status: u64::from(status) });
                }
                Ok(Hypercall::ConsoleWrite { gpa, len }) => self.tenant.console_write(usize::from(self.placement.vcpu), gpa, len),
                // A passed-through device's INTx (kernel/devices/irq.rs).
                Ok(Hypercall::DeviceIrqBind { bdf, vector }) => crate::kernel::devices::irq::bind(self.tenant.tenant_id, bdf, vector),
                Ok(Hypercall::DeviceIrqDone { bdf }) => crate::kernel::devices::irq::done(self.tenant.tenant_id, bdf),
                Ok(_) => {
                    let t = &mut *self.tenant;
                    // Engine work parks: its descriptors are copied and validated now, the units
                    // run when the engine scheduler picks them, RAX and RIP change at completion.
                    if !t.may_park {
                        self.models.with(&mut |m| regs.rax = t.tensors.hypercall(&hregs, &t.ram, m));
                        return Ok(());
                    }
                    let mut begun = Begun::Done(encode_result(Err(HcallError::Busy)));
                    self.models.with(&mut |m| begun = t.tensors.begin(&hregs, &t.ram, m));
                    match begun {
                        Begun::Done(rax) => regs.rax = rax,
                        Begun::Parked => t.parked = true,
                    }
                    return Ok(());
                }
                Err(e) => Err(e),
            }
        };
        let c = &mut self.tenant.tensors.counters;
        c.hypercalls += 1;
        c.errors += u64::from(result.is_err());
        regs.rax = encode_result(result);
        Ok(())
    }
}

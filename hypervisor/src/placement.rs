//! Where each vCPU runs: from the tenants' pinning (manifest `vcpus` and `cpus`) and the CPUs
//! that actually came up, which physical CPU runs each vCPU and which CPUs are left to the
//! engine.
//!
//! CPUs are numbered as the hypervisor starts them: CPU 0 is the boot CPU, CPU `i` the `i`-th
//! other enabled processor of the ACPI MADT. The rules:
//! - A pinned vCPU runs only on its CPU, and that CPU runs nothing else: no other vCPU, no
//!   engine share. The manifest already keeps pinned CPUs disjoint; [`place`] checks again.
//! - Unpinned (floating) vCPUs all run in the boot CPU's loop, which also runs the engine
//!   scheduler. The boot CPU cannot be pinned: it is where the floating vCPUs and engine units
//!   go.
//! - Every CPU that came up and runs no pinned vCPU is an engine worker (the boot CPU is worker
//!   0 and splits every matrix product with them).
//! - A tenant pinned to a CPU that did not come up (absent, failed to start, or without VMX
//!   root operation) is refused as a whole, with its reason; the other tenants are placed.

use alloc::vec::Vec;
use core::fmt;

/// The boot CPU's number.
pub const BOOT_CPU: u32 = 0;

/// A set of CPU numbers below 64 (the manifest's `MAX_CPUS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuSet(pub u64);

impl CpuSet {
    pub const EMPTY: CpuSet = CpuSet(0);

    /// CPUs `0..n` (at most 64).
    pub fn first(n: u32) -> Self {
        CpuSet(if n >= 64 { u64::MAX } else { (1u64 << n) - 1 })
    }

    pub fn contains(self, cpu: u32) -> bool {
        cpu < 64 && self.0 & (1 << cpu) != 0
    }

    pub fn with(self, cpu: u32) -> Self {
        if cpu < 64 {
            CpuSet(self.0 | 1 << cpu)
        } else {
            self
        }
    }

    pub fn without(self, other: CpuSet) -> Self {
        CpuSet(self.0 & !other.0)
    }

    pub fn len(self) -> u32 {
        self.0.count_ones()
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The members, ascending.
    pub fn iter(self) -> impl Iterator<Item = u32> {
        (0..64).filter(move |&c| self.contains(c))
    }
}

/// Where one vCPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// In the boot CPU's loop, round robin with the other floating vCPUs.
    Floating,
    /// Only on this CPU, which runs nothing else.
    Pinned(u32),
}

impl Placement {
    /// The CPU whose loop runs the vCPU.
    pub fn cpu(self) -> u32 {
        match self {
            Placement::Floating => BOOT_CPU,
            Placement::Pinned(c) => c,
        }
    }
}

/// What one tenant asks for: `vcpus` vCPUs, and the CPU of each (`cpus`, empty: floating).
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub vcpus: u8,
    pub cpus: &'a [u8],
}

/// Why a tenant could not be placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlacementError {
    /// No vCPU, or more than the hypervisor runs per tenant.
    VcpuCount { vcpus: u8, max: usize },
    /// Pinning lists a number of CPUs different from `vcpus`.
    PinningCount { cpus: usize, vcpus: u8 },
    /// The CPU did not come up (absent from the MADT, failed to start, or no VMX).
    CpuNotUp { cpu: u32 },
    /// The boot CPU runs the floating vCPUs and the engine scheduler.
    BootCpu,
    /// The CPU is already pinned, by an earlier tenant (its index) or by this one.
    CpuTaken { cpu: u32, by: usize },
}

impl fmt::Display for PlacementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PlacementError::VcpuCount { vcpus, max } => write!(f, "{vcpus} vCPUs (1..={max} supported)"),
            PlacementError::PinningCount { cpus, vcpus } => write!(f, "{cpus} CPUs listed for {vcpus} vCPUs"),
            PlacementError::CpuNotUp { cpu } => write!(f, "pinned to CPU {cpu}, which did not come up (absent, not started, or without VMX)"),
            PlacementError::BootCpu => write!(f, "pinned to CPU 0, the boot CPU, which runs the unpinned vCPUs and the engine scheduler"),
            PlacementError::CpuTaken { cpu, by } => write!(f, "CPU {cpu} is already pinned by tenant #{by}"),
        }
    }
}

/// The placement of every tenant and what is left to the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Per tenant, in request order: the placement of each vCPU, or why it is refused.
    pub tenants: Vec<Result<Vec<Placement>, PlacementError>>,
    /// CPUs that run pinned vCPUs (and nothing else).
    pub pinned: CpuSet,
    /// CPUs that serve the engine: every CPU up and not pinned, the boot CPU first.
    pub engine_workers: CpuSet,
}

impl Plan {
    /// `(tenant, vcpu)` of every vCPU that runs on `cpu`, in order.
    pub fn vcpus_on(&self, cpu: u32) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (t, p) in self.tenants.iter().enumerate() {
            if let Ok(p) = p {
                out.extend(p.iter().enumerate().filter(|(_, p)| p.cpu() == cpu).map(|(v, _)| (t, v)));
            }
        }
        out
    }
}

/// Places `tenants` on the CPUs in `up` (the CPUs that came up with VMX root operation; the
/// boot CPU is always taken to be up). Tenants are placed in order; a tenant that cannot be
/// placed takes no CPU.
pub fn place(up: CpuSet, tenants: &[Request<'_>], max_vcpus: usize) -> Plan {
    let up = up.with(BOOT_CPU);
    let mut owner: [Option<usize>; 64] = [None; 64];
    let mut pinned = CpuSet::EMPTY;
    let mut placed = Vec::with_capacity(tenants.len());
    for (i, r) in tenants.iter().enumerate() {
        placed.push(place_one(i, r, up, &owner, max_vcpus).inspect(|p| {
            for cpu in p.iter().filter_map(|p| match p {
                Placement::Pinned(c) => Some(*c),
                Placement::Floating => None,
            }) {
                owner[cpu as usize] = Some(i);
                pinned = pinned.with(cpu);
            }
        }));
    }
    Plan { tenants: placed, pinned, engine_workers: up.without(pinned) }
}

fn place_one(i: usize, r: &Request<'_>, up: CpuSet, owner: &[Option<usize>; 64], max_vcpus: usize) -> Result<Vec<Placement>, PlacementError> {
    if r.vcpus == 0 || usize::from(r.vcpus) > max_vcpus {
        return Err(PlacementError::VcpuCount { vcpus: r.vcpus, max: max_vcpus });
    }
    if r.cpus.is_empty() {
        return Ok(alloc::vec![Placement::Floating; usize::from(r.vcpus)]);
    }
    if r.cpus.len() != usize::from(r.vcpus) {
        return Err(PlacementError::PinningCount { cpus: r.cpus.len(), vcpus: r.vcpus });
    }
    let mut out = Vec::with_capacity(r.cpus.len());
    for (k, &cpu) in r.cpus.iter().enumerate() {
        let cpu = u32::from(cpu);
        if cpu == BOOT_CPU {
            return Err(PlacementError::BootCpu);
        }
        if !up.contains(cpu) {
            return Err(PlacementError::CpuNotUp { cpu });
        }
        if let Some(by) = owner[cpu as usize] {
            return Err(PlacementError::CpuTaken { cpu, by });
        }
        if r.cpus[..k].contains(&(cpu as u8)) {
            return Err(PlacementError::CpuTaken { cpu, by: i });
        }
        out.push(Placement::Pinned(cpu));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Placement::{Floating, Pinned};

    const MAX: usize = 8;

    fn req(vcpus: u8, cpus: &[u8]) -> Request<'_> {
        Request { vcpus, cpus }
    }

    #[test]
    fn pinned_vcpus_get_their_cpus_and_the_rest_serve_the_engine() {
        let plan = place(CpuSet::first(4), &[req(1, &[1]), req(2, &[]), req(2, &[2, 3])], MAX);
        assert_eq!(plan.tenants[0], Ok(vec![Pinned(1)]));
        assert_eq!(plan.tenants[1], Ok(vec![Floating, Floating]));
        assert_eq!(plan.tenants[2], Ok(vec![Pinned(2), Pinned(3)]));
        assert_eq!(plan.pinned, CpuSet(0b1110));
        assert_eq!(plan.engine_workers, CpuSet(0b0001), "only the boot CPU is left to the engine");
        assert_eq!(plan.vcpus_on(0), vec![(1, 0), (1, 1)], "floating vCPUs run in the boot CPU's loop");
        assert_eq!(plan.vcpus_on(1), vec![(0, 0)]);
        assert_eq!(plan.vcpus_on(3), vec![(2, 1)]);
    }

    #[test]
    fn nothing_pinned_leaves_every_cpu_up_to_the_engine() {
        let plan = place(CpuSet::first(4), &[req(1, &[]), req(1, &[])], MAX);
        assert_eq!(plan.pinned, CpuSet::EMPTY);
        assert_eq!(plan.engine_workers, CpuSet::first(4));
        assert_eq!(plan.vcpus_on(0).len(), 2);
    }

    #[test]
    fn a_cpu_that_did_not_come_up_refuses_only_its_tenant() {
        // The configuration was written for 4 CPUs; CPUs 0, 1 and 3 came up (2 failed to start).
        let up = CpuSet(0b1011);
        let plan = place(up, &[req(1, &[]), req(2, &[1, 2]), req(1, &[3])], MAX);
        assert_eq!(plan.tenants[0], Ok(vec![Floating]));
        assert_eq!(plan.tenants[1], Err(PlacementError::CpuNotUp { cpu: 2 }));
        assert_eq!(plan.tenants[2], Ok(vec![Pinned(3)]));
        // CPU 1 was not taken by the refused tenant: it serves the engine.
        assert_eq!(plan.pinned, CpuSet(0b1000));
        assert_eq!(plan.engine_workers, CpuSet(0b0011));
        let msg = alloc::format!("{}", plan.tenants[1].as_ref().unwrap_err());
        assert!(msg.contains("CPU 2") && msg.contains("did not come up"), "{msg}");
    }

    #[test]
    fn a_cpu_beyond_the_machine_is_not_up() {
        let plan = place(CpuSet::first(2), &[req(1, &[63]), req(1, &[1])], MAX);
        assert_eq!(plan.tenants[0], Err(PlacementError::CpuNotUp { cpu: 63 }));
        assert_eq!(plan.tenants[1], Ok(vec![Pinned(1)]));
    }

    #[test]
    fn the_boot_cpu_cannot_be_pinned() {
        let plan = place(CpuSet::first(2), &[req(1, &[0])], MAX);
        assert_eq!(plan.tenants[0], Err(PlacementError::BootCpu));
        assert_eq!(plan.engine_workers, CpuSet::first(2));
    }

    #[test]
    fn a_cpu_is_pinned_once() {
        let plan = place(CpuSet::first(4), &[req(1, &[2]), req(1, &[2]), req(2, &[3, 3])], MAX);
        assert_eq!(plan.tenants[0], Ok(vec![Pinned(2)]));
        assert_eq!(plan.tenants[1], Err(PlacementError::CpuTaken { cpu: 2, by: 0 }));
        assert_eq!(plan.tenants[2], Err(PlacementError::CpuTaken { cpu: 3, by: 2 }));
        assert_eq!(plan.pinned, CpuSet(0b0100), "a refused tenant pins nothing, not even its first CPU");
    }

    #[test]
    fn bad_counts_are_refused() {
        let plan = place(CpuSet::first(4), &[req(0, &[]), req(9, &[]), req(2, &[1])], MAX);
        assert_eq!(plan.tenants[0], Err(PlacementError::VcpuCount { vcpus: 0, max: MAX }));
        assert_eq!(plan.tenants[1], Err(PlacementError::VcpuCount { vcpus: 9, max: MAX }));
        assert_eq!(plan.tenants[2], Err(PlacementError::PinningCount { cpus: 1, vcpus: 2 }));
    }

    #[test]
    fn the_boot_cpu_is_always_up() {
        let plan = place(CpuSet::EMPTY, &[req(1, &[])], MAX);
        assert_eq!(plan.engine_workers, CpuSet(1));
        assert_eq!(plan.tenants[0], Ok(vec![Floating]));
    }

    #[test]
    fn cpu_sets() {
        assert_eq!(CpuSet::first(64), CpuSet(u64::MAX));
        assert_eq!(CpuSet::first(3).iter().collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(CpuSet(0b101).len(), 2);
        assert!(!CpuSet(1).contains(64));
        assert_eq!(CpuSet(1).with(64), CpuSet(1));
    }
}

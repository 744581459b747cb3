//! The vcpus guest: each vCPU asks the hypervisor (a synthetic MSR, so the answer comes from the
//! physical CPU that handled the exit) which vCPU it is and which CPU serves it, and checks that
//! the answer stays the same over 200 exits. vCPU 0 also runs one engine operation (a doorbell:
//! park, engine unit, resume) and checks its result. In a tenant with more vCPUs, vCPU 1 adds
//! 1..=1000 into a shared counter and reports its placement through shared memory; vCPU 0 waits
//! for that and checks both. Arguments: `cpu=N` — the CPU vCPU 0 must be on (a pinned tenant).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guest_sdk::arch::Vmcall;
use guest_sdk::console::exit;
use guest_sdk::tensor::{Ring, SharedRegion};
use guest_sdk::vcpu::{placement, VcpuPlacement};
use guest_sdk::{println, GuestBootInfo};
use tensor_hcall::desc::{DType, OpCode, RegionFlags};
use tensor_hcall::HcallError;

const DATA_GPA: u64 = 0x30_0000;
const RING_GPA: u64 = 0x31_0000;
const READS: u32 = 200;
/// Set in [`REPORT`] once vCPU 1 has written its placement there.
const REPORTED: u64 = 1 << 63;

/// vCPU 1's placement (MSR value) | REPORTED.
static REPORT: AtomicU64 = AtomicU64::new(0);
/// What vCPU 1 adds up.
static SUM: AtomicU64 = AtomicU64::new(0);

/// Reads the placement `READS` times; the CPU if every read was handled on the same one.
fn stable_cpu(first: VcpuPlacement) -> Option<u16> {
    (0..READS).all(|_| placement() == first).then_some(first.cpu)
}

/// One Add of two 8-element vectors through the tensor ring (an engine request: the vCPU parks
/// until the engine ran it).
fn engine_add() -> Result<bool, HcallError> {
    let mut t = Vmcall::new();
    // SAFETY: both areas are this guest's RAM above its image and below its stacks, used for
    // nothing else.
    let data = unsafe { SharedRegion::register(&mut t, DATA_GPA, 0x1000, RegionFlags::READ | RegionFlags::WRITE)? };
    let x: [f32; 8] = core::array::from_fn(|i| i as f32 * 1.5);
    let y: [f32; 8] = core::array::from_fn(|i| 100.0 - i as f32);
    data.write_f32s(0, &x)?;
    data.write_f32s(0x100, &y)?;
    let tx = data.tensor(&mut t, DType::F32, 0, &[8])?;
    let ty = data.tensor(&mut t, DType::F32, 0x100, &[8])?;
    let tz = data.tensor(&mut t, DType::F32, 0x200, &[8])?;
    // SAFETY: see above.
    let mut ring = unsafe { Ring::new(&mut t, RING_GPA, 8)? };
    ring.push(7, OpCode::Add, &[tx, ty], tz, [0, 0])?;
    let ran = ring.submit(&mut t)?;
    let done = ring.complete();
    let mut z = [0f32; 8];
    data.read_f32s(0x200, &mut z)?;
    let exact = z.iter().enumerate().all(|(i, v)| v.to_bits() == (x[i] + y[i]).to_bits());
    Ok(ran == 1 && matches!(done, Some(c) if c.user_data == 7 && c.status == 0) && exact)
}

#[unsafe(no_mangle)]
#[unsafe(link_section = ".text._start")]
extern "C" fn _start(boot: &'static GuestBootInfo, vcpu: u64) -> ! {
    let me = placement();
    let n = boot.vcpu_count;
    println!("vcpus: vCPU {vcpu} of {n}: MSR says vCPU {} on CPU {}, APIC id {}", me.vcpu, me.cpu, me.apic_id);
    let stable = stable_cpu(me);
    if vcpu != 0 {
        for i in 1..=1000 {
            SUM.fetch_add(i, Ordering::AcqRel);
        }
        let report = if stable.is_some() && u64::from(me.vcpu) == vcpu { me.to_msr() } else { u64::MAX >> 1 };
        REPORT.store(report | REPORTED, Ordering::Release);
        // The tenant ends when vCPU 0 exits.
        loop {
            core::hint::spin_loop();
        }
    }
    let mut failures = 0u32;
    let mut check = |ok: bool, what: &str| {
        println!("vcpus: check {}: {what}", if ok { "ok" } else { "FAILED" });
        failures += u32::from(!ok);
    };
    check(me.vcpu == 0, "the MSR names vCPU 0");
    match stable {
        Some(cpu) => println!("vcpus: vCPU 0: {READS} more exits, every one handled on CPU {cpu}"),
        None => check(false, "every exit handled on the same CPU"),
    }
    if let Some(want) = boot.arg("cpu") {
        check(want.parse::<u16>().ok() == Some(me.cpu), "vCPU 0 runs on the CPU its arguments name");
    }
    match engine_add() {
        Ok(ok) => check(ok, "an engine add through the ring completed with the exact sum"),
        Err(e) => {
            println!("vcpus: engine add failed: {e:?}");
            check(false, "engine add");
        }
    }
    if n > 1 {
        let report = loop {
            let r = REPORT.load(Ordering::Acquire);
            if r & REPORTED != 0 {
                break VcpuPlacement::from_msr(r & !REPORTED);
            }
            core::hint::spin_loop();
        };
        let sum = SUM.load(Ordering::Acquire);
        println!("vcpus: vCPU 1 reported through shared memory: vCPU {} on CPU {}, APIC id {}; shared sum {sum}", report.vcpu, report.cpu, report.apic_id);
        check(report.vcpu == 1, "vCPU 1 saw its own index, every exit on one CPU");
        check(sum == 500_500, "vCPU 1's additions are visible to vCPU 0");
    }
    println!("vcpus: done: {failures} failed checks");
    exit(failures)
}

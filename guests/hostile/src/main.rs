//! The hostile guest: tries each class of bad call and descriptor and checks it gets the
//! documented error, never more: bad and forged handles, another tenant's handle (`victim=ID`),
//! memory it does not own, overflowing shapes, strides reaching outside their region, ring
//! indices beyond the ring, a descriptor rewritten after the doorbell, quota exhaustion, and
//! (`unlisted_model=ID`) a loaded model its manifest entry does not list.
//! It exits with the number of checks that did not get the expected answer, or with `spin=1`
//! then spins with interrupts off until its CPU budget stops it.
#![no_std]
#![no_main]

use guest_sdk::arch::{self, Vmcall};
use guest_sdk::console::exit;
use guest_sdk::tensor::{create_tensor, model_info, Ring, SharedRegion};
use guest_sdk::{call, println, GuestBootInfo, Hypercall};
use tensor_hcall::desc::{DType, OpCode, RegionFlags, SqEntry, TensorDesc};
use tensor_hcall::HcallError;

const DATA_GPA: u64 = 0x30_0000;
const RING_GPA: u64 = 0x34_0000;

struct Checks {
    failures: u32,
    vectors: VectorWatch,
}

impl Checks {
    fn expect<T: core::fmt::Debug>(&mut self, what: &str, got: Result<T, HcallError>, want: &[HcallError]) {
        self.vectors.check();
        let ok = matches!(&got, Err(e) if want.contains(e));
        println!("hostile: {what}: {got:?} -> {}", if ok { "refused as documented" } else { "WRONG" });
        self.failures += u32::from(!ok);
    }
}

/// Its own pattern in XMM0-15 (YMM0-15 with AVX) and a hostile MXCSR (round toward zero,
/// flush-to-zero, every exception unmasked: `arch::MXCSR_HOSTILE`), loaded once and checked
/// after every call and while it spins: the hypervisor, the engine and the tenants that share
/// its CPU must leave them alone, and the engine's float kernels that run between its slices
/// must not inherit its MXCSR (the other tenants' generations stay exact, and nothing faults).
struct VectorWatch {
    want: arch::Vectors,
    ymm: bool,
    checks: u32,
    changed: u32,
    /// Checks that came after a gap in the TSC long enough to be another vCPU's slice or the
    /// engine's.
    after_gaps: u32,
}

/// A TSC jump between two checks this long (under a millisecond at 2-3 GHz, far longer than one
/// loop iteration or a bare exit and re-entry take, shorter than a 5 ms slice or an engine
/// unit) means the vCPU was off the CPU meanwhile. The spin's bound (about 20 ms in Bochs) stays
/// well inside the attacker's 100 ms CPU budget.
const GAP_TSC: u64 = 2_000_000;

impl VectorWatch {
    fn start() -> Self {
        // SAFETY: ring 0, and this guest is soft-float: it keeps nothing of its own there.
        let ymm = unsafe { arch::enable_vectors() };
        let want = arch::vector_pattern(arch::TAG_HOSTILE, ymm);
        // SAFETY: enabled just above (YMM only where it said so).
        unsafe { arch::load_vectors(&want, ymm) };
        // SAFETY: SSE enabled just above; the value has no reserved bit; this guest does no
        // SSE arithmetic that could fault under it.
        unsafe { arch::set_mxcsr(arch::MXCSR_HOSTILE) };
        Self { want, ymm, checks: 0, changed: 0, after_gaps: 0 }
    }

    fn check(&mut self) {
        // SAFETY: enabled in `start`.
        let got = unsafe { arch::read_vectors(self.ymm) };
        // SAFETY: as above. The low six bits are exception flags, which nothing here raises.
        let control = unsafe { arch::mxcsr() } & !0x3f;
        self.checks += 1;
        if got != self.want || control != arch::MXCSR_HOSTILE {
            self.changed += 1;
            // SAFETY: as above; put the pattern back to see whether it changes again.
            unsafe {
                arch::load_vectors(&self.want, self.ymm);
                arch::set_mxcsr(arch::MXCSR_HOSTILE);
            }
        }
    }

    /// Spins, checking, until it has been away from the CPU `gaps` times (or a bounded number
    /// of iterations passed).
    fn spin(&mut self, gaps: u32) {
        let mut last = tsc();
        let mut seen = 0;
        for _ in 0..50_000u32 {
            let now = tsc();
            self.check();
            if now.wrapping_sub(last) > GAP_TSC {
                seen += 1;
                self.after_gaps += 1;
                if seen >= gaps {
                    break;
                }
            }
            last = now;
        }
    }
}

fn tsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC reads the time-stamp counter; tensorvisor does not trap it.
    unsafe { core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    u64::from(hi) << 32 | u64::from(lo)
}

/// A handle as the hypervisor lays them out (kind, tenant, generation, slot), forged.
fn forge(kind: u64, tenant: u64, generation: u64, slot: u64) -> u64 {
    kind << 56 | tenant << 40 | generation << 32 | slot
}

fn run(boot: &GuestBootInfo) -> Result<u32, HcallError> {
    let mut t = Vmcall::new();
    let mut c = Checks { failures: 0, vectors: VectorWatch::start() };
    let me = u64::from(boot.tenant_id);
    let victim: u64 = boot.arg("victim").and_then(|v| v.parse().ok()).unwrap_or(1);

    // Memory that is not ours: beyond our RAM, the hypervisor's range, our read-only page.
    c.expect("register memory beyond its RAM", call(&mut t, Hypercall::RegisterMemory { gpa: 0x4000_0000, len: 0x1000, flags: 3 }), &[HcallError::BadAddress]);
    c.expect("register the hypervisor's direct map", call(&mut t, Hypercall::RegisterMemory { gpa: 0xffff_8000_0000_0000, len: 0x1000, flags: 1 }), &[HcallError::BadAddress]);
    c.expect("register its read-only boot page writable", call(&mut t, Hypercall::RegisterMemory { gpa: 0x1000, len: 0x1000, flags: 3 }), &[HcallError::BadAddress]);

    // SAFETY: our RAM, used for nothing else.
    let data = unsafe { SharedRegion::register(&mut t, DATA_GPA, 0x1_0000, RegionFlags::READ | RegionFlags::WRITE)? };

    // Handles: made up, another kind, another tenant's.
    c.expect("destroy a made-up tensor handle", call(&mut t, Hypercall::TensorDestroy { handle: 0x1234_5678 }), &[HcallError::BadHandle]);
    c.expect("use a region handle as a tensor", call(&mut t, Hypercall::TensorDestroy { handle: data.handle }), &[HcallError::BadHandle]);
    let theirs = forge(1, victim, 1, 0);
    c.expect("unregister the victim's region", call(&mut t, Hypercall::UnregisterMemory { handle: theirs }), &[HcallError::BadHandle]);
    let mut d = TensorDesc { dtype: DType::F32 as u32, rank: 1, region: theirs, ..TensorDesc::default() };
    d.shape[0] = 16;
    d.strides[0] = 1;
    c.expect("a tensor over the victim's region", create_tensor(&mut t, &d), &[HcallError::BadHandle]);
    c.expect("close the victim's session", call(&mut t, Hypercall::SessionClose { session: forge(3, victim, 1, 0) }), &[HcallError::BadHandle]);
    c.expect("a handle with our tenant id but a guessed slot", call(&mut t, Hypercall::TensorDestroy { handle: forge(2, me, 1, 7) }), &[HcallError::BadHandle]);

    // Shapes and strides.
    c.expect("overflowing shape", data.tensor(&mut t, DType::F32, 0, &[1 << 40, 1 << 40]), &[HcallError::BadShape, HcallError::BadStrides]);
    let mut d = TensorDesc { dtype: DType::F32 as u32, rank: 1, region: data.handle, ..TensorDesc::default() };
    d.shape[0] = 16;
    d.strides[0] = 1 << 20;
    c.expect("strides reaching outside the region", create_tensor(&mut t, &d), &[HcallError::OutOfBounds]);
    c.expect("a tensor past the region's end", data.tensor(&mut t, DType::F32, 0xfff0, &[16]), &[HcallError::OutOfBounds]);
    c.expect("a zero dimension", data.tensor(&mut t, DType::F32, 0, &[0, 16]), &[HcallError::BadShape]);
    d.strides[0] = 1;
    d.dtype = 77;
    c.expect("an unknown dtype", create_tensor(&mut t, &d), &[HcallError::BadDtype]);

    // Rings: indices beyond the ring, and a descriptor rewritten after the doorbell.
    let x = data.tensor(&mut t, DType::F32, 0, &[16])?;
    let y = data.tensor(&mut t, DType::F32, 0x100, &[16])?;
    let out = data.tensor(&mut t, DType::F32, 0x200, &[16])?;
    data.write_f32s(0, &[1.0; 16])?;
    data.write_f32s(0x100, &[2.0; 16])?;
    // SAFETY: our RAM, used for nothing else.
    let mut ring = unsafe { Ring::new(&mut t, RING_GPA, 16)? };
    ring.publish(16 + 5)?;
    c.expect("SQ producer index beyond the ring", call(&mut t, Hypercall::Doorbell { ring: 0 }), &[HcallError::BadRingIndex]);
    c.expect("a ring that does not exist", call(&mut t, Hypercall::Doorbell { ring: 3 }), &[HcallError::BadHandle]);
    ring.publish(0)?;
    ring.push(7, OpCode::Add, &[x, y], out, [0, 0])?;
    let ran = ring.submit(&mut t)?;
    let evil = SqEntry { user_data: 666, opcode: OpCode::Mul as u16, tensors: [x, y, 0, out], ..SqEntry::default() };
    ring.rewrite(0, &evil)?;
    let again = call(&mut t, Hypercall::Doorbell { ring: 0 })?;
    let mut got = [0f32; 16];
    data.read_f32s(0x200, &mut got)?;
    let cqe = ring.complete();
    let kept = ran == 1 && again == 0 && got == [3.0; 16] && cqe.map(|c| c.user_data) == Some(7);
    println!("hostile: descriptor rewritten after the doorbell: ran {ran}, re-ring ran {again}, result {}, completion {:?} -> {}", got[0], cqe.map(|c| c.user_data), if kept { "the submitted op ran, the rewrite did nothing" } else { "WRONG" });
    c.failures += u32::from(!kept);
    ring.push(8, OpCode::Softmax, &[x], x, [0, 0])?;
    let mut bad = SqEntry { user_data: 9, opcode: 200, tensors: [x, 0, 0, out], ..SqEntry::default() };
    ring.push_entry(&bad)?;
    bad.opcode = OpCode::Add as u16;
    bad.tensors = [x, theirs, 0, out];
    bad.user_data = 10;
    ring.push_entry(&bad)?;
    ring.submit(&mut t)?;
    let mut statuses = [0i64; 3];
    for s in statuses.iter_mut() {
        *s = ring.complete().map_or(1, |c| c.status);
    }
    let want = [0, HcallError::NotSupported.code(), HcallError::BadHandle.code()];
    println!("hostile: ring entries (ok, unknown op, victim's handle) completed with {statuses:?} -> {}", if statuses == want { "as documented" } else { "WRONG" });
    c.failures += u32::from(statuses != want);

    // A doorbell over the in-flight quota: the first `quota` entries run, the rest complete with
    // QuotaExceeded without running; the ring stays usable and resubmitted entries run.
    let quota = guest_sdk::tensor::abi_info(&mut t)?.max_inflight;
    const RING_ENTRIES: u32 = 16;
    if quota + 2 <= RING_ENTRIES {
        let n = quota + 2;
        for i in 0..n {
            ring.push(1000 + u64::from(i), OpCode::Softmax, &[x], out, [0, 0])?;
        }
        let consumed = ring.submit(&mut t)?;
        let (mut ok, mut refused, mut in_order) = (0u32, 0u32, true);
        for i in 0..n {
            match ring.complete() {
                Some(cqe) => {
                    in_order &= cqe.user_data == 1000 + u64::from(i);
                    let want = if i < quota { 0 } else { HcallError::QuotaExceeded.code() };
                    in_order &= cqe.status == want;
                    ok += u32::from(cqe.status == 0);
                    refused += u32::from(cqe.status == HcallError::QuotaExceeded.code());
                }
                None => in_order = false,
            }
        }
        ring.push(2000, OpCode::Softmax, &[x], out, [0, 0])?;
        ring.push(2001, OpCode::Softmax, &[x], out, [0, 0])?;
        let again = ring.submit(&mut t)?;
        let rerun = [ring.complete(), ring.complete()].iter().filter(|c| c.is_some_and(|c| c.status == 0)).count();
        let good = consumed == u64::from(n) && ok == quota && refused == 2 && in_order && again == 2 && rerun == 2;
        println!(
            "hostile: a doorbell of {n} entries over an in-flight quota of {quota}: consumed {consumed}, {ok} ran, {refused} QuotaExceeded; resubmitted {again}, {rerun} ran -> {}",
            if good { "refused as documented, the ring carries on" } else { "WRONG" }
        );
        c.failures += u32::from(!good);
    } else {
        println!("hostile: in-flight quota {quota} does not fit a {RING_ENTRIES}-entry ring: doorbell quota not probed");
    }

    // Quotas: register until refused.
    let mut n = 0;
    let quota = loop {
        match call(&mut t, Hypercall::RegisterMemory { gpa: DATA_GPA, len: 0x10_0000, flags: 1 }) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
        if n > 1000 {
            break HcallError::Internal;
        }
    };
    c.expect("register more than the quota", Err::<u64, _>(quota), &[HcallError::QuotaExceeded]);
    println!("hostile: {n} more regions were accepted before the quota refused");
    // `unlisted_model=ID`: a model the hypervisor loaded that this tenant's manifest entry
    // does not list; naming it is refused (and the tenant carries on).
    if let Some(id) = boot.arg("unlisted_model").and_then(|v| v.parse::<u64>().ok()) {
        println!("hostile: model {id} is loaded but not in its models list");
        c.expect("open a session on the unlisted model", call(&mut t, Hypercall::SessionOpen { model_id: id, max_context: 16 }), &[HcallError::PermissionDenied]);
        c.expect("read the unlisted model's description", model_info(&mut t, id), &[HcallError::PermissionDenied]);
    }
    c.expect("a session with a huge context on a missing model", call(&mut t, Hypercall::SessionOpen { model_id: 99, max_context: 1 << 30 }), &[HcallError::NoSuchModel]);
    let v = &mut c.vectors;
    v.spin(3);
    if v.changed == 0 {
        println!("hostile: vector registers ({}) and MXCSR {:#x}: own pattern intact at {} checks, {} after being off the CPU", if v.ymm { "YMM0-15" } else { "XMM0-15" }, arch::MXCSR_HOSTILE, v.checks, v.after_gaps);
    } else {
        println!("hostile: vector registers ({}) and MXCSR {:#x}: changed under it at {} of {} checks -> WRONG", if v.ymm { "YMM0-15" } else { "XMM0-15" }, arch::MXCSR_HOSTILE, v.changed, v.checks);
    }
    Ok(c.failures + u32::from(v.changed != 0))
}

#[unsafe(no_mangle)]
#[unsafe(link_section = ".text._start")]
extern "C" fn _start(boot: &'static GuestBootInfo) -> ! {
    match run(boot) {
        Ok(f) => {
            println!("hostile: {f} checks got an unexpected answer");
            if boot.arg("spin") == Some("1") {
                println!("hostile: now spinning with interrupts off");
                // SAFETY: deliberately hogging the CPU; the hypervisor's budget must stop this.
                unsafe { core::arch::asm!("cli", "2:", "jmp 2b", options(noreturn)) };
            }
            exit(f)
        }
        Err(e) => {
            println!("hostile: setup failed: {e:?}");
            exit(100)
        }
    }
}

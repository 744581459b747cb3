//! The hello guest: prints through the hypercall console, finds the hypervisor through CPUID,
//! checks what the hypervisor shows and hides, reads the MSR it permits, tries two bad
//! hypercalls, and exits with status 0 only if every check held.
#![no_std]
#![no_main]

use guest_sdk::arch::{rdmsr, Vmcall};
use guest_sdk::console::exit;
use guest_sdk::{call, detect, println, GuestBootInfo, HcallError, HcallRegs, Hypercall, Transport};
use tensor_hcall::boot::{BOOT_MAGIC, MSR_TENANT_ID};

#[unsafe(no_mangle)]
#[unsafe(link_section = ".text._start")]
extern "C" fn _start(boot: &'static GuestBootInfo) -> ! {
    let mut failures = 0u32;
    let mut check = |ok: bool, what: &str| {
        println!("check {}: {what}", if ok { "ok" } else { "FAILED" });
        failures += u32::from(!ok);
    };
    println!("hello from a tensorvisor guest: tenant {}, {} KiB of memory, args \"{}\"", boot.tenant_id, boot.memory_size / 1024, boot.args());
    check(boot.magic == BOOT_MAGIC, "boot information has the magic");

    let mut t = Vmcall::new();
    match detect(&mut t) {
        Some(info) => {
            println!("hypervisor: TensorVisor ABI {}.{}, features {:#x}", info.version.major, info.version.minor, info.features.bits());
            check(info.version.major == tensor_hcall::ABI_VERSION.major, "ABI major version matches");
        }
        None => check(false, "CPUID shows the TensorVisor signature"),
    }
    let sig = t.cpuid(0x4000_0000);
    let mut name = [0u8; 12];
    for (i, r) in sig[1..].iter().enumerate() {
        name[i * 4..i * 4 + 4].copy_from_slice(&r.to_le_bytes());
    }
    println!("cpuid 0x40000000: max leaf {:#x}, signature {:?}", sig[0], core::str::from_utf8(&name[..11]).unwrap_or("?"));
    check(t.cpuid(1)[2] & (1 << 5) == 0, "CPUID hides VMX from the guest");

    // SAFETY: the hypervisor permits reading the tenant-id MSR.
    let id = unsafe { rdmsr(MSR_TENANT_ID) };
    println!("rdmsr {MSR_TENANT_ID:#x} (tenant id) = {id}");
    check(id == u64::from(boot.tenant_id), "tenant-id MSR matches the boot information");

    // Hostile-but-harmless calls get errors, not faults.
    let bad = call(&mut t, Hypercall::ConsoleWrite { gpa: 0x7fff_0000_0000, len: 16 });
    println!("console write from an address outside guest memory: {bad:?}");
    check(bad == Err(HcallError::BadAddress), "a bad buffer gets BadAddress");
    let unknown = tensor_hcall::decode_result(t.hypercall(HcallRegs { rax: 0xdead, rbx: 0, rcx: 0, rdx: 0, rsi: 0 }));
    println!("unknown hypercall 0xdead: {unknown:?}");
    check(unknown == Err(HcallError::NotSupported), "an unknown call gets NotSupported");

    match guest_sdk::tensor::tenant_stats(&mut t) {
        Ok(s) => {
            println!("own counters: {} hypercalls, {} errors, {} ns of hypervisor time", s.hypercalls, s.errors, s.hypervisor_ns);
            check(s.hypercalls >= 10 && s.errors == 2, "the tenant's counters are readable and count its calls");
        }
        Err(e) => check(false, if e == HcallError::NotSupported { "stats query supported" } else { "stats query answered" }),
    }
    println!("hello guest done: {failures} failed checks");
    exit(failures)
}

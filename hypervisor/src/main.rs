//! The tensorvisor bare-metal binary: GRUB loads it through multiboot2, `kernel::boot` takes the
//! CPU to long mode and calls [`kmain`].
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod kernel;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the hypervisor runs on bare metal: build and boot it with `cargo xtask run`");
    std::process::exit(2);
}

#[cfg(target_os = "none")]
mod entry {
    use crate::kernel::{cpu, exit, fpu, gdt, idt, infer, logger, memory, serial, smp, tsc, vmm};
    use crate::println;
    use hypervisor::multiboot2::{cmdline_value, BOOTLOADER_MAGIC};

    /// Entered from `kernel::boot` in long mode, on the boot stack, interrupts off.
    #[unsafe(no_mangle)]
    extern "C" fn kmain(magic: u32, info_phys: u64) -> ! {
        serial::CONSOLE.lock().init();
        logger::init(log::LevelFilter::Info);
        gdt::init();
        idt::init();
        let (tsc_hz, tsc_source) = tsc::init();
        println!();
        println!("tensorvisor {} - a Type-1 hypervisor for tensor work", env!("CARGO_PKG_VERSION"));
        if magic != BOOTLOADER_MAGIC {
            panic!("not started by a multiboot2 loader (EAX = {magic:#x}, expected {BOOTLOADER_MAGIC:#x})");
        }
        log::info!("tsc: {} MHz ({:?})", tsc_hz / 1_000_000, tsc_source);

        let features = cpu::features();
        let info = memory::init(info_phys, features);
        let cmdline = info.command_line().unwrap_or("");
        log::info!(
            "boot: {} via {}, command line \"{}\"",
            info.boot_loader_name().unwrap_or("unknown loader"),
            if info.booted_by_uefi() { "UEFI" } else { "BIOS" },
            cmdline
        );
        heap_self_test();

        let mut modules = 0;
        for m in info.modules() {
            log::info!("module: \"{}\" {} bytes at {:#x}", m.cmdline, m.len(), m.start);
            modules += 1;
        }
        log::info!("modules: {modules}");
        let vmx_caps = cpu::report();
        crate::kernel::devices::init(&info);
        let modules: alloc::vec::Vec<_> = info.modules().map(|m| (m, memory::module_bytes(&m))).collect();
        let xcr0 = fpu::enable();
        match fpu::GuestFpu::new() {
            Ok(g) => log::info!("fpu: SSE on, XCR0 {xcr0:#x}; each vCPU's x87/SSE/AVX state: {}", g.describe()),
            Err(e) => log::error!("fpu: SSE on, XCR0 {xcr0:#x}; no vCPU can be created: {e}"),
        }
        start_cpus(&info, vmx_caps.is_some());
        let (mut models, models_ok) = infer::load_models(&modules);
        let inference_ok = infer::run(&models, &modules) && models_ok;
        let (specs, mut linux_specs) = tenant_specs(&modules);
        linux_specs.extend(linux_module_specs(&modules));
        // What each tenant may open, and the models it lists that did not load (it could not
        // open them: PermissionDenied is for loaded models it does not list).
        for (name, access) in specs.iter().map(|s| (&s.name, s.limits.models)).chain(linux_specs.iter().map(|s| (&s.name, s.limits.models))) {
            log::info!("tenant {name}: model access: {}", access.describe());
            for m in access.missing(&models) {
                log::warn!("tenant {name}: lists model {m}, which is not loaded: it cannot open it");
            }
        }
        if !specs.is_empty() || !linux_specs.is_empty() {
            match vmx_caps.map(vmm::enable) {
                Some(Ok(root)) => {
                    let (finished, stopped) = vmm::run_guests(&root, &specs, &linux_specs, &mut models);
                    log::info!("guests: {finished} finished, {stopped} stopped or refused");
                }
                Some(Err(e)) => log::error!("vmx: cannot run guests: {e}"),
                None => log::warn!("vmx: {} guest(s) not started: this CPU has no usable VMX", specs.len()),
            }
        }

        if let Some(scenario) = cmdline_value(cmdline, "tv.scenario") {
            run_scenario(scenario);
        }
        log::info!("boot complete");
        exit::exit(if inference_ok { exit::ExitCode::Success } else { exit::ExitCode::Failure });
    }

    /// The tenants to start, Rust guests and Linux kernels: from the `manifest` module
    /// (validated again here; a refused entry is logged and skipped), or one per `guest:NAME`
    /// module when there is no manifest.
    #[allow(clippy::type_complexity)]
    fn tenant_specs<'a>(
        modules: &[(hypervisor::multiboot2::Module<'_>, &'a [u8])],
    ) -> (alloc::vec::Vec<vmm::TenantSpec<'a>>, alloc::vec::Vec<vmm::linux::LinuxSpec<'a>>) {
        let module = |kind: &str, name: &str| {
            let want = alloc::format!("{kind}:{name}");
            modules.iter().find(|(m, _)| m.cmdline.split_ascii_whitespace().next() == Some(want.as_str())).map(|(_, b)| *b)
        };
        let guest = |name: &str| module("guest", name);
        let mut specs = alloc::vec::Vec::new();
        let mut linux_specs = alloc::vec::Vec::new();
        if let Some((_, bytes)) = modules.iter().find(|(m, _)| m.cmdline == "manifest") {
            match hypervisor::manifest::decode_and_admit(bytes) {
                Ok(admitted) => {
                    log::info!("manifest: {} tenant(s) admitted, {} refused", admitted.tenants.len(), admitted.refused.len());
                    for e in &admitted.refused {
                        log::error!("manifest: tenant refused: {e}");
                    }
                    for (_, t) in &admitted.tenants {
                        if let Some(boot) = &t.linux {
                            if !t.cpus.is_empty() || t.vcpus > 1 {
                                // Its one vCPU floats on the boot CPU (hypervisor::placement).
                                log::error!("tenant {}: not started: a Linux tenant runs one unpinned vCPU ({} vCPU(s), CPUs {:?} asked)", t.name, t.vcpus, t.cpus);
                                continue;
                            }
                            // A Linux tenant: its kernel and initramfs modules must have come
                            // with the manifest; the loader checks the kernel's format.
                            let initrd = if boot.initrd.is_empty() { Ok(None) } else { module("initrd", &boot.initrd).map(Some).ok_or("initrd") };
                            match (module("kernel", &boot.kernel), initrd) {
                                (Some(kernel), Ok(initrd)) => {
                                    log::info!(
                                        "tenant {}: Linux kernel {} ({} bytes), initramfs {}, {} MiB, engine weight {}, quotas {} MiB registered / {} in-flight ops / {} MiB KV cache",
                                        t.name,
                                        boot.kernel,
                                        kernel.len(),
                                        if boot.initrd.is_empty() { "none" } else { boot.initrd.as_str() },
                                        t.memory_mib,
                                        t.weight,
                                        t.quota.registered_mib,
                                        t.quota.inflight_ops,
                                        t.quota.kv_cache_mib
                                    );
                                    linux_specs.push(vmm::linux::LinuxSpec::from_manifest(t, boot, kernel, initrd));
                                }
                                (None, _) => log::error!("tenant {}: not started: no kernel module named kernel:{} was delivered", t.name, boot.kernel),
                                (_, Err(_)) => log::error!("tenant {}: not started: no initramfs module named initrd:{} was delivered", t.name, boot.initrd),
                            }
                            continue;
                        }
                        match guest(&t.guest) {
                            Some(elf) => specs.push(vmm::TenantSpec::from_manifest(t, elf)),
                            None => log::error!("tenant {}: not started: no guest image named {} was delivered", t.name, t.guest),
                        }
                    }
                }
                Err(e) => log::error!("manifest: refused, no tenant started: {e}"),
            }
            return (specs, linux_specs);
        }
        for (m, bytes) in modules.iter().filter(|(m, _)| m.cmdline.starts_with("guest:")) {
            match vmm::TenantSpec::from_module(m, bytes) {
                Ok(s) => specs.push(s),
                Err(e) => log::error!("guest {}: not started: {e}", m.cmdline),
            }
        }
        (specs, linux_specs)
    }

    /// Linux tenants outside the manifest: one per `linux:NAME` module (the kernel), with its
    /// `initrd:NAME` module (`cargo xtask run --linux`).
    fn linux_module_specs<'a>(modules: &[(hypervisor::multiboot2::Module<'_>, &'a [u8])]) -> alloc::vec::Vec<vmm::linux::LinuxSpec<'a>> {
        let mut specs = alloc::vec::Vec::new();
        for (m, bytes) in modules.iter().filter(|(m, _)| m.cmdline.starts_with("linux:")) {
            match vmm::linux::LinuxSpec::from_module(m, bytes, modules) {
                Ok(s) => specs.push(s),
                Err(e) => log::error!("linux tenant {}: not started: {e}", m.cmdline),
            }
        }
        specs
    }

    /// Finds the CPUs in the ACPI MADT and starts the others.
    fn start_cpus(info: &hypervisor::multiboot2::BootInfo<'_>, vmx: bool) {
        // `vmx`: the boot CPU has VMX, so every CPU should enter VMX root operation.
        let Some(rsdp) = info.acpi_rsdp() else {
            log::warn!("smp: no ACPI RSDP from the boot loader: running on the boot CPU only");
            return;
        };
        match hypervisor::acpi::processors(rsdp, &mut memory::read_phys) {
            Ok(cpus) => {
                let ids: alloc::vec::Vec<u32> = cpus.iter().filter(|c| c.usable).map(|c| c.apic_id).collect();
                log::info!("smp: MADT lists {} CPUs ({} enabled), APIC ids {:?}", cpus.len(), ids.len(), ids);
                let online = smp::start_aps(&ids);
                log::info!("smp: {online} of {} CPUs online; VMXON done on {} application processors", ids.len(), smp::vmx_cpus());
                if vmx && smp::vmx_cpus() + 1 < online {
                    log::warn!("smp: some CPUs could not enter VMX root operation");
                }
            }
            Err(e) => log::error!("smp: cannot read the MADT ({e:?}): running on the boot CPU only"),
        }
    }

    /// Proves the heap works before anything relies on it.
    fn heap_self_test() {
        use alloc::{boxed::Box, vec::Vec};
        let v: Vec<u64> = (0..10_000).collect();
        let b = Box::new(v.iter().sum::<u64>());
        assert_eq!(*b, 49_995_000, "heap self-test");
        log::info!("heap: self-test passed");
    }

    /// Fault scenarios selected by `tv.scenario=` on the command line, used by the integration
    /// tests to prove faults are caught and reported.
    fn run_scenario(name: &str) {
        log::info!("scenario: {name}");
        match name {
            "pagefault" => {
                // Below 4 GiB, identity-mapped by the boot tables but not by the hypervisor's own.
                let p = 0xdead_b000 as *const u64;
                // SAFETY: deliberately unsound: this read must fault, and the fault is fatal.
                let v = unsafe { core::ptr::read_volatile(p) };
                log::error!("scenario: read of an unmapped address returned {v:#x}");
            }
            "stack-overflow" => {
                #[allow(unconditional_recursion)]
                fn recurse(depth: u64) -> u64 {
                    let pad = [depth; 64];
                    core::hint::black_box(&pad);
                    recurse(depth + 1) + pad[0]
                }
                let _ = recurse(0);
            }
            "panic" => panic!("scenario: deliberate panic"),
            other => log::warn!("scenario: unknown scenario \"{other}\" ignored"),
        }
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo) -> ! {
        serial::force_unlock_for_crash();
        match info.location() {
            Some(l) => log::error!("PANIC at {}:{}:{}: {}", l.file(), l.line(), l.column(), info.message()),
            None => log::error!("PANIC: {}", info.message()),
        }
        exit::exit(exit::ExitCode::Failure);
    }
}

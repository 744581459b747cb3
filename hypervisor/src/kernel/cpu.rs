//! The boot CPU report: identity, the features the hypervisor and the engine care about, and the
//! VMX capabilities decoded by the `vmx` crate.

use raw_cpuid::CpuId;
use vmx::caps::{read_raw_msrs, VmxCapabilities, VmxEnableState};

/// What later stages need to know about the boot CPU.
#[derive(Clone, Copy, Debug)]
pub struct CpuFeatures {
    pub nx: bool,
    pub gib_pages: bool,
}

/// Reads the features paging needs (before the report, which runs once logging is up).
pub fn features() -> CpuFeatures {
    let cpuid = CpuId::new();
    let ext = cpuid.get_extended_processor_and_feature_identifiers();
    CpuFeatures {
        nx: ext.as_ref().is_some_and(|e| e.has_execute_disable()),
        gib_pages: ext.as_ref().is_some_and(|e| e.has_1gib_pages()),
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Logs the CPU report and returns the decoded VMX capabilities when the CPU has VMX.
pub fn report() -> Option<VmxCapabilities> {
    let cpuid = CpuId::new();
    let vendor = cpuid.get_vendor_info();
    let brand = cpuid.get_processor_brand_string();
    let f = cpuid.get_feature_info();
    let ext = cpuid.get_extended_feature_info();
    let apm = cpuid.get_advanced_power_mgmt_info();
    log::info!(
        "cpu: {} \"{}\" family {:#x} model {:#x} stepping {}",
        vendor.as_ref().map_or("unknown", |v| v.as_str()),
        brand.as_ref().map_or("", |b| b.as_str().trim()),
        f.as_ref().map_or(0, |f| f.family_id()),
        f.as_ref().map_or(0, |f| f.model_id()),
        f.as_ref().map_or(0, |f| f.stepping_id()),
    );
    let has_vmx = f.as_ref().is_some_and(|f| f.has_vmx());
    log::info!(
        "cpu: VMX {} | x2APIC {} | AVX2 {} | AVX-512F {} | invariant TSC {} | 1 GiB pages {} | running under a hypervisor {}",
        yes(has_vmx),
        yes(f.as_ref().is_some_and(|f| f.has_x2apic())),
        yes(ext.as_ref().is_some_and(|e| e.has_avx2())),
        yes(ext.as_ref().is_some_and(|e| e.has_avx512f())),
        yes(apm.as_ref().is_some_and(|a| a.has_invariant_tsc())),
        yes(features().gib_pages),
        yes(f.as_ref().is_some_and(|f| f.has_hypervisor())),
    );
    if !has_vmx {
        log::warn!("cpu: no VMX: this CPU cannot run guests (tenants stay stopped)");
        return None;
    }
    // SAFETY: CPUID.1:ECX.VMX is set (checked above) and we run at CPL 0.
    let raw = unsafe { read_raw_msrs() };
    match VmxCapabilities::from_raw(&raw) {
        Ok(caps) => {
            let state = match caps.feature_control.vmx_state() {
                VmxEnableState::Enabled => "enabled and locked by firmware",
                VmxEnableState::Unlocked => "unlocked (the hypervisor will enable and lock it)",
                VmxEnableState::DisabledByFirmware => "DISABLED by firmware: VMXON impossible",
            };
            log::info!("vmx: IA32_FEATURE_CONTROL {:#x}: {state}", caps.feature_control.bits());
            log::info!(
                "vmx: EPT {} | VPID {} | unrestricted guest {} | preemption timer {}",
                yes(caps.has_ept()),
                yes(caps.has_vpid()),
                yes(caps.has_unrestricted_guest()),
                yes(caps.has_preemption_timer()),
            );
            log::info!("vmx: {}", caps.summary());
            Some(caps)
        }
        Err(e) => {
            log::error!("vmx: capability MSRs are inconsistent: {e}");
            None
        }
    }
}

/// The VMX capabilities of this CPU, read quietly (None without VMX or with inconsistent MSRs).
pub fn vmx_capabilities() -> Option<VmxCapabilities> {
    if !CpuId::new().get_feature_info().is_some_and(|f| f.has_vmx()) {
        return None;
    }
    // SAFETY: CPUID.1:ECX.VMX is set (checked above) and we run at CPL 0.
    let raw = unsafe { read_raw_msrs() };
    VmxCapabilities::from_raw(&raw).ok()
}

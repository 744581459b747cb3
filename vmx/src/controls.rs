//! VM-execution, VM-exit and VM-entry control fields as bitflags (Intel SDM Vol. 3C, 25.6-25.8;
//! section numbers follow the 2023+ SDM, older editions number the same text 24.6-24.8), and their
//! adjustment against the allowed-0/allowed-1 capability MSRs (SDM Vol. 3D, A.3-A.5).

use bitflags::bitflags;

bitflags! {
    /// Pin-based VM-execution controls (SDM 25.6.1, table 25-5).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct PinBasedControls: u32 {
        /// External interrupts cause VM exits.
        const EXTERNAL_INTERRUPT_EXITING = 1 << 0;
        /// NMIs cause VM exits.
        const NMI_EXITING = 1 << 3;
        /// NMIs are never blocked and "blocking by NMI" tracks virtual-NMI blocking.
        const VIRTUAL_NMIS = 1 << 5;
        /// The VMX-preemption timer counts down in VMX non-root operation.
        const VMX_PREEMPTION_TIMER = 1 << 6;
        /// Posted-interrupt processing.
        const PROCESS_POSTED_INTERRUPTS = 1 << 7;
    }
}

bitflags! {
    /// Primary processor-based VM-execution controls (SDM 25.6.2, table 25-6).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct PrimaryControls: u32 {
        /// Exit at the start of any instruction when RFLAGS.IF = 1 and no blocking.
        const INTERRUPT_WINDOW_EXITING = 1 << 2;
        /// Apply the TSC offset to RDTSC/RDTSCP/RDMSR(IA32_TSC).
        const USE_TSC_OFFSETTING = 1 << 3;
        /// HLT causes a VM exit.
        const HLT_EXITING = 1 << 7;
        /// INVLPG causes a VM exit.
        const INVLPG_EXITING = 1 << 9;
        /// MWAIT causes a VM exit.
        const MWAIT_EXITING = 1 << 10;
        /// RDPMC causes a VM exit.
        const RDPMC_EXITING = 1 << 11;
        /// RDTSC/RDTSCP cause VM exits.
        const RDTSC_EXITING = 1 << 12;
        /// MOV to CR3 causes a VM exit unless the value is a CR3-target value.
        const CR3_LOAD_EXITING = 1 << 15;
        /// MOV from CR3 causes a VM exit.
        const CR3_STORE_EXITING = 1 << 16;
        /// The tertiary processor-based controls are used.
        const ACTIVATE_TERTIARY_CONTROLS = 1 << 17;
        /// MOV to CR8 causes a VM exit.
        const CR8_LOAD_EXITING = 1 << 19;
        /// MOV from CR8 causes a VM exit.
        const CR8_STORE_EXITING = 1 << 20;
        /// TPR virtualization and other APIC-virtualization features.
        const USE_TPR_SHADOW = 1 << 21;
        /// Exit at the start of any instruction when there is no virtual-NMI blocking.
        const NMI_WINDOW_EXITING = 1 << 22;
        /// MOV DR causes a VM exit.
        const MOV_DR_EXITING = 1 << 23;
        /// Every I/O instruction causes a VM exit (ignored if I/O bitmaps are used).
        const UNCONDITIONAL_IO_EXITING = 1 << 24;
        /// I/O bitmaps restrict I/O instructions.
        const USE_IO_BITMAPS = 1 << 25;
        /// Monitor trap flag debugging feature.
        const MONITOR_TRAP_FLAG = 1 << 27;
        /// MSR bitmaps control RDMSR/WRMSR exiting.
        const USE_MSR_BITMAPS = 1 << 28;
        /// MONITOR causes a VM exit.
        const MONITOR_EXITING = 1 << 29;
        /// PAUSE causes a VM exit.
        const PAUSE_EXITING = 1 << 30;
        /// The secondary processor-based controls are used.
        const ACTIVATE_SECONDARY_CONTROLS = 1 << 31;
    }
}

bitflags! {
    /// Secondary processor-based VM-execution controls (SDM 25.6.2, table 25-7).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct SecondaryControls: u32 {
        /// Accesses to the APIC-access page are treated specially.
        const VIRTUALIZE_APIC_ACCESSES = 1 << 0;
        /// Extended page tables are used.
        const ENABLE_EPT = 1 << 1;
        /// LGDT/LIDT/LLDT/LTR/SGDT/SIDT/SLDT/STR cause VM exits.
        const DESCRIPTOR_TABLE_EXITING = 1 << 2;
        /// RDTSCP does not raise #UD.
        const ENABLE_RDTSCP = 1 << 3;
        /// x2APIC MSR accesses are virtualized.
        const VIRTUALIZE_X2APIC_MODE = 1 << 4;
        /// Cached translations are tagged with a VPID.
        const ENABLE_VPID = 1 << 5;
        /// WBINVD/WBNOINVD cause VM exits.
        const WBINVD_EXITING = 1 << 6;
        /// The guest may run in unpaged protected mode or real-address mode.
        const UNRESTRICTED_GUEST = 1 << 7;
        /// APIC-register virtualization.
        const APIC_REGISTER_VIRTUALIZATION = 1 << 8;
        /// Virtual-interrupt delivery.
        const VIRTUAL_INTERRUPT_DELIVERY = 1 << 9;
        /// A series of PAUSE instructions may cause a VM exit.
        const PAUSE_LOOP_EXITING = 1 << 10;
        /// RDRAND causes a VM exit.
        const RDRAND_EXITING = 1 << 11;
        /// INVPCID does not raise #UD.
        const ENABLE_INVPCID = 1 << 12;
        /// VMFUNC is enabled.
        const ENABLE_VM_FUNCTIONS = 1 << 13;
        /// VMREAD/VMWRITE in VMX non-root may access a shadow VMCS.
        const VMCS_SHADOWING = 1 << 14;
        /// ENCLS may cause VM exits.
        const ENABLE_ENCLS_EXITING = 1 << 15;
        /// RDSEED causes a VM exit.
        const RDSEED_EXITING = 1 << 16;
        /// Page-modification logging.
        const ENABLE_PML = 1 << 17;
        /// EPT violations may raise #VE instead of exiting.
        const EPT_VIOLATION_VE = 1 << 18;
        /// Intel PT suppresses VMX-related packets.
        const CONCEAL_VMX_FROM_PT = 1 << 19;
        /// XSAVES/XRSTORS do not raise #UD.
        const ENABLE_XSAVES_XRSTORS = 1 << 20;
        /// Mode-based execute control for EPT.
        const MODE_BASED_EXECUTE_CONTROL = 1 << 22;
        /// Sub-page write permissions for EPT.
        const SUB_PAGE_WRITE_PERMISSIONS = 1 << 23;
        /// Intel PT output addresses are guest-physical.
        const PT_USES_GUEST_PHYSICAL = 1 << 24;
        /// TSC scaling.
        const USE_TSC_SCALING = 1 << 25;
        /// TPAUSE/UMONITOR/UMWAIT do not raise #UD.
        const ENABLE_USER_WAIT_PAUSE = 1 << 26;
        /// ENCLV may cause VM exits.
        const ENABLE_ENCLV_EXITING = 1 << 28;
    }
}

bitflags! {
    /// Primary VM-exit controls (SDM 25.7.1, table 25-13).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct ExitControls: u32 {
        /// DR7 and IA32_DEBUGCTL are saved on exit.
        const SAVE_DEBUG_CONTROLS = 1 << 2;
        /// The host runs in 64-bit mode after the exit (must be 1 for a 64-bit host).
        const HOST_ADDRESS_SPACE_SIZE = 1 << 9;
        /// IA32_PERF_GLOBAL_CTRL is loaded on exit.
        const LOAD_PERF_GLOBAL_CTRL = 1 << 12;
        /// The interrupt controller is acknowledged on an external-interrupt exit.
        const ACK_INTERRUPT_ON_EXIT = 1 << 15;
        /// Guest IA32_PAT is saved on exit.
        const SAVE_PAT = 1 << 18;
        /// Host IA32_PAT is loaded on exit.
        const LOAD_PAT = 1 << 19;
        /// Guest IA32_EFER is saved on exit.
        const SAVE_EFER = 1 << 20;
        /// Host IA32_EFER is loaded on exit.
        const LOAD_EFER = 1 << 21;
        /// The VMX-preemption timer value is saved on exit.
        const SAVE_PREEMPTION_TIMER = 1 << 22;
        /// IA32_BNDCFGS is cleared on exit.
        const CLEAR_BNDCFGS = 1 << 23;
        /// Intel PT suppresses the VM-exit packets.
        const CONCEAL_VMX_FROM_PT = 1 << 24;
        /// IA32_RTIT_CTL is cleared on exit.
        const CLEAR_RTIT_CTL = 1 << 25;
        /// IA32_LBR_CTL is cleared on exit.
        const CLEAR_LBR_CTL = 1 << 26;
        /// UINV is cleared on exit.
        const CLEAR_UINV = 1 << 27;
        /// CET state is loaded on exit.
        const LOAD_CET_STATE = 1 << 28;
        /// IA32_PKRS is loaded on exit.
        const LOAD_PKRS = 1 << 29;
        /// Guest IA32_PERF_GLOBAL_CTL is saved on exit.
        const SAVE_PERF_GLOBAL_CTL = 1 << 30;
        /// The secondary VM-exit controls are used.
        const ACTIVATE_SECONDARY_CONTROLS = 1 << 31;
    }
}

bitflags! {
    /// VM-entry controls (SDM 25.8.1, table 25-15).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct EntryControls: u32 {
        /// DR7 and IA32_DEBUGCTL are loaded on entry.
        const LOAD_DEBUG_CONTROLS = 1 << 2;
        /// The guest runs in IA-32e mode after entry (IA32_EFER.LMA).
        const IA32E_MODE_GUEST = 1 << 9;
        /// Entry to SMM (dual-monitor treatment only).
        const ENTRY_TO_SMM = 1 << 10;
        /// Deactivate the dual-monitor treatment.
        const DEACTIVATE_DUAL_MONITOR = 1 << 11;
        /// IA32_PERF_GLOBAL_CTRL is loaded on entry.
        const LOAD_PERF_GLOBAL_CTRL = 1 << 13;
        /// IA32_PAT is loaded on entry.
        const LOAD_PAT = 1 << 14;
        /// IA32_EFER is loaded on entry.
        const LOAD_EFER = 1 << 15;
        /// IA32_BNDCFGS is loaded on entry.
        const LOAD_BNDCFGS = 1 << 16;
        /// Intel PT suppresses the VM-entry packets.
        const CONCEAL_VMX_FROM_PT = 1 << 17;
        /// IA32_RTIT_CTL is loaded on entry.
        const LOAD_RTIT_CTL = 1 << 18;
        /// UINV is loaded on entry.
        const LOAD_UINV = 1 << 19;
        /// CET state is loaded on entry.
        const LOAD_CET_STATE = 1 << 20;
        /// Guest IA32_LBR_CTL is loaded on entry.
        const LOAD_LBR_CTL = 1 << 21;
        /// IA32_PKRS is loaded on entry.
        const LOAD_PKRS = 1 << 22;
    }
}

//! The multiboot2 header and the 32-bit entry that takes the CPU to long mode.
//!
//! GRUB (BIOS or UEFI) enters `_start` in 32-bit protected mode with paging off, EAX holding the
//! multiboot2 magic and EBX the physical address of the boot information (Multiboot2 spec 3.2).
//! The entry identity-maps the first 4 GiB with 2 MiB pages, enables PAE, long mode (and NX when
//! the CPU has it) and paging, loads a minimal 64-bit GDT and calls `kmain(magic, info)` on the
//! boot stack. The kernel then replaces these tables and this GDT with its own (see `memory` and
//! `gdt`).
//!
//! Stacks live here too, each above a guard page that `memory` leaves unmapped, so an overflow
//! faults instead of corrupting what lies below.

/// Size of the boot processor's kernel stack.
pub const BOOT_STACK_SIZE: usize = 128 * 1024;
/// Size of each interrupt stack (double fault, NMI, machine check).
pub const IST_STACK_SIZE: usize = 16 * 1024;

core::arch::global_asm!(
    r#"
    .set MB2_MAGIC, 0xe85250d6
    .set MB2_ARCH_I386, 0
    .section .multiboot2, "a"
    .balign 8
mb2_header:
    .long MB2_MAGIC
    .long MB2_ARCH_I386
    .long mb2_header_end - mb2_header
    .long -(MB2_MAGIC + MB2_ARCH_I386 + (mb2_header_end - mb2_header))
    /* information request: command line, boot loader name, modules, memory map, ACPI RSDPs */
    .balign 8
    .short 1, 0
    .long 32
    .long 1, 2, 3, 6, 14, 15
    /* module alignment: modules page-aligned */
    .balign 8
    .short 6, 0
    .long 8
    /* end tag */
    .balign 8
    .short 0, 0
    .long 8
mb2_header_end:

    .section .bss.boot_tables, "aw", @nobits
    .balign 4096
boot_pml4: .skip 4096
boot_pdpt: .skip 4096
boot_pd:   .skip 4096 * 4

    .section .bss.stacks, "aw", @nobits
    .balign 4096
    .global boot_stack_guard, boot_stack_top
boot_stack_guard: .skip 4096
    .skip {boot_stack}
boot_stack_top:
    .global ist_stacks_start
ist_stacks_start:
    .global ist1_guard, ist1_top
ist1_guard: .skip 4096
    .skip {ist}
ist1_top:
    .global ist2_guard, ist2_top
ist2_guard: .skip 4096
    .skip {ist}
ist2_top:
    .global ist3_guard, ist3_top
ist3_guard: .skip 4096
    .skip {ist}
ist3_top:

    .section .rodata
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff  /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00cf92000000ffff  /* 0x10: data, DPL 0 */
boot_gdt_end:
boot_gdt_ptr:
    .short boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .boot.text, "ax"
    .code32
    .global _start
_start:
    cli
    cld
    movl $boot_stack_top, %esp
    movl %eax, %edi                 /* multiboot2 magic, first argument of kmain */
    movl %ebx, %esi                 /* boot information, second argument */

    /* Long mode present? CPUID.80000001h:EDX.LM[29]. Keep EDX in EBP for the NX check. */
    movl $0x80000000, %eax
    cpuid
    cmpl $0x80000001, %eax
    jb no_long_mode
    movl $0x80000001, %eax
    cpuid
    movl %edx, %ebp
    testl $(1 << 29), %edx
    jz no_long_mode

    /* PML4[0] -> PDPT, PDPT[0..4] -> four PDs, 2048 PD entries of 2 MiB: identity 0..4 GiB. */
    movl $boot_pdpt, %eax
    orl $0x3, %eax
    movl %eax, boot_pml4
    xorl %ecx, %ecx
1:  movl %ecx, %eax
    shll $12, %eax
    addl $boot_pd, %eax
    orl $0x3, %eax
    movl %eax, boot_pdpt(,%ecx,8)
    incl %ecx
    cmpl $4, %ecx
    jne 1b
    xorl %ecx, %ecx
2:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax                 /* present, writable, 2 MiB page */
    movl %eax, boot_pd(,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jne 2b

    movl %cr4, %eax
    orl $(1 << 5), %eax             /* PAE */
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3

    movl $0xc0000080, %ecx          /* IA32_EFER */
    rdmsr
    orl $(1 << 8), %eax             /* LME */
    testl $(1 << 20), %ebp          /* CPUID.80000001h:EDX.NX */
    jz 3f
    orl $(1 << 11), %eax            /* NXE */
3:  wrmsr

    movl %cr0, %eax
    orl $((1 << 31) | (1 << 16) | 1), %eax  /* PG, WP, PE */
    movl %eax, %cr0

    lgdt boot_gdt_ptr
    ljmp $0x08, $long_mode_entry

no_long_mode:
    /* Nothing can be logged yet: say "no long mode" on COM1 by hand and stop. */
    movl $no_lm_msg, %esi
4:  movb (%esi), %al
    testb %al, %al
    jz 5f
    movw $0x3f8, %dx
    outb %al, %dx
    incl %esi
    jmp 4b
5:  cli
    hlt
    jmp 5b

    .code64
long_mode_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movl %edi, %edi                 /* upper halves are undefined after the mode switch */
    movl %esi, %esi
    movabsq $boot_stack_top, %rsp
    xorl %ebp, %ebp
    call kmain
6:  cli
    hlt
    jmp 6b

    .section .rodata
no_lm_msg: .asciz "tensorvisor: this CPU has no long mode\r\n"
    .text
"#,
    boot_stack = const BOOT_STACK_SIZE,
    ist = const IST_STACK_SIZE,
    options(att_syntax)
);

// Symbols defined above, used to place guard pages and interrupt stacks.
unsafe extern "C" {
    pub static boot_stack_guard: u8;
    pub static ist1_guard: u8;
    pub static ist1_top: u8;
    pub static ist2_guard: u8;
    pub static ist2_top: u8;
    pub static ist3_guard: u8;
    pub static ist3_top: u8;
    pub static __kernel_start: u8;
    pub static __rodata_start: u8;
    pub static __data_start: u8;
    pub static __kernel_end: u8;
}

/// The address of a linker- or assembler-defined symbol.
macro_rules! symbol_addr {
    ($sym:ident) => {
        // Taking the address of an extern static is safe; nothing is read through it.
        core::ptr::addr_of!($crate::kernel::boot::$sym) as u64
    };
}
pub(crate) use symbol_addr;

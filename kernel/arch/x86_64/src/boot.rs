//! PVH entry: QEMU starts `pvh_start` in 32-bit protected mode with paging off and `%ebx`
//! pointing at the `hvm_start_info`. We zero .bss, build boot page tables that map the first
//! GiB both identically and at the kernel's link address (-2 GiB), enter long mode, jump to the
//! higher half and call [`crate::arch_boot`]. The final kernel page tables replace these in
//! `paging::init`.

use core::arch::global_asm;

/// Bytes of the boot (and later idle) stack.
pub const BOOT_STACK_SIZE: usize = 32 * 1024;

#[repr(C, align(4096))]
pub struct PageTable(pub [u64; 512]);

#[no_mangle]
pub static mut BOOT_PML4: PageTable = PageTable([0; 512]);
#[no_mangle]
static mut BOOT_PDPT_LOW: PageTable = PageTable([0; 512]);
#[no_mangle]
static mut BOOT_PDPT_HIGH: PageTable = PageTable([0; 512]);
#[no_mangle]
pub static mut BOOT_PD: PageTable = PageTable([0; 512]);

#[repr(C, align(16))]
pub struct Stack(pub [u8; BOOT_STACK_SIZE]);
#[no_mangle]
static mut BOOT_STACK: Stack = Stack([0; BOOT_STACK_SIZE]);

global_asm!(
    r#"
    .set KERNEL_VMA, 0xffffffff80000000

    .section .note.xen, "a"
    .p2align 2
    .long 4, 4, 18          /* name size, desc size, XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start

    .section .boot.data, "aw"
    .p2align 4
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00cf92000000ffff    /* 0x10: data, DPL 0 */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .section .boot.text, "ax"
    .code32
    .global pvh_start
pvh_start:
    cli
    cld
    mov %ebx, %esi                          /* hvm_start_info, kept in esi */

    /* zero .bss (page tables and stack live there) */
    mov $(__bss_start - KERNEL_VMA), %edi
    mov $(__bss_end - KERNEL_VMA), %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb

    /* PD: 512 × 2 MiB, present | writable | huge */
    mov $(BOOT_PD - KERNEL_VMA), %edi
    mov $0x83, %eax
    xor %ecx, %ecx
1:  mov %eax, (%edi,%ecx,8)
    add $0x200000, %eax
    inc %ecx
    cmp $512, %ecx
    jne 1b

    mov $(BOOT_PD - KERNEL_VMA + 3), %eax
    mov %eax, (BOOT_PDPT_LOW - KERNEL_VMA)
    mov %eax, (BOOT_PDPT_HIGH - KERNEL_VMA + 510 * 8)
    mov $(BOOT_PDPT_LOW - KERNEL_VMA + 3), %eax
    mov %eax, (BOOT_PML4 - KERNEL_VMA)
    mov $(BOOT_PDPT_HIGH - KERNEL_VMA + 3), %eax
    mov %eax, (BOOT_PML4 - KERNEL_VMA + 511 * 8)

    mov %cr4, %eax
    or $0x20, %eax                          /* PAE */
    mov %eax, %cr4
    mov $(BOOT_PML4 - KERNEL_VMA), %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx                   /* EFER: long mode, no-execute */
    rdmsr
    or $0x900, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80010001, %eax                    /* paging, write protect, protected mode */
    mov %eax, %cr0

    lgdt boot_gdt_ptr
    ljmp $0x08, $long_mode

    .code64
long_mode:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    movabs $higher_half, %rax
    jmp *%rax

    .section .text
higher_half:
    movabs $(BOOT_STACK + {stack_size}), %rsp
    xor %ebp, %ebp
    mov %esi, %edi                          /* arg 0: start info (physical) */
    call arch_boot
2:  hlt
    jmp 2b
    "#,
    stack_size = const BOOT_STACK_SIZE,
    options(att_syntax)
);

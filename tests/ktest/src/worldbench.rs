//! Reflection in a guest world (`abi::vcpu`), the vCPU path L4Linux runs on. System calls: the
//! user task's `syscall` reaches the guest kernel's entry at level 1 in the user task's own
//! address space, and its `VcpuResume` goes back there, both through the kernel's trampoline
//! without an address-space switch (`vcpu_syscall_reflect`). Page faults: forwarded by the
//! trampoline too, answered by a `VcpuResume` with a map item, which the kernel carries out
//! (`vcpu_pagefault_reflect`). The same loops as `vcpubench`'s, whose classic vCPU (the guest
//! kernel in its own task) reports `vcpu_syscall_reflect_classic` and
//! `vcpu_pagefault_reflect_classic`.

use crate::objects::{ok, stack_top, R};
use crate::vcpubench::{FAULT_PAGES, SYSCALLS, WARM_FAULTS, WARM_SYSCALLS};
use abi::cap::well_known as wk;
use abi::kip::BOOT_UTCB_ADDR;
use abi::proto::{self, fpage::Fpage};
use abi::syscall::timeout;
use abi::vcpu::{off, state, trap, VcpuRegs, VcpuState};
use abi::{CapIdx, MsgTag, Rights};
use core::sync::atomic::{AtomicU64, Ordering};
use l4::ipc::{factory, scheduler, semaphore, task, thread};
use l4::println;

const VCPU: CapIdx = CapIdx(124);
const USER: CapIdx = CapIdx(125);
const DONE: CapIdx = CapIdx(126);
/// The guest region, a whole slot: ktest's UTCB area (and so the vCPU's UTCB and state area)
/// lies in slot 255.
const SLOT: u64 = 255;
const VCPU_UTCB: u64 = BOOT_UTCB_ADDR + 12 * 1024;
const VCPU_STATE: u64 = BOOT_UTCB_ADDR + 13 * 1024;
/// Where the guest kernel's entry page is mapped, in the guest slot.
const GUEST_CODE: u64 = SLOT << 39;

core::arch::global_asm!(
    r#"
    /* The guest kernel's entry (rdi = state area), at level 1 in the user task's world: this
       page is mapped at GUEST_CODE, so it uses no address of its own. System call 9 is
       answered at once, a page fault by mapping PAGE at its address. The user task (vcpubench's)
       reports twice by system call 3: the first report is kept in its r14, which it does not
       use, and it goes on; at the second, and at anything unexpected, the vCPU continues in
       our own task, at wbench_done(system-call cycles or 0, page-fault cycles). Each upcall is
       counted in the state area's irq_label word (this vCPU has no interrupts). */
    .section .text.wbench, "ax"
    .p2align 12
    .global wbench_page
wbench_page:
    inc qword ptr [rdi + {irq_label}]
    cmp qword ptr [rdi + {trapno}], 14
    je 4f
    cmp qword ptr [rdi + {trapno}], {syscall}
    jne 2f
    cmp qword ptr [rdi + {rax}], 9
    jne 1f
    mov qword ptr [rdi + {saved_state}], {user_mode}
    mov qword ptr [rdi + {user_task}], {user}
    movabs rax, {utcb}
    mov qword ptr [rax], {resume_op}
    mov rdx, {vcpu_call}
    movabs rax, {resume_tag}
    xor r8, r8
    syscall
    ud2
1:  cmp qword ptr [rdi + {rax}], 3
    jne 2f
    mov rax, [rdi + {rdi_}]
    cmp qword ptr [rdi + {r14}], 0
    jne 6f
    mov [rdi + {r14}], rax
    mov qword ptr [rdi + {saved_state}], {user_mode}
    mov qword ptr [rdi + {user_task}], {user}
    movabs r9, {resume_tag}
    jmp 5f
6:  mov [rdi + {rsi_}], rax
    mov rax, [rdi + {r14}]
    jmp 3f
2:  xor eax, eax
3:  mov [rdi + {rdi_}], rax
    movabs rax, offset {done}
    mov [rdi + {rip}], rax
    mov rax, [rdi + {entry_sp}]
    mov [rdi + {rsp}], rax
    mov qword ptr [rdi + {rflags}], 0x202
    movabs rax, {utcb}
    mov [rdi + {gs}], rax
    mov qword ptr [rdi + {fs}], 0
    mov qword ptr [rdi + {saved_state}], 0
    movabs r9, {resume_tag}
    jmp 5f
4:  mov qword ptr [rdi + {saved_state}], {user_mode}
    mov qword ptr [rdi + {user_task}], {user}
    movabs rax, {utcb}
    mov rcx, [rdi + {pfa}]
    and rcx, -4096
    or rcx, {map_item}
    mov [rax + 8], rcx
    movabs rcx, offset {page}
    or rcx, {page_fpage}
    mov [rax + 16], rcx
    movabs r9, {resume_map_tag}
    /* VcpuResume with tag r9 */
5:  movabs rax, {utcb}
    mov qword ptr [rax], {resume_op}
    mov rdx, {vcpu_call}
    mov rax, r9
    xor r8, r8
    syscall
    ud2
    .p2align 12
"#,
    trapno = const off::TRAPNO * 8,
    pfa = const off::PFA * 8,
    map_item = const proto::map::ITEM,
    page = sym PAGE,
    page_fpage = const Fpage::memory(0, 12, Rights::ALL).0,
    resume_map_tag = const MsgTag::new(proto::thread::LABEL, 1, 1, 0).0,
    syscall = const trap::SYSCALL,
    rax = const off::REGS * 8,
    rsi_ = const (off::REGS + 4) * 8,
    rdi_ = const (off::REGS + 5) * 8,
    r14 = const (off::REGS + 13) * 8,
    rip = const (off::REGS + 15) * 8,
    rsp = const (off::REGS + 16) * 8,
    rflags = const (off::REGS + 17) * 8,
    fs = const (off::REGS + 18) * 8,
    gs = const (off::REGS + 19) * 8,
    saved_state = const off::SAVED_STATE * 8,
    user_mode = const state::USER_MODE,
    user_task = const off::USER_TASK * 8,
    user = const USER.0,
    utcb = const VCPU_UTCB,
    resume_op = const proto::thread::Op::VcpuResume.code(),
    vcpu_call = const VCPU_CALL,
    resume_tag = const RESUME_TAG,
    done = sym wbench_done,
    entry_sp = const off::ENTRY_SP * 8,
    irq_label = const off::IRQ_LABEL * 8,
);

const VCPU_CALL: u64 = abi::CapSel::from_idx(VCPU).raw() | abi::syscall::Flags::CALL.bits();
const RESUME_TAG: u64 = MsgTag::new(proto::thread::LABEL, 1, 0, 0).0;

extern "C" {
    fn wbench_page();
}

/// The cycles of the system-call loop and of the page-fault loop.
static RESULT: [AtomicU64; 2] = [const { AtomicU64::new(u64::MAX) }; 2];

#[repr(C, align(4096))]
struct Page([u8; 4096]);
/// What the guest kernel maps at each faulting address (writable, in .bss).
static mut PAGE: Page = Page([0; 4096]);

/// The guest kernel's own context after the report: level 1, in our own task's world.
extern "C" fn wbench_done(cycles: u64, fault_cycles: u64) -> ! {
    RESULT[0].store(cycles, Ordering::SeqCst);
    RESULT[1].store(fault_cycles, Ordering::SeqCst);
    let _ = semaphore::up(DONE);
    loop {
        let _ = l4::ipc::wait(0);
    }
}

fn vstate() -> &'static mut VcpuState {
    // SAFETY: the state area lies in our UTCB area, mapped for the task's lifetime; only the
    // benchmark's vCPU thread uses it, and only after we set it up here.
    unsafe { &mut *(VCPU_STATE as *mut VcpuState) }
}

/// The vCPU's first context (an ordinary one, in our task): into the user task.
extern "C" fn wbench_start() -> ! {
    crate::vcpu::resume_user(VCPU, vstate(), USER, state::USER_MODE, 0)
}

/// Makes `vcpu` (UTCB `utcb`, in our task) a vCPU with state area `state` whose guest runs in
/// guest worlds of region slot 255 (where our UTCB area lies); `handler` takes its faults and
/// exceptions as pager and exception handler.
pub(crate) fn world_vcpu(vcpu: CapIdx, utcb: u64, state: u64, handler: Option<CapIdx>) -> R {
    use proto::thread_control as tc;
    ok(factory::thread(wk::FACTORY, vcpu), "vcpu thread")?;
    let (flags, h) = match handler {
        Some(h) => (tc::BIND_TASK | tc::SET_PAGER | tc::SET_EXC_HANDLER, h),
        None => (tc::BIND_TASK, CapIdx(0)),
    };
    ok(thread::control(vcpu, flags, h, h, wk::TASK, utcb), "bind")?;
    let region = Fpage::memory(SLOT << 39, 39, Rights::ALL).0;
    ok(
        l4::sys::call_words(
            vcpu,
            proto::thread::LABEL,
            &[proto::thread::Op::VcpuControl.code(), state, region],
        ),
        "vcpu control with a guest world",
    )
    .map(|_| ())
}

pub fn run() -> R {
    let (code, end) = crate::vcpubench::user_code();
    crate::vcpu::user_task(USER, code, end)?;
    let entry = wbench_page as *const () as u64;
    ok(
        task::map(wk::TASK, wk::TASK, Fpage::memory(entry, 12, Rights::from_bits_truncate(5)), GUEST_CODE),
        "map the guest entry into the guest slot",
    )?;
    ok(factory::semaphore(wk::FACTORY, DONE, 0), "done")?;
    world_vcpu(VCPU, VCPU_UTCB, VCPU_STATE, None)?;
    let st = vstate();
    st.entry_ip = GUEST_CODE;
    st.entry_sp = stack_top(5);
    st.regs = VcpuRegs {
        rip: code,
        rsp: 0,
        rflags: 0x202,
        rdi: SYSCALLS,
        rsi: FAULT_PAGES,
        rdx: WARM_SYSCALLS,
        ..Default::default()
    };
    ok(thread::ex_regs(VCPU, wbench_start as *const () as u64, stack_top(5), 0), "ex_regs")?;
    ok(scheduler::run_thread(wk::SCHEDULER, VCPU, 100, 1, 0), "run")?;
    ok(semaphore::down(DONE, timeout::pack(0, 20_000_000)), "reflection in a guest world runs")?;
    let upcalls = vstate().irq_label;
    let expected = WARM_SYSCALLS + SYSCALLS + WARM_FAULTS + FAULT_PAGES + 2;
    match RESULT[0].load(Ordering::SeqCst) {
        0 => Err("the guest kernel got an unexpected event"),
        _ if upcalls != expected => {
            println!("wbench: {upcalls} upcalls, {expected} expected");
            Err("the guest kernel did not see every system call and page fault")
        }
        c => {
            println!("BENCH vcpu_syscall_reflect {} cycles", c / SYSCALLS);
            println!(
                "BENCH vcpu_pagefault_reflect {} cycles",
                RESULT[1].load(Ordering::SeqCst) / FAULT_PAGES
            );
            Ok(())
        }
    }
}

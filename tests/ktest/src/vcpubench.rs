//! vCPU benchmarks (part of `ktest bench`) of the classic vCPU (its guest kernel in its own
//! task): system-call reflection (user task `syscall` → upcall → `VcpuResume`) and page-fault
//! reflection with map-on-resume, reported as `vcpu_syscall_reflect_classic` and
//! `vcpu_pagefault_reflect_classic` (without the suffix: the guest-world path L4Linux runs on,
//! `worldbench`), and timer IRQ latency.

use crate::objects::{ok, stack_top, R};
use abi::cap::well_known as wk;
use abi::kip::BOOT_UTCB_ADDR;
use abi::proto::{self, fpage::Fpage};
use abi::syscall::timeout;
use abi::vcpu::{off, state, trap, VcpuRegs, VcpuState};
use abi::{CapIdx, MsgTag, Rights};
use core::sync::atomic::{AtomicU64, Ordering};
use l4::ipc::{factory, irq, put_map_item, scheduler, semaphore, thread};
use l4::println;

const VCPU: CapIdx = CapIdx(120);
const USER: CapIdx = CapIdx(121);
const DONE: CapIdx = CapIdx(122);
const TIMER: CapIdx = CapIdx(123);
/// UTCB and state area in one page, as L4Linux has them: the kernel reads both on every
/// `VcpuResume`, and under TCG each page is a TLB refill after the address-space switch.
const VCPU_UTCB: u64 = BOOT_UTCB_ADDR + 10 * 1024;
const VCPU_STATE: u64 = BOOT_UTCB_ADDR + 11 * 1024;
pub(crate) const SYSCALLS: u64 = 2000;
/// System calls reflected before the timed ones, ~150 ms: QEMU sizes its software TLB by the
/// use of the last 100 ms and clears all of it at every address-space switch, so right after
/// a burst that touched many pages each switch costs more (as in `bench::SETTLE_MS`).
pub(crate) const WARM_SYSCALLS: u64 = 25_000;
pub(crate) const FAULT_PAGES: u64 = 256;
/// Page faults before the timed ones.
pub(crate) const WARM_FAULTS: u64 = 32;
/// The user task's first faulting address.
const FAULT_BASE: u64 = 0x4000_0000;

core::arch::global_asm!(
    r#"
    /* r13 = the time-stamp counter */
    .macro ubench_start
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov r13, rax
    .endm
    /* reports the cycles since ubench_start to the guest kernel (system call 3) */
    .macro ubench_report
    rdtsc
    shl rdx, 32
    or rax, rdx
    sub rax, r13
    mov rdi, rax
    mov eax, 3
    syscall
    .endm

    .section .text.ubench, "ax"
    .p2align 12
    .global ubench_entry
ubench_entry:
    /* rdx system calls first, not timed: the steady state (see WARM_SYSCALLS) */
0:  mov eax, 9
    syscall
    dec rdx
    jnz 0b
    mov r12, rdi
    ubench_start
1:  mov eax, 9
    syscall
    dec r12
    jnz 1b
    ubench_report
    /* page faults on fresh pages: WARM_FAULTS first, not timed (their first run translates
       the fault path's code), then rsi timed ones */
    mov r15, {fault_base}
    mov r12, {warm_faults}
4:  mov byte ptr [r15], 1
    add r15, 4096
    dec r12
    jnz 4b
    mov r12, rsi
    ubench_start
2:  mov byte ptr [r15], 1
    add r15, 4096
    dec r12
    jnz 2b
    ubench_report
3:  pause
    jmp 3b
    .p2align 12
    .global ubench_end
ubench_end:

    /* The upcall entry (rdi = state area). The system call being measured (rax 9) is
       answered here, touching only this code, the state area and the UTCB, as a guest
       kernel's fast path would: `vcpu_syscall_reflect_classic` then measures the kernel's part.
       Everything else goes to `vbench_upcall`. */
    .section .text
    .global vbench_entry
vbench_entry:
    cmp qword ptr [rdi + {trapno}], {syscall}
    jne 1f
    cmp qword ptr [rdi + {rax}], 9
    jne 1f
    mov qword ptr [rdi + {saved_state}], {user_mode}
    mov qword ptr [rdi + {user_task}], {user}
    mov qword ptr gs:[0], {resume_op}
    mov rdx, {vcpu_call}
    mov rax, {resume_tag}
    xor r8, r8
    syscall
1:  and rsp, -16
    call vbench_upcall
    ud2
"#,
    fault_base = const FAULT_BASE,
    warm_faults = const WARM_FAULTS,
    trapno = const off::TRAPNO * 8,
    syscall = const trap::SYSCALL,
    rax = const off::REGS * 8,
    saved_state = const off::SAVED_STATE * 8,
    user_mode = const state::USER_MODE,
    user_task = const off::USER_TASK * 8,
    user = const USER.0,
    resume_op = const proto::thread::Op::VcpuResume.code(),
    vcpu_call = const VCPU_CALL,
    resume_tag = const RESUME_TAG,
);

/// `VcpuResume` without map items, as `vbench_entry` issues it.
const VCPU_CALL: u64 = abi::CapSel::from_idx(VCPU).raw() | abi::syscall::Flags::CALL.bits();
const RESUME_TAG: u64 = MsgTag::new(proto::thread::LABEL, 1, 0, 0).0;

extern "C" {
    fn ubench_entry();
    fn ubench_end();
    fn vbench_entry();
}

static RESULTS: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
static PHASE: AtomicU64 = AtomicU64::new(0);
static TIMER_DUE: AtomicU64 = AtomicU64::new(0);
/// Timer interrupts measured; `timer_irq_latency` is the median of all but the first.
const TIMER_IRQS: usize = 8;
static IRQS: AtomicU64 = AtomicU64::new(0);
static LATE: [AtomicU64; TIMER_IRQS] = [const { AtomicU64::new(0) }; TIMER_IRQS];

/// How far ahead each measured one-shot timer is set.
const TIMER_US: u64 = 1000;

/// Timer latency: a one-shot timer [`TIMER_US`] ahead, while the task spins with IRQs enabled.
fn arm_timer() {
    TIMER_DUE.store(l4::sys::cycles() + l4::kip().tsc_hz * TIMER_US / 1_000_000, Ordering::SeqCst);
    let _ = l4::sys::call_words(TIMER, proto::irq::LABEL, &[proto::irq::Op::SetTimer.code(), TIMER_US, 1]);
}

#[repr(C, align(4096))]
struct Page([u8; 4096]);
/// Writable (in .bss), so that it can be mapped writable into the user task.
static mut PAGE: Page = Page([0; 4096]);

fn vstate() -> &'static mut VcpuState {
    // SAFETY: the state area lies in our UTCB area, mapped for the task's lifetime; only the
    // benchmark's vCPU thread uses it.
    unsafe { &mut *(VCPU_STATE as *mut VcpuState) }
}

/// Continues the saved context with `items` map items and `state` flags.
fn resume(items: u64, flags: u64) -> ! {
    crate::vcpu::resume_user(VCPU, vstate(), USER, flags, items)
}

#[no_mangle]
extern "C" fn vbench_upcall(st: *mut VcpuState) -> ! {
    // SAFETY: the kernel passes the state area's address.
    let st = unsafe { &mut *st };
    let regs = st.regs;
    match (regs.trapno, regs.rax) {
        (trap::SYSCALL, 9) => resume(0, state::USER_MODE),
        (trap::SYSCALL, 3) => {
            let phase = PHASE.fetch_add(1, Ordering::SeqCst) as usize;
            RESULTS[phase].store(regs.rdi, Ordering::SeqCst);
            if phase == 0 {
                resume(0, state::USER_MODE)
            }
            let _ = semaphore::up(DONE);
            arm_timer();
            resume(0, state::USER_MODE | state::IRQ)
        }
        (14, _) => {
            // SAFETY: only the address of the page is taken.
            let page = &raw const PAGE as u64;
            put_map_item(1, regs.pfa & !0xfff, Fpage::memory(page, 12, Rights::ALL), false);
            resume(1, state::USER_MODE)
        }
        (trap::IRQ, _) => {
            let late = l4::sys::cycles().saturating_sub(TIMER_DUE.load(Ordering::SeqCst));
            let n = IRQS.fetch_add(1, Ordering::SeqCst) as usize;
            LATE[n].store(late, Ordering::SeqCst);
            if n + 1 < TIMER_IRQS {
                arm_timer();
                resume(0, state::USER_MODE | state::IRQ)
            }
            // The first upcall runs this path's code for the first time: under TCG it pays for
            // translating it (~0.3 ms), which is not what the metric is about.
            let mut warm: [u64; TIMER_IRQS - 1] =
                core::array::from_fn(|i| LATE[i + 1].load(Ordering::SeqCst));
            warm.sort_unstable();
            RESULTS[2].store(warm[warm.len() / 2], Ordering::SeqCst);
            let _ = semaphore::up(DONE);
            loop {
                let _ = l4::ipc::wait(0);
            }
        }
        _ => {
            println!("vbench: unexpected trap {:#x} at {:#x}", regs.trapno, regs.rip);
            loop {
                let _ = l4::ipc::wait(0);
            }
        }
    }
}

extern "C" fn vbench_start() -> ! {
    resume(0, state::USER_MODE)
}

/// The benchmarks' user code, `[start, end)` (also `worldbench`'s): system calls, page
/// faults and two reports.
pub(crate) fn user_code() -> (u64, u64) {
    (ubench_entry as *const () as u64, ubench_end as *const () as u64)
}

pub fn run() -> R {
    let (code, end) = user_code();
    crate::vcpu::user_task(USER, code, end)?;
    ok(factory::semaphore(wk::FACTORY, DONE, 0), "done")?;
    ok(factory::irq(wk::FACTORY, TIMER), "timer")?;
    crate::vcpu::vcpu_thread(VCPU, VCPU_UTCB, VCPU_STATE)?;
    ok(irq::attach(TIMER, VCPU, 1), "attach")?;
    let st = vstate();
    st.entry_ip = vbench_entry as *const () as u64;
    st.entry_sp = stack_top(4);
    st.regs = VcpuRegs {
        rip: code,
        rsp: 0x6000_0000,
        rflags: 0x202,
        rdi: SYSCALLS,
        rsi: FAULT_PAGES,
        rdx: WARM_SYSCALLS,
        ..Default::default()
    };
    ok(thread::ex_regs(VCPU, vbench_start as *const () as u64, stack_top(4), 0), "ex_regs")?;
    ok(scheduler::run_thread(wk::SCHEDULER, VCPU, 100, 1, 0), "run")?;
    ok(semaphore::down(DONE, timeout::pack(0, 20_000_000)), "reflection runs")?;
    ok(semaphore::down(DONE, timeout::pack(0, 1_000_000)), "timer upcall")?;
    println!("BENCH vcpu_syscall_reflect_classic {} cycles", RESULTS[0].load(Ordering::SeqCst) / SYSCALLS);
    println!(
        "BENCH vcpu_pagefault_reflect_classic {} cycles",
        RESULTS[1].load(Ordering::SeqCst) / FAULT_PAGES
    );
    println!("BENCH timer_irq_latency {} cycles", RESULTS[2].load(Ordering::SeqCst));
    Ok(())
}

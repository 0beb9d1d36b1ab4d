//! Guest worlds keep their promises (`abi::vcpu`): in the user task's world, the user task
//! cannot reach the guest kernel's slot (its access is an upcall to the guest), and the guest
//! kernel at level 1 cannot read the kernel's direct map, cannot write the kernel's tables it
//! may read, and cannot run privileged instructions: each is a fault of the vCPU thread,
//! reported to its pager or exception handler, as any thread's.

use crate::objects::{ok, stack_top, R};
use abi::cap::well_known as wk;
use abi::kip::BOOT_UTCB_ADDR;
use abi::proto::{self, exc_regs, fpage::Fpage};
use abi::syscall::timeout;
use abi::vcpu::{off, state, VcpuRegs, VcpuState};
use abi::{CapIdx, MsgTag, Rights};
use core::sync::atomic::{AtomicU64, Ordering};
use l4::ipc::{factory, mr, scheduler, semaphore, task, thread};
use l4::println;

const VCPU: CapIdx = CapIdx(127);
const USER: CapIdx = CapIdx(128);
const DONE: CapIdx = CapIdx(129);
const HOLD: CapIdx = CapIdx(130);
const HANDLER: CapIdx = CapIdx(131);
const GATE: CapIdx = CapIdx(132);
const VCPU_UTCB: u64 = BOOT_UTCB_ADDR + 14 * 1024;
const VCPU_STATE: u64 = BOOT_UTCB_ADDR + 15 * 1024;
/// The guest kernel's code and data pages, in the guest slot.
const GUEST_CODE: u64 = (255 << 39) + 0x10_0000;
const GUEST_DATA: u64 = GUEST_CODE + 0x1000;
const DIRECT_BASE: u64 = 0xffff_8000_0000_0000;

core::arch::global_asm!(
    r#"
    /* The user task: reads the guest kernel's code. */
    .section .text.wuser, "ax"
    .p2align 12
    .global wtest_user
wtest_user:
    movabs rax, {guest_code}
    mov rax, [rax]
    ud2
    .p2align 12

    /* The guest kernel (this page at GUEST_CODE, level 1, in the user task's world). The
       upcall for the user task's access first: its trap number and address go to DATA. Then
       the probes; its fault handler in ktest moves it from each fault to the next label. */
    .section .text.wguest, "ax"
    .p2align 12
    .global wtest_guest
wtest_guest:
    movabs rbx, {guest_data}
    mov rax, [rdi + {trapno}]
    mov [rbx], rax
    mov rax, [rdi + {pfa}]
    mov [rbx + 8], rax
    mov rax, [rdi + {err}]
    mov [rbx + 48], rax
    mov rax, [rdi + {rip}]
    mov [rbx + 56], rax
    movabs rax, {direct}
    mov rax, [rax]
    ud2
    .global wtest_probe_idt
wtest_probe_idt:
    movabs rbx, {guest_data}
    sidt [rbx + 16]
    mov rax, [rbx + 18]
    mov rcx, [rax]
    mov [rbx + 32], rcx
    mov qword ptr [rbx + 40], 1
    mov [rax], rcx
    ud2
    .global wtest_probe_cr3
wtest_probe_cr3:
    mov rax, cr3
    ud2
    .global wtest_done
wtest_done:
    movabs rax, {utcb}
    mov qword ptr [rax], {up}
    mov rdx, {done_call}
    movabs rax, {sem_tag}
    xor r8, r8
    syscall
    movabs rax, {utcb}
    mov qword ptr [rax], {down}
    mov rdx, {hold_call}
    movabs rax, {sem_tag}
    xor r8, r8
    syscall
    ud2
    .p2align 12
"#,
    guest_code = const GUEST_CODE,
    guest_data = const GUEST_DATA,
    direct = const DIRECT_BASE,
    trapno = const off::TRAPNO * 8,
    pfa = const off::PFA * 8,
    err = const off::ERR * 8,
    rip = const (off::REGS + 15) * 8,
    utcb = const VCPU_UTCB,
    up = const proto::semaphore::Op::Up.code(),
    down = const proto::semaphore::Op::Down.code(),
    done_call = const abi::CapSel::from_idx(DONE).raw() | abi::syscall::Flags::CALL.bits(),
    hold_call = const abi::CapSel::from_idx(HOLD).raw() | abi::syscall::Flags::CALL.bits(),
    sem_tag = const MsgTag::new(proto::semaphore::LABEL, 1, 0, 0).0,
);

extern "C" {
    fn wtest_user();
    fn wtest_guest();
    fn wtest_probe_idt();
    fn wtest_probe_cr3();
    fn wtest_done();
}

/// What the guest kernel writes (mapped at GUEST_DATA too).
#[repr(C, align(4096))]
struct Data([u64; 512]);
static mut DATA: Data = Data([0; 512]);

/// The faults the handler saw: (kind: 1 page fault, 2 exception; address or trap number).
static FAULTS: [(AtomicU64, AtomicU64); 3] = [const { (AtomicU64::new(0), AtomicU64::new(0)) }; 3];

/// The address in the guest slot of `f`, a label in the guest kernel's page.
fn in_guest(f: unsafe extern "C" fn()) -> u64 {
    GUEST_CODE + (f as *const () as u64 - wtest_guest as *const () as u64)
}

/// The vCPU's pager and exception handler: notes each fault and moves it on to the next probe.
extern "C" fn handler() -> ! {
    let mut n = 0;
    l4::ipc::server_loop(|msg| {
        let Ok((t, _)) = msg else { return None };
        let (kind, what) = match t.label() {
            proto::event::PAGE_FAULT => (1, mr(0)),
            proto::event::EXCEPTION => (2, mr(exc_regs::TRAPNO)),
            _ => return Some(MsgTag::new(0, 0, 0, 0)),
        };
        if let Some(f) = FAULTS.get(n) {
            f.0.store(kind, Ordering::SeqCst);
            f.1.store(what, Ordering::SeqCst);
        }
        let next = [wtest_probe_idt, wtest_probe_cr3, wtest_done][n.min(2)];
        n += 1;
        let _ = thread::ex_regs(VCPU, in_guest(next), u64::MAX, 0);
        Some(MsgTag::new(0, 0, 0, 0))
    })
}

fn vstate() -> &'static mut VcpuState {
    // SAFETY: the state area lies in our UTCB area, mapped for the task's lifetime; only this
    // test's vCPU thread uses it, after we set it up.
    unsafe { &mut *(VCPU_STATE as *mut VcpuState) }
}

/// The vCPU's first context (an ordinary one, in our task): into the user task.
extern "C" fn start() -> ! {
    crate::vcpu::resume_user(VCPU, vstate(), USER, state::USER_MODE, 0)
}

pub fn run() -> R {
    let rx = Rights::from_bits_truncate(5);
    ok(factory::task(wk::FACTORY, USER, Fpage::memory(0x7fff_ff00_0000, 12, Rights::ALL)), "user task")?;
    let user_code = wtest_user as *const () as u64;
    ok(task::map(USER, wk::TASK, Fpage::memory(user_code, 12, rx), user_code), "map user code")?;
    let guest = wtest_guest as *const () as u64;
    ok(task::map(wk::TASK, wk::TASK, Fpage::memory(guest, 12, rx), GUEST_CODE), "guest code")?;
    let data = &raw const DATA as u64;
    ok(task::map(wk::TASK, wk::TASK, Fpage::memory(data, 12, Rights::ALL), GUEST_DATA), "guest data")?;
    ok(factory::semaphore(wk::FACTORY, DONE, 0), "done")?;
    ok(factory::semaphore(wk::FACTORY, HOLD, 0), "hold")?;
    crate::objects::spawn(HANDLER, wk::TASK, BOOT_UTCB_ADDR + 4 * 1024, handler, 6, 110)?;
    ok(factory::gate(wk::FACTORY, GATE, HANDLER, 0), "handler gate")?;
    crate::worldbench::world_vcpu(VCPU, VCPU_UTCB, VCPU_STATE, Some(GATE))?;
    let st = vstate();
    (st.entry_ip, st.entry_sp, st.user_task, st.saved_state) =
        (GUEST_CODE, stack_top(7), USER.0, state::USER_MODE);
    st.regs = VcpuRegs { rip: user_code, rsp: 0, rflags: 0x202, ..Default::default() };
    ok(thread::ex_regs(VCPU, start as *const () as u64, stack_top(7), 0), "ex_regs")?;
    ok(scheduler::run_thread(wk::SCHEDULER, VCPU, 90, 1, 0), "run")?;
    ok(semaphore::down(DONE, timeout::pack(0, 5_000_000)), "the guest kernel finishes its probes")?;
    let data = &raw const DATA;
    // SAFETY: the guest kernel wrote DATA before signalling DONE and is blocked now.
    let d = unsafe { (*data).0 };
    let fault = |i: usize| (FAULTS[i].0.load(Ordering::SeqCst), FAULTS[i].1.load(Ordering::SeqCst));
    let idt = d[2] >> 16 | d[3] << 48;
    let checks = [
        ((d[0], d[1]) == (14, GUEST_CODE), "the user task reached the guest kernel's slot"),
        // A read (bit 1 clear) in user mode (bit 2) of a present page (bit 0), at the `mov`
        // after the 10-byte `movabs`.
        ((d[6], d[7]) == (5, user_code + 10), "the user task's page fault reached its guest wrongly"),
        (fault(0) == (1, DIRECT_BASE), "the guest kernel read the kernel's direct map"),
        (d[5] == 1 && d[4] != 0, "the guest kernel could not read the IDT the CPU needs there"),
        (fault(1) == (1, idt | 2), "the guest kernel wrote the kernel's IDT"),
        (fault(2) == (2, 13), "the guest kernel ran a privileged instruction"),
    ];
    for (good, what) in checks {
        if !good {
            println!("world: data {:x?} faults {:x?}", &d[..8], [fault(0), fault(1), fault(2)]);
            return Err(what);
        }
    }
    println!("guest world isolation ok");
    Ok(())
}

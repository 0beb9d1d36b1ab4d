// SPDX-License-Identifier: GPL-2.0
/*
 * os-L4: Linux processes and Linux's own threads.
 *
 * A process's address space is an L4 task (its capability slot is the mm's "pid"); UML's
 * page-table sync maps pages of Linux's RAM into it (map/unmap/protect). Running a process is
 * a vCPU resume into that task, made as a call that returns with the process's next event
 * (system call, fault, interrupt): its upcall enters on this stack (lx_vcpu_enter in the Rust
 * half). Linux's kernel threads switch with setjmp/longjmp on their stacks, as in UML.
 */
#include <linux/kernel.h>
#include <linux/mm.h>
#include <linux/sched.h>
#include <linux/signal.h>
#include <linux/string.h>
#include <asm/pgtable.h>
#include <as-layout.h>
#include <kern_util.h>
#include <longjmp.h>
#include <mem.h>
#include <os.h>
#include <registers.h>
#include <skas.h>
#include <skas/mm_id.h>
#include <sysdep/ptrace.h>
#include <sysdep/ptrace_user.h>
#include "lx_arch.h"

/* The Rust half reads regs->gp in the ptrace order: check it against UML's own numbers. */
static_assert(HOST_R15 == 0 && HOST_BP == 4 && HOST_AX == 10 && HOST_ORIG_AX == 15);
static_assert(HOST_IP == 16 && HOST_EFLAGS == 18 && HOST_SP == 19);
static_assert(HOST_FS_BASE == 21 && HOST_GS_BASE == 22 && MAX_REG_NR == 27);
static_assert(HOST_FP_SIZE * sizeof(long) >= 512);

/* userspace_pid is defined in lx-arch's vcpu::HOT, with the other variables every event touches. */

int start_userspace(unsigned long stub_stack)
{
	int task = lx_task_create();

	if (task < 0)
		printk(KERN_ERR "os-L4: no task for a new process: %d\n", task);
	return task;
}

void os_kill_ptraced_process(int pid, int reap_child)
{
	lx_task_delete(pid);
}

void __switch_mm(struct mm_id *mm_idp)
{
	userspace_pid[0] = mm_idp->pid;
}

int map(struct mm_id *mm_idp, unsigned long virt, unsigned long len, int prot,
	int phys_fd, unsigned long long offset)
{
	return lx_task_map(mm_idp->pid, virt, uml_physmem + offset, len, prot);
}

int unmap(struct mm_id *mm_idp, unsigned long addr, unsigned long len)
{
	return lx_task_unmap(mm_idp->pid, addr, len);
}

/* The page-table entry of addr in mm, or NULL. */
static pte_t *lx_pte(struct mm_struct *mm, unsigned long addr)
{
	pgd_t *pgd = pgd_offset(mm, addr);
	p4d_t *p4d;
	pud_t *pud;
	pmd_t *pmd;

	if (!pgd_present(*pgd))
		return NULL;
	p4d = p4d_offset(pgd, addr);
	if (!p4d_present(*p4d))
		return NULL;
	pud = pud_offset(p4d, addr);
	if (!pud_present(*pud))
		return NULL;
	pmd = pmd_offset(pud, addr);
	if (!pmd_present(*pmd))
		return NULL;
	return pte_offset_kernel(pmd, addr);
}

/*
 * A page's rights change: mapping it again with the new rights replaces the old ones (L4 has
 * no "change rights" on a mapping, and raising them needs the source), so look the page up.
 */
int lx_protect_in(struct mm_struct *mm, int task, unsigned long addr, unsigned long len,
		  unsigned int prot)
{
	unsigned long end = addr + len;
	int err = 0;

	for (; addr < end && !err; addr += PAGE_SIZE) {
		pte_t *pte = lx_pte(mm, addr);

		if (!pte || !pte_present(*pte))
			continue;
		if (task)
			err = lx_task_map(task, addr, uml_physmem + (pte_val(*pte) & PAGE_MASK),
					  PAGE_SIZE, prot);
		else if (addr != uml_physmem + (pte_val(*pte) & PAGE_MASK))
			err = lx_alias(addr, uml_physmem + (pte_val(*pte) & PAGE_MASK), PAGE_SIZE, prot);
	}
	return err;
}

int protect(struct mm_id *mm_idp, unsigned long addr, unsigned long len, unsigned int prot)
{
	struct mm_struct *mm = container_of(mm_idp, struct mm_struct, context.id);

	return lx_protect_in(mm, mm_idp->pid, addr, len, prot);
}

/* map/unmap/protect take effect at once; nothing is batched (yet). */
int syscall_stub_flush(struct mm_id *mm_idp)
{
	return 0;
}

/* A fault or exception of a process, as UML's SIGSEGV/SIGILL/... handling would see it. */
static void lx_user_fault(struct uml_pt_regs *regs)
{
	struct siginfo si;
	int trap = regs->faultinfo.trap_no;
	int sig, code;

	switch (trap) {
	case 14:
		segv_handler(SIGSEGV, NULL, regs);
		return;
	case 0:
		sig = SIGFPE;
		code = FPE_INTDIV;
		break;
	case 16:
	case 19:
		sig = SIGFPE;
		code = FPE_FLTINV;
		break;
	case 1:
	case 3:
		sig = SIGTRAP;
		code = TRAP_BRKPT;
		break;
	case 6:
		sig = SIGILL;
		code = ILL_ILLOPN;
		break;
	case 17:
		sig = SIGBUS;
		code = BUS_ADRALN;
		break;
	default:
		/* #GP (privileged instructions, bad segments, int 0x80) and the rest. */
		regs->faultinfo.cr2 = 0;
		segv_handler(SIGSEGV, NULL, regs);
		return;
	}
	memset(&si, 0, sizeof(si));
	si.si_signo = sig;
	si.si_code = code;
	regs->faultinfo.cr2 = UPT_IP(regs);
	relay_signal(sig, &si, regs);
}

void __lx_hot userspace(struct uml_pt_regs *regs, unsigned long *aux_fp_regs)
{
	unsigned long fault[3];
	unsigned int bits;
	int kind, err;

	interrupt_end();
	while (1) {
		current_mm_sync();
		/*
		 * Interrupts off until the process runs: one that comes now stays pending and
		 * arrives at the resume, as an event of the process.
		 */
		block_signals();
		err = lx_resume_user(userspace_pid[0], regs->gp, regs->fp);
		if (err) {
			printk(KERN_ERR "%s - cannot run process task %d: %d\n", __func__,
			       userspace_pid[0], err);
			fatal_sigsegv();
		}
		lx_in_upcall = 0;

		regs->is_user = 1;
		kind = lx_user_event(regs->gp, regs->fp, fault, &bits);
		UPT_SYSCALL_NR(regs) = -1;
		regs->faultinfo.error_code = fault[0];
		regs->faultinfo.cr2 = fault[1];
		regs->faultinfo.trap_no = fault[2];

		switch (kind) {
		case LX_EV_SYSCALL:
			unblock_signals();
			handle_syscall(regs);
			break;
		case LX_EV_IRQ:
			lx_dispatch_irqs(bits, regs);
			unblock_signals();
			break;
		case LX_EV_FAULT:
			unblock_signals();
			lx_user_fault(regs);
			break;
		default:
			unblock_signals();
			printk(KERN_ERR "%s - process task %d is gone\n", __func__, userspace_pid[0]);
			fatal_sigsegv();
		}
		interrupt_end();
		/* As UML does: no -ERESTARTSYS handling of a syscall that was not one. */
		PT_SYSCALL_NR(regs->gp) = -1;
	}
}

/* The default register set of a new process (UML copies it from a real host child). */
void get_safe_registers(unsigned long *regs, unsigned long *fp_regs)
{
	memset(regs, 0, MAX_REG_NR * sizeof(long));
	regs[HOST_EFLAGS] = 0x202;
	regs[HOST_CS] = 0x33;
	regs[HOST_SS] = 0x2b;
	if (fp_regs) {
		lx_fpu_forget();
		memset(fp_regs, 0, HOST_FP_SIZE * sizeof(long));
		((u16 *) fp_regs)[0] = 0x37f;		/* FCW: all exceptions masked */
		((u32 *) fp_regs)[6] = 0x1f80;		/* MXCSR */
		((u32 *) fp_regs)[7] = 0xffff;		/* MXCSR mask */
	}
}

/* The live FPU registers are the last process's (nothing else uses the FPU). */
static u8 lx_fx[512] __aligned(16);

int save_i387_registers(int pid, unsigned long *fp_regs)
{
	asm volatile("fxsave64 %0" : "=m" (lx_fx));
	memcpy(fp_regs, lx_fx, sizeof(lx_fx));
	return 0;
}

int restore_i387_registers(int pid, unsigned long *fp_regs)
{
	lx_fpu_forget();
	memcpy(lx_fx, fp_regs, sizeof(lx_fx));
	((u32 *) lx_fx)[6] &= 0xffff;
	asm volatile("fxrstor64 %0" : : "m" (lx_fx));
	return 0;
}

unsigned long get_thread_reg(int reg, jmp_buf *buf)
{
	switch (reg) {
	case HOST_IP:
		return buf[0]->__rip;
	case HOST_SP:
		return buf[0]->__rsp;
	case HOST_BP:
		return buf[0]->__rbp;
	}
	return 0;
}

/* The timer interrupt itself stops a running process: it arrives as an upcall. */
void os_alarm_process(int pid)
{
}

/* Host processes (console helpers) do not exist here. */
void os_kill_process(int pid, int reap_child)
{
}

int os_getpid(void)
{
	return 1;
}

void os_set_pdeathsig(void)
{
}

int run_helper_thread(int (*proc)(void *), void *arg, unsigned int flags,
		      unsigned long *stack_out)
{
	return -ENOSYS;
}

int is_skas_winch(int pid, int fd, void *data)
{
	return 0;
}

/* Our pages are mapped with the rights Linux asked for; there is nothing to widen. */
void stack_protections(unsigned long address)
{
}

/* Linux's own threads: setjmp/longjmp between their stacks, as in UML. */

void new_thread(void *stack, jmp_buf *buf, void (*handler)(void))
{
	(*buf)[0].JB_IP = (unsigned long) handler;
	(*buf)[0].JB_SP = (unsigned long) stack + UM_THREAD_SIZE - sizeof(void *);
}

void switch_threads(jmp_buf *me, jmp_buf *you)
{
	if (UML_SETJMP(me) == 0)
		UML_LONGJMP(you, 1);
}

enum { LX_JMP_START, LX_JMP_CALLBACK, LX_JMP_HALT, LX_JMP_REBOOT };

/* The initial stack (our program's), kept for callbacks and to return from linux_main. */
static jmp_buf lx_initial_jb;
static void (*lx_cb_proc)(void *);
static void *lx_cb_arg;
static jmp_buf *lx_cb_back;

int start_idle_thread(void *stack, jmp_buf *switch_buf)
{
	switch (setjmp(lx_initial_jb)) {
	case LX_JMP_START:
		(*switch_buf)[0].JB_IP = (unsigned long) uml_finishsetup;
		(*switch_buf)[0].JB_SP = (unsigned long) stack + UM_THREAD_SIZE - sizeof(void *);
		longjmp(*switch_buf, 1);
		break;
	case LX_JMP_CALLBACK:
		lx_cb_proc(lx_cb_arg);
		longjmp(*lx_cb_back, 1);
		break;
	case LX_JMP_HALT:
		kmalloc_ok = 0;
		return 0;
	case LX_JMP_REBOOT:
		kmalloc_ok = 0;
		return 1;
	}
	return 0;
}

void initial_thread_cb_skas(void (*proc)(void *), void *arg)
{
	jmp_buf here;

	lx_cb_proc = proc;
	lx_cb_arg = arg;
	lx_cb_back = &here;
	block_signals();
	if (UML_SETJMP(&here) == 0)
		UML_LONGJMP(&lx_initial_jb, LX_JMP_CALLBACK);
	unblock_signals();
	lx_cb_proc = NULL;
	lx_cb_arg = NULL;
	lx_cb_back = NULL;
}

void halt_skas(void)
{
	block_signals();
	UML_LONGJMP(&lx_initial_jb, LX_JMP_HALT);
}

/* There is no host to restart us: a reboot ends the program like a halt, with its status. */
void reboot_skas(void)
{
	block_signals();
	UML_LONGJMP(&lx_initial_jb, LX_JMP_HALT);
}

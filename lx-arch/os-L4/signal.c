// SPDX-License-Identifier: GPL-2.0
/*
 * os-L4: "signals as interrupts" on a vCPU.
 *
 * UML masks interrupts with the software flag signals_enabled and replays what came while it
 * was clear. Here the flag is mirrored in the vCPU's interrupt flag (cleared before
 * signals_enabled, set after it, so an upcall always finds them agreeing), and what the kernel
 * held back while it was clear is taken as messages when it is set again. An interrupt upcall
 * while Linux runs enters lx_upcall_entry on cpu0_irqstack (set_sigstack), where UML's
 * to_irq_stack makes "current" work; an event of a process returns from the call in
 * userspace() that ran it (process.c), never here.
 */
#include <linux/kernel.h>
#include <linux/threads.h>
#include <linux/signal.h>
#include <linux/string.h>
#include <as-layout.h>
#include <kern_util.h>
#include <os.h>
#include "lx_arch.h"

/* The hot text starts a page (see __lx_hot): this object is the first (Makefile) to have any. */
asm(".section .text.hot.lx, \"ax\"\n\t.p2align 12\n\t.previous");

/*
 * The variables every process event touches (userspace_pid: the task slot of the process
 * running; signals_enabled; lx_in_upcall: set while the upcall handler runs, when the vCPU
 * flag is off and must stay off until it resumes; lx_soft_pending: interrupts taken while
 * signals_enabled was clear, for unblock_signals) are defined in lx-arch's vcpu::HOT, so that
 * they share a page with its statics (under TCG each page touched after an address-space
 * switch costs a TLB refill).
 */

/* Registers for handlers of interrupts that did not interrupt a process. */
static struct uml_pt_regs lx_kernel_regs;

void lx_dispatch_irqs(unsigned int bits, struct uml_pt_regs *regs)
{
	if (bits & LX_IRQ_TIMER) {
		lx_timer_fired(lx_timer_periodic);
		timer_handler(SIGALRM, NULL, regs);
	}
	if (bits & LX_IRQ_CONSOLE)
		lx_console_input();
}

void __lx_hot block_signals(void)
{
	if (!lx_in_upcall)
		lx_irq_disable();
	signals_enabled = 0;
	barrier();
}

void __lx_hot unblock_signals(void)
{
	unsigned int bits;

	if (signals_enabled == 1)
		return;
	signals_enabled = 1;
	barrier();
	if (lx_in_upcall)
		return;
	for (;;) {
		bits = lx_soft_pending | lx_irq_enable();
		lx_soft_pending = 0;
		if (!bits)
			return;
		/* Handlers expect interrupts off, as UML's replay does. */
		signals_enabled = 0;
		lx_dispatch_irqs(bits, &lx_kernel_regs);
		signals_enabled = 1;
	}
}

void lx_irqs_back(void)
{
	signals_enabled = 0;
	unblock_signals();
}

int um_set_signals(int enable)
{
	int ret = signals_enabled;

	if (ret == enable)
		return enable;
	if (enable)
		unblock_signals();
	else
		block_signals();
	return ret;
}

/* No interrupt-flag tracing: the traced variant is the same. */
int um_set_signals_trace(int enable)
{
	return um_set_signals(enable);
}

void lx_upcall(void);

asm(".text\n"
    ".globl lx_upcall_entry\n"
    "lx_upcall_entry:\n"
    "	andq $-16, %rsp\n"
    "	call lx_upcall\n"
    "	ud2\n");
extern char lx_upcall_entry[];

/* An interrupt while Linux itself ran with interrupts on: handled on the IRQ stack. */
static void lx_kernel_irq(unsigned int bits)
{
	unsigned long pending = 2;	/* bit 0 is to_irq_stack's "nested" */

	if (!signals_enabled || to_irq_stack(&pending)) {
		lx_soft_pending |= bits;
		return;
	}
	signals_enabled = 0;
	lx_dispatch_irqs(bits, &lx_kernel_regs);
	if (!(pending & 1))
		from_irq_stack(0);
	signals_enabled = 1;
}

static void __noreturn lx_kernel_bug(const char *what)
{
	unsigned long c[5];

	lx_kernel_context(c);
	printk(KERN_EMERG "os-L4: %s: ip %lx sp %lx trap %lu error %lx address %lx\n",
	       what, c[0], c[1], c[2], c[3], c[4]);
	os_dump_core();
}

void lx_upcall(void)
{
	unsigned int bits = 0;
	int kind;

	lx_in_upcall = 1;
	kind = lx_upcall_kind(&bits);
	if (kind == LX_EV_USER)
		lx_kernel_bug("event of a process at Linux's own entry");
	if (kind != LX_EV_IRQ)
		lx_kernel_bug("exception in the Linux kernel");
	lx_kernel_irq(bits);
	lx_in_upcall = 0;
	lx_resume_kernel();
}

void set_sigstack(void *sig_stack, int size)
{
	if (lx_vcpu_init((unsigned long) lx_upcall_entry, (unsigned long) sig_stack + size)) {
		os_warn("os-L4: cannot run Linux on a vCPU\n");
		lx_exit(1);
	}
}

int os_is_signal_stack(void)
{
	return lx_in_upcall;
}

/* Nothing to install: upcalls replace signal handlers. */
void init_new_thread_signals(void)
{
}

void timer_set_signal_handler(void)
{
}

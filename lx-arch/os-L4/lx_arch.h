/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The seam between os-L4's halves: these C files (UML's host interface, compiled inside the
 * Linux tree) and the Rust staticlib lx-arch (the kernel's objects and system calls). Plain
 * integers and pointers only, so that neither half needs the other's layouts. Negative
 * results are -errno.
 */
#ifndef __LX_ARCH_H
#define __LX_ARCH_H

/* Interrupt sources as bits (lx-arch/src/vcpu.rs IRQ_*). */
#define LX_IRQ_TIMER	(1u << 0)
#define LX_IRQ_CONSOLE	(1u << 1)

/* Kinds of upcall / process event (lx-arch/src/vcpu.rs EV_*). */
#define LX_EV_IRQ	1
#define LX_EV_USER	2
#define LX_EV_FAULT	3
#define LX_EV_SYSCALL	4
#define LX_EV_GONE	5

/* Console and end. */
void lx_console_write(const char *s, unsigned long n);
int lx_console_read(char *buf, unsigned long n);
void lx_exit(int status) __attribute__((noreturn));

/* vCPU: interrupt flag, upcalls, resume. */
int lx_vcpu_init(unsigned long entry, unsigned long sp);
void lx_irq_disable(void);
unsigned int lx_irq_enable(void);
unsigned int lx_idle_wait(void);
int lx_upcall_kind(unsigned int *bits);
void lx_kernel_context(unsigned long out[5]);
void lx_resume_kernel(void) __attribute__((noreturn));
/* Runs a process until its next event: 0 then (see lx_user_event), or a negative error. */
int lx_resume_user(int task, const unsigned long *gp, const void *fp);
int lx_user_event(unsigned long *gp, void *fp, unsigned long fault[3], unsigned int *bits);
/* A regs->fp or the FPU registers were set other than by lx_user_event (see the Rust half). */
void lx_fpu_forget(void);

/* Memory: RAM, Linux's own second mappings. */
int lx_ram_back(unsigned long start, unsigned long end);
int lx_alias(unsigned long dst, unsigned long src, unsigned long len, int prot);
int lx_unmap_own(unsigned long addr, unsigned long len);

/* Process address spaces. */
int lx_task_create(void);
void lx_task_delete(int task);
int lx_task_map(int task, unsigned long virt, unsigned long src, unsigned long len, int prot);
int lx_task_unmap(int task, unsigned long virt, unsigned long len);

/* Clock and timer. */
long long lx_nsecs(void);
unsigned long lx_tsc_hz(void);
long long lx_wallclock_ns(void);
int lx_timer_create(void);
int lx_timer_set(unsigned long long ns, int periodic);
void lx_timer_fired(int periodic);
int lx_timer_armed(void);

/* Boot modules as files. */
int lx_module(const char *name, unsigned long *addr, unsigned long *size);

/* Called by the Rust half: interrupts it held off may have come meanwhile. */
void lx_irqs_back(void);

/*
 * The per-event path (userspace() and the Rust functions it calls) goes first in .text, in
 * one page: under TCG every page touched after an address-space switch costs a TLB refill.
 */
#define __lx_hot __attribute__((__section__(".text.hot.lx")))

/* Shared between the C files. */
extern int lx_in_upcall;
extern unsigned int lx_soft_pending;
extern int lx_timer_periodic;
struct uml_pt_regs;
struct mm_struct;
void lx_dispatch_irqs(unsigned int bits, struct uml_pt_regs *regs);
void lx_console_input(void);
int lx_protect_in(struct mm_struct *mm, int task, unsigned long addr, unsigned long len,
		  unsigned int prot);

#endif

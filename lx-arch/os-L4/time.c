// SPDX-License-Identifier: GPL-2.0
/* os-L4: Linux's clock is the TSC, its timer an Irq the kernel raises. */
#include <linux/kernel.h>
#include <linux/delay.h>
#include <os.h>
#include "lx_arch.h"

int lx_timer_periodic;

int os_timer_create(void)
{
	/*
	 * The clock's rate is known (the KIP's TSC frequency): as x86 Linux does with its TSC,
	 * skip the busy-loop calibration (a quarter second of boot under an emulator). UML's
	 * __delay() takes at least a cycle per loop, so a jiffy's worth of cycles as loops per
	 * jiffy makes every delay at least as long as asked. (This runs in late_time_init,
	 * before calibrate_delay.)
	 */
	lpj_fine = lx_tsc_hz() / HZ;
	return lx_timer_create();
}

int os_timer_set_interval(unsigned long long nsecs)
{
	lx_timer_periodic = 1;
	return lx_timer_set(nsecs, 1);
}

int os_timer_one_shot(unsigned long long nsecs)
{
	lx_timer_periodic = 0;
	return lx_timer_set(nsecs ? nsecs : 1, 0);
}

void os_timer_disable(void)
{
	lx_timer_set(0, 0);
}

long long os_nsecs(void)
{
	return lx_nsecs();
}

/* The machine's real-time clock as the kernel read it at boot (0: none, Linux starts at 1970). */
long long os_persistent_clock_emulation(void)
{
	return lx_wallclock_ns();
}

/*
 * Called with interrupts off. As UML does, sleep only if the timer will end the sleep; the
 * interrupt that does is handled when Linux enables interrupts again.
 */
void os_idle_sleep(void)
{
	if (lx_timer_armed())
		lx_soft_pending |= lx_idle_wait();
}

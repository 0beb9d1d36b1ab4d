// SPDX-License-Identifier: GPL-2.0
/* os-L4: start-up checks, host identity, randomness, messages, and the libc calls UML's
 * kernel side makes (printf, exit). */
#include <linux/kernel.h>
#include <linux/string.h>
#include <linux/types.h>
#include <init.h>
#include <kern.h>
#include <os.h>
#include "lx_arch.h"

unsigned long elf_aux_hwcap;
static char lx_umid[] = "l4linux";

static void lx_cpuid(unsigned int leaf, unsigned int r[4])
{
	asm volatile("cpuid" : "=a" (r[0]), "=b" (r[1]), "=c" (r[2]), "=d" (r[3]) : "a" (leaf), "c" (0));
}

int set_umid(char *name)
{
	return 0;
}

char *get_umid(void)
{
	return lx_umid;
}

void __init os_early_checks(void)
{
	unsigned int r[4];

	lx_cpuid(1, r);
	elf_aux_hwcap = r[3];
}

void os_check_bugs(void)
{
}

/* UML matches feature names in /proc/cpuinfo's "flags" line; give it ours from CPUID. */
void __init get_host_cpu_features(void (*flags_helper_func)(char *line),
				  void (*cache_helper_func)(char *line))
{
	/* CPUID leaf 1, EDX: the bit of each feature UML may ask about. */
	static const struct { unsigned int bit; const char *name; } edx[] = {
		{ 0, " fpu" }, { 4, " tsc" }, { 8, " cx8" }, { 15, " cmov" },
		{ 24, " fxsr" }, { 25, " sse" }, { 26, " sse2" },
	};
	static char flags[128];
	unsigned int r[4];
	size_t i;

	lx_cpuid(1, r);
	strscpy(flags, "flags :", sizeof(flags));
	for (i = 0; i < ARRAY_SIZE(edx); i++)
		if (r[3] & (1u << edx[i].bit))
			strlcat(flags, edx[i].name, sizeof(flags));
	strlcat(flags, " ", sizeof(flags));
	flags_helper_func(flags);
}

void setup_machinename(char *machine_out)
{
	strcpy(machine_out, "x86_64");
}

void setup_hostinfo(char *buf, int len)
{
	snprintf(buf, len, "L4 microkernel (os-L4)");
}

/* RDRAND when the CPU has it; without it Linux gathers entropy itself (timer jitter). */
ssize_t os_getrandom(void *buf, size_t len, unsigned int flags)
{
	unsigned int r[4];
	u8 *p = buf;
	size_t i;

	lx_cpuid(1, r);
	for (i = 0; i < len; i += sizeof(u64)) {
		u64 v = 0;
		u8 ok = 0;
		int tries;

		if (r[2] & (1 << 30)) {
			for (tries = 0; tries < 10 && !ok; tries++)
				asm volatile("rdrand %0; setc %1" : "=r" (v), "=qm" (ok));
		}
		if (!ok) {
			if (!(r[2] & (1 << 30)) && i == 0)
				return -ENOSYS;
			return i;
		}
		memcpy(p + i, &v, min_t(size_t, sizeof(v), len - i));
	}
	return len;
}

void os_dump_core(void)
{
	static const char msg[] = "os-L4: the Linux kernel stopped (panic or fatal error)\n";

	lx_console_write(msg, sizeof(msg) - 1);
	lx_exit(134);
}

void um_early_printk(const char *s, unsigned int n)
{
	lx_console_write(s, n);
}

static void lx_vprint(const char *fmt, va_list ap)
{
	static char buf[256];
	int n = vscnprintf(buf, sizeof(buf), fmt, ap);

	lx_console_write(buf, n);
}

void os_info(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	lx_vprint(fmt, ap);
	va_end(ap);
}

void os_warn(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	lx_vprint(fmt, ap);
	va_end(ap);
}

int printf(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	lx_vprint(fmt, ap);
	va_end(ap);
	return 0;
}

void exit(int status)
{
	lx_exit(status);
}

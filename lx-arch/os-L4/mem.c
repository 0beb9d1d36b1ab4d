// SPDX-License-Identifier: GPL-2.0
/*
 * os-L4: Linux's "physical" memory. UML maps a RAM file right after its image; here the RAM
 * is memory our pager lends (lx_ram_back), at the same place, so physical address + uml_physmem
 * is simply where the page is. The "file" is a handle; mapping it elsewhere (vmalloc) is a
 * second mapping of our own pages.
 */
#include <linux/kernel.h>
#include <linux/mm.h>
#include <asm/sections.h>
#include <as-layout.h>
#include <kern.h>
#include <kern_util.h>
#include <mem.h>
#include <os.h>
#include "lx_arch.h"

#define LX_PHYSMEM_FD 3

static unsigned long lx_physmem_end;

int create_mem_file(unsigned long long len)
{
	unsigned long start = PAGE_ALIGN((unsigned long) &_end);
	int err;

	lx_physmem_end = uml_physmem + len;
	/* The image is loaded already; the rest is fresh memory. */
	err = lx_ram_back(start, lx_physmem_end);
	if (err) {
		os_warn("os-L4: cannot get %llu MiB of RAM for Linux (%d)\n", len >> 20, err);
		return err;
	}
	return LX_PHYSMEM_FD;
}

static int lx_prot(int r, int w, int x)
{
	return (r ? 1 : 0) | (w ? 2 : 0) | (x ? 4 : 0);
}

int os_map_memory(void *virt, int fd, unsigned long long off, unsigned long len,
		  int r, int w, int x)
{
	unsigned long src = uml_physmem + off;

	if (fd != LX_PHYSMEM_FD)
		return -EBADF;
	if ((unsigned long) virt == src)
		return 0;	/* the RAM itself, there since create_mem_file */
	return lx_alias((unsigned long) virt, src, len, lx_prot(r, w, x));
}

static bool lx_is_ram(unsigned long addr, unsigned long len)
{
	return addr < lx_physmem_end && addr + len > uml_physmem;
}

int os_protect_memory(void *addr, unsigned long len, int r, int w, int x)
{
	if (lx_is_ram((unsigned long) addr, len))
		return -EINVAL;
	return lx_protect_in(&init_mm, 0, (unsigned long) addr, len, lx_prot(r, w, x));
}

int os_unmap_memory(void *addr, int len)
{
	/* Only second mappings go; the RAM stays. */
	if (lx_is_ram((unsigned long) addr, len))
		return -EINVAL;
	return lx_unmap_own((unsigned long) addr, len);
}

/* As UML on x86_64: processes get 0..0x7f80000000 (TASK_SIZE follows from this). */
unsigned long os_get_top_address(void)
{
	return 0x7fc0002000UL;
}

/* UML sizes its image with sbrk(0); there is no heap behind it. */
void *sbrk(int increment)
{
	static unsigned long brk;

	if (!brk)
		brk = PAGE_ALIGN((unsigned long) &_end);
	brk += increment;
	return (void *) (brk - increment);
}

int __init parse_iomem(char *str, int *add)
{
	os_warn("os-L4: iomem= is not supported, ignored\n");
	return 0;
}

// SPDX-License-Identifier: GPL-2.0
/*
 * os-L4: the few "files" Linux has: its console (fds 1 and 2), its RAM handle (see mem.c, for
 * the stub-page copy UML makes at boot) and read-only boot modules (initrd=NAME). Console input
 * and UML's fd interrupts (epoll/SIGIO) have no host here: no fd ever becomes ready.
 */
#include <linux/kernel.h>
#include <linux/string.h>
#include <as-layout.h>
#include <irq_kern.h>
#include <irq_user.h>
#include <os.h>
#include "lx_arch.h"

#define LX_PHYSMEM_FD	3
#define LX_FIRST_FILE	10
#define LX_FILES	8

static struct {
	unsigned long addr, size, pos;
	bool used;
} lx_files[LX_FILES];
static unsigned long long lx_physmem_pos;

static int lx_file(int fd)
{
	int i = fd - LX_FIRST_FILE;

	return (i >= 0 && i < LX_FILES && lx_files[i].used) ? i : -1;
}

int os_open_file(const char *file, struct openflags flags, int mode)
{
	unsigned long addr, size;
	int i, err;

	if (flags.w || flags.c || flags.t || flags.a)
		return -EROFS;
	for (i = 0; i < LX_FILES && lx_files[i].used; i++)
		;
	if (i == LX_FILES)
		return -EMFILE;
	err = lx_module(file, &addr, &size);
	if (err)
		return err;
	lx_files[i].addr = addr;
	lx_files[i].size = size;
	lx_files[i].pos = 0;
	lx_files[i].used = true;
	return LX_FIRST_FILE + i;
}

int os_file_size(const char *file, unsigned long long *size_out)
{
	unsigned long addr, size;
	int err = lx_module(file, &addr, &size);

	if (!err)
		*size_out = size;
	return err;
}

int os_read_file(int fd, void *buf, int len)
{
	int i = lx_file(fd);
	unsigned long n;

	if (fd == 0)
		return -EAGAIN;
	if (i < 0)
		return -EBADF;
	n = min_t(unsigned long, len, lx_files[i].size - lx_files[i].pos);
	memcpy(buf, (void *) (lx_files[i].addr + lx_files[i].pos), n);
	lx_files[i].pos += n;
	return n;
}

int os_write_file(int fd, const void *buf, int count)
{
	switch (fd) {
	case 1:
	case 2:
		lx_console_write(buf, count);
		return count;
	case LX_PHYSMEM_FD:
		/*
		 * The RAM "file" is the RAM: write where that offset is mapped. UML's one use
		 * copies its stub page onto itself (read-only text here): nothing to do then.
		 */
		if ((void *) (uml_physmem + lx_physmem_pos) != buf)
			memmove((void *) (uml_physmem + lx_physmem_pos), buf, count);
		lx_physmem_pos += count;
		return count;
	}
	return -EBADF;
}

int os_seek_file(int fd, unsigned long long offset)
{
	int i = lx_file(fd);

	if (fd == LX_PHYSMEM_FD) {
		lx_physmem_pos = offset;
		return 0;
	}
	if (i < 0)
		return -EBADF;
	lx_files[i].pos = min_t(unsigned long, offset, lx_files[i].size);
	return 0;
}

int os_fsync_file(int fd)
{
	return 0;
}

void os_close_file(int fd)
{
	int i = lx_file(fd);

	if (i >= 0)
		lx_files[i].used = false;
}

int os_pipe(int *fds, int stream, int close_on_exec)
{
	return -ENOSYS;
}

int os_set_fd_block(int fd, int blocking)
{
	return 0;
}

void os_flush_stdout(void)
{
}

int raw(int fd)
{
	return 0;
}

/* UML's fd interrupt controller: there are no host fds, so none is ever ready. */
int os_setup_epoll(void)
{
	return 0;
}

int os_add_epoll_fd(int events, int fd, void *data)
{
	return 0;
}

int os_del_epoll_fd(int fd)
{
	return 0;
}

int os_waiting_for_events_epoll(void)
{
	return 0;
}

void *os_epoll_get_data_pointer(int index)
{
	return NULL;
}

int os_epoll_triggered(int index, int events)
{
	return 0;
}

int os_event_mask(enum um_irq_type irq_type)
{
	return irq_type == IRQ_READ ? 1 : 4;
}

void os_set_ioignore(void)
{
}

void os_close_epoll_fd(void)
{
}

int ignore_sigio_fd(int fd)
{
	return 0;
}

void maybe_sigio_broken(int fd)
{
}

/* UML's stock console frees the interrupts of closed channels here; ours has none. */
void free_irqs(void)
{
}

int os_set_fd_async(int fd)
{
	return 0;
}

// SPDX-License-Identifier: GPL-2.0
/*
 * ttyL0: Linux's console and its terminal on the L4 console (the kernel log, through lx-arch).
 * Output goes out as written; the tty layer above gives line editing, echo and signals
 * (Ctrl-C to the foreground process group) for the input lx_console_input() pushes in.
 */
#include <linux/console.h>
#include <linux/init.h>
#include <linux/tty.h>
#include <linux/tty_driver.h>
#include <linux/tty_flip.h>
#include "../lx_arch.h"

static struct tty_driver *lxc_driver;
static struct tty_port lxc_port;

static int lxc_open(struct tty_struct *tty, struct file *filp)
{
	return tty_port_open(&lxc_port, tty, filp);
}

static void lxc_close(struct tty_struct *tty, struct file *filp)
{
	tty_port_close(&lxc_port, tty, filp);
}

static ssize_t lxc_write(struct tty_struct *tty, const u8 *buf, size_t count)
{
	lx_console_write((const char *) buf, count);
	return count;
}

static unsigned int lxc_write_room(struct tty_struct *tty)
{
	return 4096;
}

static const struct tty_operations lxc_ops = {
	.open = lxc_open,
	.close = lxc_close,
	.write = lxc_write,
	.write_room = lxc_write_room,
};

static const struct tty_port_operations lxc_port_ops;

/* Input: called by the interrupt dispatch with what the console has. */
void lx_console_input(void)
{
	char buf[64];
	int n, any = 0;

	while ((n = lx_console_read(buf, sizeof(buf))) > 0) {
		tty_insert_flip_string(&lxc_port, buf, n);
		any = 1;
	}
	if (any)
		tty_flip_buffer_push(&lxc_port);
}

/* Kernel messages: the tty's ONLCR does not apply here, so end lines as a terminal wants. */
static void lxc_console_write(struct console *co, const char *s, unsigned int n)
{
	unsigned int i, start = 0;

	for (i = 0; i < n; i++) {
		if (s[i] != '\n')
			continue;
		lx_console_write(s + start, i - start);
		lx_console_write("\r\n", 2);
		start = i + 1;
	}
	lx_console_write(s + start, n - start);
}

static struct tty_driver *lxc_device(struct console *co, int *index)
{
	*index = 0;
	return lxc_driver;
}

static struct console lxc_console = {
	.name = "ttyL",
	.write = lxc_console_write,
	.device = lxc_device,
	.flags = CON_PRINTBUFFER,
	.index = -1,
};

static int __init lxc_console_init(void)
{
	register_console(&lxc_console);
	return 0;
}
console_initcall(lxc_console_init);

static int __init lxc_init(void)
{
	struct tty_driver *d;
	int err;

	d = tty_alloc_driver(1, TTY_DRIVER_REAL_RAW);
	if (IS_ERR(d))
		return PTR_ERR(d);
	d->driver_name = "l4console";
	d->name = "ttyL";
	d->major = 0;
	d->minor_start = 0;
	d->type = TTY_DRIVER_TYPE_SERIAL;
	d->subtype = SERIAL_TYPE_NORMAL;
	d->init_termios = tty_std_termios;
	tty_set_operations(d, &lxc_ops);
	tty_port_init(&lxc_port);
	lxc_port.ops = &lxc_port_ops;
	tty_port_link_device(&lxc_port, d, 0);
	err = tty_register_driver(d);
	if (err) {
		tty_driver_kref_put(d);
		tty_port_destroy(&lxc_port);
		return err;
	}
	lxc_driver = d;
	return 0;
}
device_initcall(lxc_init);

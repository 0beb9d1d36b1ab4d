/*
 * A QEMU TCG plugin: the distinct pages a guest touches in each address-space window.
 *
 * Under TCG every address-space switch flushes the emulated TLB, so what a fast path costs is
 * mostly the number of distinct pages it touches after a switch (docs/costs.md). This plugin
 * splits execution into windows at each execution of the kernel's `mov cr3` instructions
 * (`split=ADDR[/ADDR...]`, up to 8) and lists, per window, every page touched for the first time (code or
 * data, with the instruction that touched it first), the instructions executed and the
 * translation blocks entered, and every distinct block entered without a chained jump (after an
 * indirect branch or from another page: QEMU chains direct jumps only within a page, the rest
 * look the target up in the jump cache, which the switch flushed too). Recording starts at the
 * first execution of `mark=ADDR` and stops after `windows=N` windows (default 24); with
 * `toggle=1`, executions of the mark alternately pause it and resume it in a new window.
 * With `skip=N` the first N executions of the mark are ignored (a later round of a loop).
 * Memory accesses are counted too. With `hist=N`, the instructions window N executed at each
 * address are listed too (`H` lines: address, instructions, windows it ran in). The result goes to `out=FILE` when QEMU exits.
 *
 * Only the few plugin API functions below are used; they are declared here (QEMU's public
 * plugin API, stable since version 2) so that no QEMU headers are needed to build it:
 *   cc -shared -fPIC -O2 -o pages.so pages.c
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
typedef uint32_t qemu_plugin_meminfo_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
typedef struct {
	const char *target_name;
	struct { int min; int cur; } version;
	bool system_emulation;
	union { struct { int smp_vcpus; int max_vcpus; } system; };
} qemu_info_t;

enum { CB_NO_REGS = 0 };
enum { MEM_RW = 3 };

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t,
					   void (*)(qemu_plugin_id_t, struct qemu_plugin_tb *));
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *, size_t);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *);
char *qemu_plugin_insn_disas(const struct qemu_plugin_insn *);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *, void (*)(unsigned, void *),
					    int, void *);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *, void (*)(unsigned, void *),
					  int, void *);
void qemu_plugin_register_vcpu_mem_cb(struct qemu_plugin_insn *,
				      void (*)(unsigned, qemu_plugin_meminfo_t, uint64_t, void *),
				      int, int, void *);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, void (*)(qemu_plugin_id_t, void *), void *);

__attribute__((visibility("default"))) int qemu_plugin_version = 2;

#define MAX_PAGES 512
#define MAX_WINDOWS 256

#define MAX_JUMPS 256

struct page { uint64_t addr, first_ip; bool code; };
/* A translation block as the plugin saw it translated. */
struct block { uint64_t start, last_ip; bool indirect; };
/* A block entered without a chained jump: its start, and the instruction that led there. */
struct jump { uint64_t target, from; };
struct window {
	long insns, blocks, lookups, accesses;
	int n, nj;
	struct page p[MAX_PAGES];
	struct jump j[MAX_JUMPS];
};

#define MAX_SPLITS 8
static uint64_t split_at[MAX_SPLITS], mark_at;
static int n_splits;
static bool toggle, started, recording, done_recording;
static int max_windows = 24, nw;
static uint64_t ip_now;
static const char *out = "tcg-pages.txt";
static struct window *win;
static const struct block *prev_block;
/* `hist=N`: instructions executed per address in window N (-2: in every window). */
#define HIST_ALL (-2)
#define HIST_SIZE (1 << 18)
static int hist_window = -1;
/* `skip=N`: the first N executions of the mark are not one. */
static long skip_marks;
/* Per address: instructions executed, and in how many windows (the last one it was seen in). */
static struct { uint64_t ip; long n; int windows, last; } *hist;

static void count(uint64_t ip)
{
	uint64_t h = (ip * 0x9e3779b97f4a7c15ULL) >> 46;

	for (int i = 0; i < HIST_SIZE; i++, h = (h + 1) & (HIST_SIZE - 1)) {
		if (hist[h].ip == ip || !hist[h].n) {
			if (!hist[h].n || hist[h].last != nw)
				hist[h].windows++;
			hist[h].ip = ip;
			hist[h].last = nw;
			hist[h].n++;
			return;
		}
	}
}

static void touch(uint64_t va, bool code)
{
	struct window *w = &win[nw];
	uint64_t a = va & ~0xfffULL;

	for (int i = 0; i < w->n; i++)
		if (w->p[i].addr == a && w->p[i].code == code)
			return;
	if (w->n < MAX_PAGES)
		w->p[w->n++] = (struct page){ a, ip_now, code };
}

static void on_insn(unsigned vcpu, void *ip_)
{
	uint64_t ip = (uintptr_t)ip_;

	(void)vcpu;
	if (ip == mark_at && skip_marks > 0) {
		skip_marks--;
	} else if (ip == mark_at && !done_recording) {
		if (recording) {
			/* toggle: pause; the next execution of the mark opens a new window */
			recording = !toggle;
		} else if (!started) {
			started = recording = true;
		} else if (nw + 1 < max_windows) {
			recording = true;
			memset(&win[++nw], 0, sizeof(win[0]));
		} else {
			done_recording = true;
		}
	}
	if (!recording)
		return;
	ip_now = ip;
	win[nw].insns++;
	if (nw == hist_window || hist_window == HIST_ALL)
		count(ip);
	touch(ip, true);
	bool split = false;
	for (int i = 0; i < n_splits; i++)
		split |= ip == split_at[i];
	if (split) {
		if (nw + 1 >= max_windows) {
			recording = false;
			done_recording = true;
			return;
		}
		memset(&win[++nw], 0, sizeof(win[0]));
	}
}

/* A block is entered through the jump cache unless a direct jump within its page led there. */
static void on_block(unsigned vcpu, void *b_)
{
	const struct block *b = b_, *p = prev_block;

	(void)vcpu;
	prev_block = b;
	if (!recording)
		return;
	struct window *w = &win[nw];
	w->blocks++;
	if (!p || (!p->indirect && !((p->start ^ b->start) & ~0xfffULL)))
		return;
	w->lookups++;
	for (int i = 0; i < w->nj; i++)
		if (w->j[i].target == b->start)
			return;
	if (w->nj < MAX_JUMPS)
		w->j[w->nj++] = (struct jump){ b->start, p->last_ip };
}

/* ret, iret, sysret, syscall, a call or jmp through a register or memory, and a write to a
 * control register or an MSR (QEMU ends the block there and looks up the next). */
static bool is_indirect(const char *d)
{
	while (*d == ' ')
		d++;
	if (!strncmp(d, "ret", 3) || !strncmp(d, "iret", 4) || !strncmp(d, "sys", 3) ||
	    !strncmp(d, "int", 3))
		return true;
	if (strstr(d, ",%cr") || !strncmp(d, "wrmsr", 5))
		return true;
	return (!strncmp(d, "call", 4) || !strncmp(d, "jmp", 3)) && strchr(d, '*');
}

static void on_mem(unsigned vcpu, qemu_plugin_meminfo_t info, uint64_t va, void *unused)
{
	(void)vcpu;
	(void)info;
	(void)unused;
	if (recording) {
		win[nw].accesses++;
		touch(va, false);
	}
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
	(void)id;
	size_t n = qemu_plugin_tb_n_insns(tb);
	struct block *b = calloc(1, sizeof(*b));

	if (!b || !n)
		return;
	for (size_t i = 0; i < n; i++) {
		struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
		uint64_t ip = qemu_plugin_insn_vaddr(insn);

		qemu_plugin_register_vcpu_insn_exec_cb(insn, on_insn, CB_NO_REGS, (void *)(uintptr_t)ip);
		qemu_plugin_register_vcpu_mem_cb(insn, on_mem, CB_NO_REGS, MEM_RW, NULL);
		if (i == 0)
			b->start = ip;
		if (i == n - 1) {
			char *d = qemu_plugin_insn_disas(insn);

			b->last_ip = ip;
			b->indirect = d && is_indirect(d);
			free(d);
		}
	}
	qemu_plugin_register_vcpu_tb_exec_cb(tb, on_block, CB_NO_REGS, b);
}

static void report(qemu_plugin_id_t id, void *unused)
{
	FILE *f = fopen(out, "w");

	(void)id;
	(void)unused;
	if (!f)
		return;
	for (int w = 0; w <= nw && (w > 0 || win[0].insns); w++) {
		fprintf(f, "window %d: %d pages, %ld instructions, %ld memory accesses, %ld blocks, "
			"%ld lookups of %d targets\n", w, win[w].n, win[w].insns, win[w].accesses,
			win[w].blocks, win[w].lookups, win[w].nj);
		for (int i = 0; i < win[w].n; i++)
			fprintf(f, "  %c %016llx %016llx\n", win[w].p[i].code ? 'I' : 'D',
				(unsigned long long)win[w].p[i].addr,
				(unsigned long long)win[w].p[i].first_ip);
		for (int i = 0; i < win[w].nj; i++)
			fprintf(f, "  J %016llx %016llx\n", (unsigned long long)win[w].j[i].target,
				(unsigned long long)win[w].j[i].from);
		bool last = w == nw;
		for (int i = 0; (w == hist_window || (hist_window == HIST_ALL && last)) && i < HIST_SIZE; i++)
			if (hist[i].n)
				fprintf(f, "  H %016llx %ld %d\n", (unsigned long long)hist[i].ip, hist[i].n,
					hist[i].windows);
	}
	fclose(f);
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id,
								const qemu_info_t *info, int argc,
								char **argv)
{
	(void)info;
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i];

		if (!strncmp(a, "split=", 6)) {
			char *p = (char *)a + 6;
			while (*p && n_splits < MAX_SPLITS) {
				split_at[n_splits++] = strtoull(p, &p, 16);
				if (*p == '/')
					p++;
			}
		}
		else if (!strncmp(a, "mark=", 5))
			mark_at = strtoull(a + 5, NULL, 16);
		else if (!strncmp(a, "windows=", 8))
			max_windows = atoi(a + 8);
		else if (!strncmp(a, "toggle=", 7))
			toggle = atoi(a + 7) != 0;
		else if (!strncmp(a, "skip=", 5))
			skip_marks = atol(a + 5);
		else if (!strncmp(a, "hist=", 5))
			hist_window = atoi(a + 5);
		else if (!strncmp(a, "out=", 4))
			out = a + 4;
		else {
			fprintf(stderr, "tcg-pages: unknown argument %s\n", a);
			return -1;
		}
	}
	if (!n_splits || !mark_at || max_windows < 1 || max_windows > MAX_WINDOWS) {
		fprintf(stderr, "tcg-pages: need split=ADDR mark=ADDR [windows=1..%d]\n", MAX_WINDOWS);
		return -1;
	}
	win = calloc(MAX_WINDOWS, sizeof(*win));
	hist = calloc(HIST_SIZE, sizeof(*hist));
	if (!win || !hist)
		return -1;
	qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
	qemu_plugin_register_atexit_cb(id, report, NULL);
	return 0;
}

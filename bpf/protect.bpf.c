// SPDX-License-Identifier: GPL-2.0
/*
 * cloudtaser tracepoint backend: protects registered processes from being read by others.
 *
 * Policy reaches this program only through maps: `protected` (tgid -> start time, flags and
 * the id of the pod's accessor allow-list), written by the node agent on registration and by
 * the fork hook below; `accessors` ((list id, executable, uid) -> 1), written by the agent. Violations are
 * reported on the `events` ring buffer and, unless the entry is audit-only, the offender is
 * killed with bpf_send_signal(SIGKILL): tracepoints cannot deny a syscall, but a pending
 * SIGKILL makes the kernel's remote reads (environ, mem, process_vm_*) bail out and the
 * offender never returns to user space with the data.
 *
 * PID reuse: entries are keyed by tgid and carry the task's start time in clock ticks since
 * boot (the same number as field 22 of /proc/PID/stat); an entry counts only while the live
 * task's start time matches it.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

/* Mirror of cloudtaser.engine.plans.ProtectionFlag. */
#define PF_ENVIRON      (1u << 0)
#define PF_MEM          (1u << 1)
#define PF_FDS          (1u << 2)
#define PF_PTRACE       (1u << 3)
#define PF_PIDFD_GETFD  (1u << 4)
#define PF_CORE_DUMP    (1u << 5)
#define PF_AUDIT_ONLY   (1u << 8)
#define PF_KILL         (1u << 9)

/* Event kinds (mirrored in layouts.py). */
#define EV_ENVIRON              1
#define EV_MEM                  2
#define EV_PTRACE               3
#define EV_PROCESS_VM_READV     4
#define EV_PROCESS_VM_WRITEV    5
#define EV_PIDFD_GETFD          6
#define EV_FD                   7
#define EV_COREDUMP             8

/* Actions. */
#define ACT_AUDITED 0
#define ACT_KILLED  1
#define ACT_DENIED  2 /* LSM backend: the call failed with EPERM, the offender lives */

#define SIGKILL 9
#define SIGCONT 18
#define PTRACE_ATTACH 16
#define PTRACE_SEIZE 0x4206
#define PID_FS_MAGIC 0x50494446
#define TMPFS_MAGIC 0x01021994      /* memfd_create (shmem) */
#define HUGETLBFS_MAGIC 0x958458f6  /* memfd_create(MFD_HUGETLB) */
#define SECRETMEM_MAGIC 0x5345434d  /* memfd_secret */
#define USER_HZ_NS 10000000ULL /* NSEC_PER_SEC / USER_HZ(100) */

struct protected_entry {
	__u64 start_time; /* clock ticks since boot, as /proc/PID/stat field 22 */
	__u32 flags;      /* ProtectionFlag bits */
	__u32 accessors;  /* id of this process's allow-list in `accessors`; 0: nobody allowed */
};

struct event {
	__u64 timestamp_ns;  /* bpf_ktime_get_ns */
	__u32 kind;          /* EV_* */
	__u32 action;        /* ACT_* */
	__u32 flags;         /* the target's ProtectionFlag bits */
	__u32 target_tgid;
	__u32 opener_tgid;
	__u32 opener_pid;
	__u32 opener_uid;
	__u32 pad;
	char comm[16];       /* the opener's comm */
	char exe[64];        /* the basename of the opener's executable (mm->exe_file), "" if none */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct protected_entry);
} protected SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

/* ptrace attach in flight: tid of the tracer -> tgid of the victim (for the SIGCONT). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} ptrace_victims SEC(".maps");

/* Files holding a protected process's secrets (memfd, memfd_secret), by inode: an open of the
 * same inode by anyone but the owner is an open through /proc/PID/fd/N or
 * /proc/PID/map_files/..., whatever path was used. Filled here when a process protected with
 * PF_FDS creates one, and by the agent at registration for files created earlier. LRU: entries
 * of processes that exited are simply evicted (an entry counts only while its owner is
 * protected with a matching start time). */
struct file_key {
	__u64 ino;
	__u32 dev;  /* kernel dev_t of the inode's superblock (MKDEV: major << 20 | minor) */
	__u32 pad;
};

struct file_owner {
	__u32 tgid;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct file_key);
	__type(value, struct file_owner);
} protected_files SEC(".maps");

/* Accessors allowed by policy, per allow-list: the agent gives each distinct list among the
 * pods of its node an id (protected_entry.accessors, inherited on fork) and writes the list's
 * executables (mm->exe_file) by inode, with the opener's uid or ALLOWED_ANY_UID, under that id
 * (Agent.accessor_list). An executable one pod allows is not allowed on another pod's process. */
#define ALLOWED_ANY_UID 0xffffffffu

struct accessor_key {
	__u64 ino;
	__u32 dev;   /* kernel dev_t of the executable's superblock */
	__u32 uid;   /* the opener's uid, or ALLOWED_ANY_UID */
	__u32 list;  /* the allow-list's id (protected_entry.accessors), never 0 */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct accessor_key);
	__type(value, __u32);
} accessors SEC(".maps");

/* Anchors so the event struct is described in the object's BTF (checked by layouts tests). */
struct event *unused_event_anchor __attribute__((unused));
struct file_key *unused_file_key_anchor __attribute__((unused));
struct file_owner *unused_file_owner_anchor __attribute__((unused));
struct accessor_key *unused_accessor_key_anchor __attribute__((unused));

/* Typeless kernel symbols: the `open` of /proc/PID/{environ,mem} (and task/TID/...). */
extern const void environ_open __ksym;
extern const void mem_open __ksym;

extern struct task_struct *bpf_task_from_vpid(s32 vpid) __ksym __weak;
extern struct task_struct *bpf_task_from_pid(s32 pid) __ksym __weak;
extern void bpf_task_release(struct task_struct *p) __ksym __weak;
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;
extern int bpf_send_signal_task(struct task_struct *task, int sig, enum pid_type type,
				__u64 value) __ksym __weak;

static __always_inline __u64 task_start_ticks(struct task_struct *task)
{
	return BPF_CORE_READ(task, start_boottime) / USER_HZ_NS;
}

/* The entry protecting `tgid` whose live leader started at `start`, or NULL. */
static __always_inline struct protected_entry *lookup_protected(__u32 tgid, __u64 start)
{
	struct protected_entry *e = bpf_map_lookup_elem(&protected, &tgid);

	if (!e || e->start_time != start)
		return NULL;
	return e;
}

/* The basename of `task`'s executable into `buf` ("" for a kernel thread or on a fault). */
static __always_inline void exe_name(struct task_struct *task, char *buf, __u32 size)
{
	const unsigned char *name = BPF_CORE_READ(task, mm, exe_file, f_path.dentry, d_name.name);

	buf[0] = 0;
	if (name)
		bpf_probe_read_kernel_str(buf, size, name);
}

/* Put an event on the ring buffer: the current task did `kind` to `target_tgid`. */
static __always_inline void emit(__u32 kind, __u32 target_tgid, __u32 flags, __u32 action)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct event *ev;

	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev)
		return;
	ev->timestamp_ns = bpf_ktime_get_ns();
	ev->kind = kind;
	ev->action = action;
	ev->flags = flags;
	ev->target_tgid = target_tgid;
	ev->opener_tgid = id >> 32;
	ev->opener_pid = (__u32)id;
	ev->opener_uid = (__u32)bpf_get_current_uid_gid();
	ev->pad = 0;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	exe_name((struct task_struct *)bpf_get_current_task_btf(), ev->exe, sizeof(ev->exe));
	bpf_ringbuf_submit(ev, 0);
}

static __always_inline void report(__u32 kind, __u32 target_tgid, __u32 flags, bool kill)
{
	if (kill)
		bpf_send_signal(SIGKILL);
	emit(kind, target_tgid, flags, kill ? ACT_KILLED : ACT_AUDITED);
}

/* The current task runs an executable allow-list `list` names (for its uid or any uid). Runs
 * only for accesses to a protected process, never on the hot path of unprotected ones. */
static __always_inline bool current_is_allowed(__u32 list)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
	struct accessor_key key = {};
	struct inode *inode;

	if (!list)
		return false; /* the protected process's policy allows nobody */
	key.list = list;
	inode = BPF_CORE_READ(task, mm, exe_file, f_inode);
	if (!inode)
		return false;
	key.ino = BPF_CORE_READ(inode, i_ino);
	key.dev = BPF_CORE_READ(inode, i_sb, s_dev);
	key.uid = (__u32)bpf_get_current_uid_gid();
	if (bpf_map_lookup_elem(&accessors, &key))
		return true;
	key.uid = ALLOWED_ANY_UID;
	return bpf_map_lookup_elem(&accessors, &key) != NULL;
}

/* `e` if it protects against `needed` and the current task is not an allowed accessor. */
static __always_inline struct protected_entry *guarded(struct protected_entry *e, __u32 needed)
{
	if (!e || !(e->flags & needed) || current_is_allowed(e->accessors))
		return NULL;
	return e;
}

/* The entry that makes an access by the current task to `target` (a task of the protected
 * process) a violation, or NULL. Both backends decide with this. */
static __always_inline struct protected_entry *offended(struct task_struct *target, __u32 needed)
{
	__u32 tgid = BPF_CORE_READ(target, tgid);
	__u32 self = bpf_get_current_pid_tgid() >> 32;
	struct task_struct *leader;

	if (tgid == self)
		return NULL; /* a process may read itself */
	leader = BPF_CORE_READ(target, group_leader);
	return guarded(lookup_protected(tgid, task_start_ticks(leader)), needed);
}

/* Decide on an access by the current task to `target` (a task of the protected process). */
static __always_inline bool check_target(struct task_struct *target, __u32 needed, __u32 kind)
{
	struct protected_entry *e = offended(target, needed);
	__u32 flags;

	if (!e)
		return false;
	flags = e->flags;
	report(kind, BPF_CORE_READ(target, tgid), flags, !(flags & PF_AUDIT_ONLY));
	return true;
}

/* The task of the first PIDTYPE_PID user of `pid` (the thread the pid names), or NULL. */
static __always_inline struct task_struct *pid_task_of(struct pid *pid)
{
	struct hlist_node *first;

	if (!pid)
		return NULL;
	first = BPF_CORE_READ(pid, tasks[PIDTYPE_PID].first);
	if (!first)
		return NULL;
	return (struct task_struct *)((void *)first - bpf_core_field_offset(struct task_struct, pid_links));
}

/* Plain (fault-guarded) loads through the task's BTF pointer, not a helper call per field:
 * this runs on every open of the node (benchmarks/kernel.py). */
static __always_inline struct file *current_fd_file(int fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
	struct files_struct *files = task->files;
	struct fdtable *fdt;
	struct file **fds;
	struct file *file = NULL;

	if (fd < 0 || !files)
		return NULL;
	fdt = files->fdt;
	if (!fdt || (unsigned int)fd >= fdt->max_fds)
		return NULL;
	fds = fdt->fd;
	bpf_core_read(&file, sizeof(file), &fds[fd]);
	return file;
}

static __always_inline void file_key_of(struct file *file, struct file_key *key)
{
	struct inode *inode = BPF_CORE_READ(file, f_inode);

	key->ino = BPF_CORE_READ(inode, i_ino);
	key->dev = BPF_CORE_READ(inode, i_sb, s_dev);
	key->pad = 0;
}

/* The opened file is a protected process's secret file, opened by someone else. */
static __always_inline void check_protected_file(struct file *file)
{
	struct file_key key = {};
	struct file_owner *owner;
	struct task_struct *target;
	__u32 tgid;

	file_key_of(file, &key);
	owner = bpf_map_lookup_elem(&protected_files, &key);
	if (!owner)
		return;
	tgid = owner->tgid;
	if (tgid == bpf_get_current_pid_tgid() >> 32)
		return; /* the owner itself (e.g. /proc/self/fd/N) */
	if (!bpf_task_from_pid || !bpf_task_release)
		return;
	target = bpf_task_from_pid(tgid);
	if (!target)
		return;
	check_target(target, PF_FDS, EV_FD);
	bpf_task_release(target);
}

/* /proc/PID/{environ,mem} (and task/TID/...), known by the file's open op: the protection
 * it needs, the event kind, and the process it exposes (the proc inode's pid, however the path
 * was spelled; NULL when that process is gone). 0 when `open` is neither. Both backends. */
static __always_inline __u32 proc_file_target(struct file *file, void *open, __u32 *kind,
					      struct task_struct **target)
{
	struct proc_inode *pi;
	__u32 needed;

	if (open == &environ_open) {
		needed = PF_ENVIRON;
		*kind = EV_ENVIRON;
	} else if (open == &mem_open) {
		needed = PF_MEM;
		*kind = EV_MEM;
	} else {
		return 0;
	}
	pi = container_of(BPF_CORE_READ(file, f_inode), struct proc_inode, vfs_inode);
	*target = pid_task_of(BPF_CORE_READ(pi, pid));
	return needed;
}

static __always_inline int check_opened_fd(long ret)
{
	struct file *file;
	struct task_struct *target = NULL;
	struct file *f;
	unsigned long magic;
	void *open;
	__u32 needed, kind = 0;

	if (ret < 0)
		return 0;
	file = current_fd_file((int)ret);
	if (!file)
		return 0;
	if (bpf_rdonly_cast) {
		/* The hot path, for every open of the node: plain loads (6.2+), and the map lookup
		 * only for files that can be secret files at all. */
		f = bpf_rdonly_cast(file, bpf_core_type_id_kernel(struct file));
		open = f->f_op->open;
		if (open != &environ_open && open != &mem_open) {
			magic = f->f_inode->i_sb->s_magic;
			if (magic != TMPFS_MAGIC && magic != HUGETLBFS_MAGIC && magic != SECRETMEM_MAGIC)
				return 0;
		}
	} else {
		open = BPF_CORE_READ(file, f_op, open);
	}
	needed = proc_file_target(file, open, &kind, &target);
	if (!needed) {
		check_protected_file(file);
		return 0;
	}
	if (!target)
		return 0;
	check_target(target, needed, kind);
	return 0;
}

/* A process protected with PF_FDS created a secret file: remember its inode. */
static __always_inline int remember_created_fd(long ret)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct protected_entry *e;
	struct file_owner owner = {};
	struct file_key key = {};
	struct file *file;

	if (ret < 0)
		return 0;
	e = lookup_protected(tgid, task_start_ticks(task->group_leader));
	if (!e || !(e->flags & PF_FDS))
		return 0;
	file = current_fd_file((int)ret);
	if (!file)
		return 0;
	file_key_of(file, &key);
	owner.tgid = tgid;
	bpf_map_update_elem(&protected_files, &key, &owner, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_memfd_create")
int exit_memfd_create(struct trace_event_raw_sys_exit *ctx)
{
	return remember_created_fd(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_memfd_secret")
int exit_memfd_secret(struct trace_event_raw_sys_exit *ctx)
{
	return remember_created_fd(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_openat")
int exit_openat(struct trace_event_raw_sys_exit *ctx)
{
	return check_opened_fd(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_openat2")
int exit_openat2(struct trace_event_raw_sys_exit *ctx)
{
	return check_opened_fd(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_open")
int exit_open(struct trace_event_raw_sys_exit *ctx)
{
	return check_opened_fd(ctx->ret);
}

/* `vpid` is in the caller's pid namespace; bpf_task_from_vpid converts it. */
static __always_inline bool check_vpid(s32 vpid, __u32 needed, __u32 kind)
{
	struct task_struct *target;
	bool hit;

	if (vpid <= 0 || !bpf_task_from_vpid || !bpf_task_release)
		return false;
	target = bpf_task_from_vpid(vpid);
	if (!target)
		return false;
	hit = check_target(target, needed, kind);
	bpf_task_release(target);
	return hit;
}

SEC("tracepoint/syscalls/sys_enter_ptrace")
int enter_ptrace(struct trace_event_raw_sys_enter *ctx)
{
	long request = ctx->args[0];
	s32 vpid = (s32)ctx->args[1];
	struct task_struct *target;
	struct protected_entry *e;
	__u32 tid, tgid;

	if (request != PTRACE_ATTACH && request != PTRACE_SEIZE)
		return 0;
	if (!check_vpid(vpid, PF_PTRACE, EV_PTRACE))
		return 0;
	/* The attach still completes before the SIGKILL lands; remember the victim so the exit
	 * hook can SIGCONT it (PTRACE_ATTACH queues a SIGSTOP that would leave it stopped). */
	if (request != PTRACE_ATTACH || !bpf_task_from_vpid || !bpf_task_release)
		return 0;
	target = bpf_task_from_vpid(vpid);
	if (!target)
		return 0;
	tgid = target->tgid;
	bpf_task_release(target);
	e = bpf_map_lookup_elem(&protected, &tgid);
	if (e && (e->flags & PF_AUDIT_ONLY))
		return 0; /* audit: the tracer lives and waits for that SIGSTOP (gdb would hang) */
	tid = (__u32)bpf_get_current_pid_tgid();
	bpf_map_update_elem(&ptrace_victims, &tid, &tgid, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_ptrace")
int exit_ptrace(struct trace_event_raw_sys_exit *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u32 *victim = bpf_map_lookup_elem(&ptrace_victims, &tid);
	struct task_struct *task;
	__u32 tgid;

	if (!victim)
		return 0;
	tgid = *victim;
	bpf_map_delete_elem(&ptrace_victims, &tid);
	if (!bpf_task_from_pid || !bpf_task_release || !bpf_send_signal_task)
		return 0;
	task = bpf_task_from_pid(tgid);
	if (!task)
		return 0;
	bpf_send_signal_task(task, SIGCONT, PIDTYPE_TGID, 0);
	bpf_task_release(task);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_process_vm_readv")
int enter_process_vm_readv(struct trace_event_raw_sys_enter *ctx)
{
	check_vpid((s32)ctx->args[0], PF_MEM, EV_PROCESS_VM_READV);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_process_vm_writev")
int enter_process_vm_writev(struct trace_event_raw_sys_enter *ctx)
{
	check_vpid((s32)ctx->args[0], PF_MEM, EV_PROCESS_VM_WRITEV);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_pidfd_getfd")
int enter_pidfd_getfd(struct trace_event_raw_sys_enter *ctx)
{
	struct file *file = current_fd_file((int)ctx->args[0]);
	struct task_struct *target;
	struct pid *pid;

	if (!file)
		return 0;
	if (BPF_CORE_READ(file, f_inode, i_sb, s_magic) != PID_FS_MAGIC)
		return 0;
	/* pidfs: the struct pid is the inode's i_private (private_data did not lead to the task on 6.18). */
	pid = (struct pid *)BPF_CORE_READ(file, f_inode, i_private);
	target = pid_task_of(pid);
	if (!target)
		return 0;
	check_target(target, PF_PIDFD_GETFD, EV_PIDFD_GETFD);
	return 0;
}

/* A child process of a protected process is protected with the same flags. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = parent->tgid;
	__u32 ctgid = child->tgid;
	struct protected_entry *e;
	struct protected_entry ce = {};

	if (ptgid == ctgid)
		return 0; /* a new thread */
	e = lookup_protected(ptgid, task_start_ticks(parent->group_leader));
	if (!e)
		return 0;
	ce.start_time = task_start_ticks(child);
	ce.flags = e->flags;
	ce.accessors = e->accessors;
	bpf_map_update_elem(&protected, &ctgid, &ce, BPF_ANY);
	return 0;
}

/* The tracepoint's group_dead argument is recent (6.1 has only the task); do_exit() has
 * already decremented signal->live when it fires, so the last thread sees 0 on every kernel. */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *task)
{
	__u32 tgid = task->tgid;

	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	if (lookup_protected(tgid, task_start_ticks(task->group_leader)))
		bpf_map_delete_elem(&protected, &tgid);
	return 0;
}

/* Signals whose default action dumps core (the kernel's SIG_KERNEL_COREDUMP_MASK). */
#define COREDUMP_SIGNALS ((1u << 3) | (1u << 4) | (1u << 5) | (1u << 6) | (1u << 7) | (1u << 8) | \
			  (1u << 11) | (1u << 24) | (1u << 25) | (1u << 31))

/*
 * Core dumps. get_signal() fires signal_deliver for a dequeued signal just before acting on it;
 * a core-dumping signal with the default action then goes to do_coredump(), whose
 * coredump_wait() -> zap_threads() gives up (no dump, no core_pattern pipe helper started)
 * when the group already has SIGNAL_GROUP_EXIT set. A SIGKILL sent here sets it: with the
 * siglock held (irqs off) bpf_send_signal queues it as irq_work, which runs as soon as
 * get_signal() drops the lock, before do_coredump(). The process was dying anyway; it dies of
 * SIGKILL instead, without a dump. RLIMIT_CORE=0 alone does not help: a piped core_pattern
 * ignores it, and the app may raise it again. The offender is the sender of a kill() (si_pid,
 * in the victim's pid namespace), or the process itself for a fault.
 */
SEC("tp_btf/signal_deliver")
int BPF_PROG(on_signal_deliver, int sig, struct kernel_siginfo *info, struct k_sigaction *ka)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	struct task_struct *sender = NULL;
	struct protected_entry *e;
	struct event *ev;
	__u32 flags;
	bool kill;

	if (sig <= 0 || sig >= 32 || !(COREDUMP_SIGNALS & (1u << sig)))
		return 0;
	if (BPF_CORE_READ(ka, sa.sa_handler))
		return 0; /* handled or ignored: no dump */
	e = lookup_protected(tgid, task_start_ticks(task->group_leader));
	if (!e || !(e->flags & PF_CORE_DUMP))
		return 0;
	flags = e->flags;
	kill = !(flags & PF_AUDIT_ONLY);
	if (kill)
		bpf_send_signal(SIGKILL);
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev)
		return 0;
	ev->timestamp_ns = bpf_ktime_get_ns();
	ev->kind = EV_COREDUMP;
	ev->action = kill ? ACT_KILLED : ACT_AUDITED;
	ev->flags = flags;
	ev->target_tgid = tgid;
	ev->opener_tgid = tgid;
	ev->opener_pid = (__u32)id;
	ev->opener_uid = (__u32)bpf_get_current_uid_gid();
	ev->pad = 0;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	exe_name(task, ev->exe, sizeof(ev->exe));
	if (info && BPF_CORE_READ(info, si_code) <= 0 && bpf_task_from_vpid && bpf_task_release) {
		/* SI_USER, SI_QUEUE, SI_TKILL...: sent by a process, whose pid is in our namespace */
		sender = bpf_task_from_vpid(BPF_CORE_READ(info, _sifields._kill._pid));
		if (sender) {
			ev->opener_tgid = sender->tgid;
			ev->opener_pid = sender->pid;
			ev->opener_uid = BPF_CORE_READ(sender, real_cred, uid.val);
			bpf_probe_read_kernel_str(ev->comm, sizeof(ev->comm), sender->comm);
			exe_name(sender, ev->exe, sizeof(ev->exe));
			bpf_task_release(sender);
		}
	} else if (info && BPF_CORE_READ(info, si_code) <= 0) {
		/* No bpf_task_from_vpid (6.1): the siginfo's pid and uid, as the victim sees them;
		 * the sender's comm is unknown. */
		ev->opener_tgid = ev->opener_pid = BPF_CORE_READ(info, _sifields._kill._pid);
		ev->opener_uid = BPF_CORE_READ(info, _sifields._kill._uid);
		ev->comm[0] = '?';
		ev->comm[1] = 0;
		ev->exe[0] = 0;
	}
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

/*
 * BPF LSM backend. The same maps and events; the offending call fails with -EPERM and the
 * offender lives (PF_KILL: it is also killed); audit-only entries log and allow. The loader
 * attaches these instead of the tracepoint programs that kill (loading.TRACEPOINT_ONLY) when
 * BPF LSM programs load on the node; the fork, exit, memfd and core-dump programs run with
 * either backend.
 */
#define EPERM 1
/* x86_64 numbers of the syscalls whose access check is ptrace_access_check. */
#define NR_PTRACE              101
#define NR_PROCESS_VM_READV    310
#define NR_PROCESS_VM_WRITEV   311
#define NR_PIDFD_GETFD         438

/* 0 (allow) or -EPERM for the violation `e` (NULL: none) of `target_tgid`, reported. */
static __always_inline int lsm_verdict(struct protected_entry *e, __u32 target_tgid, __u32 kind)
{
	__u32 flags;

	if (!e)
		return 0;
	flags = e->flags;
	if (flags & PF_AUDIT_ONLY) {
		emit(kind, target_tgid, flags, ACT_AUDITED);
		return 0;
	}
	if (flags & PF_KILL) {
		bpf_send_signal(SIGKILL);
		emit(kind, target_tgid, flags, ACT_KILLED);
	} else {
		emit(kind, target_tgid, flags, ACT_DENIED);
	}
	return -EPERM;
}

/* /proc/PID/{environ,mem} (and task/TID/...): see proc_file_target. 1 when `file` is
 * neither. */
static __always_inline int lsm_check_proc_file(struct file *file)
{
	struct task_struct *target = NULL;
	__u32 needed, kind = 0;

	needed = proc_file_target(file, BPF_CORE_READ(file, f_op, open), &kind, &target);
	if (!needed)
		return 1;
	if (!target)
		return 0;
	return lsm_verdict(offended(target, needed), BPF_CORE_READ(target, tgid), kind);
}

/* A protected process's secret file (memfd, memfd_secret) opened by another process: through
 * /proc/PID/fd/N or /proc/PID/map_files/..., since those open the file itself. */
static __always_inline int lsm_check_secret_file(struct file *file)
{
	struct file_key key = {};
	struct file_owner *owner;
	struct task_struct *target;
	struct protected_entry *e;
	__u32 tgid;

	file_key_of(file, &key);
	owner = bpf_map_lookup_elem(&protected_files, &key);
	if (!owner)
		return 0;
	tgid = owner->tgid;
	if (tgid == bpf_get_current_pid_tgid() >> 32)
		return 0;
	if (bpf_task_from_pid && bpf_task_release) {
		target = bpf_task_from_pid(tgid);
		if (!target)
			return 0;
		e = offended(target, PF_FDS);
		bpf_task_release(target);
	} else {
		/* Before 6.2 (no bpf_task_from_pid): the entry alone; the exit hook removes it when
		 * the owner exits. */
		e = guarded(bpf_map_lookup_elem(&protected, &tgid), PF_FDS);
	}
	return lsm_verdict(e, tgid, EV_FD);
}

SEC("lsm/file_open")
int BPF_PROG(lsm_file_open, struct file *file, int ret)
{
	int verdict;

	if (ret)
		return ret;
	verdict = lsm_check_proc_file(file);
	if (verdict != 1)
		return verdict;
	return lsm_check_secret_file(file);
}

/* Reads and writes through /proc/PID/{environ,mem} fds opened before the process was
 * registered (file_open saw no protected target then). */
SEC("lsm/file_permission")
int BPF_PROG(lsm_file_permission, struct file *file, int mask, int ret)
{
	int verdict;

	if (ret)
		return ret;
	verdict = lsm_check_proc_file(file);
	return verdict == 1 ? 0 : verdict;
}

/* ptrace attach/seize, process_vm_readv/writev (via mm_access) and pidfd_getfd all ask
 * ptrace_may_access(), which ends in this hook; the syscall being served tells which vector
 * it is. Other callers of ptrace_may_access (/proc/PID/stat fields, fd links, kcmp...) are
 * not vectors here: environ and mem opens are decided in file_open, fds by their inode. */
SEC("lsm/ptrace_access_check")
int BPF_PROG(lsm_ptrace_access_check, struct task_struct *child, unsigned int mode, int ret)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
	struct pt_regs *regs;
	__u32 needed, kind;
	long nr;

	if (ret)
		return ret;
	regs = (struct pt_regs *)bpf_task_pt_regs(task);
	nr = BPF_CORE_READ(regs, orig_ax);
	switch (nr) {
	case NR_PTRACE:
		needed = PF_PTRACE;
		kind = EV_PTRACE;
		break;
	case NR_PROCESS_VM_READV:
		needed = PF_MEM;
		kind = EV_PROCESS_VM_READV;
		break;
	case NR_PROCESS_VM_WRITEV:
		needed = PF_MEM;
		kind = EV_PROCESS_VM_WRITEV;
		break;
	case NR_PIDFD_GETFD:
		needed = PF_PIDFD_GETFD;
		kind = EV_PIDFD_GETFD;
		break;
	default:
		return 0;
	}
	return lsm_verdict(offended(child, needed), BPF_CORE_READ(child, tgid), kind);
}

// SPDX-License-Identifier: GPL-2.0
/*
 * cloudtaser: keeps every other process (but the executables its allow-list names, in the
 * `accessors` map) from a registered process's memory, environment and secret files (memfd,
 * memfd_secret; its protected family may use the ones it inherited): /proc/PID/{environ,mem,
 * fd,map_files}, ptrace, process_vm_*, pidfd_getfd, process_madvise; and from its pod's
 * credential volume. A core-dumping signal kills it without a dump. Which of these apply is the
 * entry's protection_flag bits (protect.h). Two backends in one object
 * (bpf/cloudtaser/bpf/programs.py picks):
 *
 * - tracepoint backend (kernels where BPF LSM programs do not load): syscall tracepoints and
 *   io_uring's own tracepoints see the access and SIGKILL the offender (bpf_send_signal). A
 *   pending SIGKILL makes the kernel's remote reads (environ, mem, process_vm_*) bail out before
 *   copying anything; where the kernel copies anyway (a read of a memfd copy, a mapping), the
 *   offender dies before it returns to user space. What a kill cannot undo (a copy into memory
 *   shared with a surviving process) is listed in docs/THREAT-MODEL.md.
 * - LSM backend: the same decisions in LSM hooks, which make the call fail with EPERM.
 *
 * Both check the *use* of a protected file (every read, write, mmap and transfer), not only its
 * open, so an fd that outlives its opener (shared fd table, SCM_RIGHTS, pidfd_getfd, opened
 * before registration) is useless. Node-wide, while anything is protected: loads of tracing
 * BPF programs, user-memory perf sampling and tracefs probe definitions by anyone but the agent
 * and allow-listed tools are stopped. The agent's maps are frozen (no bpf() syscall writes them,
 * root included); the agent writes through the agent_op program, which only the process holding
 * the agent role (the `node` map) may run.
 *
 * Policy reaches this program only through maps. Constants and structs shared with the agent
 * are in protect.h. PID reuse: entries are keyed by tgid and carry the task's start time in
 * clock ticks since boot; an entry counts only while the live task's start time matches it.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "protect.h"

char LICENSE[] SEC("license") = "GPL";

#define SIGKILL 9
#define SIGCONT 18
#define EPERM 1
#define ENOENT 2
#define EBUSY 16
#define EINVAL 22
#define PTRACE_ATTACH 16
#define PTRACE_SEIZE 0x4206
#define PID_FS_MAGIC 0x50494446
#define TMPFS_MAGIC 0x01021994      /* memfd_create (shmem) */
#define HUGETLBFS_MAGIC 0x958458f6  /* memfd_create(MFD_HUGETLB) */
#define SECRETMEM_MAGIC 0x5345434d  /* memfd_secret */
#define TRACEFS_MAGIC 0x74726163
#define FMODE_WRITE 0x2
#define USER_HZ_NS 10000000ULL /* NSEC_PER_SEC / USER_HZ(100) */
#define ALLOWED_ANY_UID 0xffffffffu
/* The allow-list of executables that may load tracing BPF programs (Agent.allow_bpf_loader). */
#define BPF_LOADERS_LIST 0xfffffffeu
/* The executables that may read protected credential volumes: the kubelet (it rotates the
 * token and compares what it writes), Agent.allow_credential_reader. */
#define CREDENTIAL_READERS_LIST 0xfffffffdu
#define PERF_FLAG_PID_CGROUP (1u << 2)
#define PERF_SAMPLE_REGS_USER (1ull << 12)
#define PERF_SAMPLE_STACK_USER (1ull << 13)
#define PERF_SAMPLE_REGS_INTR (1ull << 18)
#define PERF_EXCLUDE_USER (1ull << 4) /* bit 4 of perf_event_attr's flag word (offset 40) */
#define REQ_F_FIXED_FILE 1ull
#define IO_FILE_PTR_MASK (~3ul)

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

/* Files holding a protected process's secrets (memfd, memfd_secret), by inode: a use of the
 * same inode by anyone but the owner is a theft, whatever path gave the fd (/proc/PID/fd/N,
 * map_files, pidfd_getfd, SCM_RIGHTS, open_by_handle_at, a shared fd table). Filled here when a
 * process protected with PF_FDS creates one, and by the agent at registration for files created
 * earlier. LRU: entries of processes that exited are simply evicted (an entry counts only while
 * its owner is protected with a matching start time). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct file_key);
	__type(value, struct file_owner);
} protected_files SEC(".maps");

/* Filesystems holding a protected process's credentials (the projected service-account token,
 * the client certificate's key: their tmpfs volumes), by the superblock's dev_t: the agent
 * adds the ones the wrapper names at registration. A file on one, read or opened by anyone but
 * the owner's family (or the kubelet, CREDENTIAL_READERS_LIST), would let that process log in
 * to OpenBao as the pod. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct file_owner);
} protected_mounts SEC(".maps");

/* Accessors allowed by policy, per allow-list: the agent gives each distinct list among the
 * pods of its node an id (protected_entry.accessors, inherited on fork) and writes the list's
 * executables (mm->exe_file) by inode, with the opener's uid or ALLOWED_ANY_UID, under that id.
 * An executable one pod allows is not allowed on another pod's process. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct accessor_key);
	__type(value, __u32);
} accessors SEC(".maps");

/* Who holds the agent role (written by agent_op's AGENT_OP_CLAIM, cleared when that process exits). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct node_state);
} node SEC(".maps");

/* Anchors so the contract's structs and enums are described in the object's BTF. */
struct event *unused_event_anchor __attribute__((unused));
struct file_key *unused_file_key_anchor __attribute__((unused));
struct file_owner *unused_file_owner_anchor __attribute__((unused));
struct accessor_key *unused_accessor_key_anchor __attribute__((unused));
struct node_state *unused_node_state_anchor __attribute__((unused));
struct agent_op *unused_agent_op_anchor __attribute__((unused));
enum protection_flag *unused_pf_anchor __attribute__((unused));
enum entry_state *unused_es_anchor __attribute__((unused));
enum event_kind *unused_ev_anchor __attribute__((unused));
enum access_via *unused_via_anchor __attribute__((unused));
enum event_note *unused_note_anchor __attribute__((unused));
enum action *unused_action_anchor __attribute__((unused));
enum agent_op_code *unused_op_anchor __attribute__((unused));
enum agent_map *unused_am_anchor __attribute__((unused));

/* Typeless kernel symbols: the `open` of /proc/PID/{environ,mem} (and task/TID/...). */
extern const void environ_open __ksym;
extern const void mem_open __ksym;

extern struct task_struct *bpf_task_from_vpid(s32 vpid) __ksym __weak;
extern struct task_struct *bpf_task_from_pid(s32 pid) __ksym __weak;
extern void bpf_task_release(struct task_struct *p) __ksym __weak;
extern struct task_struct *bpf_task_acquire(struct task_struct *p) __ksym __weak;
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;
extern int bpf_send_signal_task(struct task_struct *task, int sig, enum pid_type type,
				__u64 value) __ksym __weak;
extern int bpf_iter_task_new(struct bpf_iter_task *it, struct task_struct *task,
			     unsigned int flags) __ksym __weak;
extern struct task_struct *bpf_iter_task_next(struct bpf_iter_task *it) __ksym __weak;
extern void bpf_iter_task_destroy(struct bpf_iter_task *it) __ksym __weak;

/* ---- identity, entries, events --------------------------------------------------------- */

static __always_inline __u64 task_start_ticks(struct task_struct *task)
{
	return BPF_CORE_READ(task, start_boottime) / USER_HZ_NS;
}

static __always_inline __u64 current_start_ticks(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();

	return task_start_ticks(BPF_CORE_READ(task, group_leader));
}

/* The entry protecting `tgid` whose live leader started at `start`, or NULL. */
static __always_inline struct protected_entry *lookup_protected(__u32 tgid, __u64 start)
{
	struct protected_entry *e = bpf_map_lookup_elem(&protected, &tgid);

	if (!e || e->start_time != start)
		return NULL;
	return e;
}

static __always_inline struct node_state *node_state(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&node, &zero);
}

/* The current process holds the agent role. */
static __always_inline bool current_is_agent(void)
{
	struct node_state *ns = node_state();

	if (!ns || !ns->agent_tgid || ns->agent_tgid != bpf_get_current_pid_tgid() >> 32)
		return false;
	return ns->agent_start == current_start_ticks();
}

/* `task`'s process is protected, or is the agent. */
static __always_inline bool is_protected_task(struct task_struct *task)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);
	__u64 start = task_start_ticks(BPF_CORE_READ(task, group_leader));
	struct node_state *ns;

	if (lookup_protected(tgid, start))
		return true;
	ns = node_state();
	return ns && ns->agent_tgid == tgid && ns->agent_start == start;
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
static __always_inline void emit(__u32 kind, __u32 target_tgid, __u32 flags, __u32 action,
				 __u16 via, __u16 note)
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
	ev->via = via;
	ev->note = note;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	exe_name((struct task_struct *)bpf_get_current_task_btf(), ev->exe, sizeof(ev->exe));
	bpf_ringbuf_submit(ev, 0);
}

static __always_inline bool is_protected_task(struct task_struct *task);

/*
 * A kill does not take what the offender shares: a process sharing its fd table (clone
 * CLONE_FILES) keeps the fd it obtained, one sharing its memory (CLONE_VM) sees whatever the
 * kernel copies into it, a mapping included. So every other process sharing the offender's fd
 * table or memory is killed too (never a protected process nor the agent: a protected app's
 * vfork child shares its memory). Walks every process (6.7+ task iterator), but only on a
 * violation. The kills race with the sharer's own next instruction: docs/THREAT-MODEL.md.
 */
static __always_inline void kill_sharers(void)
{
	struct task_struct *self = (struct task_struct *)bpf_get_current_task_btf();
	struct files_struct *files = self->files;
	struct mm_struct *mm = self->mm;
	__u32 tgid = self->tgid;
	struct bpf_iter_task it;
	struct task_struct *t;

	struct task_struct *held;

	if (!bpf_iter_task_new || !bpf_iter_task_next || !bpf_iter_task_destroy ||
	    !bpf_send_signal_task || !bpf_task_acquire || !bpf_task_release)
		return;
	bpf_iter_task_new(&it, NULL, BPF_TASK_ITER_ALL_PROCS);
	while ((t = bpf_iter_task_next(&it))) {
		if (t->tgid == tgid || (t->mm != mm && t->files != files) || !t->mm)
			continue;
		if (is_protected_task(t))
			continue;
		held = bpf_task_acquire(t);
		if (!held)
			continue;
		bpf_send_signal_task(held, SIGKILL, PIDTYPE_TGID, 0);
		bpf_task_release(held);
	}
	bpf_iter_task_destroy(&it);
}

/* Tracepoint backend: kill (unless audit-only) and report. */
static __always_inline void report(__u32 kind, __u32 target_tgid, __u32 flags, __u16 via,
				   __u16 note)
{
	bool kill = !(flags & PF_AUDIT_ONLY);

	if (kill) {
		bpf_send_signal(SIGKILL);
		kill_sharers();
	}
	emit(kind, target_tgid, flags, kill ? ACT_KILLED : ACT_AUDITED, via, note);
}

/* LSM backend: 0 (allow) or -EPERM, reported. */
static __always_inline int verdict(__u32 kind, __u32 target_tgid, __u32 flags, __u16 via,
				   __u16 note)
{
	if (flags & PF_AUDIT_ONLY) {
		emit(kind, target_tgid, flags, ACT_AUDITED, via, note);
		return 0;
	}
	if (flags & PF_KILL) {
		bpf_send_signal(SIGKILL);
		emit(kind, target_tgid, flags, ACT_KILLED, via, note);
	} else {
		emit(kind, target_tgid, flags, ACT_DENIED, via, note);
	}
	return -EPERM;
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

/* The agent protects itself from memory reads, ptrace and fd theft (its environ holds nothing),
 * enforced even when every pod's policy is audit-only: the agent is the enforcement. */
#define AGENT_FLAGS (PF_MEM | PF_FDS | PF_PTRACE | PF_PIDFD_GETFD)

/* The flags of the entry that makes an access by the current task to `target` (a task of a
 * protected process) needing `needed` a violation; 0 when it is none. Both backends decide
 * with this. */
static __always_inline __u32 offence(struct task_struct *target, __u32 needed)
{
	__u32 tgid = BPF_CORE_READ(target, tgid);
	__u32 self = bpf_get_current_pid_tgid() >> 32;
	struct protected_entry *e;
	struct node_state *ns;
	__u32 flags, list = 0;
	__u64 start;

	if (tgid == self)
		return 0; /* a process may read itself */
	start = task_start_ticks(BPF_CORE_READ(target, group_leader));
	e = lookup_protected(tgid, start);
	if (e) {
		flags = e->flags;
		list = e->accessors;
	} else {
		ns = node_state();
		if (!ns || !ns->agent_tgid || ns->agent_tgid != tgid || ns->agent_start != start)
			return 0;
		flags = AGENT_FLAGS;
	}
	if (!(flags & needed))
		return 0;
	if (needed == PF_ENVIRON && (flags & ES_ENVIRON_CLEAN))
		return 0; /* its environment area holds no secret value (registration v2) */
	if (current_is_allowed(list))
		return 0;
	return flags;
}

/* `name` (kernel memory) starts with the NUL-terminated `want`. */
static __always_inline bool name_is(const char *name, const char *want, int size)
{
	char got[16];

	if (size > sizeof(got) || bpf_probe_read_kernel(got, size, name))
		return false;
	for (int i = 0; i < size; i++)
		if (got[i] != want[i])
			return false;
	return true;
}

/* The wrapper's canary (contracts/README.md): the current task and `target` are protected
 * siblings, both named ct-canary. Reported with NOTE_CANARY, which the agent does not count. */
static __always_inline __u16 canary_note(struct task_struct *target)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();

	if (!name_is(task->comm, CANARY_COMM, sizeof(CANARY_COMM)) ||
	    !name_is(target->comm, CANARY_COMM, sizeof(CANARY_COMM)))
		return 0;
	if (BPF_CORE_READ(task, real_parent, tgid) != BPF_CORE_READ(target, real_parent, tgid))
		return 0;
	if (!lookup_protected(bpf_get_current_pid_tgid() >> 32, current_start_ticks()))
		return 0;
	return NOTE_CANARY;
}

/* Tracepoint backend: decide on an access by the current task to `target`. */
static __always_inline bool check_target(struct task_struct *target, __u32 needed, __u32 kind,
					 __u16 via)
{
	__u32 flags = offence(target, needed);

	if (!flags)
		return false;
	report(kind, BPF_CORE_READ(target, tgid), flags, via, canary_note(target));
	return true;
}

/* LSM backend: the verdict on an access by the current task to `target`. */
static __always_inline int lsm_target(struct task_struct *target, __u32 needed, __u32 kind,
				      __u16 via)
{
	__u32 flags = offence(target, needed);

	if (!flags)
		return 0;
	return verdict(kind, BPF_CORE_READ(target, tgid), flags, via, canary_note(target));
}

/* ---- node-wide guards ------------------------------------------------------------------- */

struct any_protected {
	bool any;
	bool enforce;
};

static long find_protected(struct bpf_map *map, __u32 *key, struct protected_entry *e,
			   struct any_protected *found)
{
	found->any = true;
	if (!(e->flags & PF_AUDIT_ONLY)) {
		found->enforce = true;
		return 1; /* stop: nothing more to learn */
	}
	return 0;
}

/* Whether anything on the node is protected, and whether any of it is enforced: node-wide
 * guards apply only then, in enforce mode if any protected process is enforced. For rare calls
 * only (bpf(), perf_event_open, tracefs opens): it walks the map until an enforced entry. */
static __always_inline bool node_protecting(__u32 *flags)
{
	struct any_protected found = {};

	bpf_for_each_map_elem(&protected, find_protected, &found, 0);
	*flags = found.enforce ? 0 : PF_AUDIT_ONLY;
	return found.any;
}

/* A node-wide violation by a process that is neither the agent nor an allow-listed loader. */
static __always_inline bool node_wide_offence(__u32 *flags)
{
	if (!node_protecting(flags) || current_is_agent())
		return false;
	return !current_is_allowed(BPF_LOADERS_LIST);
}

/* BPF program types that can read another process's memory (bpf_probe_read_user in its
 * context, bpf_copy_from_user_task, uprobes) or load such programs (syscall programs). */
static __always_inline bool tracing_prog_type(__u32 type)
{
	switch (type) {
	case BPF_PROG_TYPE_KPROBE:
	case BPF_PROG_TYPE_TRACEPOINT:
	case BPF_PROG_TYPE_PERF_EVENT:
	case BPF_PROG_TYPE_RAW_TRACEPOINT:
	case BPF_PROG_TYPE_RAW_TRACEPOINT_WRITABLE:
	case BPF_PROG_TYPE_TRACING:
	case BPF_PROG_TYPE_STRUCT_OPS:
	case BPF_PROG_TYPE_EXT:
	case BPF_PROG_TYPE_LSM:
	case BPF_PROG_TYPE_SYSCALL:
		return true;
	default:
		return false;
	}
}

/* perf_event_attr sample bits that copy a task's user memory or registers. */
static __always_inline bool samples_user_memory(__u64 sample_type, __u64 attr_flags)
{
	if (attr_flags & PERF_EXCLUDE_USER)
		return false;
	return sample_type & (PERF_SAMPLE_REGS_USER | PERF_SAMPLE_STACK_USER | PERF_SAMPLE_REGS_INTR);
}

/* A tracefs file that defines probes, whose fetch args read the probed process's memory. */
static __always_inline bool is_probe_definition(struct file *file)
{
	const char *name = (const char *)BPF_CORE_READ(file, f_path.dentry, d_name.name);

	if (!name)
		return false;
	return name_is(name, "uprobe_events", sizeof("uprobe_events")) ||
	       name_is(name, "kprobe_events", sizeof("kprobe_events")) ||
	       name_is(name, "dynamic_events", sizeof("dynamic_events"));
}

/* ---- files ------------------------------------------------------------------------------ */

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
 * this runs on every open, read, write and mmap of the node (benchmarks/kernel.py). */
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

#define MAX_ANCESTRY 16

/* `tgid` is among the first MAX_ANCESTRY ancestors of `task`. */
static __always_inline bool descends_from(struct task_struct *task, __u32 tgid)
{
	__u32 parent;

	for (int i = 0; i < MAX_ANCESTRY; i++) {
		task = BPF_CORE_READ(task, real_parent);
		parent = BPF_CORE_READ(task, tgid);
		if (parent == tgid)
			return true;
		if (parent <= 1)
			return false;
	}
	return false;
}

/* The current process is protected and of the same family as `owner`, a secret file's creator:
 * it uses a secret fd it inherited (the app's `cat` of a file delivery) or that its parent
 * holds too (the refresher's fds, which the app maps), not one it stole. */
static __always_inline bool inherited_by_current(__u32 owner)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
	struct task_struct *o;
	bool related;

	if (!lookup_protected(t->tgid, current_start_ticks()))
		return false;
	if (descends_from(t, owner))
		return true;
	if (!bpf_task_from_pid || !bpf_task_release)
		return false;
	o = bpf_task_from_pid(owner);
	if (!o)
		return false;
	related = descends_from(o, t->tgid);
	bpf_task_release(o);
	return related;
}

/* What a file exposes, when it exposes a protected process at all. */
struct exposure {
	__u32 needed;  /* the protection it needs: PF_ENVIRON, PF_MEM or PF_FDS; 0: nothing */
	__u32 kind;    /* EV_ENVIRON, EV_MEM, EV_FD, EV_CREDENTIALS, or EV_TRACEFS (node-wide) */
	__u32 owner;   /* EV_FD, EV_CREDENTIALS: the owning tgid */
	__u32 owner_flags; /* EV_CREDENTIALS: its flags, which apply once it died */
	struct task_struct *target; /* EV_ENVIRON/EV_MEM: the exposed task (NULL: gone) */
};

/* /proc/PID/{environ,mem} (and task/TID/...), known by the file's open op however the path
 * was spelled, or a protected process's secret file, known by its inode. The fast filter (open
 * op, superblock magic) keeps the map lookup off every other file. */
#define S_IFMT_BITS 00170000
#define S_IFREG_BITS 0100000

static __always_inline void classify(struct file *file, struct exposure *x)
{
	struct file_owner *owner;
	struct proc_inode *pi;
	struct file_key key = {};
	unsigned long magic;
	struct file *f;
	void *open;

	x->needed = 0;
	x->target = NULL;
	if (bpf_rdonly_cast) {
		f = bpf_rdonly_cast(file, bpf_core_type_id_kernel(struct file));
		open = f->f_op->open;
		magic = f->f_inode->i_sb->s_magic;
	} else {
		open = BPF_CORE_READ(file, f_op, open);
		magic = BPF_CORE_READ(file, f_inode, i_sb, s_magic);
	}
	if (open == &environ_open || open == &mem_open) {
		x->needed = open == &environ_open ? PF_ENVIRON : PF_MEM;
		x->kind = open == &environ_open ? EV_ENVIRON : EV_MEM;
		pi = container_of(BPF_CORE_READ(file, f_inode), struct proc_inode, vfs_inode);
		x->target = pid_task_of(BPF_CORE_READ(pi, pid));
		return;
	}
	if (magic == TRACEFS_MAGIC) {
		/* a probe definition, whatever the way to it (open, io_uring, an inherited fd) */
		if ((BPF_CORE_READ(file, f_mode) & FMODE_WRITE) && is_probe_definition(file)) {
			x->needed = PF_ENVIRON; /* any nonzero: a node-wide offence, see x->kind */
			x->kind = EV_TRACEFS;
		}
		return;
	}
	if (magic != TMPFS_MAGIC && magic != HUGETLBFS_MAGIC && magic != SECRETMEM_MAGIC)
		return;
	file_key_of(file, &key);
	x->kind = EV_FD;
	owner = bpf_map_lookup_elem(&protected_files, &key);
	if (!owner) {
		owner = bpf_map_lookup_elem(&protected_mounts, &key.dev);
		if (!owner || current_is_allowed(CREDENTIAL_READERS_LIST))
			return;
		/* A credential volume's files, not its directories: the kubelet's umount opens the
		 * mount point (and a listing shows names only, which are in the pod spec anyway). */
		if ((BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT_BITS) != S_IFREG_BITS)
			return;
		x->kind = EV_CREDENTIALS;
	}
	if (owner->tgid == bpf_get_current_pid_tgid() >> 32)
		return; /* its owner's own (e.g. /proc/self/fd/N) */
	if (inherited_by_current(owner->tgid))
		return;
	/* a login as the pod is as good as any of its secrets: any protection guards its credentials */
	x->needed = x->kind == EV_CREDENTIALS ? (PF_ENVIRON | PF_MEM | PF_FDS) : PF_FDS;
	x->owner = owner->tgid;
	x->owner_flags = owner->flags;
}

/* Tracepoint backend: an access through `file` by the current task (open or use). */
static __always_inline void check_file(struct file *file, __u16 via)
{
	struct exposure x;
	struct task_struct *target;

	__u32 flags;

	if (!file)
		return;
	classify(file, &x);
	if (!x.needed)
		return;
	if (x.kind == EV_TRACEFS) {
		if (node_wide_offence(&flags))
			report(EV_TRACEFS, 0, flags, via, NOTE_NODE_WIDE);
		return;
	}
	if (x.kind != EV_FD && x.kind != EV_CREDENTIALS) {
		if (x.target)
			check_target(x.target, x.needed, x.kind, via);
		return;
	}
	if (!bpf_task_from_pid || !bpf_task_release)
		return;
	target = bpf_task_from_pid(x.owner);
	if (!target) {
		/* a credential volume whose owner died is nobody's until the agent frees it */
		if (x.kind == EV_CREDENTIALS && (x.owner_flags & x.needed))
			report(EV_CREDENTIALS, x.owner, x.owner_flags, via, 0);
		return;
	}
	check_target(target, x.needed, x.kind, via);
	bpf_task_release(target);
}

static __always_inline void check_fd(long fd, __u16 via)
{
	if (fd >= 0)
		check_file(current_fd_file((int)fd), via);
}

/* An fd returned by an open-like syscall: the file it opened, and tracefs probe definitions. */
static __always_inline int check_opened_fd(long ret)
{
	struct file *file;

	if (ret < 0)
		return 0;
	file = current_fd_file((int)ret);
	if (!file)
		return 0;
	check_file(file, VIA_OPEN);
	return 0;
}

/* A process protected with PF_FDS created a secret file: remember its inode. */
static __always_inline int remember_created_fd(long ret)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct protected_entry *e;
	struct file_owner owner = {};
	struct file_key key = {};
	struct file *file;

	if (ret < 0)
		return 0;
	e = lookup_protected(tgid, current_start_ticks());
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

/* ---- tracepoint backend: syscalls ------------------------------------------------------------
 * One raw (BTF) tracepoint on every syscall's entry and one on its exit, dispatching on the
 * syscall number: a raw tracepoint calls the program directly, where a classic syscall
 * tracepoint first copies its arguments into a perf record (benchmarks/kernel.py: a write to
 * /dev/null cost about three times as much with one classic tracepoint per syscall). */

/* x86_64 syscall numbers (the object is built per architecture; the LSM backend needs them too). */
#define NR_READ 0
#define NR_WRITE 1
#define NR_OPEN 2
#define NR_MMAP 9
#define NR_PREAD64 17
#define NR_PWRITE64 18
#define NR_READV 19
#define NR_WRITEV 20
#define NR_SENDFILE 40
#define NR_CREAT 85
#define NR_PTRACE 101
#define NR_OPENAT 257
#define NR_SPLICE 275
#define NR_PREADV 295
#define NR_PWRITEV 296
#define NR_PERF_EVENT_OPEN 298
#define NR_OPEN_BY_HANDLE_AT 304
#define NR_PROCESS_VM_READV 310
#define NR_PROCESS_VM_WRITEV 311
#define NR_BPF 321
#define NR_COPY_FILE_RANGE 326
#define NR_PREADV2 327
#define NR_PWRITEV2 328
#define NR_OPENAT2 437
#define NR_PIDFD_GETFD 438
#define NR_PROCESS_MADVISE 440
#define NR_UNKNOWN (-1)

#define TS_COMPAT 0x0002       /* thread_info.status: an ia32 syscall (int $0x80, sysenter) */
#define X32_SYSCALL_BIT 0x40000000

/* The x86_64 number of syscall `nr` as the current task made it: ia32 (compat) and x32 calls
 * have numbers of their own, and each is the same vector. NR_UNKNOWN for the ones not watched. */
static __always_inline long native_nr(long nr, bool compat)
{
	if (compat) {
		switch (nr) {
		case 3: return NR_READ;
		case 4: return NR_WRITE;
		case 5: return NR_OPEN;
		case 8: return NR_CREAT;
		case 26: return NR_PTRACE;
		case 90: return NR_MMAP; /* old_mmap: its arguments are in a struct */
		case 145: return NR_READV;
		case 146: return NR_WRITEV;
		case 180: return NR_PREAD64;
		case 181: return NR_PWRITE64;
		case 187: case 239: return NR_SENDFILE;
		case 192: return NR_MMAP; /* mmap2 */
		case 295: return NR_OPENAT;
		case 313: return NR_SPLICE;
		case 333: return NR_PREADV;
		case 334: return NR_PWRITEV;
		case 336: return NR_PERF_EVENT_OPEN;
		case 342: return NR_OPEN_BY_HANDLE_AT;
		case 347: return NR_PROCESS_VM_READV;
		case 348: return NR_PROCESS_VM_WRITEV;
		case 357: return NR_BPF;
		case 377: return NR_COPY_FILE_RANGE;
		case 378: return NR_PREADV2;
		case 379: return NR_PWRITEV2;
		case NR_OPENAT2: case NR_PIDFD_GETFD: case NR_PROCESS_MADVISE: return nr;
		default: return NR_UNKNOWN;
		}
	}
	if (nr & X32_SYSCALL_BIT) {
		switch (nr & ~X32_SYSCALL_BIT) {
		case 515: return NR_READV;
		case 516: return NR_WRITEV;
		case 521: return NR_PTRACE;
		case 534: return NR_PREADV;
		case 535: return NR_PWRITEV;
		case 539: return NR_PROCESS_VM_READV;
		case 540: return NR_PROCESS_VM_WRITEV;
		case 546: return NR_PREADV2;
		case 547: return NR_PWRITEV2;
		default: return nr & ~X32_SYSCALL_BIT;
		}
	}
	return nr;
}

static __always_inline bool current_in_compat_syscall(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();

	return BPF_CORE_READ(task, thread_info.status) & TS_COMPAT;
}

/* ---- tracepoint backend: io_uring ------------------------------------------------------------ */

/* An io_uring request's fd `idx`: a slot of the ring's fixed-file table, or an fd of the
 * submitter's table (the submitter, or an io_uring thread of its process, which shares it). */
static __always_inline struct file *io_file(struct io_ring_ctx *ring, __u32 idx, bool fixed)
{
	struct io_rsrc_node **nodes;
	struct io_rsrc_node *rnode;
	unsigned long ptr;

	if (!fixed)
		return current_fd_file((int)idx);
	if (!bpf_core_field_exists(struct io_ring_ctx, file_table.data.nodes))
		return NULL;
	if (idx >= BPF_CORE_READ(ring, file_table.data.nr))
		return NULL;
	nodes = BPF_CORE_READ(ring, file_table.data.nodes);
	if (bpf_core_read(&rnode, sizeof(rnode), &nodes[idx]) || !rnode)
		return NULL;
	ptr = BPF_CORE_READ(rnode, file_ptr);
	return (struct file *)(ptr & IO_FILE_PTR_MASK);
}

#define SPLICE_F_FD_IN_FIXED (1u << 31)

/* Every io_uring request's file (read, write, splice out, ...), and a splice's or tee's input:
 * syscall tracepoints never see io_uring's work. */
SEC("tp_btf/io_uring_submit_req")
int BPF_PROG(io_uring_submit, struct io_kiocb *req)
{
	struct io_ring_ctx *ring = BPF_CORE_READ(req, ctx);
	bool fixed = BPF_CORE_READ(req, flags) & REQ_F_FIXED_FILE;
	struct io_splice *sp;
	__u8 opcode;
	__u32 in;

	check_file(io_file(ring, (__u32)BPF_CORE_READ(req, cqe.fd), fixed), VIA_IO_URING);
	opcode = BPF_CORE_READ(req, opcode);
	if (opcode != IORING_OP_SPLICE && opcode != IORING_OP_TEE)
		return 0;
	sp = (struct io_splice *)&req->cmd;
	in = (__u32)BPF_CORE_READ(sp, splice_fd_in);
	check_file(io_file(ring, in, BPF_CORE_READ(sp, flags) & SPLICE_F_FD_IN_FIXED), VIA_IO_URING);
	return 0;
}

/* A request that moves file data through req->file (its file is assigned only when it is issued). */
static __always_inline bool io_moves_file_data(__u8 opcode)
{
	switch (opcode) {
	case IORING_OP_READV: case IORING_OP_WRITEV: case IORING_OP_READ_FIXED:
	case IORING_OP_WRITE_FIXED: case IORING_OP_READ: case IORING_OP_WRITE:
	case IORING_OP_READ_MULTISHOT: case 60: case 61: /* READV_FIXED, WRITEV_FIXED (6.15+) */
		return true;
	default:
		return false;
	}
}

/* Completion: a request's file as it was issued. A fixed-file slot empty at submission (filled
 * by an OPENAT linked before it) is only known here; the data has moved, but into the memory of
 * a process killed before it sees the completion (the same race as a read: THREAT-MODEL.md). */
SEC("tp_btf/io_uring_complete")
int BPF_PROG(io_uring_complete, struct io_ring_ctx *ring, void *request, struct io_uring_cqe *cqe)
{
	struct io_kiocb *req = request;

	if (!req || !io_moves_file_data(BPF_CORE_READ(req, opcode)))
		return 0;
	check_file(BPF_CORE_READ(req, file), VIA_IO_URING);
	return 0;
}

/* A second fd a request takes from the fd table (splice's input, ...). */
SEC("tp_btf/io_uring_file_get")
int BPF_PROG(io_uring_file_get, struct io_kiocb *req, int fd)
{
	check_fd(fd, VIA_IO_URING);
	return 0;
}

/* ---- tracepoint backend: syscalls that name a process -------------------------------------- */

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
	hit = check_target(target, needed, kind, VIA_SYSCALL);
	bpf_task_release(target);
	return hit;
}

/* The task a pidfd (an fd on pidfs) refers to, or NULL. */
static __always_inline struct task_struct *pidfd_task(int fd)
{
	struct file *file = current_fd_file(fd);

	if (!file || BPF_CORE_READ(file, f_inode, i_sb, s_magic) != PID_FS_MAGIC)
		return NULL;
	/* pidfs: the struct pid is the inode's i_private (private_data did not lead to the task on 6.18). */
	return pid_task_of((struct pid *)BPF_CORE_READ(file, f_inode, i_private));
}

static __always_inline int enter_ptrace(const __u64 *args)
{
	long request = args[0];
	s32 vpid = (s32)args[1];
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

static __always_inline int exit_ptrace(void)
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

static __always_inline int enter_process_vm_readv(const __u64 *args)
{
	check_vpid((s32)args[0], PF_MEM, EV_PROCESS_VM_READV);
	return 0;
}

static __always_inline int enter_process_vm_writev(const __u64 *args)
{
	check_vpid((s32)args[0], PF_MEM, EV_PROCESS_VM_WRITEV);
	return 0;
}

static __always_inline int enter_pidfd_getfd(const __u64 *args)
{
	struct task_struct *target = pidfd_task((int)args[0]);

	if (target)
		check_target(target, PF_PIDFD_GETFD, EV_PIDFD_GETFD, VIA_SYSCALL);
	return 0;
}

/* process_madvise(MADV_PAGEOUT) would push a protected process's pages to swap, where root
 * reads them. */
static __always_inline int enter_process_madvise(const __u64 *args)
{
	struct task_struct *target = pidfd_task((int)args[0]);

	if (target)
		check_target(target, PF_MEM, EV_PROCESS_MADVISE, VIA_SYSCALL);
	return 0;
}

/* The fd's file is an anonymous inode named `name` (anon_inode_getfile's name: "bpf-prog",
 * "[perf_event]"). */
static __always_inline bool anon_file_is(struct file *file, const char *name, int size)
{
	const char *dname = (const char *)BPF_CORE_READ(file, f_path.dentry, d_name.name);

	return dname && name_is(dname, name, size);
}

/* perf_event_open made an event on a protected process (its samples carry its registers and
 * stack), or a node-wide or cgroup-wide one sampling user memory while anything is protected. */
static __always_inline int exit_perf_event_open(long ret)
{
	struct perf_event *event;
	struct task_struct *target;
	struct file *file;
	__u64 sample_type;
	__u32 flags;

	if (ret < 0)
		return 0;
	file = current_fd_file((int)ret);
	if (!file || !anon_file_is(file, "[perf_event]", sizeof("[perf_event]")))
		return 0;
	event = (struct perf_event *)BPF_CORE_READ(file, private_data);
	target = BPF_CORE_READ(event, hw.target);
	if (target) {
		check_target(target, PF_MEM, EV_PERF, VIA_SYSCALL);
		return 0;
	}
	sample_type = BPF_CORE_READ(event, attr.sample_type);
	if (BPF_CORE_READ_BITFIELD_PROBED(event, attr.exclude_user))
		return 0;
	if (samples_user_memory(sample_type, 0) && node_wide_offence(&flags))
		report(EV_PERF, 0, flags, VIA_SYSCALL, NOTE_NODE_WIDE);
	return 0;
}

/* bpf() loaded a tracing program while anything is protected: it could read a protected
 * process's memory from its own context. */
static __always_inline int exit_bpf(long cmd, long ret)
{
	struct bpf_prog *prog;
	struct file *file;
	__u32 flags;

	if (cmd != BPF_PROG_LOAD || ret < 0)
		return 0;
	file = current_fd_file((int)ret);
	if (!file || !anon_file_is(file, "bpf-prog", sizeof("bpf-prog")))
		return 0;
	prog = (struct bpf_prog *)BPF_CORE_READ(file, private_data);
	if (tracing_prog_type(BPF_CORE_READ(prog, type)) && node_wide_offence(&flags))
		report(EV_BPF, 0, flags, VIA_SYSCALL, NOTE_NODE_WIDE);
	return 0;
}

/* One of this object's maps (the kernel's struct bpf_map behind a map fd's file). */
static __always_inline bool is_agent_map(const void *map)
{
	return map == (const void *)&protected || map == (const void *)&accessors ||
	       map == (const void *)&protected_files || map == (const void *)&node ||
	       map == (const void *)&ptrace_victims || map == (const void *)&events ||
	       map == (const void *)&protected_mounts;
}

/* bpf() commands that write a map through an fd in the first word of their attr. */
static __always_inline bool writes_map(long cmd)
{
	return cmd == BPF_MAP_UPDATE_ELEM || cmd == BPF_MAP_DELETE_ELEM ||
	       cmd == BPF_MAP_LOOKUP_AND_DELETE_ELEM || cmd == BPF_MAP_FREEZE ||
	       cmd == BPF_MAP_LOOKUP_AND_DELETE_BATCH || cmd == BPF_MAP_UPDATE_BATCH ||
	       cmd == BPF_MAP_DELETE_BATCH;
}

/* bpf(): a write to the agent's maps, which the kernel refuses (they are frozen): reported.
 * (Program loads are decided at exit, on the loaded program: exit_bpf.) */
static __always_inline int enter_bpf(const __u64 *args)
{
	long cmd = args[0];
	__u32 map_fd = 0;
	struct file *file;

	if (!writes_map(cmd))
		return 0;
	bpf_probe_read_user(&map_fd, sizeof(map_fd), (const void *)args[1]);
	file = current_fd_file((int)map_fd);
	if (file && is_agent_map(BPF_CORE_READ(file, private_data)) && !current_is_agent())
		emit(EV_BPF, 0, 0, ACT_DENIED, VIA_SYSCALL, NOTE_NODE_WIDE | NOTE_REFUSED);
	return 0;
}

/* ---- tracepoint backend: the dispatchers ----------------------------------------------------- */

SEC("tp_btf/sys_enter")
int BPF_PROG(on_sys_enter, struct pt_regs *regs, long id)
{
	bool compat = current_in_compat_syscall();
	long nr = compat || (id & X32_SYSCALL_BIT) ? native_nr(id, compat) : id;
	__u64 args[6];

	switch (nr) {
	case NR_READ: case NR_READV: case NR_PREAD64: case NR_PREADV: case NR_PREADV2:
	case NR_WRITE: case NR_WRITEV: case NR_PWRITE64: case NR_PWRITEV: case NR_PWRITEV2:
	case NR_MMAP: case NR_SENDFILE: case NR_SPLICE: case NR_COPY_FILE_RANGE:
	case NR_PTRACE: case NR_PROCESS_VM_READV: case NR_PROCESS_VM_WRITEV: case NR_PIDFD_GETFD:
	case NR_PROCESS_MADVISE: case NR_BPF:
		break;
	default:
		return 0;
	}
	if (compat) { /* ia32: ebx, ecx, edx, esi, edi, ebp */
		args[0] = (__u32)regs->bx;
		args[1] = (__u32)regs->cx;
		args[2] = (__u32)regs->dx;
		args[3] = (__u32)regs->si;
		args[4] = (__u32)regs->di;
		args[5] = (__u32)regs->bp;
		if (id == 90) { /* old_mmap(struct mmap_arg_struct *): its fd is the fifth word */
			__u32 fd;

			if (bpf_probe_read_user(&fd, sizeof(fd), (void *)args[0] + 16))
				fd = 0xffffffff; /* unreadable: stop the call (fail closed) */
			args[4] = fd;
		}
	} else {
		args[0] = regs->di;
		args[1] = regs->si;
		args[2] = regs->dx;
		args[3] = regs->r10;
		args[4] = regs->r8;
		args[5] = regs->r9;
	}
	switch (nr) {
	case NR_READ: case NR_READV: case NR_PREAD64: case NR_PREADV: case NR_PREADV2:
		check_fd((int)args[0], VIA_READ);
		return 0;
	case NR_WRITE: case NR_WRITEV: case NR_PWRITE64: case NR_PWRITEV: case NR_PWRITEV2:
		check_fd((int)args[0], VIA_WRITE);
		return 0;
	case NR_MMAP:
		if ((int)args[4] == -1 && id == 90 && compat)
			report(EV_MEM, 0, 0, VIA_MMAP, NOTE_NODE_WIDE); /* unreadable old_mmap args */
		check_fd((int)args[4], VIA_MMAP);
		return 0;
	case NR_SENDFILE:
		check_fd((int)args[1], VIA_TRANSFER); /* in_fd */
		return 0;
	case NR_SPLICE: case NR_COPY_FILE_RANGE: /* the input, and an output into /proc/PID/mem */
		check_fd((int)args[0], VIA_TRANSFER);
		check_fd((int)args[2], VIA_TRANSFER);
		return 0;
	case NR_PTRACE:
		return enter_ptrace(args);
	case NR_PROCESS_VM_READV:
		return enter_process_vm_readv(args);
	case NR_PROCESS_VM_WRITEV:
		return enter_process_vm_writev(args);
	case NR_PIDFD_GETFD:
		return enter_pidfd_getfd(args);
	case NR_PROCESS_MADVISE:
		return enter_process_madvise(args);
	default:
		return enter_bpf(args);
	}
}

/* What a syscall returned: the fd an open-like call opened (however the path was spelled), the
 * program a bpf() call loaded, the event perf_event_open made. Decided on the kernel's own
 * objects, not on arguments in user memory (which another thread can change after a check,
 * or which may not be paged in). */
SEC("tp_btf/sys_exit")
int BPF_PROG(on_sys_exit, struct pt_regs *regs, long ret)
{
	bool compat = current_in_compat_syscall();
	long id = regs->orig_ax;
	long nr = compat || (id & X32_SYSCALL_BIT) ? native_nr(id, compat) : id;

	switch (nr) {
	case NR_OPEN: case NR_OPENAT: case NR_OPENAT2: case NR_CREAT: case NR_OPEN_BY_HANDLE_AT:
		return check_opened_fd(ret);
	case NR_PTRACE:
		return exit_ptrace();
	case NR_BPF: /* the command: the first argument, still in its register */
		return exit_bpf(compat ? (__u32)regs->bx : regs->di, ret);
	case NR_PERF_EVENT_OPEN:
		return exit_perf_event_open(ret);
	default:
		return 0;
	}
}

/* ---- both backends: process lifecycle ------------------------------------------------------ */

/* A child process of a protected process is protected with the same flags; its environment
 * area is its parent's (the clean state carries over), but not the parent's announced exec. */
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
	ce.flags = e->flags & ~ES_EXEC_KEEPS_CLEAN;
	ce.accessors = e->accessors;
	bpf_map_update_elem(&protected, &ctgid, &ce, BPF_ANY);
	return 0;
}

/* execve builds a new environment area from envp, which may hold values: it is clean only
 * after the one exec the registration announced as clean. */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 tgid = task->tgid;
	struct protected_entry *e = lookup_protected(tgid, task_start_ticks(task->group_leader));

	if (!e)
		return 0;
	if (e->flags & ES_EXEC_KEEPS_CLEAN)
		e->flags &= ~ES_EXEC_KEEPS_CLEAN;
	else
		e->flags &= ~ES_ENVIRON_CLEAN;
	return 0;
}

/* The tracepoint's group_dead argument is recent (6.1 has only the task); do_exit() has
 * already decremented signal->live when it fires, so the last thread sees 0 on every kernel. */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *task)
{
	__u32 tgid = task->tgid;
	__u64 start;
	struct node_state *ns;

	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	start = task_start_ticks(task->group_leader);
	if (lookup_protected(tgid, start))
		bpf_map_delete_elem(&protected, &tgid);
	ns = node_state();
	if (ns && ns->agent_tgid == tgid && ns->agent_start == start) {
		/* The role is free for a successor; the event stays in the pinned ring buffer for it. */
		ns->agent_tgid = 0;
		ns->agent_start = 0;
		emit(EV_AGENT, tgid, 0, ACT_AUDITED, VIA_SIGNAL, 0);
	}
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
	ev->via = VIA_SIGNAL;
	ev->note = 0;
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

/* ---- the agent's writes --------------------------------------------------------------------- */

/*
 * The only way to write the frozen maps from user space: BPF_PROG_RUN of this program with an
 * agent_op as its context. AGENT_OP_CLAIM makes the caller the agent when no live process holds the
 * role (the first agent on a node, or a successor after the previous one exited: reported);
 * every other op is refused (EPERM, reported) unless the caller holds the role. Root can run
 * this program, but not as the agent while the agent lives.
 */
SEC("syscall")
int agent_op(struct agent_op *op)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u64 start = current_start_ticks();
	__u8 key[AGENT_OP_BYTES], value[AGENT_OP_BYTES];
	struct node_state *ns = node_state();
	__u32 code = op->op, map = op->map;
	__u64 flags = op->flags;
	long rc;

	if (!ns) {
		op->result = -ENOENT;
		return 0;
	}
	if (code == AGENT_OP_CLAIM) {
		if (ns->agent_tgid && (ns->agent_tgid != tgid || ns->agent_start != start)) {
			emit(EV_AGENT, ns->agent_tgid, 0, ACT_DENIED, VIA_AGENT_OP, NOTE_REFUSED);
			op->result = -EBUSY;
			return 0;
		}
		if (ns->agent_tgid != tgid) /* a new holder: the first agent, or a successor */
			emit(EV_AGENT, 0, 0, ACT_AUDITED, VIA_AGENT_OP, 0);
		ns->agent_tgid = tgid;
		ns->agent_start = start;
		op->result = 0;
		return 0;
	}
	if (ns->agent_tgid != tgid || ns->agent_start != start) {
		emit(EV_AGENT, ns->agent_tgid, 0, ACT_DENIED, VIA_AGENT_OP, NOTE_REFUSED);
		op->result = -EPERM;
		return 0;
	}
	__builtin_memcpy(key, op->key, sizeof(key));
	__builtin_memcpy(value, op->value, sizeof(value));
	switch (map) {
	case AM_PROTECTED:
		rc = code == AGENT_OP_UPDATE ? bpf_map_update_elem(&protected, key, value, flags)
				       : bpf_map_delete_elem(&protected, key);
		break;
	case AM_PROTECTED_FILES:
		rc = code == AGENT_OP_UPDATE ? bpf_map_update_elem(&protected_files, key, value, flags)
				       : bpf_map_delete_elem(&protected_files, key);
		break;
	case AM_ACCESSORS:
		rc = code == AGENT_OP_UPDATE ? bpf_map_update_elem(&accessors, key, value, flags)
				       : bpf_map_delete_elem(&accessors, key);
		break;
	case AM_PROTECTED_MOUNTS:
		rc = code == AGENT_OP_UPDATE ? bpf_map_update_elem(&protected_mounts, key, value, flags)
				       : bpf_map_delete_elem(&protected_mounts, key);
		break;
	default:
		rc = -EINVAL;
	}
	op->result = (__s32)rc;
	return 0;
}

/* ---- LSM backend --------------------------------------------------------------------------- */
/*
 * The same maps and events; the offending call fails with -EPERM and the offender lives
 * (PF_KILL: it is also killed); audit-only entries log and allow. The loader attaches these
 * instead of the tracepoint programs that kill (loading.TRACEPOINT_ONLY); the lifecycle,
 * memfd, core-dump and agent_op programs run with either backend.
 */
/* The verdict on an access through `file` (open or any use of it). */
static __always_inline int lsm_file(struct file *file, __u16 via)
{
	struct task_struct *target;
	struct protected_entry *e;
	struct exposure x;
	__u32 flags;

	classify(file, &x);
	if (!x.needed)
		return 0;
	if (x.kind == EV_TRACEFS)
		return node_wide_offence(&flags) ? verdict(EV_TRACEFS, 0, flags, via, NOTE_NODE_WIDE) : 0;
	if (x.kind != EV_FD && x.kind != EV_CREDENTIALS)
		return x.target ? lsm_target(x.target, x.needed, x.kind, via) : 0;
	if (bpf_task_from_pid && bpf_task_release) {
		target = bpf_task_from_pid(x.owner);
		if (!target) /* a credential volume whose owner died: nobody's until freed */
			return x.kind == EV_CREDENTIALS && (x.owner_flags & x.needed)
			       ? verdict(EV_CREDENTIALS, x.owner, x.owner_flags, via, 0) : 0;
		flags = offence(target, x.needed);
		bpf_task_release(target);
		return flags ? verdict(x.kind, x.owner, flags, via, 0) : 0; /* canaries use no files */
	}
	/* Before 6.2 (no bpf_task_from_pid): the entry alone; the exit hook removes it when the
	 * owner exits. */
	e = bpf_map_lookup_elem(&protected, &x.owner);
	if (!e) /* a credential volume whose owner died: nobody's until freed */
		return x.kind == EV_CREDENTIALS && (x.owner_flags & x.needed)
		       ? verdict(EV_CREDENTIALS, x.owner, x.owner_flags, via, 0) : 0;
	if (!(e->flags & x.needed) || current_is_allowed(e->accessors))
		return 0;
	return verdict(x.kind, x.owner, e->flags, via, 0);
}

SEC("lsm/file_open")
int BPF_PROG(lsm_file_open, struct file *file, int ret)
{
	if (ret)
		return ret;
	return lsm_file(file, VIA_OPEN);
}

/* Every read and write (read, readv, pread, sendfile, splice, copy_file_range, io_uring...)
 * goes through rw_verify_area() and this hook: fds opened before registration or by another
 * process are useless. */
SEC("lsm/file_permission")
int BPF_PROG(lsm_file_permission, struct file *file, int mask, int ret)
{
	if (ret)
		return ret;
	return lsm_file(file, (mask & 2) ? VIA_WRITE : VIA_READ); /* MAY_WRITE */
}

SEC("lsm/mmap_file")
int BPF_PROG(lsm_mmap_file, struct file *file, unsigned long reqprot, unsigned long prot,
	     unsigned long flags, int ret)
{
	if (ret)
		return ret;
	if (!file)
		return 0;
	return lsm_file(file, VIA_MMAP);
}

/* ptrace attach/seize, process_vm_readv/writev (via mm_access), pidfd_getfd,
 * process_madvise and perf_event_open on a task all ask ptrace_may_access(), which ends in this
 * hook; the syscall being served tells which vector it is. Other callers (/proc/PID/stat
 * fields, fd links, kcmp...) are not vectors here: environ and mem are decided on their file,
 * fds by their inode. */
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
	nr = native_nr(BPF_CORE_READ(regs, orig_ax), current_in_compat_syscall());
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
	case NR_PROCESS_MADVISE:
		needed = PF_MEM;
		kind = EV_PROCESS_MADVISE;
		break;
	case NR_PERF_EVENT_OPEN:
		needed = PF_MEM;
		kind = EV_PERF;
		break;
	default:
		return 0;
	}
	return lsm_target(child, needed, kind, VIA_SYSCALL);
}

/* Node-wide and cgroup-wide events: a per-task one was decided in ptrace_access_check. */
SEC("lsm/perf_event_open")
int BPF_PROG(lsm_perf_event_open, struct perf_event_attr *attr, int type)
{
	__u64 sample_type = BPF_CORE_READ(attr, sample_type);
	__u64 attr_flags = 0;
	__u32 flags;

	bpf_probe_read_kernel(&attr_flags, sizeof(attr_flags), (void *)attr + 40);
	if (samples_user_memory(sample_type, attr_flags) && node_wide_offence(&flags))
		return verdict(EV_PERF, 0, flags, VIA_SYSCALL, NOTE_NODE_WIDE);
	return 0;
}

/* bpf(): loads of tracing programs while anything is protected. The agent's maps are frozen
 * (the kernel refuses syscall writes itself). */
SEC("lsm/bpf")
int BPF_PROG(lsm_bpf, int cmd, union bpf_attr *attr, unsigned int size)
{
	struct file *file;
	__u32 flags;

	if (cmd == BPF_PROG_LOAD) {
		if (tracing_prog_type(BPF_CORE_READ(attr, prog_type)) && node_wide_offence(&flags))
			return verdict(EV_BPF, 0, flags, VIA_SYSCALL, NOTE_NODE_WIDE);
		return 0;
	}
	if (!writes_map(cmd))
		return 0;
	file = current_fd_file((int)BPF_CORE_READ(attr, map_fd));
	if (file && is_agent_map(BPF_CORE_READ(file, private_data)) && !current_is_agent()) {
		emit(EV_BPF, 0, 0, ACT_DENIED, VIA_SYSCALL, NOTE_NODE_WIDE | NOTE_REFUSED);
		return -EPERM;
	}
	return 0;
}

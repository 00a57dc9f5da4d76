/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The contract between protect.bpf.c and the node agent (Python): every constant and struct
 * both sides use. Enums, not #defines, so that they reach the object's BTF (protect.bpf.c
 * anchors each one), where tests/unit/bpf/test_layouts.py compares them, names and values,
 * with bpf/cloudtaser/bpf/layouts.py and engine/cloudtaser/engine/plans.py (a renumbering on
 * either side fails there, without root). Structs are mirrored in bpf/cloudtaser/bpf/layouts.py.
 */
#ifndef CLOUDTASER_PROTECT_H
#define CLOUDTASER_PROTECT_H

/* Policy bits of a protected process (engine.plans.ProtectionFlag, which also names them). */
enum protection_flag {
	PF_ENVIRON = 1u << 0,
	PF_MEM = 1u << 1,
	PF_FDS = 1u << 2,
	PF_PTRACE = 1u << 3,
	PF_PIDFD_GETFD = 1u << 4,
	PF_CORE_DUMP = 1u << 5,
	PF_AUDIT_ONLY = 1u << 8,
	PF_KILL = 1u << 9,
};

/* Per-process state kept in the same flags word (bpf/layouts.EntryState), never policy:
 * the process's initial environment area holds no secret value (reading its environ is no
 * violation), and whether its next execve keeps that (the one exec the wrapper announced). */
enum entry_state {
	ES_ENVIRON_CLEAN = 1u << 16,
	ES_EXEC_KEEPS_CLEAN = 1u << 17,
};

/* What was accessed (bpf/layouts.EventKind). */
enum event_kind {
	EV_ENVIRON = 1,
	EV_MEM = 2,
	EV_PTRACE = 3,
	EV_PROCESS_VM_READV = 4,
	EV_PROCESS_VM_WRITEV = 5,
	EV_PIDFD_GETFD = 6,
	EV_FD = 7,           /* a protected process's secret file (memfd, memfd_secret) */
	EV_COREDUMP = 8,     /* a core-dumping signal reached a protected process */
	EV_PERF = 9,         /* perf_event_open on a protected process, or node-wide user sampling */
	EV_BPF = 10,         /* a tracing BPF program loaded, or a write to the agent's maps */
	EV_TRACEFS = 11,     /* a uprobe/kprobe definition written through tracefs */
	EV_PROCESS_MADVISE = 12,
	EV_AGENT = 13,       /* the agent's identity: refused claim, handover, exit */
	EV_CREDENTIALS = 14, /* a file of a protected pod's credential volume (token, client key) */
};

/* How the access was made (bpf/layouts.Via). */
enum access_via {
	VIA_OPEN = 0,
	VIA_READ = 1,        /* read, readv, pread64, preadv, preadv2 */
	VIA_WRITE = 2,       /* write, writev, pwrite64, pwritev, pwritev2 */
	VIA_MMAP = 3,
	VIA_TRANSFER = 4,    /* sendfile, splice, copy_file_range */
	VIA_IO_URING = 5,
	VIA_SYSCALL = 6,     /* a syscall naming the process (ptrace, process_vm_*, pidfd_*, perf) */
	VIA_SIGNAL = 7,
	VIA_AGENT_OP = 8,    /* the agent's own operation program */
};

/* Event.note bits (bpf/layouts.Note). */
enum event_note {
	NOTE_CANARY = 1u << 0,     /* the wrapper's canary: both sides protected siblings named ct-canary */
	NOTE_NODE_WIDE = 1u << 1,  /* no single target: target_tgid is 0 */
	NOTE_REFUSED = 1u << 2,    /* the kernel refused the call itself (e.g. a frozen map) */
};

/* What happened to the offender (bpf/layouts.Action). */
enum action {
	ACT_AUDITED = 0,
	ACT_KILLED = 1,
	ACT_DENIED = 2,  /* the call failed with EPERM, the offender lives */
};

/* Operations of the agent_op program (bpf/layouts.AgentOpCode), the only writer of the
 * frozen maps besides the BPF programs themselves. */
enum agent_op_code {
	AGENT_OP_CLAIM = 1,   /* become the agent: only when no live agent holds the role */
	AGENT_OP_UPDATE = 2,
	AGENT_OP_DELETE = 3,
};

/* The maps agent_op writes (bpf/layouts.AgentMap). */
enum agent_map {
	AM_PROTECTED = 1,
	AM_PROTECTED_FILES = 2,
	AM_ACCESSORS = 3,
	AM_PROTECTED_MOUNTS = 4,
};

#define AGENT_OP_BYTES 32
#define CANARY_COMM "ct-canary"

struct protected_entry {
	__u64 start_time; /* clock ticks since boot, as /proc/PID/stat field 22 */
	__u32 flags;      /* protection_flag | entry_state bits */
	__u32 accessors;  /* id of this process's allow-list in `accessors`; 0: nobody allowed */
};

struct event {
	__u64 timestamp_ns;  /* bpf_ktime_get_ns */
	__u32 kind;          /* event_kind */
	__u32 action;        /* action */
	__u32 flags;         /* the target's flags */
	__u32 target_tgid;   /* 0: node-wide */
	__u32 opener_tgid;
	__u32 opener_pid;
	__u32 opener_uid;
	__u16 via;           /* access_via */
	__u16 note;          /* event_note bits */
	char comm[16];       /* the opener's comm */
	char exe[64];        /* the basename of the opener's executable (mm->exe_file), "" if none */
};

struct file_key {
	__u64 ino;
	__u32 dev;  /* kernel dev_t of the inode's superblock (MKDEV: major << 20 | minor) */
	__u32 pad;
};

struct file_owner {
	__u32 tgid;
	__u32 flags;  /* protected_mounts: the owner's flags, which still apply once it died */
};

struct accessor_key {
	__u64 ino;
	__u32 dev;   /* kernel dev_t of the executable's superblock */
	__u32 uid;   /* the opener's uid, or ALLOWED_ANY_UID */
	__u32 list;  /* the allow-list's id (protected_entry.accessors), never 0 */
	__u32 pad;
};

/* The `node` map's one value: who the agent is (tgid and start time, 0 when none). */
struct node_state {
	__u32 agent_tgid;
	__u32 pad;
	__u64 agent_start;
};

/* The context of the agent_op program (BPF_PROG_RUN's ctx_in/ctx_out). */
struct agent_op {
	__u32 op;       /* agent_op_code */
	__u32 map;      /* agent_map */
	__u64 flags;    /* BPF_ANY, BPF_NOEXIST, BPF_EXIST */
	__u8 key[AGENT_OP_BYTES];
	__u8 value[AGENT_OP_BYTES];
	__s32 result;   /* out: 0 or -errno */
	__u32 pad;
};

#endif

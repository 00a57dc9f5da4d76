/*
 * cloudtaser interposer (LD_PRELOAD), loaded by the wrapper into every dynamically linked app.
 *
 * The wrapper execs the app with each secret in its own inherited memory fd and lists them in
 * CLOUDTASER_FDS ("KIND FD NAME" lines, contracts/README.md; parsed by manifest.h). This
 * library, in every process it is loaded into:
 *   - first makes the process non-dumpable (PR_SET_DUMPABLE 0): execve made it dumpable again,
 *     and a dumpable process is open to any process of the same uid (ptrace,
 *     process_vm_readv, /proc/PID/{environ,mem}); a non-dumpable one only to CAP_SYS_PTRACE.
 *     With no manifest, that and one scan of environ is all the constructor does;
 *   - validates the whole manifest; a malformed one ends the process before main with one line
 *     on stderr naming the line number (never its content) and exit status 78: the app must not
 *     run without a secret it was promised;
 *   - "env FD NAME": sets NAME to the fd's contents in memory of its own, closes the fd and
 *     removes the line from CLOUDTASER_FDS (environment.c); the value never is in the
 *     process's initial environment area, so /proc/PID/environ does not hold it. getenv and
 *     secure_getenv are interposed only to initialise first when called from a constructor
 *     that runs before ours;
 *   - "file FD NAME": makes the app believe the file NAME exists:
 *       - open/openat/fopen (and their 64/fortify variants) of NAME return a readable fd
 *         holding the secret's current contents;
 *       - stat/lstat/fstatat/statx/__xstat... of NAME describe a regular file, mode 0400, owned
 *         by the effective uid/gid, st_size = the secret's length, times of the secret fd (so
 *         an app that watches mtime sees a refresh);
 *       - access/faccessat/euidaccess/eaccess of NAME allow F_OK and R_OK, refuse W_OK/X_OK
 *         with EACCES; opening NAME for writing (or O_TRUNC, creat) fails with EACCES;
 *   - "sdk" lines are validated and left to the SDKs.
 * Every other path goes straight to the next definition (dlsym(RTLD_NEXT), resolved on the
 * first call of each symbol, so that a process with nothing to serve pays no lookups).
 *
 * Why a copy per open: a memfd_secret fd cannot be read() or pread() (the kernel refuses; only
 * mmap(MAP_SHARED) works), yet apps read files with read(). So each open of NAME creates a
 * fresh memfd (memfd_create, MFD_ALLOW_SEALING, MFD_CLOEXEC iff O_CLOEXEC / fopen "e"), copies
 * the secret into it with pwrite() from a MAP_SHARED mapping of the secret fd, sets mode
 * 0400, seals it (F_SEAL_WRITE|GROW|SHRINK|SEAL) and returns it at offset 0: read, pread,
 * lseek, fstat and mmap then work natively. The secret is re-read on every open (a refresher
 * may rewrite the secret fd in place; the size is its current fstat size).
 *
 * Limitations (also in README.md next to this file):
 *   - The per-open copy is ordinary shmem memory, not secretmem: root can read it through
 *     /proc/PID/fd or /proc/PID/mem unless the cloudtaser BPF agent protects the process. It
 *     is sealed (no writes), CLOEXEC unless the app asked otherwise, and freed on last close.
 *   - Only calls that go through the dynamic libc are covered: static binaries, programs that
 *     make raw syscalls (Go's os.Open does NOT go through libc) and calls libc makes
 *     internally (realpath, opendir, glob, ftw, freopen, ...) do not see NAME. Such programs
 *     should use the SDKs ("sdk" lines).
 *   - Paths are matched lexically: absolute paths after removing "//", "." and ".."; relative
 *     ones after joining with getcwd() (AT_FDCWD) or with /proc/self/fd/DIRFD (openat & co).
 *     Symlinks are not followed, parent directories are not synthesised (stat("/etc/app")
 *     still sees the real disk), and a path whose last component is "." or ".." or that ends
 *     with '/' never matches. Two file lines whose paths normalise alike: the first wins.
 *   - stat(NAME) reports the secret fd's st_dev/st_ino, fstat() of an opened copy reports the
 *     memfd's: programs that compare the two to detect a swapped file see a mismatch.
 *   - If the app closed or replaced the inherited secret fd (identity checked by dev/ino),
 *     opening and stat-ing NAME fail with EIO rather than falling back to the disk. This is
 *     also what a child started with its fds closed (Python's subprocess does by default)
 *     sees: a file line whose fd is unusable is therefore not fatal, unlike an env line.
 *   - A refresh that rewrites the secret while an open copies it may yield a torn copy.
 *   - Constructors run in dependency order, the app's libraries' and later LD_PRELOAD entries'
 *     before ours: one of them that reads `environ` directly (not through getenv or an
 *     interposed call, which initialise us) sees no env deliveries yet.
 *
 * Rules kept here: the table is parsed once (constructor, or lazily on the first interposed
 * call if another library's constructor runs first) into fixed static storage and is
 * immutable afterwards, so the hot path takes no lock and allocates nothing (nor does init);
 * the pass-through check is a strrchr plus two bitmap tests; the only output is the one fatal
 * line; secret bytes only go into the returned memfd or the environment string (mappings are
 * unmapped, nothing is copied through other user buffers).
 *
 * Builds (Makefile): glibc and musl, x86_64 and aarch64, from this one source.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "interposer.h"
#include "manifest.h"

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif
#ifndef SYS_faccessat2
#define SYS_faccessat2 439
#endif
#ifndef STATX_BASIC_STATS
#define STATX_BASIC_STATS 0x000007ffU
#endif

#if defined(__GLIBC__)
typedef struct stat64 stat64_t;
/* Link against the oldest symbol versions so that the library loads into apps whose images
 * carry an older glibc than the build machine: dlsym moved to libc with a new version in 2.34
 * (the old one stays, in libdl.so.2 before 2.34 - hence the DT_NEEDED on it in the Makefile).
 * fstat (2.33) and memfd_create (2.27) are called as raw syscalls for the same reason, and the
 * one-time init is hand-made rather than pthread_once (2.34). */
#if defined(__x86_64__)
__asm__(".symver dlsym, dlsym@GLIBC_2.2.5");
#elif defined(__aarch64__)
__asm__(".symver dlsym, dlsym@GLIBC_2.17");
#endif
#else
/* musl: its headers #define the LFS "64" names to the plain ones (struct stat is already
 * 64-bit); binaries linked against musl < 1.2.4 still call the 64 symbols, so they are
 * defined here under their own names with musl's struct stat. */
#undef open64
#undef openat64
#undef creat64
#undef fopen64
#undef stat64
#undef lstat64
#undef fstatat64
typedef struct stat stat64_t;
#ifndef STATX_TYPE
/* musl < 1.2.5 has no statx(): the kernel's struct (include/uapi/linux/stat.h). */
struct statx_timestamp {
    int64_t tv_sec;
    uint32_t tv_nsec;
    int32_t reserved;
};
struct statx {
    uint32_t stx_mask, stx_blksize;
    uint64_t stx_attributes;
    uint32_t stx_nlink, stx_uid, stx_gid;
    uint16_t stx_mode, spare0;
    uint64_t stx_ino, stx_size, stx_blocks, stx_attributes_mask;
    struct statx_timestamp stx_atime, stx_btime, stx_ctime, stx_mtime;
    uint32_t stx_rdev_major, stx_rdev_minor, stx_dev_major, stx_dev_minor;
    uint64_t spare2[14];
};
#endif
#endif

#define EXPORT __attribute__((visibility("default")))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

#define MAX_ENTRIES 256
/* One argument/env string is at most MAX_ARG_STRLEN (32 pages) long, so the manifest never
 * holds more path bytes than this; each entry adds its NUL. */
#define POOL_SIZE (32 * 4096 + MAX_ENTRIES)
#define SEALS (F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL)
#define MEMFD_PREFIX "cloudtaser:"
#define MEMFD_NAME_MAX 249 /* the kernel's limit, without the NUL */

struct entry {
    const char *path; /* normalised absolute path, NUL-terminated, in g_pool */
    size_t len;
    int fd;
    int valid; /* the fd could be fstat-ed at start-up */
    dev_t dev; /* identity of the secret fd at start-up */
    ino_t ino;
    const char *base; /* last component of path */
};

static struct entry g_entries[MAX_ENTRIES];
static size_t g_count;
static char g_pool[POOL_SIZE];
static size_t g_pool_used;
static uint64_t g_first[4];     /* bit c: some basename starts with byte c */
static uint64_t g_base_lens;    /* bit (n & 63): some basename has length n (mod 64) */

/* 0: not started; > 0: the pid of the process one of whose threads runs init; -1: ready. */
static atomic_int g_state;
#define INIT_READY (-1)
static atomic_int g_no_noexec_seal; /* kernel < 6.3 rejects MFD_NOEXEC_SEAL */
static __thread int t_in_init __attribute__((tls_model("initial-exec")));
static __thread int t_resolving __attribute__((tls_model("initial-exec")));

/* The next definitions, looked up on first use (NEXT). They stay NULL if libc lacks one (musl
 * has no __xstat, ...) or while this thread is inside dlsym (which may allocate, and a
 * malloc may open files): the raw syscall is used then. */
static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static int (*real___open_2)(const char *, int);
static int (*real___open64_2)(const char *, int);
static int (*real___openat_2)(int, const char *, int);
static int (*real___openat64_2)(int, const char *, int);
static int (*real_creat)(const char *, mode_t);
static int (*real_creat64)(const char *, mode_t);
static FILE *(*real_fopen)(const char *, const char *);
static FILE *(*real_fopen64)(const char *, const char *);
static int (*real_stat)(const char *, struct stat *);
static int (*real_lstat)(const char *, struct stat *);
static int (*real_stat64)(const char *, stat64_t *);
static int (*real_lstat64)(const char *, stat64_t *);
static int (*real_fstatat)(int, const char *, struct stat *, int);
static int (*real_fstatat64)(int, const char *, stat64_t *, int);
static int (*real___xstat)(int, const char *, struct stat *);
static int (*real___lxstat)(int, const char *, struct stat *);
static int (*real___xstat64)(int, const char *, stat64_t *);
static int (*real___lxstat64)(int, const char *, stat64_t *);
static int (*real___fxstatat)(int, int, const char *, struct stat *, int);
static int (*real___fxstatat64)(int, int, const char *, stat64_t *, int);
static int (*real_statx)(int, const char *, int, unsigned int, struct statx *);
static int (*real_access)(const char *, int);
static int (*real_faccessat)(int, const char *, int, int);
static int (*real_euidaccess)(const char *, int);
static int (*real_eaccess)(const char *, int);
static char *(*real_getenv)(const char *);
static char *(*real_secure_getenv)(const char *);

static __attribute__((noinline, cold)) void *lookup_next(const char *name)
{
    if (t_resolving)
        return NULL;
    int saved = errno;
    t_resolving = 1;
    void *fn = dlsym(RTLD_NEXT, name);
    t_resolving = 0;
    errno = saved;
    return fn;
}

/* The next definition of NAME: one relaxed load once resolved (threads racing to resolve all
 * store the same pointer). */
#define NEXT(name)                                                                   \
    __extension__({                                                                  \
        __typeof__(real_##name) next_ = __atomic_load_n(&real_##name, __ATOMIC_RELAXED); \
        if (UNLIKELY(next_ == NULL)) {                                               \
            next_ = (__typeof__(real_##name))lookup_next(#name);                     \
            if (next_ != NULL)                                                       \
                __atomic_store_n(&real_##name, next_, __ATOMIC_RELAXED);             \
        }                                                                            \
        next_;                                                                       \
    })

/* Calls the next definition of NAME if there is one; the statement after it is the fallback. */
#define PASS(name, ...)                                   \
    do {                                                  \
        __typeof__(real_##name) pass_ = NEXT(name);       \
        if (LIKELY(pass_ != NULL))                        \
            return pass_(__VA_ARGS__);                    \
    } while (0)

/* The kernel's struct stat is the libc's (glibc and musl) on x86_64 and aarch64. */
static inline int sys_fstat(int fd, struct stat *st)
{
    return (int)syscall(SYS_fstat, fd, st);
}

/* ---- path normalisation ------------------------------------------------------------- */

/* Appends the components of s[0..n) to the absolute path out[0..*len) ("" is the root),
 * dropping empty and "." components and popping on "..". -1 if the result would not fit. */
static int push_components(char *out, size_t *len, size_t cap, const char *s, size_t n)
{
    const char *end = s + n;
    while (s < end) {
        while (s < end && *s == '/')
            s++;
        const char *c = s;
        while (s < end && *s != '/')
            s++;
        size_t clen = (size_t)(s - c);
        if (clen == 0 || (clen == 1 && c[0] == '.'))
            continue;
        if (clen == 2 && c[0] == '.' && c[1] == '.') {
            while (*len > 0 && out[*len - 1] != '/')
                (*len)--;
            if (*len > 0)
                (*len)--;
            continue;
        }
        if (*len + 1 + clen >= cap)
            return -1;
        out[(*len)++] = '/';
        memcpy(out + *len, c, clen);
        *len += clen;
    }
    return 0;
}

/* ---- the table ------------------------------------------------------------------------ */

/* A path that normalises to nothing ("/", "/..") or past PATH_MAX could never be opened as a
 * file: such a line is valid but never served. */
static void add_file(const struct ct_line *line)
{
    if (g_count >= MAX_ENTRIES)
        ct_fail(line->number, "more file lines than the interposer serves (256)", 0);
    size_t room = POOL_SIZE - g_pool_used;
    if (room > PATH_MAX)
        room = PATH_MAX;
    char *out = g_pool + g_pool_used;
    size_t len = 0;
    if (push_components(out, &len, room, line->name, line->name_len) != 0 || len == 0)
        return;
    out[len] = '\0';
    for (size_t i = 0; i < g_count; i++)
        if (g_entries[i].len == len && memcmp(g_entries[i].path, out, len) == 0)
            return; /* the first line for a path wins */
    struct entry *e = &g_entries[g_count];
    e->path = out;
    e->len = len;
    e->fd = line->fd;
    e->base = strrchr(out, '/') + 1;
    struct stat st;
    if (sys_fstat(line->fd, &st) == 0) {
        e->valid = 1;
        e->dev = st.st_dev;
        e->ino = st.st_ino;
    }
    unsigned char c = (unsigned char)e->base[0];
    g_first[c >> 6] |= (uint64_t)1 << (c & 63);
    g_base_lens |= (uint64_t)1 << (strlen(e->base) & 63);
    g_pool_used += len + 1;
    g_count++;
}

/* The whole manifest is validated first: a bad line anywhere ends the process (ct_fail).
 * Nothing here allocates (see environment.c): init may run inside an interposed call that a
 * malloc implementation makes while it initialises. */
static void init(void)
{
    int saved = errno;
    t_in_init = 1;
    g_count = 0; /* a fork may have interrupted a first run in the parent */
    g_pool_used = 0;
    memset(g_first, 0, sizeof g_first);
    g_base_lens = 0;
    const char *s = ct_env_find(CT_FDS_ENV);
    if (s != NULL && *s != '\0') {
        size_t len = strlen(s);
        const char *why;
        unsigned bad = ct_validate(s, len, &why);
        if (bad != 0)
            ct_fail(bad, why, 0);
        struct ct_cursor cursor;
        struct ct_line line;
        ct_begin(&cursor, s, len);
        while (ct_next(&cursor, &line, &why) > 0)
            if (line.kind == CT_FILE)
                add_file(&line);
        ct_deliver_env(s, len); /* s stays valid: only environ's slot moves */
    }
    atomic_store_explicit(&g_state, INIT_READY, memory_order_release);
    t_in_init = 0;
    errno = saved;
}

static inline int ready(void)
{
    return atomic_load_explicit(&g_state, memory_order_acquire) == INIT_READY;
}

static __attribute__((noinline)) void init_once(void)
{
    int saved = errno;
    int pid = (int)syscall(SYS_getpid);
    for (;;) {
        int state = atomic_load_explicit(&g_state, memory_order_acquire);
        if (state == INIT_READY)
            break;
        /* Not started, or started by a thread of the parent of a fork (that thread does not
         * exist here): this thread runs init. Otherwise another thread is at it: wait. */
        if (state != pid && atomic_compare_exchange_strong(&g_state, &state, pid)) {
            init();
            break;
        }
        sched_yield();
    }
    errno = saved;
}

static inline void ensure_init(void)
{
    if (UNLIKELY(!ready()) && !t_in_init)
        init_once();
}

static void put(char *msg, size_t cap, size_t *n, const char *s)
{
    while (*s != '\0' && *n < cap)
        msg[(*n)++] = *s++;
}

/* One line on stderr (the line number and why, never the line) and exit status 78 (EX_CONFIG,
 * the wrapper's "permanent" status), before main: the app must not run without its secrets. */
void ct_fail(unsigned line, const char *why, int err)
{
    char msg[512], digits[12];
    size_t n = 0, cap = sizeof msg - 1;
    put(msg, cap, &n, "cloudtaser interposer: " CT_FDS_ENV);
    if (line != 0) {
        int d = sizeof digits - 1;
        digits[d] = '\0';
        do {
            digits[--d] = (char)('0' + line % 10);
            line /= 10;
        } while (line != 0);
        put(msg, cap, &n, " line ");
        put(msg, cap, &n, digits + d);
    }
    put(msg, cap, &n, ": ");
    put(msg, cap, &n, why);
    if (err != 0) {
        put(msg, cap, &n, ": ");
        put(msg, cap, &n, strerror(err));
    }
    msg[n++] = '\n';
    for (size_t off = 0; off < n;) {
        ssize_t w = write(STDERR_FILENO, msg + off, n - off);
        if (w <= 0 && errno != EINTR)
            break;
        off += w > 0 ? (size_t)w : 0;
    }
    _exit(78);
}

/* Non-dumpable first, whatever else happens: the wrapper made itself non-dumpable, but execve
 * reset that, and a dumpable app is open to every process of its uid and would leave every
 * copy of a secret in a core dump. Then the manifest, unless an interposed call of another
 * library's constructor got to it first. */
__attribute__((constructor)) static void cloudtaser_interposer_init(void)
{
    int saved = errno;
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    errno = saved;
    ensure_init();
}

/* ---- lookup ----------------------------------------------------------------------------- */

static const struct entry *match(const char *path, size_t len)
{
    for (size_t i = 0; i < g_count; i++) {
        const struct entry *e = &g_entries[i];
        if (e->len == len && memcmp(e->path, path, len) == 0)
            return e;
    }
    return NULL;
}

/* The slow half: the full, normalised path compared with the table. errno is preserved. */
static __attribute__((noinline)) const struct entry *lookup(int dirfd, const char *path,
                                                            const char *tail)
{
    if (tail[0] == '.' && (tail[1] == '\0' || (tail[1] == '.' && tail[2] == '\0')))
        return NULL; /* names a directory, never a file */
    size_t n = strlen(path);
    if (n >= PATH_MAX)
        return NULL;
    if (path[0] == '/') {
        const struct entry *e = match(path, n);
        if (e != NULL || (strstr(path, "//") == NULL && strstr(path, "/.") == NULL))
            return e; /* already canonical: no need to normalise */
    }
    int saved = errno;
    char out[PATH_MAX];
    size_t len = 0;
    if (path[0] != '/') {
        if (dirfd == AT_FDCWD) {
            if (getcwd(out, sizeof out) == NULL)
                goto miss;
            len = strlen(out);
        } else {
            char proc[32] = "/proc/self/fd/";
            char digits[12];
            int d = 0;
            unsigned v = (unsigned)dirfd;
            if (dirfd < 0)
                goto miss;
            do {
                digits[d++] = (char)('0' + v % 10);
                v /= 10;
            } while (v != 0);
            size_t p = strlen(proc);
            while (d > 0)
                proc[p++] = digits[--d];
            proc[p] = '\0';
            ssize_t r = readlink(proc, out, sizeof out - 1);
            if (r <= 0)
                goto miss;
            len = (size_t)r;
        }
        if (out[0] != '/')
            goto miss; /* "(unreachable)/...", "anon_inode:[...]" */
        if (len == 1)
            len = 0; /* the root */
    }
    if (push_components(out, &len, sizeof out, path, n) != 0 || len == 0)
        goto miss;
    errno = saved;
    return match(out, len);
miss:
    errno = saved;
    return NULL;
}

/* The hot path: most paths are rejected by their last component's first byte and length. */
static inline const struct entry *find(int dirfd, const char *path)
{
    if (!ready() || g_count == 0)
        return NULL;
    __asm__("" : "+r"(path)); /* forget libc's nonnull promise: open(NULL) must stay EFAULT */
    if (UNLIKELY(path == NULL))
        return NULL;
    const char *slash = strrchr(path, '/');
    const char *tail = slash != NULL ? slash + 1 : path;
    unsigned char c = (unsigned char)tail[0];
    if (LIKELY(!((g_first[c >> 6] >> (c & 63)) & 1)))
        return NULL; /* also every path ending in '/' or empty: no basename starts with NUL */
    if (!((g_base_lens >> (strlen(tail) & 63)) & 1))
        return NULL;
    return lookup(dirfd, path, tail);
}

/* ---- serving ------------------------------------------------------------------------------ */

/* fstat of the secret fd, checked to still be the fd the wrapper handed over. */
static int secret_stat(const struct entry *e, struct stat *st)
{
    if (!e->valid || sys_fstat(e->fd, st) != 0 || st->st_dev != e->dev || st->st_ino != e->ino) {
        errno = EIO;
        return -1;
    }
    return 0;
}

static int make_memfd(const struct entry *e, int cloexec)
{
    char name[MEMFD_NAME_MAX + 1] = MEMFD_PREFIX;
    size_t p = sizeof MEMFD_PREFIX - 1;
    size_t b = strlen(e->base);
    if (b > MEMFD_NAME_MAX - p)
        b = MEMFD_NAME_MAX - p;
    memcpy(name + p, e->base, b);
    name[p + b] = '\0';
    unsigned flags = MFD_ALLOW_SEALING | (cloexec ? MFD_CLOEXEC : 0);
    if (!atomic_load_explicit(&g_no_noexec_seal, memory_order_relaxed)) {
        int fd = (int)syscall(SYS_memfd_create, name, flags | MFD_NOEXEC_SEAL);
        if (fd >= 0 || errno != EINVAL)
            return fd;
        atomic_store_explicit(&g_no_noexec_seal, 1, memory_order_relaxed);
    }
    return (int)syscall(SYS_memfd_create, name, flags);
}

/* Copies the secret's current contents into a fresh sealed memfd. */
static int copy_secret(const struct entry *e, int cloexec)
{
    int mfd = make_memfd(e, cloexec);
    if (mfd < 0)
        return -1;
    int err = EIO;
    for (int attempt = 0; attempt < 3; attempt++) {
        struct stat st;
        if (secret_stat(e, &st) != 0) {
            err = EIO;
            goto fail;
        }
        size_t size = (size_t)st.st_size;
        if (size > 0) {
            void *map = mmap(NULL, size, PROT_READ, MAP_SHARED, e->fd, 0);
            if (map == MAP_FAILED) {
                err = errno == ENOMEM || errno == EAGAIN ? ENOMEM : EIO;
                goto fail;
            }
            /* pwrite() copies straight from the mapping into the memfd (no user buffer) and
             * leaves the offset at 0. If a refresher shrank the secret meanwhile, the kernel
             * returns EFAULT (no SIGBUS) and the copy starts over. */
            size_t off = 0;
            while (off < size) {
                ssize_t w = pwrite(mfd, (const char *)map + off, size - off, (off_t)off);
                if (w < 0 && errno == EINTR)
                    continue;
                if (w <= 0) {
                    err = w < 0 ? errno : EIO;
                    break;
                }
                off += (size_t)w;
            }
            munmap(map, size);
            if (off < size) {
                if (err == EFAULT && ftruncate(mfd, 0) == 0)
                    continue; /* resized under us: take a fresh look */
                goto fail;
            }
        }
        if (fchmod(mfd, 0400) != 0 || fcntl(mfd, F_ADD_SEALS, SEALS) != 0) {
            err = errno;
            goto fail;
        }
        return mfd;
    }
    err = EIO; /* resized under us on every attempt */
fail:
    close(mfd);
    errno = err;
    return -1;
}

static int open_secret(const struct entry *e, int flags)
{
    if ((flags & (O_CREAT | O_EXCL)) == (O_CREAT | O_EXCL)) {
        errno = EEXIST;
        return -1;
    }
    if (flags & O_DIRECTORY) { /* O_TMPFILE includes it */
        errno = ENOTDIR;
        return -1;
    }
    if ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC)) {
        errno = EACCES;
        return -1;
    }
    return copy_secret(e, (flags & O_CLOEXEC) != 0);
}

/* fopen's mode as open flags; -1 (EINVAL) when it is not a valid mode. */
static int fopen_flags(const char *mode)
{
    int flags;
    switch (mode[0]) {
    case 'r':
        flags = O_RDONLY;
        break;
    case 'w':
        flags = O_WRONLY | O_CREAT | O_TRUNC;
        break;
    case 'a':
        flags = O_WRONLY | O_CREAT | O_APPEND;
        break;
    default:
        errno = EINVAL;
        return -1;
    }
    for (const char *m = mode + 1; *m != '\0' && *m != ','; m++) {
        if (*m == '+')
            flags = (flags & ~O_ACCMODE) | O_RDWR;
        else if (*m == 'x')
            flags |= O_EXCL;
        else if (*m == 'e')
            flags |= O_CLOEXEC;
    }
    return flags;
}

static FILE *fopen_secret(const struct entry *e, const char *mode)
{
    int flags = fopen_flags(mode);
    if (flags < 0)
        return NULL;
    int fd = open_secret(e, flags);
    if (fd < 0)
        return NULL;
    FILE *f = fdopen(fd, "r");
    if (f == NULL) {
        int err = errno;
        close(fd);
        errno = err;
    }
    return f;
}

#define FILL_STAT(dst, src, euid, egid)                                  \
    do {                                                                 \
        memset((dst), 0, sizeof *(dst));                                 \
        (dst)->st_dev = (src).st_dev;                                    \
        (dst)->st_ino = (src).st_ino;                                    \
        (dst)->st_mode = S_IFREG | 0400;                                 \
        (dst)->st_nlink = 1;                                             \
        (dst)->st_uid = (euid);                                          \
        (dst)->st_gid = (egid);                                          \
        (dst)->st_size = (src).st_size;                                  \
        (dst)->st_blksize = (src).st_blksize;                            \
        (dst)->st_blocks = ((src).st_size + 511) / 512;                  \
        (dst)->st_atim = (src).st_atim;                                  \
        (dst)->st_mtim = (src).st_mtim;                                  \
        (dst)->st_ctim = (src).st_ctim;                                  \
    } while (0)

static int stat_secret(const struct entry *e, struct stat *buf)
{
    struct stat st;
    if (secret_stat(e, &st) != 0)
        return -1;
    FILL_STAT(buf, st, geteuid(), getegid());
    return 0;
}

static int stat64_secret(const struct entry *e, stat64_t *buf)
{
    struct stat st;
    if (secret_stat(e, &st) != 0)
        return -1;
    FILL_STAT(buf, st, geteuid(), getegid());
    return 0;
}

static void statx_time(struct statx_timestamp *t, const struct timespec *ts)
{
    t->tv_sec = ts->tv_sec;
    t->tv_nsec = (uint32_t)ts->tv_nsec;
}

static int statx_secret(const struct entry *e, struct statx *buf)
{
    struct stat st;
    if (secret_stat(e, &st) != 0)
        return -1;
    memset(buf, 0, sizeof *buf);
    buf->stx_mask = STATX_BASIC_STATS;
    buf->stx_blksize = (uint32_t)st.st_blksize;
    buf->stx_nlink = 1;
    buf->stx_uid = geteuid();
    buf->stx_gid = getegid();
    buf->stx_mode = S_IFREG | 0400;
    buf->stx_ino = st.st_ino;
    buf->stx_size = (uint64_t)st.st_size;
    buf->stx_blocks = ((uint64_t)st.st_size + 511) / 512;
    statx_time(&buf->stx_atime, &st.st_atim);
    statx_time(&buf->stx_ctime, &st.st_ctim);
    statx_time(&buf->stx_mtime, &st.st_mtim);
    buf->stx_dev_major = major(st.st_dev);
    buf->stx_dev_minor = minor(st.st_dev);
    return 0;
}

static int access_secret(const struct entry *e, int mode)
{
    struct stat st;
    if (secret_stat(e, &st) != 0)
        return -1;
    if (mode & (W_OK | X_OK)) {
        errno = EACCES;
        return -1;
    }
    return 0;
}

/* ---- the interposed symbols ------------------------------------------------------------ */

static inline int sys_openat(int dirfd, const char *path, int flags, mode_t mode)
{
    return (int)syscall(SYS_openat, dirfd, path, flags, mode);
}

static inline int sys_fstatat(int dirfd, const char *path, void *buf, int flags)
{
    return (int)syscall(SYS_newfstatat, dirfd, path, buf, flags);
}

static inline int sys_faccessat(int dirfd, const char *path, int mode, int flags)
{
    if (flags == 0)
        return (int)syscall(SYS_faccessat, dirfd, path, mode);
    return (int)syscall(SYS_faccessat2, dirfd, path, mode, flags);
}

#define NEEDS_MODE(flags) (((flags) & O_CREAT) != 0 || ((flags) & O_TMPFILE) == O_TMPFILE)

#define OPEN_MODE(flags, last)               \
    mode_t mode = 0;                         \
    if (NEEDS_MODE(flags)) {                 \
        va_list ap;                          \
        va_start(ap, last);                  \
        mode = (mode_t)va_arg(ap, unsigned); \
        va_end(ap);                          \
    }

EXPORT int open(const char *path, int flags, ...)
{
    OPEN_MODE(flags, flags);
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return open_secret(e, flags);
    PASS(open, path, flags, mode);
    return sys_openat(AT_FDCWD, path, flags, mode);
}

EXPORT int open64(const char *path, int flags, ...)
{
    OPEN_MODE(flags, flags);
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return open_secret(e, flags);
    PASS(open64, path, flags, mode);
    return sys_openat(AT_FDCWD, path, flags, mode);
}

EXPORT int openat(int dirfd, const char *path, int flags, ...)
{
    OPEN_MODE(flags, flags);
    ensure_init();
    const struct entry *e = find(dirfd, path);
    if (UNLIKELY(e != NULL))
        return open_secret(e, flags);
    PASS(openat, dirfd, path, flags, mode);
    return sys_openat(dirfd, path, flags, mode);
}

EXPORT int openat64(int dirfd, const char *path, int flags, ...)
{
    OPEN_MODE(flags, flags);
    ensure_init();
    const struct entry *e = find(dirfd, path);
    if (UNLIKELY(e != NULL))
        return open_secret(e, flags);
    PASS(openat64, dirfd, path, flags, mode);
    return sys_openat(dirfd, path, flags, mode);
}

/* The _FORTIFY_SOURCE entry points (open without a mode argument). */
EXPORT int __open_2(const char *path, int flags)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return open_secret(e, flags);
    PASS(__open_2, path, flags);
    return sys_openat(AT_FDCWD, path, flags, 0);
}

EXPORT int __open64_2(const char *path, int flags)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return open_secret(e, flags);
    PASS(__open64_2, path, flags);
    return sys_openat(AT_FDCWD, path, flags, 0);
}

EXPORT int __openat_2(int dirfd, const char *path, int flags)
{
    ensure_init();
    const struct entry *e = find(dirfd, path);
    if (UNLIKELY(e != NULL))
        return open_secret(e, flags);
    PASS(__openat_2, dirfd, path, flags);
    return sys_openat(dirfd, path, flags, 0);
}

EXPORT int __openat64_2(int dirfd, const char *path, int flags)
{
    ensure_init();
    const struct entry *e = find(dirfd, path);
    if (UNLIKELY(e != NULL))
        return open_secret(e, flags);
    PASS(__openat64_2, dirfd, path, flags);
    return sys_openat(dirfd, path, flags, 0);
}

EXPORT int creat(const char *path, mode_t mode)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return open_secret(e, O_CREAT | O_WRONLY | O_TRUNC);
    PASS(creat, path, mode);
    return sys_openat(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode);
}

EXPORT int creat64(const char *path, mode_t mode)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return open_secret(e, O_CREAT | O_WRONLY | O_TRUNC);
    PASS(creat64, path, mode);
    return sys_openat(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode);
}

/* Only reached without a real fopen (while this thread is inside dlsym). */
static FILE *fopen_fallback(const char *path, const char *mode)
{
    int flags = fopen_flags(mode);
    if (flags < 0)
        return NULL;
    int fd = sys_openat(AT_FDCWD, path, flags, 0666);
    if (fd < 0)
        return NULL;
    FILE *f = fdopen(fd, mode);
    if (f == NULL) {
        int err = errno;
        close(fd);
        errno = err;
    }
    return f;
}

EXPORT FILE *fopen(const char *path, const char *mode)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return fopen_secret(e, mode);
    PASS(fopen, path, mode);
    return fopen_fallback(path, mode);
}

EXPORT FILE *fopen64(const char *path, const char *mode)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return fopen_secret(e, mode);
    PASS(fopen64, path, mode);
    return fopen_fallback(path, mode);
}

/* stat family. glibc >= 2.33 exports stat/lstat/fstatat (+64) as real symbols; binaries
 * linked against older glibc call __xstat/__lxstat/__fxstatat (+64) with a version number
 * (the kernel layout on x86_64/aarch64, which is struct stat). newfstatat is a syscall, not a
 * libc symbol. */
EXPORT int stat(const char *path, struct stat *buf)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return stat_secret(e, buf);
    PASS(stat, path, buf);
    return sys_fstatat(AT_FDCWD, path, buf, 0);
}

EXPORT int lstat(const char *path, struct stat *buf)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return stat_secret(e, buf);
    PASS(lstat, path, buf);
    return sys_fstatat(AT_FDCWD, path, buf, AT_SYMLINK_NOFOLLOW);
}

EXPORT int stat64(const char *path, stat64_t *buf)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return stat64_secret(e, buf);
    PASS(stat64, path, buf);
    return sys_fstatat(AT_FDCWD, path, buf, 0);
}

EXPORT int lstat64(const char *path, stat64_t *buf)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return stat64_secret(e, buf);
    PASS(lstat64, path, buf);
    return sys_fstatat(AT_FDCWD, path, buf, AT_SYMLINK_NOFOLLOW);
}

EXPORT int fstatat(int dirfd, const char *path, struct stat *buf, int flags)
{
    ensure_init();
    const struct entry *e = find(dirfd, path);
    if (UNLIKELY(e != NULL))
        return stat_secret(e, buf);
    PASS(fstatat, dirfd, path, buf, flags);
    return sys_fstatat(dirfd, path, buf, flags);
}

EXPORT int fstatat64(int dirfd, const char *path, stat64_t *buf, int flags)
{
    ensure_init();
    const struct entry *e = find(dirfd, path);
    if (UNLIKELY(e != NULL))
        return stat64_secret(e, buf);
    PASS(fstatat64, dirfd, path, buf, flags);
    return sys_fstatat(dirfd, path, buf, flags);
}

EXPORT int __xstat(int ver, const char *path, struct stat *buf)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return stat_secret(e, buf);
    PASS(__xstat, ver, path, buf);
    return sys_fstatat(AT_FDCWD, path, buf, 0);
}

EXPORT int __lxstat(int ver, const char *path, struct stat *buf)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return stat_secret(e, buf);
    PASS(__lxstat, ver, path, buf);
    return sys_fstatat(AT_FDCWD, path, buf, AT_SYMLINK_NOFOLLOW);
}

EXPORT int __xstat64(int ver, const char *path, stat64_t *buf)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return stat64_secret(e, buf);
    PASS(__xstat64, ver, path, buf);
    return sys_fstatat(AT_FDCWD, path, buf, 0);
}

EXPORT int __lxstat64(int ver, const char *path, stat64_t *buf)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return stat64_secret(e, buf);
    PASS(__lxstat64, ver, path, buf);
    return sys_fstatat(AT_FDCWD, path, buf, AT_SYMLINK_NOFOLLOW);
}

EXPORT int __fxstatat(int ver, int dirfd, const char *path, struct stat *buf, int flags)
{
    ensure_init();
    const struct entry *e = find(dirfd, path);
    if (UNLIKELY(e != NULL))
        return stat_secret(e, buf);
    PASS(__fxstatat, ver, dirfd, path, buf, flags);
    return sys_fstatat(dirfd, path, buf, flags);
}

EXPORT int __fxstatat64(int ver, int dirfd, const char *path, stat64_t *buf, int flags)
{
    ensure_init();
    const struct entry *e = find(dirfd, path);
    if (UNLIKELY(e != NULL))
        return stat64_secret(e, buf);
    PASS(__fxstatat64, ver, dirfd, path, buf, flags);
    return sys_fstatat(dirfd, path, buf, flags);
}

EXPORT int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *buf)
{
    ensure_init();
    const struct entry *e = find(dirfd, path);
    if (UNLIKELY(e != NULL))
        return statx_secret(e, buf);
    PASS(statx, dirfd, path, flags, mask, buf);
    return (int)syscall(SYS_statx, dirfd, path, flags, mask, buf);
}

EXPORT int access(const char *path, int mode)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return access_secret(e, mode);
    PASS(access, path, mode);
    return sys_faccessat(AT_FDCWD, path, mode, 0);
}

EXPORT int faccessat(int dirfd, const char *path, int mode, int flags)
{
    ensure_init();
    const struct entry *e = find(dirfd, path);
    if (UNLIKELY(e != NULL))
        return access_secret(e, mode);
    PASS(faccessat, dirfd, path, mode, flags);
    return sys_faccessat(dirfd, path, mode, flags);
}

EXPORT int euidaccess(const char *path, int mode)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return access_secret(e, mode);
    PASS(euidaccess, path, mode);
    return sys_faccessat(AT_FDCWD, path, mode, AT_EACCESS);
}

EXPORT int eaccess(const char *path, int mode)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return access_secret(e, mode);
    PASS(eaccess, path, mode);
    return sys_faccessat(AT_FDCWD, path, mode, AT_EACCESS);
}

/* The environment: a getenv() in a constructor that runs before ours (another preloaded
 * library's, or one of the app's libraries') initialises us, so it sees the env lines too. */
EXPORT char *getenv(const char *name)
{
    ensure_init();
    PASS(getenv, name);
    return ct_env_find(name);
}

EXPORT char *secure_getenv(const char *name)
{
    ensure_init();
    PASS(secure_getenv, name);
    return getuid() == geteuid() && getgid() == getegid() ? ct_env_find(name) : NULL;
}

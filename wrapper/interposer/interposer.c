/*
 * cloudtaser file-delivery interposer (LD_PRELOAD).
 *
 * The wrapper execs the app with each secret in its own inherited memory fd and lists them in
 * CLOUDTASER_FDS ("KIND FD NAME" lines, '\n'-separated; KIND is "file" or "sdk"). For every
 * "file" line this library makes the app believe the file NAME exists:
 *   - open/openat/fopen (and their 64/fortify variants) of NAME return a readable fd holding
 *     the secret's current contents;
 *   - stat/lstat/fstatat/statx/__xstat... of NAME describe a regular file, mode 0400, owned by
 *     the effective uid/gid, st_size = the secret's length, times of the secret fd (so an app
 *     that watches mtime sees a refresh);
 *   - access/faccessat/euidaccess/eaccess of NAME allow F_OK and R_OK, refuse W_OK/X_OK with
 *     EACCES; opening NAME for writing (or O_TRUNC, creat) fails with EACCES.
 * Every other path goes straight to the next definition (dlsym(RTLD_NEXT), resolved once).
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
 *     with '/' never matches.
 *   - stat(NAME) reports the secret fd's st_dev/st_ino, fstat() of an opened copy reports the
 *     memfd's: programs that compare the two to detect a swapped file see a mismatch.
 *   - If the app closed or replaced the inherited secret fd (identity checked by dev/ino),
 *     opening and stat-ing NAME fail with EIO rather than falling back to the disk.
 *   - A refresh that rewrites the secret while an open copies it may yield a torn copy.
 *
 * Rules kept here: the table is parsed once (constructor, or lazily on the first interposed
 * call if another library's constructor runs first) into fixed static storage and is
 * immutable afterwards, so the hot path takes no lock and allocates nothing; the pass-through
 * check is a strrchr plus two bitmap tests; nothing is ever printed; secret bytes only go
 * into the returned memfd (the mapping is unmapped, nothing is copied through user buffers).
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

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif
#ifndef SYS_faccessat2
#define SYS_faccessat2 439
#endif
#ifndef STATX_BASIC_STATS
#define STATX_BASIC_STATS 0x000007ffU
#endif

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

/* The next definitions; NULL only while init runs on this thread (a malloc that opens files
 * under dlsym) or if libc lacks one: then the raw syscall is used. */
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
static int (*real_stat64)(const char *, struct stat64 *);
static int (*real_lstat64)(const char *, struct stat64 *);
static int (*real_fstatat)(int, const char *, struct stat *, int);
static int (*real_fstatat64)(int, const char *, struct stat64 *, int);
static int (*real___xstat)(int, const char *, struct stat *);
static int (*real___lxstat)(int, const char *, struct stat *);
static int (*real___xstat64)(int, const char *, struct stat64 *);
static int (*real___lxstat64)(int, const char *, struct stat64 *);
static int (*real___fxstatat)(int, int, const char *, struct stat *, int);
static int (*real___fxstatat64)(int, int, const char *, struct stat64 *, int);
static int (*real_statx)(int, const char *, int, unsigned int, struct statx *);
static int (*real_access)(const char *, int);
static int (*real_faccessat)(int, const char *, int, int);
static int (*real_euidaccess)(const char *, int);
static int (*real_eaccess)(const char *, int);

/* The kernel's struct stat is glibc's on x86_64 and aarch64. */
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

static void add_file(int fd, const char *name, size_t n)
{
    if (g_count >= MAX_ENTRIES || n == 0 || name[0] != '/')
        return;
    size_t room = POOL_SIZE - g_pool_used;
    if (room > PATH_MAX)
        room = PATH_MAX;
    char *out = g_pool + g_pool_used;
    size_t len = 0;
    if (push_components(out, &len, room, name, n) != 0 || len == 0)
        return;
    out[len] = '\0';
    for (size_t i = 0; i < g_count; i++)
        if (g_entries[i].len == len && memcmp(g_entries[i].path, out, len) == 0)
            return; /* the first line for a path wins */
    struct entry *e = &g_entries[g_count];
    e->path = out;
    e->len = len;
    e->fd = fd;
    e->base = strrchr(out, '/') + 1;
    struct stat st;
    if (sys_fstat(fd, &st) == 0) {
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

/* "file FD NAME": NAME is the rest of the line after the second space. */
static void parse_line(const char *s, size_t n)
{
    if (n < 5 || memcmp(s, "file ", 5) != 0)
        return; /* "sdk" lines and anything else */
    size_t i = 5;
    long fd = 0;
    if (i >= n || s[i] < '0' || s[i] > '9')
        return;
    while (i < n && s[i] >= '0' && s[i] <= '9') {
        fd = fd * 10 + (s[i] - '0');
        if (fd > INT_MAX)
            return;
        i++;
    }
    if (i >= n || s[i] != ' ')
        return;
    i++;
    add_file((int)fd, s + i, n - i);
}

static void resolve(void)
{
#define RESOLVE(name) (*(void **)&real_##name = dlsym(RTLD_NEXT, #name))
    RESOLVE(open);
    RESOLVE(open64);
    RESOLVE(openat);
    RESOLVE(openat64);
    RESOLVE(__open_2);
    RESOLVE(__open64_2);
    RESOLVE(__openat_2);
    RESOLVE(__openat64_2);
    RESOLVE(creat);
    RESOLVE(creat64);
    RESOLVE(fopen);
    RESOLVE(fopen64);
    RESOLVE(stat);
    RESOLVE(lstat);
    RESOLVE(stat64);
    RESOLVE(lstat64);
    RESOLVE(fstatat);
    RESOLVE(fstatat64);
    RESOLVE(__xstat);
    RESOLVE(__lxstat);
    RESOLVE(__xstat64);
    RESOLVE(__lxstat64);
    RESOLVE(__fxstatat);
    RESOLVE(__fxstatat64);
    RESOLVE(statx);
    RESOLVE(access);
    RESOLVE(faccessat);
    RESOLVE(euidaccess);
    RESOLVE(eaccess);
#undef RESOLVE
}

static void init(void)
{
    int saved = errno;
    t_in_init = 1;
    g_count = 0; /* a fork may have interrupted a first run in the parent */
    g_pool_used = 0;
    memset(g_first, 0, sizeof g_first);
    g_base_lens = 0;
    resolve();
    const char *s = getenv("CLOUDTASER_FDS");
    while (s != NULL && *s != '\0') {
        const char *eol = strchr(s, '\n');
        size_t n = eol != NULL ? (size_t)(eol - s) : strlen(s);
        parse_line(s, n);
        s = eol != NULL ? eol + 1 : s + n;
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

/* Also: the app is not dumpable. The wrapper made itself non-dumpable, but execve resets that
 * (the app's image is readable), and a core dump would hold every copy of a secret; the node
 * agent kills a protected process about to dump, this covers the apps this library is loaded
 * into even without an agent. */
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

static int stat64_secret(const struct entry *e, struct stat64 *buf)
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
    if (LIKELY(real_open != NULL))
        return real_open(path, flags, mode);
    return sys_openat(AT_FDCWD, path, flags, mode);
}

EXPORT int open64(const char *path, int flags, ...)
{
    OPEN_MODE(flags, flags);
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return open_secret(e, flags);
    if (LIKELY(real_open64 != NULL))
        return real_open64(path, flags, mode);
    return sys_openat(AT_FDCWD, path, flags, mode);
}

EXPORT int openat(int dirfd, const char *path, int flags, ...)
{
    OPEN_MODE(flags, flags);
    ensure_init();
    const struct entry *e = find(dirfd, path);
    if (UNLIKELY(e != NULL))
        return open_secret(e, flags);
    if (LIKELY(real_openat != NULL))
        return real_openat(dirfd, path, flags, mode);
    return sys_openat(dirfd, path, flags, mode);
}

EXPORT int openat64(int dirfd, const char *path, int flags, ...)
{
    OPEN_MODE(flags, flags);
    ensure_init();
    const struct entry *e = find(dirfd, path);
    if (UNLIKELY(e != NULL))
        return open_secret(e, flags);
    if (LIKELY(real_openat64 != NULL))
        return real_openat64(dirfd, path, flags, mode);
    return sys_openat(dirfd, path, flags, mode);
}

/* The _FORTIFY_SOURCE entry points (open without a mode argument). */
EXPORT int __open_2(const char *path, int flags)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return open_secret(e, flags);
    if (LIKELY(real___open_2 != NULL))
        return real___open_2(path, flags);
    return sys_openat(AT_FDCWD, path, flags, 0);
}

EXPORT int __open64_2(const char *path, int flags)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return open_secret(e, flags);
    if (LIKELY(real___open64_2 != NULL))
        return real___open64_2(path, flags);
    return sys_openat(AT_FDCWD, path, flags, 0);
}

EXPORT int __openat_2(int dirfd, const char *path, int flags)
{
    ensure_init();
    const struct entry *e = find(dirfd, path);
    if (UNLIKELY(e != NULL))
        return open_secret(e, flags);
    if (LIKELY(real___openat_2 != NULL))
        return real___openat_2(dirfd, path, flags);
    return sys_openat(dirfd, path, flags, 0);
}

EXPORT int __openat64_2(int dirfd, const char *path, int flags)
{
    ensure_init();
    const struct entry *e = find(dirfd, path);
    if (UNLIKELY(e != NULL))
        return open_secret(e, flags);
    if (LIKELY(real___openat64_2 != NULL))
        return real___openat64_2(dirfd, path, flags);
    return sys_openat(dirfd, path, flags, 0);
}

EXPORT int creat(const char *path, mode_t mode)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return open_secret(e, O_CREAT | O_WRONLY | O_TRUNC);
    if (LIKELY(real_creat != NULL))
        return real_creat(path, mode);
    return sys_openat(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode);
}

EXPORT int creat64(const char *path, mode_t mode)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return open_secret(e, O_CREAT | O_WRONLY | O_TRUNC);
    if (LIKELY(real_creat64 != NULL))
        return real_creat64(path, mode);
    return sys_openat(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode);
}

/* Only reached without a real fopen (while init runs on this thread). */
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
    if (LIKELY(real_fopen != NULL))
        return real_fopen(path, mode);
    return fopen_fallback(path, mode);
}

EXPORT FILE *fopen64(const char *path, const char *mode)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return fopen_secret(e, mode);
    if (LIKELY(real_fopen64 != NULL))
        return real_fopen64(path, mode);
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
    if (LIKELY(real_stat != NULL))
        return real_stat(path, buf);
    return sys_fstatat(AT_FDCWD, path, buf, 0);
}

EXPORT int lstat(const char *path, struct stat *buf)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return stat_secret(e, buf);
    if (LIKELY(real_lstat != NULL))
        return real_lstat(path, buf);
    return sys_fstatat(AT_FDCWD, path, buf, AT_SYMLINK_NOFOLLOW);
}

EXPORT int stat64(const char *path, struct stat64 *buf)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return stat64_secret(e, buf);
    if (LIKELY(real_stat64 != NULL))
        return real_stat64(path, buf);
    return sys_fstatat(AT_FDCWD, path, buf, 0);
}

EXPORT int lstat64(const char *path, struct stat64 *buf)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return stat64_secret(e, buf);
    if (LIKELY(real_lstat64 != NULL))
        return real_lstat64(path, buf);
    return sys_fstatat(AT_FDCWD, path, buf, AT_SYMLINK_NOFOLLOW);
}

EXPORT int fstatat(int dirfd, const char *path, struct stat *buf, int flags)
{
    ensure_init();
    const struct entry *e = find(dirfd, path);
    if (UNLIKELY(e != NULL))
        return stat_secret(e, buf);
    if (LIKELY(real_fstatat != NULL))
        return real_fstatat(dirfd, path, buf, flags);
    return sys_fstatat(dirfd, path, buf, flags);
}

EXPORT int fstatat64(int dirfd, const char *path, struct stat64 *buf, int flags)
{
    ensure_init();
    const struct entry *e = find(dirfd, path);
    if (UNLIKELY(e != NULL))
        return stat64_secret(e, buf);
    if (LIKELY(real_fstatat64 != NULL))
        return real_fstatat64(dirfd, path, buf, flags);
    return sys_fstatat(dirfd, path, buf, flags);
}

EXPORT int __xstat(int ver, const char *path, struct stat *buf)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return stat_secret(e, buf);
    if (LIKELY(real___xstat != NULL))
        return real___xstat(ver, path, buf);
    return sys_fstatat(AT_FDCWD, path, buf, 0);
}

EXPORT int __lxstat(int ver, const char *path, struct stat *buf)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return stat_secret(e, buf);
    if (LIKELY(real___lxstat != NULL))
        return real___lxstat(ver, path, buf);
    return sys_fstatat(AT_FDCWD, path, buf, AT_SYMLINK_NOFOLLOW);
}

EXPORT int __xstat64(int ver, const char *path, struct stat64 *buf)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return stat64_secret(e, buf);
    if (LIKELY(real___xstat64 != NULL))
        return real___xstat64(ver, path, buf);
    return sys_fstatat(AT_FDCWD, path, buf, 0);
}

EXPORT int __lxstat64(int ver, const char *path, struct stat64 *buf)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return stat64_secret(e, buf);
    if (LIKELY(real___lxstat64 != NULL))
        return real___lxstat64(ver, path, buf);
    return sys_fstatat(AT_FDCWD, path, buf, AT_SYMLINK_NOFOLLOW);
}

EXPORT int __fxstatat(int ver, int dirfd, const char *path, struct stat *buf, int flags)
{
    ensure_init();
    const struct entry *e = find(dirfd, path);
    if (UNLIKELY(e != NULL))
        return stat_secret(e, buf);
    if (LIKELY(real___fxstatat != NULL))
        return real___fxstatat(ver, dirfd, path, buf, flags);
    return sys_fstatat(dirfd, path, buf, flags);
}

EXPORT int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *buf, int flags)
{
    ensure_init();
    const struct entry *e = find(dirfd, path);
    if (UNLIKELY(e != NULL))
        return stat64_secret(e, buf);
    if (LIKELY(real___fxstatat64 != NULL))
        return real___fxstatat64(ver, dirfd, path, buf, flags);
    return sys_fstatat(dirfd, path, buf, flags);
}

EXPORT int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *buf)
{
    ensure_init();
    const struct entry *e = find(dirfd, path);
    if (UNLIKELY(e != NULL))
        return statx_secret(e, buf);
    if (LIKELY(real_statx != NULL))
        return real_statx(dirfd, path, flags, mask, buf);
    return (int)syscall(SYS_statx, dirfd, path, flags, mask, buf);
}

EXPORT int access(const char *path, int mode)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return access_secret(e, mode);
    if (LIKELY(real_access != NULL))
        return real_access(path, mode);
    return sys_faccessat(AT_FDCWD, path, mode, 0);
}

EXPORT int faccessat(int dirfd, const char *path, int mode, int flags)
{
    ensure_init();
    const struct entry *e = find(dirfd, path);
    if (UNLIKELY(e != NULL))
        return access_secret(e, mode);
    if (LIKELY(real_faccessat != NULL))
        return real_faccessat(dirfd, path, mode, flags);
    return sys_faccessat(dirfd, path, mode, flags);
}

EXPORT int euidaccess(const char *path, int mode)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return access_secret(e, mode);
    if (LIKELY(real_euidaccess != NULL))
        return real_euidaccess(path, mode);
    return sys_faccessat(AT_FDCWD, path, mode, AT_EACCESS);
}

EXPORT int eaccess(const char *path, int mode)
{
    ensure_init();
    const struct entry *e = find(AT_FDCWD, path);
    if (UNLIKELY(e != NULL))
        return access_secret(e, mode);
    if (LIKELY(real_eaccess != NULL))
        return real_eaccess(path, mode);
    return sys_faccessat(AT_FDCWD, path, mode, AT_EACCESS);
}

/*
 * A real libc client of the interposer, compiled by test_interposer.py.
 *
 *   probe all SECRET OTHER MISSING  every call the interposer covers, one "key=value" line each
 *                                   (bytes as hex, errno as its name); SECRET's parent must not
 *                                   exist on disk, OTHER is an ordinary file, MISSING is absent
 *   probe reader SECRET             one line "hex" per line read on stdin (a fresh open each time)
 *   probe threads SECRET N M        N threads x M open/read/close; prints the mismatch count
 *   probe swap SECRET FD OTHER      replaces inherited FD by OTHER, then opens SECRET
 *   probe noalloc OTHER DECOY N     N rounds of open/stat/access... of paths that are not
 *                                   secrets; prints how many malloc-family calls they made
 *                                   (this program defines malloc & co. to count them)
 *
 * It never writes what it read to stderr; the test checks that stderr holds no secret.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Declared by hand: the glibc 2.36 headers no longer do, old binaries still call them. */
extern int __xstat(int ver, const char *path, struct stat *buf);
extern int __lxstat(int ver, const char *path, struct stat *buf);
extern int __fxstatat(int ver, int dirfd, const char *path, struct stat *buf, int flags);
extern int __open_2(const char *path, int flags);
extern int __openat_2(int dirfd, const char *path, int flags);
extern int __open64_2(const char *path, int flags);
extern int __openat64_2(int dirfd, const char *path, int flags);

/* malloc & co., counted while g_counting is set: defined in the executable, they stand in for
 * libc's everywhere in the process (the interposer included) and forward to glibc's own. */
extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t size);
extern void __libc_free(void *p);
static atomic_int g_counting;
static atomic_long g_allocs;

static void counted(void)
{
    if (atomic_load(&g_counting))
        atomic_fetch_add(&g_allocs, 1);
}

void *malloc(size_t size)
{
    counted();
    return __libc_malloc(size);
}

void *calloc(size_t n, size_t size)
{
    counted();
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t size)
{
    counted();
    return __libc_realloc(p, size);
}

void free(void *p)
{
    __libc_free(p);
}

#define MAX 65536

static const char *err_name(int e)
{
    switch (e) {
    case 0: return "OK";
    case EACCES: return "EACCES";
    case ENOENT: return "ENOENT";
    case EEXIST: return "EEXIST";
    case ENOTDIR: return "ENOTDIR";
    case EPERM: return "EPERM";
    case EBADF: return "EBADF";
    case EIO: return "EIO";
    case EINVAL: return "EINVAL";
    default: return "OTHER";
    }
}

static void hex(const char *key, const unsigned char *buf, ssize_t n)
{
    printf("%s=", key);
    for (ssize_t i = 0; i < n; i++)
        printf("%02x", buf[i]);
    printf("\n");
}

static ssize_t read_all(int fd, unsigned char *buf, size_t cap)
{
    size_t got = 0;
    for (;;) {
        ssize_t r = read(fd, buf + got, cap - got);
        if (r < 0)
            return -1;
        if (r == 0)
            return (ssize_t)got;
        got += (size_t)r;
    }
}

/* open() then read to EOF; prints key=hex or key=!ERRNO. */
static void open_read(const char *key, int fd)
{
    static unsigned char buf[MAX];
    if (fd < 0) {
        printf("%s=!%s\n", key, err_name(errno));
        return;
    }
    ssize_t n = read_all(fd, buf, sizeof buf);
    close(fd);
    if (n < 0)
        printf("%s=!%s\n", key, err_name(errno));
    else
        hex(key, buf, n);
}

static void result(const char *key, int rc)
{
    printf("%s=%s\n", key, rc == 0 ? "OK" : err_name(errno));
}

static void stat_line(const char *key, int rc, const struct stat *st)
{
    if (rc != 0)
        printf("%s=!%s\n", key, err_name(errno));
    else
        printf("%s=%lld %o %d\n", key, (long long)st->st_size, (unsigned)st->st_mode,
               st->st_uid == geteuid() && st->st_gid == getegid());
}

static int all(const char *secret, const char *other, const char *missing)
{
    static unsigned char buf[MAX];
    struct stat st;
    int fd;

    open_read("open", open(secret, O_RDONLY));
    open_read("open64", open64(secret, O_RDONLY));
    open_read("openat", openat(AT_FDCWD, secret, O_RDONLY));
    open_read("openat64", openat64(AT_FDCWD, secret, O_RDONLY));
    open_read("__open_2", __open_2(secret, O_RDONLY));
    open_read("__openat_2", __openat_2(AT_FDCWD, secret, O_RDONLY));
    open_read("__open64_2", __open64_2(secret, O_RDONLY));
    open_read("__openat64_2", __openat64_2(AT_FDCWD, secret, O_RDONLY));
    open_read("open_creat", open(secret, O_RDONLY | O_CREAT, 0600));

    /* fopen + fgets (the secret holds no newline) and fopen64 + fread */
    FILE *f = fopen(secret, "r");
    if (f == NULL) {
        printf("fopen=!%s\n", err_name(errno));
    } else {
        char line[MAX];
        size_t n = 0;
        if (fgets(line, sizeof line, f) != NULL)
            n = strlen(line);
        hex("fopen", (unsigned char *)line, (ssize_t)n);
        printf("fopen_cloexec=%d\n", (fcntl(fileno(f), F_GETFD) & FD_CLOEXEC) != 0);
        fclose(f);
    }
    f = fopen64(secret, "rbe");
    if (f == NULL) {
        printf("fopen64=!%s\n", err_name(errno));
    } else {
        size_t n = fread(buf, 1, sizeof buf, f);
        hex("fopen64", buf, (ssize_t)n);
        printf("fopen64_cloexec=%d\n", (fcntl(fileno(f), F_GETFD) & FD_CLOEXEC) != 0);
        fclose(f);
    }

    /* the returned fd: fstat, lseek, pread, mmap, CLOEXEC, seals */
    fd = open(secret, O_RDONLY);
    if (fd >= 0) {
        fstat(fd, &st);
        printf("fstat=%lld %o\n", (long long)st.st_size, (unsigned)(st.st_mode & 07777));
        printf("cloexec=%d\n", (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
        off_t end = lseek(fd, 0, SEEK_END);
        printf("seek_end=%lld\n", (long long)end);
        if (st.st_size > 1) {
            lseek(fd, 1, SEEK_SET);
            ssize_t n = read_all(fd, buf, sizeof buf);
            hex("lseek_read", buf, n);
            n = pread(fd, buf, sizeof buf, 0);
            hex("pread", buf, n);
            void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
            if (m == MAP_FAILED)
                printf("mmap=!%s\n", err_name(errno));
            else {
                hex("mmap", m, st.st_size);
                munmap(m, (size_t)st.st_size);
            }
            m = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            printf("mmap_shared_write=%s\n", m == MAP_FAILED ? err_name(errno) : "OK");
        }
        printf("write=%s\n", write(fd, "x", 1) < 0 ? err_name(errno) : "OK");
        printf("ftruncate=%s\n", ftruncate(fd, 0) < 0 ? err_name(errno) : "OK");
        close(fd);
    }
    fd = open(secret, O_RDONLY | O_CLOEXEC);
    printf("cloexec_requested=%d\n", fd >= 0 && (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
    if (fd >= 0)
        close(fd);

    /* stat family */
    stat_line("stat", stat(secret, &st), &st);
    stat_line("lstat", lstat(secret, &st), &st);
    struct stat64 st64;
    int rc = stat64(secret, &st64);
    printf("stat64=%lld %o\n", rc == 0 ? (long long)st64.st_size : -1LL, (unsigned)st64.st_mode);
    rc = lstat64(secret, &st64);
    printf("lstat64=%lld %o\n", rc == 0 ? (long long)st64.st_size : -1LL, (unsigned)st64.st_mode);
    stat_line("fstatat", fstatat(AT_FDCWD, secret, &st, 0), &st);
    stat_line("fstatat_nofollow", fstatat(AT_FDCWD, secret, &st, AT_SYMLINK_NOFOLLOW), &st);
    stat_line("__xstat", __xstat(1, secret, &st), &st);
    stat_line("__lxstat", __lxstat(1, secret, &st), &st);
    stat_line("__fxstatat", __fxstatat(1, AT_FDCWD, secret, &st, 0), &st);
    struct statx stx;
    if (statx(AT_FDCWD, secret, 0, STATX_BASIC_STATS, &stx) != 0)
        printf("statx=!%s\n", err_name(errno));
    else
        printf("statx=%llu %o %d\n", (unsigned long long)stx.stx_size, (unsigned)stx.stx_mode,
               stx.stx_uid == geteuid());

    /* access family */
    result("access_f", access(secret, F_OK));
    result("access_r", access(secret, R_OK));
    result("access_w", access(secret, W_OK));
    result("access_x", access(secret, X_OK));
    result("faccessat_r", faccessat(AT_FDCWD, secret, R_OK, 0));
    result("faccessat_w", faccessat(AT_FDCWD, secret, W_OK, AT_EACCESS));
    result("euidaccess_r", euidaccess(secret, R_OK));
    result("eaccess_w", eaccess(secret, W_OK));

    /* writing is refused */
    open_read("open_wronly", open(secret, O_WRONLY));
    open_read("open_rdwr", open(secret, O_RDWR));
    open_read("open_trunc", open(secret, O_RDONLY | O_TRUNC));
    open_read("open_excl", open(secret, O_WRONLY | O_CREAT | O_EXCL, 0600));
    open_read("open_directory", open(secret, O_RDONLY | O_DIRECTORY));
    open_read("creat", creat(secret, 0600));
    f = fopen(secret, "w");
    printf("fopen_w=%s\n", f == NULL ? err_name(errno) : "OK");
    f = fopen(secret, "r+");
    printf("fopen_rplus=%s\n", f == NULL ? err_name(errno) : "OK");
    f = fopen(secret, "a");
    printf("fopen_a=%s\n", f == NULL ? err_name(errno) : "OK");

    /* other spellings of the same path: relative to the cwd, relative to a dirfd, non-canonical */
    char dir[4096], alt[3 * 4096 + 64];
    snprintf(dir, sizeof dir, "%s", secret);
    char *slash = strrchr(dir, '/');
    *slash = '\0';
    const char *base = slash + 1;
    char *parent_slash = strrchr(dir, '/');
    const char *dirname_last = parent_slash + 1;
    char grand[4096];
    snprintf(grand, sizeof grand, "%.*s", (int)(parent_slash - dir), dir);
    if (grand[0] == '\0')
        strcpy(grand, "/");
    /* grand exists on disk (the test picks SECRET = EXISTING_DIR/NEW_DIR/NAME) */
    if (chdir(grand) != 0)
        printf("chdir=!%s\n", err_name(errno));
    snprintf(alt, sizeof alt, "%s/%s", dirname_last, base);
    open_read("relative", open(alt, O_RDONLY));
    snprintf(alt, sizeof alt, "./%s/../%s//./%s", dirname_last, dirname_last, base);
    open_read("relative_dots", open(alt, O_RDONLY));
    snprintf(alt, sizeof alt, "%s/.//%s", dir, base);
    open_read("absolute_dots", open(alt, O_RDONLY));
    int dfd = open(grand, O_RDONLY | O_DIRECTORY);
    snprintf(alt, sizeof alt, "%s/%s", dirname_last, base);
    open_read("openat_dirfd", openat(dfd, alt, O_RDONLY));
    stat_line("fstatat_dirfd", fstatat(dfd, alt, &st, 0), &st);
    close(dfd);
    snprintf(alt, sizeof alt, "%s/", secret);
    open_read("trailing_slash", open(alt, O_RDONLY));
    snprintf(alt, sizeof alt, "%s/.", secret);
    open_read("trailing_dot", open(alt, O_RDONLY));

    /* everything else is the real file system */
    open_read("other_open", open(other, O_RDONLY));
    f = fopen(other, "r");
    if (f == NULL)
        printf("other_fopen=!%s\n", err_name(errno));
    else {
        size_t n = fread(buf, 1, sizeof buf, f);
        hex("other_fopen", buf, (ssize_t)n);
        fclose(f);
    }
    stat_line("other_stat", stat(other, &st), &st);
    result("other_access_w", access(other, W_OK));
    open_read("missing_open", open(missing, O_RDONLY));
    f = fopen(missing, "r");
    printf("missing_fopen=%s\n", f == NULL ? err_name(errno) : "OK");
    stat_line("missing_stat", stat(missing, &st), &st);
    stat_line("missing_lstat", lstat(missing, &st), &st);
    result("missing_access", access(missing, F_OK));
    const char *volatile null_path = NULL;
    errno = 0;
    rc = open(null_path, O_RDONLY);
    printf("null_open=%s\n", rc < 0 ? (errno == EFAULT ? "EFAULT" : "OTHER") : "OK");
    return 0;
}

static int reader(const char *secret)
{
    static unsigned char buf[MAX];
    char line[64];
    while (fgets(line, sizeof line, stdin) != NULL) {
        int fd = open(secret, O_RDONLY);
        if (fd < 0) {
            printf("!%s\n", err_name(errno));
        } else {
            ssize_t n = read_all(fd, buf, sizeof buf);
            close(fd);
            hex("read", buf, n);
        }
        fflush(stdout);
    }
    return 0;
}

struct job {
    const char *secret;
    const unsigned char *want;
    ssize_t want_len;
    int rounds;
    long mismatches;
};

static void *worker(void *arg)
{
    struct job *job = arg;
    unsigned char buf[4096];
    for (int i = 0; i < job->rounds; i++) {
        int fd = open(job->secret, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            job->mismatches++;
            continue;
        }
        ssize_t n = read_all(fd, buf, sizeof buf);
        close(fd);
        if (n != job->want_len || memcmp(buf, job->want, (size_t)n) != 0)
            job->mismatches++;
        struct stat st;
        if (stat(job->secret, &st) != 0 || st.st_size != job->want_len)
            job->mismatches++;
    }
    return NULL;
}

static int threads(const char *secret, int n, int rounds)
{
    static unsigned char want[4096];
    int fd = open(secret, O_RDONLY);
    if (fd < 0)
        return 2;
    ssize_t want_len = read_all(fd, want, sizeof want);
    close(fd);
    pthread_t tids[64];
    struct job jobs[64];
    if (n > 64)
        n = 64;
    for (int i = 0; i < n; i++) {
        jobs[i] = (struct job){secret, want, want_len, rounds, 0};
        pthread_create(&tids[i], NULL, worker, &jobs[i]);
    }
    long total = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(tids[i], NULL);
        total += jobs[i].mismatches;
    }
    hex("reference", want, want_len);
    printf("mismatches=%ld\n", total);
    return 0;
}

static int swap(const char *secret, int fd, const char *other)
{
    int o = open(other, O_RDONLY);
    if (o < 0 || dup2(o, fd) != fd)
        return 2;
    close(o);
    open_read("swapped_open", open(secret, O_RDONLY));
    struct stat st;
    stat_line("swapped_stat", stat(secret, &st), &st);
    close(fd);
    open_read("closed_open", open(secret, O_RDONLY));
    return 0;
}

/* The pass-through path: every interposed call on OTHER (an ordinary file) and on DECOY (a file
 * elsewhere with a secret's name: the full, normalised compare), absolute and relative. */
static long pass_through_round(const char *other, const char *decoy, const char *decoy_rel)
{
    const char *paths[] = {other, decoy, decoy_rel};
    struct stat st;
    struct stat64 st64;
    struct statx stx;
    long failures = 0;
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        const char *p = paths[i];
        int fds[] = {open(p, O_RDONLY), open64(p, O_RDONLY), openat(AT_FDCWD, p, O_RDONLY),
                     openat64(AT_FDCWD, p, O_RDONLY), __open_2(p, O_RDONLY),
                     __open64_2(p, O_RDONLY), __openat_2(AT_FDCWD, p, O_RDONLY),
                     __openat64_2(AT_FDCWD, p, O_RDONLY)};
        for (size_t j = 0; j < sizeof fds / sizeof fds[0]; j++) {
            if (fds[j] < 0)
                failures++;
            else
                close(fds[j]);
        }
        failures += stat(p, &st) != 0;
        failures += lstat(p, &st) != 0;
        failures += stat64(p, &st64) != 0;
        failures += fstatat(AT_FDCWD, p, &st, 0) != 0;
        failures += statx(AT_FDCWD, p, 0, STATX_BASIC_STATS, &stx) != 0;
        failures += access(p, R_OK) != 0;
        failures += faccessat(AT_FDCWD, p, R_OK, 0) != 0;
        failures += euidaccess(p, R_OK) != 0;
    }
    return failures;
}

static int noalloc(const char *other, const char *decoy, int rounds)
{
    /* DECOY relative to its directory */
    static char dir[4096];
    snprintf(dir, sizeof dir, "%s", decoy);
    char *slash = strrchr(dir, '/');
    if (slash == NULL || chdir((*slash = '\0', dir[0] ? dir : "/")) != 0)
        return 2;
    long failures = pass_through_round(other, decoy, slash + 1); /* warm-up, not counted */
    atomic_store(&g_counting, 1);
    for (int i = 0; i < rounds; i++)
        failures += pass_through_round(other, decoy, slash + 1);
    atomic_store(&g_counting, 0);
    long allocs = atomic_load(&g_allocs);
    /* control: the counter sees an allocation libc makes (fopen's FILE) */
    atomic_store(&g_allocs, 0);
    atomic_store(&g_counting, 1);
    FILE *f = fopen(other, "r");
    atomic_store(&g_counting, 0);
    if (f != NULL)
        fclose(f);
    printf("failures=%ld\nallocs=%ld\ncontrol_allocs=%ld\n", failures, allocs,
           atomic_load(&g_allocs));
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "noalloc") == 0)
        return noalloc(argv[2], argv[3], atoi(argv[4]));
    if (argc == 5 && strcmp(argv[1], "all") == 0)
        return all(argv[2], argv[3], argv[4]);
    if (argc == 3 && strcmp(argv[1], "reader") == 0)
        return reader(argv[2]);
    if (argc == 5 && strcmp(argv[1], "threads") == 0)
        return threads(argv[2], atoi(argv[3]), atoi(argv[4]));
    if (argc == 5 && strcmp(argv[1], "swap") == 0)
        return swap(argv[2], atoi(argv[3]), argv[4]);
    fprintf(stderr, "usage: probe all|reader|threads|swap|noalloc ...\n");
    return 2;
}

/*
 * Timing loop for benchmarks/interposer/run.py.
 *
 *   bench open PATH N   N x (open + read + close) of PATH; prints ns per iteration
 *   bench stat PATH N   N x stat(PATH); prints ns per iteration
 *   bench ab PATH N     in one process, N x (open + read + close) through the symbol `open`
 *                       (the interposer's under LD_PRELOAD) and N x the same through libc's
 *                       own open (dlsym on libc.so.6), alternating blocks of 1000 so that
 *                       drift of the machine hits both alike; prints "ns_open ns_libc_open"
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int (*open_fn)(const char *, int, ...) = open;

static int once(int do_open, const char *path)
{
    static char buf[4096];
    if (do_open) {
        int fd = open_fn(path, O_RDONLY);
        if (fd < 0)
            return -1;
        ssize_t n = read(fd, buf, sizeof buf);
        close(fd);
        return n < 0 ? -1 : 0;
    }
    struct stat st;
    return stat(path, &st);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static int ab(const char *path, long n)
{
    void *libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
    int (*libc_open)(const char *, int, ...) = libc != NULL ? dlsym(libc, "open") : NULL;
    if (libc_open == NULL)
        return 2;
    int (*fns[2])(const char *, int, ...) = {open, libc_open};
    double spent[2] = {0, 0};
    const long block = 1000;
    for (long done = 0; done < n; done += block)
        for (int which = 0; which < 2; which++) {
            int slot = (int)((done / block + which) % 2); /* alternate which goes first */
            open_fn = fns[slot];
            double t0 = now();
            for (long i = 0; i < block; i++)
                if (once(1, path) != 0) {
                    perror(path);
                    return 1;
                }
            spent[slot] += now() - t0;
        }
    long rounds = (n + block - 1) / block * block;
    printf("%.1f %.1f\n", spent[0] / (double)rounds, spent[1] / (double)rounds);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 4 || (strcmp(argv[1], "open") != 0 && strcmp(argv[1], "stat") != 0 &&
                      strcmp(argv[1], "ab") != 0)) {
        fprintf(stderr, "usage: bench open|stat|ab PATH N\n");
        return 2;
    }
    int do_open = strcmp(argv[1], "stat") != 0;
    const char *path = argv[2];
    long n = atol(argv[3]);
    for (long i = 0; i < n / 10 + 1; i++) /* warm-up: caches, lazy binding */
        if (once(do_open, path) != 0) {
            perror(path);
            return 1;
        }
    if (strcmp(argv[1], "ab") == 0)
        return ab(path, n);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++)
        if (once(do_open, path) != 0) {
            perror(path);
            return 1;
        }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ns = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
    printf("%.1f\n", ns / (double)n);
    return 0;
}

/*
 * The interposer's pass-through check alone, without any syscall: links interposer.c into this
 * program (built with -I wrapper/interposer) and times find() on a few paths.
 *
 *   filter N PATH...   prints ns per check, one line per PATH (CLOUDTASER_FDS configures the
 *                      table); exits 3 if a PATH is a secret (the figure would be wrong)
 */
#include "interposer.c"

#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    long n = atol(argv[1]);
    ensure_init();
    for (int p = 2; p < argc; p++) {
        const char *volatile path = argv[p];
        const struct entry *volatile found = NULL;
        double t0 = now();
        for (long i = 0; i < n; i++)
            found = find(AT_FDCWD, path);
        double t1 = now();
        if (found != NULL)
            return 3;
        printf("%.1f\n", (t1 - t0) / (double)n);
    }
    return 0;
}

/* The loops of benchmarks/kernel.py: an unprotected process's open()/read()/close(), and its
 * reads and writes of an fd it holds.
 *
 *   kernel_loop hostname|status|pread-ext4|pread-tmpfs|write-null ITERATIONS [CHUNKS]
 *                                            prints the mean nanoseconds per iteration
 *
 * With CHUNKS (default 1), the iterations are timed in that many chunks and the mean of the
 * fastest chunk is printed, on CLOCK_MONOTONIC: in the TCG guest (benchmarks/kernel.py --guest)
 * the guest's clock runs on while the host deschedules its vCPU, so a busy host inflates long
 * runs at random, and its CPU-time clock has the tick's granularity (the TSC is unstable).
 *
 * Time is the process's CPU time (user + system), not wall time: on a machine shared with other
 * work, being descheduled would otherwise count as overhead.
 *
 * hostname: open("/etc/hostname"), read, close; status: the same on /proc/self/status (a
 * procfs file: the agent's open hook looks at its f_op). pread-ext4: pread 64 bytes of a file
 * this loop creates in /var/tmp (ext4 here) and removes; pread-tmpfs: the same in /dev/shm
 * (tmpfs: the agent's read hook also looks the inode up among secret files); write-null: write
 * 64 bytes to /dev/null. Only the files it created are ever written (O_EXCL). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static clockid_t timer = CLOCK_PROCESS_CPUTIME_ID; /* CLOCK_MONOTONIC with CHUNKS > 1 */

static double elapsed(const struct timespec *a, const struct timespec *b)
{
    return (double)(b->tv_sec - a->tv_sec) * 1e9 + (double)(b->tv_nsec - a->tv_nsec);
}

static int fd_loop(const char *mode, long n, long chunks)
{
    char buf[64] = {0};
    const char *path = strcmp(mode, "pread-ext4") == 0 ? "/var/tmp/cloudtaser-kernel-loop"
                       : strcmp(mode, "pread-tmpfs") == 0 ? "/dev/shm/cloudtaser-kernel-loop"
                                                          : "/dev/null";
    int writing = strcmp(mode, "write-null") == 0;
    if (!writing)
        unlink(path); /* a loop killed before its unlink below */
    int fd = open(path, writing ? O_WRONLY : O_RDWR | O_CREAT | O_EXCL, 0600);
    struct timespec a, b;
    double best = -1;

    if (fd < 0 || (!writing && pwrite(fd, buf, sizeof buf, 0) != sizeof buf)) {
        perror(path);
        return 1;
    }
    for (long c = 0; c < chunks; c++) {
        clock_gettime(timer, &a);
        for (long i = 0; i < n; i++) {
            if ((writing ? write(fd, buf, sizeof buf) : pread(fd, buf, sizeof buf, 0)) < 0) {
                perror(mode);
                return 1;
            }
        }
        clock_gettime(timer, &b);
        if (best < 0 || elapsed(&a, &b) < best)
            best = elapsed(&a, &b);
    }
    if (!writing)
        unlink(path);
    printf("%.1f\n", best / (double)n);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4)
        return 2;
    long chunks = argc == 4 ? atol(argv[3]) : 1;
    long n = atol(argv[2]) / (chunks > 0 ? chunks : 1); /* iterations per chunk */
    if (chunks < 1 || n < 1)
        return 2;
    if (chunks > 1)
        timer = CLOCK_MONOTONIC;
    if (strncmp(argv[1], "pread-", 6) == 0 || strcmp(argv[1], "write-null") == 0)
        return fd_loop(argv[1], n, chunks);
    const char *path = strcmp(argv[1], "status") == 0 ? "/proc/self/status" : "/etc/hostname";
    char buf[4096];
    struct timespec a, b;
    double best = -1;
    for (long c = 0; c < chunks; c++) {
        clock_gettime(timer, &a);
        for (long i = 0; i < n; i++) {
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) {
                perror(path);
                return 1;
            }
            if (read(fd, buf, sizeof buf) < 0) {
                perror("read");
                return 1;
            }
            close(fd);
        }
        clock_gettime(timer, &b);
        if (best < 0 || elapsed(&a, &b) < best)
            best = elapsed(&a, &b);
    }
    printf("%.1f\n", best / (double)n);
    return 0;
}

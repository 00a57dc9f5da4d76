/* The loops of benchmarks/kernel.py: an unprotected process's open()/read()/close().
 *
 *   kernel_loop hostname|status ITERATIONS   prints the mean nanoseconds per iteration
 *
 * Time is the process's CPU time (user + system), not wall time: on a machine shared with other
 * work, being descheduled would otherwise count as overhead.
 *
 * hostname: open("/etc/hostname"), read, close; status: the same on /proc/self/status (a
 * procfs file: the agent's open hook looks at its f_op). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    const char *path = strcmp(argv[1], "status") == 0 ? "/proc/self/status" : "/etc/hostname";
    long n = atol(argv[2]);
    char buf[4096];
    struct timespec a, b;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a);
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
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b);
    double ns = (double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec);
    printf("%.1f\n", ns / (double)n);
    return 0;
}

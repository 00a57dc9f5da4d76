/*
 * A portable libc client of the interposer (glibc and musl, x86_64 and aarch64), compiled by
 * the tests with each build's compiler. Everything it finds goes to stdout, one fact a line;
 * it never writes to stderr (the tests check that stderr holds no secret).
 *
 *   deliver report NAMES FDS     what this process sees (NAMES, FDS: comma-separated, "-" none):
 *                                  get NAME HEX|unset        getenv(NAME), hex
 *                                  envp NAME HEX|unset       main's third argument (musl: the
 *                                                            initial array, not environ)
 *                                  environ NAME 0|1|?        /proc/self/environ holds the value
 *                                  manifest HEX|unset        CLOUDTASER_FDS, hex
 *                                  fd N open|closed
 *                                  dumpable 0|1
 *   deliver fork NAMES FDS       the same from a forked child (lines prefixed "child "), then
 *                                from this process
 *   deliver exec NAMES FDS       the same from a child that execs argv[0] (lines prefixed by
 *                                the child "exec "), then from this process
 *   deliver file PATH            open + read + close of PATH: "file HEX" or "file !ERRNO"
 *   deliver hold                 "pid PID", "addr HEX" (a marker's address), then waits for
 *                                stdin to close: a victim for the same-uid attacker test
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static const char *g_prefix = "";
static char **g_envp; /* main's */

static void hex(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        printf("%02x", p[i]);
}

/* Whether the value (n bytes at v) occurs in /proc/self/environ; -1 if it cannot be read. */
static int environ_holds(const char *v, size_t n)
{
    static char area[1 << 20];
    int fd = open("/proc/self/environ", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t len = 0;
    ssize_t r;
    while (len < sizeof area && (r = read(fd, area + len, sizeof area - len)) > 0)
        len += (size_t)r;
    close(fd);
    return n > 0 && memmem(area, len, v, n) != NULL;
}

static void report_name(const char *name)
{
    size_t n = strlen(name);
    printf("%senvp %s ", g_prefix, name);
    char **e = g_envp;
    while (*e != NULL && !(strncmp(*e, name, n) == 0 && (*e)[n] == '='))
        e++;
    if (*e != NULL)
        hex((const unsigned char *)*e + n + 1, strlen(*e + n + 1));
    printf("%s\n", *e != NULL ? "" : "unset");
    const char *v = getenv(name);
    printf("%sget %s ", g_prefix, name);
    if (v == NULL) {
        printf("unset\n");
        return;
    }
    hex((const unsigned char *)v, strlen(v));
    int held = environ_holds(v, strlen(v));
    printf("\n%senviron %s %s\n", g_prefix, name, held < 0 ? "?" : held ? "1" : "0");
}

static int report(char *names, char *fds)
{
    for (char *name = strtok(names, ","); name != NULL && strcmp(name, "-") != 0;
         name = strtok(NULL, ","))
        report_name(name);
    const char *manifest = getenv("CLOUDTASER_FDS");
    printf("%smanifest ", g_prefix);
    if (manifest != NULL)
        hex((const unsigned char *)manifest, strlen(manifest));
    printf("%s\n", manifest != NULL ? "" : "unset");
    for (char *fd = strtok(fds, ","); fd != NULL && strcmp(fd, "-") != 0; fd = strtok(NULL, ","))
        printf("%sfd %s %s\n", g_prefix, fd, fcntl(atoi(fd), F_GETFD) < 0 ? "closed" : "open");
    printf("%sdumpable %d\n", g_prefix, prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
    return fflush(stdout) == 0 ? 0 : 1;
}

static int child(char **argv, int do_exec)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        return 1;
    if (pid == 0) {
        if (do_exec) {
            char *args[] = {argv[0], "report", argv[2], argv[3], NULL};
            setenv("DELIVER_PREFIX", "exec ", 1);
            execve(argv[0], args, environ);
            _exit(127);
        }
        g_prefix = "child ";
        char names[4096], fds[4096];
        snprintf(names, sizeof names, "%s", argv[2]);
        snprintf(fds, sizeof fds, "%s", argv[3]);
        _exit(report(names, fds));
    }
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        printf("child failed %d\n", status);
    return report(argv[2], argv[3]);
}

static int read_file(const char *path)
{
    static unsigned char buf[1 << 16];
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        printf("file !%d\n", errno);
        return 0;
    }
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    printf("file ");
    if (n > 0)
        hex(buf, (size_t)n);
    printf("\n");
    return 0;
}

static int hold(void)
{
    static char marker[] = "cloudtaser-marker-in-memory";
    printf("pid %d\naddr %lx\n", (int)getpid(), (unsigned long)marker);
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0)
        ;
    return marker[0] == 'c' ? 0 : 1;
}

int main(int argc, char **argv, char **envp)
{
    g_envp = envp;
    const char *prefix = getenv("DELIVER_PREFIX");
    if (prefix != NULL)
        g_prefix = prefix;
    if (argc == 4 && strcmp(argv[1], "report") == 0)
        return report(argv[2], argv[3]);
    if (argc == 4 && strcmp(argv[1], "fork") == 0)
        return child(argv, 0);
    if (argc == 4 && strcmp(argv[1], "exec") == 0)
        return child(argv, 1);
    if (argc == 3 && strcmp(argv[1], "file") == 0)
        return read_file(argv[2]);
    if (argc == 2 && strcmp(argv[1], "hold") == 0)
        return hold();
    return 2;
}

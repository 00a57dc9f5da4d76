/*
 * "env FD NAME" lines: turned into the environment variable NAME when the interposer
 * initialises (its constructor, or the first interposed call - getenv included - if another
 * library's constructor runs first), so that an unmodified app reads its secret with getenv()
 * while the value never is in the process's initial environment area (the stack strings
 * /proc/PID/environ shows): the wrapper passed an fd, not the value, to execve.
 *
 *   - One private anonymous mapping holds every "NAME=value" string and the rewritten
 *     CLOUDTASER_FDS (MADV_DONTDUMP; never freed: the strings are the environment). Each is put
 *     in place of the slot of the environ array that held NAME (a placeholder "NAME=" the
 *     wrapper passes, or a value from the pod spec) and of CLOUDTASER_FDS: that array is the one
 *     musl hands to main() as envp (glibc hands main environ as constructors left it), so
 *     programs that read main's envp (bash does) see the value too. Names without a slot are
 *     appended to a copy of the array in the same mapping, and `environ` points at the copy
 *     (glibc's and musl's setenv/putenv copy such an array rather than realloc it, as for any
 *     app that assigns environ); under musl, main's envp then lacks them. No malloc: this may
 *     run inside an interposed call that a malloc implementation makes while it initialises.
 *   - Each value goes from a MAP_SHARED mapping of the fd (memfd_secret cannot be read())
 *     straight into its string: no other copy, nothing left to wipe. An existing NAME (from
 *     the pod spec) is replaced.
 *   - Each env fd is then closed, unless a file or sdk line still names it, and CLOUDTASER_FDS
 *     is rewritten without the env lines: children inherit NAME through environ (as any
 *     variable: in their initial area, where /proc/PID/environ shows it), and must not map an
 *     fd number that is closed or, by then, something else.
 *   - An fd that cannot be mapped, a value with a NUL byte (no environment string can hold
 *     it): exit 78 with one line naming the manifest line (ct_fail).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "interposer.h"
#include "manifest.h"

/* Whether ENTRY ("NAME=value") is the variable NAME (n bytes). */
static int is_var(const char *entry, const char *name, size_t n)
{
    return strncmp(entry, name, n) == 0 && entry[n] == '=';
}

static char *ct_env_find_n(const char *name, size_t n)
{
    for (char **e = environ; e != NULL && *e != NULL; e++)
        if (is_var(*e, name, n))
            return *e + n + 1;
    return NULL;
}

char *ct_env_find(const char *name)
{
    return ct_env_find_n(name, strlen(name));
}

static size_t env_size(const struct ct_line *line)
{
    struct stat st;
    if (syscall(SYS_fstat, line->fd, &st) != 0)
        ct_fail(line->number, "cannot read the env line's fd", errno);
    if (st.st_size < 0 || (uint64_t)st.st_size > SIZE_MAX / 4)
        ct_fail(line->number, "cannot read the env line's fd", EFBIG);
    return (size_t)st.st_size;
}

/* Copies the value of LINE (SIZE bytes) to OUT; the mapping is gone when this returns. */
static void copy_value(const struct ct_line *line, size_t size, char *out)
{
    if (size == 0)
        return;
    if (env_size(line) != size) /* a refresher never changes the length: not a race to lose */
        ct_fail(line->number, "the env line's fd changed size", EIO);
    void *map = mmap(NULL, size, PROT_READ, MAP_SHARED, line->fd, 0);
    if (map == MAP_FAILED)
        ct_fail(line->number, "cannot read the env line's fd", errno);
    memcpy(out, map, size);
    munmap(map, size);
}

/* Points every slot of ENV that holds NAME (n bytes) at ENTRY; whether there was one. */
static int patch(char **env, const char *name, size_t n, char *entry)
{
    int found = 0;
    for (size_t i = 0; env != NULL && env[i] != NULL; i++)
        if (is_var(env[i], name, n)) {
            env[i] = entry;
            found = 1;
        }
    return found;
}

/* Whether LINE's fd must stay open: a file or sdk line names it, or an earlier env line did
 * (and closed it already). */
static int keep_fd(const char *text, size_t len, const struct ct_line *line)
{
    struct ct_cursor c;
    struct ct_line other;
    const char *why;
    ct_begin(&c, text, len);
    while (ct_next(&c, &other, &why) > 0)
        if (other.fd == line->fd && (other.kind != CT_ENV || other.number < line->number))
            return 1;
    return 0;
}

void ct_deliver_env(const char *text, size_t len)
{
    struct ct_cursor c;
    struct ct_line line;
    const char *why;
    size_t lines = 0, missing = 0, old = 0, bytes = sizeof CT_FDS_ENV + len + 1;
    ct_begin(&c, text, len);
    while (ct_next(&c, &line, &why) > 0)
        if (line.kind == CT_ENV) {
            bytes += line.name_len + 2 + env_size(&line);
            lines++;
            missing += ct_env_find_n(line.name, line.name_len) == NULL;
        }
    if (lines == 0)
        return;
    while (environ != NULL && environ[old] != NULL)
        old++;
    size_t slots = missing > 0 ? old + missing + 1 : 0;
    size_t total = slots * sizeof(char *) + bytes;
    char *region = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED)
        ct_fail(0, "cannot hold the env values", errno);
    madvise(region, total, MADV_DONTDUMP);
    char **added = (char **)(void *)region, *p = region + slots * sizeof(char *);
    size_t k = old;
    ct_begin(&c, text, len);
    while (ct_next(&c, &line, &why) > 0) {
        if (line.kind != CT_ENV)
            continue;
        size_t size = env_size(&line);
        char *entry = p;
        memcpy(p, line.name, line.name_len);
        p += line.name_len;
        *p++ = '=';
        copy_value(&line, size, p);
        if (memchr(p, '\0', size) != NULL) {
            memset(region, 0, total);
            munmap(region, total);
            ct_fail(line.number, "the env value holds a NUL byte", 0);
        }
        p += size;
        *p++ = '\0';
        if (!patch(environ, line.name, line.name_len, entry))
            added[k++] = entry;
    }
    char *manifest = p;
    memcpy(p, CT_FDS_ENV "=", sizeof CT_FDS_ENV);
    p += sizeof CT_FDS_ENV;
    char *first = p;
    ct_begin(&c, text, len);
    while (ct_next(&c, &line, &why) > 0)
        if (line.kind != CT_ENV) {
            if (p != first)
                *p++ = '\n';
            memcpy(p, line.start, line.len);
            p += line.len;
        }
    *p = '\0';
    patch(environ, CT_FDS_ENV, sizeof CT_FDS_ENV - 1, manifest);
    if (missing > 0) {
        memcpy(added, environ, old * sizeof(char *));
        added[k] = NULL;
        environ = added;
    }
    ct_begin(&c, text, len);
    while (ct_next(&c, &line, &why) > 0)
        if (line.kind == CT_ENV && !keep_fd(text, len, &line))
            close(line.fd);
}

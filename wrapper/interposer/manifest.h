/*
 * The fd manifest (CLOUDTASER_FDS) as contracts/README.md defines it ("The fd manifest":
 * grammar, limits, errors), parsed and validated: C's one implementation.
 *
 * Kept apart from the interposer so that a test program compiles exactly this code and runs
 * every `manifest` vector of contracts/wrapper-contract.json through it
 * (tests/unit/interposer/manifest_check.c). Pure: no allocation, no I/O, no libc state; the
 * text is (pointer, length) so that a NUL byte inside it is seen, not taken for its end.
 *
 *   MANIFEST = [ LINE *( "\n" LINE ) [ "\n" ] ]      "" and "\n" are empty manifests
 *   LINE     = KIND " " FD " " NAME
 *   KIND     = "file" / "sdk" / "env"
 *   FD       = 1*10DIGIT                              0..2147483647, leading zeros allowed
 *   NAME     = 1*( any byte but "\n" and NUL )        file: absolute path;
 *                                                     env: [A-Za-z_][A-Za-z0-9_]*,
 *                                                     not CLOUDTASER_FDS
 * The same (KIND, NAME) twice is an error; errors name the line (1-based), never its content.
 */
#ifndef CLOUDTASER_MANIFEST_H
#define CLOUDTASER_MANIFEST_H

#include <stddef.h>
#include <string.h>

enum ct_kind { CT_FILE, CT_SDK, CT_ENV };

struct ct_line {
    enum ct_kind kind;
    int fd;
    const char *name; /* not NUL-terminated: the rest of the line */
    size_t name_len;
    unsigned number; /* 1-based */
    const char *start; /* the whole line, for callers that copy lines */
    size_t len;
};

struct ct_cursor {
    const char *text;
    size_t len; /* without the one trailing "\n" the grammar allows */
    size_t pos;
    unsigned number;
    int done;
};

static inline void ct_begin(struct ct_cursor *c, const char *text, size_t len)
{
    if (len > 0 && text[len - 1] == '\n')
        len--; /* one trailing newline; "\n" alone is then empty too */
    c->text = text;
    c->len = len;
    c->pos = 0;
    c->number = 0;
    c->done = len == 0;
}

/* Splits and checks one line (everything but duplicates). NULL, or why it is malformed. */
static inline const char *ct_parse_line(const char *s, size_t n, struct ct_line *out)
{
    if (n == 0)
        return "empty line";
    const char *sp = memchr(s, ' ', n);
    if (sp == NULL)
        return "not KIND FD NAME";
    size_t k = (size_t)(sp - s);
    if (k == 4 && memcmp(s, "file", 4) == 0)
        out->kind = CT_FILE;
    else if (k == 3 && memcmp(s, "sdk", 3) == 0)
        out->kind = CT_SDK;
    else if (k == 3 && memcmp(s, "env", 3) == 0)
        out->kind = CT_ENV;
    else
        return "unknown kind";
    size_t i = k + 1, digits = 0;
    long long fd = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9' && digits < 11) {
        fd = fd * 10 + (s[i] - '0');
        i++;
        digits++;
    }
    if (digits == 0 || digits > 10 || fd > 2147483647LL || (i < n && s[i] != ' '))
        return "FD is not a decimal number in 0..2147483647";
    if (i >= n)
        return "no NAME";
    i++;
    out->fd = (int)fd;
    out->name = s + i;
    out->name_len = n - i;
    if (out->name_len == 0)
        return "empty NAME";
    if (memchr(out->name, '\0', out->name_len) != NULL)
        return "NUL byte in NAME";
    if (out->kind == CT_FILE && out->name[0] != '/')
        return "file NAME is not an absolute path";
    if (out->kind == CT_ENV) {
        for (size_t j = 0; j < out->name_len; j++) {
            unsigned char c = (unsigned char)out->name[j];
            int alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
            if (!alpha && !(j > 0 && c >= '0' && c <= '9'))
                return "env NAME is not [A-Za-z_][A-Za-z0-9_]*";
        }
        /* the consumer rewrites CLOUDTASER_FDS after the env lines: the value would be lost */
        if (out->name_len == 14 && memcmp(out->name, "CLOUDTASER_FDS", 14) == 0)
            return "env NAME is CLOUDTASER_FDS";
    }
    return NULL;
}

/* The next line: 1 (in *out), 0 at the end, -1 if it is malformed (*why, out->number). */
static inline int ct_next(struct ct_cursor *c, struct ct_line *out, const char **why)
{
    if (c->done)
        return 0;
    const char *s = c->text + c->pos;
    size_t rest = c->len - c->pos;
    const char *eol = memchr(s, '\n', rest);
    size_t n = eol != NULL ? (size_t)(eol - s) : rest;
    c->pos += n + 1;
    c->done = eol == NULL;
    out->number = ++c->number;
    out->start = s;
    out->len = n;
    *why = ct_parse_line(s, n, out);
    return *why == NULL ? 1 : -1;
}

/* Validates the whole manifest: 0, or the number of the first bad line and *why. Duplicates
 * are found by walking the lines before each one again: O(lines^2), no memory needed (a
 * manifest is an environment string, at most 128 KiB; in practice a handful of lines). */
static inline unsigned ct_validate(const char *text, size_t len, const char **why)
{
    struct ct_cursor c;
    struct ct_line line;
    ct_begin(&c, text, len);
    for (;;) {
        int r = ct_next(&c, &line, why);
        if (r == 0)
            return 0;
        if (r < 0)
            return line.number;
        struct ct_cursor earlier;
        struct ct_line seen;
        const char *ignored;
        ct_begin(&earlier, text, len);
        while (ct_next(&earlier, &seen, &ignored) > 0 && seen.number < line.number)
            if (seen.kind == line.kind && seen.name_len == line.name_len &&
                memcmp(seen.name, line.name, line.name_len) == 0) {
                *why = "the same KIND and NAME as an earlier line";
                return line.number;
            }
    }
}

#endif

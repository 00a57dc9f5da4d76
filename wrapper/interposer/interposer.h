/* What interposer.c and environment.c share (hidden: the library exports only libc names). */
#ifndef CLOUDTASER_INTERPOSER_H
#define CLOUDTASER_INTERPOSER_H

#include <stddef.h>

#define CT_FDS_ENV "CLOUDTASER_FDS"

/* One line on stderr naming LINE (0: none) and WHY (plus strerror(ERR) if ERR), then exit 78. */
__attribute__((noreturn)) void ct_fail(unsigned line, const char *why, int err);

/* The value of NAME in environ, read directly (no getenv: this library interposes it). */
char *ct_env_find(const char *name);

/* The env lines of a validated manifest: into the environment, fds closed, lines removed. */
void ct_deliver_env(const char *manifest, size_t len);

#endif

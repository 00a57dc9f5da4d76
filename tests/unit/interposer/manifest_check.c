/*
 * The interposer's manifest parser (wrapper/interposer/manifest.h, the very code the library
 * compiles) run over the contract's test vectors, compiled by the tests with each build's
 * compiler. stdin: for each vector "LENGTH\n" then LENGTH bytes (NUL bytes included). stdout:
 * one line per vector, "error LINE" or "ok" followed by " KIND:FD:NAMEHEX" per entry.
 */
#include <stdio.h>
#include <stdlib.h>

#include "manifest.h"

static const char *const KINDS[] = {"file", "sdk", "env"};

int main(void)
{
    static char text[1 << 18];
    size_t len;
    while (scanf("%zu", &len) == 1) {
        if (getchar() != '\n' || len > sizeof text || fread(text, 1, len, stdin) != len)
            return 2;
        const char *why;
        unsigned bad = ct_validate(text, len, &why);
        if (bad != 0) {
            printf("error %u\n", bad);
            continue;
        }
        struct ct_cursor c;
        struct ct_line line;
        printf("ok");
        ct_begin(&c, text, len);
        while (ct_next(&c, &line, &why) > 0) {
            printf(" %s:%d:", KINDS[line.kind], line.fd);
            for (size_t i = 0; i < line.name_len; i++)
                printf("%02x", (unsigned char)line.name[i]);
        }
        printf("\n");
    }
    return 0;
}

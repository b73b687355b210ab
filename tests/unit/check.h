/*
 * check.h: the assertion macros of the unit tests. A failed check prints file, line and
 * both values, counts the failure and lets the test go on; check_exit() ends main().
 */
#ifndef PROXY_CHECK_H
#define PROXY_CHECK_H

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static int check_failures;
static int check_count;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        check_count++;                                                                             \
        if (!(cond)) {                                                                             \
            check_failures++;                                                                      \
            fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);               \
        }                                                                                          \
    } while (0)

#define CHECK_INT(got, want)                                                                       \
    do {                                                                                           \
        long long check_got_ = (long long)(got);                                                   \
        long long check_want_ = (long long)(want);                                                 \
        check_count++;                                                                             \
        if (check_got_ != check_want_) {                                                           \
            check_failures++;                                                                      \
            fprintf(stderr, "%s:%d: %s == %lld, want %s == %lld\n", __FILE__, __LINE__, #got,      \
                    check_got_, #want, check_want_);                                               \
        }                                                                                          \
    } while (0)

#define CHECK_MEM(got, got_len, want, want_len)                                                    \
    do {                                                                                           \
        size_t check_gl_ = (size_t)(got_len);                                                      \
        size_t check_wl_ = (size_t)(want_len);                                                     \
        check_count++;                                                                             \
        if (check_gl_ != check_wl_ || memcmp((got), (want), check_wl_) != 0) {                     \
            check_failures++;                                                                      \
            fprintf(stderr, "%s:%d: %s is \"%.*s\" (%zu bytes), want \"%.*s\" (%zu)\n", __FILE__,  \
                    __LINE__, #got, (int)check_gl_, (const char *)(got), check_gl_,                \
                    (int)check_wl_, (const char *)(want), check_wl_);                              \
        }                                                                                          \
    } while (0)

#define CHECK_STR(got, want)                                                                       \
    do {                                                                                           \
        const char *check_gs_ = (got);                                                             \
        const char *check_ws_ = (want);                                                            \
        check_count++;                                                                             \
        if (check_gs_ == NULL || strcmp(check_gs_, check_ws_) != 0) {                              \
            check_failures++;                                                                      \
            fprintf(stderr, "%s:%d: %s is \"%s\", want \"%s\"\n", __FILE__, __LINE__, #got,        \
                    check_gs_ ? check_gs_ : "(null)", check_ws_);                                  \
        }                                                                                          \
    } while (0)

/* check_exit prints the tally and returns main()'s exit code. */
static inline int check_exit(const char *name)
{
    printf("%s: %d checks, %d failed\n", name, check_count, check_failures);
    return check_failures == 0 ? 0 : 1;
}

#endif

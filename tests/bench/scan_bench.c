/*
 * scan_bench: the end-of-data scanner's speed, the old one (tests/fuzz/smtp_data_reference.c:
 * a byte state machine with two memchr() per line) against smtp_data_scan(). Each scans
 * the same message text, 1 GiB by default, read as the session reads it: 64 KiB at a time,
 * held-back bytes offered again with the next read, bare LFs resumed from. The rounds are
 * interleaved (old, new, old, new, ...) so that a busy machine hurts both alike, and timed
 * in thread CPU time; printed are the median and the best round, in ns per byte and GB/s. Built
 * with the tests, never run by ctest: tests/bench/README.md says how and what it measured.
 *
 *   scan_bench [GIB [ROUNDS]]      default: 1 GiB per round, 5 rounds
 */
#include "smtp.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../fuzz/smtp_data_reference.h"

#define BENCH_TEXT_LEN (1u << 20) /* cycled; fits in L2 like a freshly read socket buffer */
#define BENCH_READ_LEN (64u * 1024u)
#define BENCH_ROUNDS_MAX 64

static uint32_t bench_rng = 0x2545f491u;

static uint32_t bench_random(void)
{
    /* xorshift32: the text is the same on every run. */
    bench_rng ^= bench_rng << 13;
    bench_rng ^= bench_rng >> 17;
    bench_rng ^= bench_rng << 5;
    return bench_rng;
}

/*
 * bench_text fills |text| (BENCH_TEXT_LEN bytes, then BENCH_READ_LEN more that repeat its
 * start, so a read can wrap around) with message lines: mostly 60-100 bytes of words, one
 * in 25 a short or empty one (0-19 bytes), one in 50 a long one (200-998 bytes, the most
 * RFC 5322 allows: HTML without wrapping), one in 97 dot-stuffed. Lines end in CRLF, or a bare LF
 * when |bare_lf|. It ends at a line end, so cycling through it reads an endless, clean message.
 */
static void bench_text(char *text, bool bare_lf)
{
    static const char letters[] = "etaoinshrdlucmfwypvbgkqjxz";
    size_t at = 0;
    for (;;) {
        uint32_t r = bench_random();
        size_t line_len = 60 + r % 41;
        if (r % 50 == 0) {
            line_len = 200 + (r >> 8) % 799;
        } else if (r % 25 == 1) {
            line_len = (r >> 8) % 20;
        }
        size_t eol_len = bare_lf ? 1 : 2;
        if (at + line_len + eol_len > BENCH_TEXT_LEN) {
            break;
        }
        for (size_t i = 0; i < line_len; i++) {
            uint32_t w = bench_random();
            text[at + i] = w % 6 == 0 ? ' ' : letters[(w >> 8) % 26];
        }
        if (line_len >= 2 && r % 97 == 3) {
            text[at] = '.'; /* dot-stuffed */
            text[at + 1] = '.';
        }
        at += line_len;
        if (!bare_lf) {
            text[at++] = '\r';
        }
        text[at++] = '\n';
    }
    /* Fill the rest with one more line of text so the length is exact. */
    size_t eol_len = bare_lf ? 1 : 2;
    memset(text + at, 'x', BENCH_TEXT_LEN - at - eol_len);
    if (!bare_lf) {
        text[BENCH_TEXT_LEN - 2] = '\r';
    }
    text[BENCH_TEXT_LEN - 1] = '\n';
    memcpy(text + BENCH_TEXT_LEN, text, BENCH_READ_LEN);
}

enum bench_scanner {
    BENCH_OLD = 0,
    BENCH_NEW,
};

static const char *const bench_scanner_names[] = {"old (2 x memchr)", "new (single pass)"};

static double bench_now(void)
{
    struct timespec ts;
    /* CPU time of this thread: on a shared machine, time spent descheduled is not ours. */
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* One scan call of either scanner. */
static enum smtp_data_result bench_scan(enum bench_scanner which, struct smtp_data_scanner *s,
                                        struct smtp_data_reference *ref, size_t *out_used,
                                        const char *data, size_t len)
{
    if (which == BENCH_OLD) {
        return smtp_data_reference_scan(ref, out_used, data, len);
    }
    return smtp_data_scan(s, out_used, data, len);
}

/*
 * bench_round scans |total| bytes of the cyclic |text| in BENCH_READ_LEN reads and returns
 * the seconds it took; *out_lines counts the bare LFs reported. Exits on any result but
 * SMTP_DATA_MORE and SMTP_DATA_BARE_LF: the text holds no end and nothing to reject.
 */
static double bench_round(enum bench_scanner which, const char *text, uint64_t total,
                          uint64_t *out_lines)
{
    struct smtp_data_scanner s;
    struct smtp_data_reference ref;
    smtp_data_scanner_init(&s, true);
    smtp_data_reference_init(&ref, true);
    uint64_t done = 0;
    uint64_t lines = 0;
    size_t pos = 0; /* where the next read starts in the text */
    double start = bench_now();
    while (done < total) {
        const char *piece = text + pos;
        size_t len = BENCH_READ_LEN;
        size_t taken = 0;
        for (;;) {
            size_t used;
            enum smtp_data_result r =
                bench_scan(which, &s, &ref, &used, piece + taken, len - taken);
            taken += used;
            if (r == SMTP_DATA_MORE) {
                break;
            }
            if (r != SMTP_DATA_BARE_LF) {
                fprintf(stderr, "scan_bench: unexpected result %d at %llu\n", (int)r,
                        (unsigned long long)(done + taken));
                exit(1);
            }
            lines++;
        }
        done += taken;
        pos = (pos + taken) % BENCH_TEXT_LEN;
    }
    double took = bench_now() - start;
    *out_lines = lines;
    return took;
}

static int bench_compare_double(const void *a, const void *b)
{
    double x = *(const double *)a;
    double y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void bench_scenario(const char *name, bool bare_lf, uint64_t total, int rounds)
{
    char *text = malloc(BENCH_TEXT_LEN + BENCH_READ_LEN);
    if (text == NULL) {
        fprintf(stderr, "scan_bench: out of memory\n");
        exit(1);
    }
    bench_text(text, bare_lf);
    double secs[2][BENCH_ROUNDS_MAX];
    uint64_t lines[2] = {0, 0};
    for (int round = 0; round < rounds; round++) {
        for (int which = BENCH_OLD; which <= BENCH_NEW; which++) {
            secs[which][round] = bench_round((enum bench_scanner)which, text, total, &lines[which]);
        }
    }
    if (lines[BENCH_OLD] != lines[BENCH_NEW]) {
        fprintf(stderr, "scan_bench: the scanners disagree (%llu and %llu bare LFs)\n",
                (unsigned long long)lines[BENCH_OLD], (unsigned long long)lines[BENCH_NEW]);
        exit(1);
    }
    printf("%s, %.2f GiB per round, %d rounds, %llu bare LFs reported per round\n", name,
           (double)total / (1u << 30), rounds, (unsigned long long)lines[BENCH_NEW]);
    double median[2];
    for (int which = BENCH_OLD; which <= BENCH_NEW; which++) {
        qsort(secs[which], (size_t)rounds, sizeof(double), bench_compare_double);
        median[which] = secs[which][rounds / 2];
        double best = secs[which][0];
        printf("  %-18s median %.3f ns/byte (%.2f GB/s), best %.3f ns/byte (%.2f GB/s)\n",
               bench_scanner_names[which], median[which] * 1e9 / (double)total,
               (double)total / median[which] / 1e9, best * 1e9 / (double)total,
               (double)total / best / 1e9);
    }
    printf("  new / old time: %.2f (median)\n", median[BENCH_NEW] / median[BENCH_OLD]);
    free(text);
}

int main(int argc, char **argv)
{
    double gib = argc > 1 ? strtod(argv[1], NULL) : 1.0;
    int rounds = argc > 2 ? atoi(argv[2]) : 5;
    if (!(gib > 0 && gib <= 64) || rounds < 1 || rounds > BENCH_ROUNDS_MAX) {
        fprintf(stderr, "usage: scan_bench [GIB (0-64] [ROUNDS (1-%d)]]\n", BENCH_ROUNDS_MAX);
        return 2;
    }
    uint64_t total = (uint64_t)(gib * (double)(1u << 30));
#if defined(__SSE2__) && !defined(SMTP_SCAN_PORTABLE)
    printf("scan_bench: SSE2 build, 64 KiB reads of a 1 MiB cyclic text, normalize mode\n");
#else
    printf("scan_bench: portable build, 64 KiB reads of a 1 MiB cyclic text, normalize mode\n");
#endif
    bench_scenario("CRLF lines (60-100 bytes, some short, 1 in 50 long)", false, total, rounds);
    bench_scenario("bare-LF lines, normalized (one call per line)", true, total, rounds);
    return 0;
}

/*
 * fuzz_smtp_data_diff: libFuzzer target that runs the end-of-data scanner, smtp_data_scan()
 * and smtp_skip_bad_data(), against the scanner it replaced (smtp_data_reference.c, the
 * byte state machine with two memchr() per line) on the same bytes cut at the same points,
 * call by call. Input: one byte of flags (bits 0-3: how many bytes into its allocation
 * each piece is copied, so the SIMD loads meet every alignment), one byte giving how many
 * cut points follow (0-31, two bytes each, taken modulo the content length and sorted), and
 * the content. Each content is read in both bare-LF modes, once from the start of a message
 * and once skipping it as a refused one, as the session reads it: held-back bytes offered
 * again with the next piece, bare LFs resumed from, a rejected message skipped to its end,
 * then the next message. Every call must give the same result, *out_used and reason from
 * both, and a rejecting scanner must keep rejecting. The scanner writes no bytes: what the
 * session relays follows from those results and counts alone.
 */
#include "smtp.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_data_reference.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_ASSERT(cond)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: FUZZ_ASSERT(%s) failed\n", __FILE__, __LINE__, #cond);         \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define FUZZ_CUTS_MAX 31

/* The pieces: data[0, len) cut at cuts[0] <= cuts[1] <= ... <= cuts[n_cuts - 1]. */
struct fuzz_cuts {
    size_t at[FUZZ_CUTS_MAX];
    size_t n;
};

static int fuzz_size_compare(const void *a, const void *b)
{
    size_t x = *(const size_t *)a;
    size_t y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

/* fuzz_next_end returns where the bytes received end once the next piece has arrived. */
static size_t fuzz_next_end(const struct fuzz_cuts *c, size_t *next_cut, size_t len)
{
    if (*next_cut < c->n) {
        return c->at[(*next_cut)++];
    }
    return len;
}

/* fuzz_piece copies |len| bytes to |align| bytes into an allocation that ends with them:
 * ASan sees a read past the end, and the loads start at every alignment. */
static char *fuzz_piece(char **out_block, const char *data, size_t len, size_t align)
{
    char *block = malloc(align + len + (align + len == 0));
    FUZZ_ASSERT(block != NULL);
    if (len != 0) {
        memcpy(block + align, data, len);
    }
    *out_block = block;
    return block + align;
}

static void fuzz_feed(const char *content, size_t len, const struct fuzz_cuts *cuts, size_t align,
                      bool normalize, bool fresh_skip)
{
    struct smtp_data_scanner s;
    struct smtp_data_reference r;
    smtp_data_scanner_init(&s, normalize);
    smtp_data_reference_init(&r, normalize);
    bool skipping = fresh_skip;
    bool wait = true;
    size_t next_cut = 0;
    size_t pos = 0;   /* the first byte not taken yet */
    size_t avail = 0; /* bytes received so far */
    for (;;) {
        if (wait || pos == avail) {
            if (avail == len) {
                return;
            }
            avail = fuzz_next_end(cuts, &next_cut, len);
            FUZZ_ASSERT(avail <= len);
            wait = false;
            continue; /* an empty piece (two equal cuts) adds nothing */
        }
        size_t n = avail - pos;
        char *block;
        char *piece = fuzz_piece(&block, content + pos, n, align);
        size_t used = SIZE_MAX;
        size_t ref_used = SIZE_MAX - 1;
        if (skipping) {
            bool found = smtp_skip_bad_data(&s, &used, piece, n);
            bool ref_found = smtp_data_reference_skip(&r, &ref_used, piece, n);
            FUZZ_ASSERT(found == ref_found);
            FUZZ_ASSERT(used == ref_used);
            FUZZ_ASSERT(used <= n);
            skipping = !found;
        } else {
            enum smtp_data_result got = smtp_data_scan(&s, &used, piece, n);
            enum smtp_data_result want = smtp_data_reference_scan(&r, &ref_used, piece, n);
            FUZZ_ASSERT(got == want);
            FUZZ_ASSERT(used == ref_used);
            FUZZ_ASSERT(used <= n);
            FUZZ_ASSERT(strcmp(smtp_data_reject_name(&s), smtp_data_reference_reject_name(&r)) ==
                        0);
            if (got == SMTP_DATA_MORE) {
                wait = true;
            } else if (got == SMTP_DATA_REJECT) {
                /* Both keep rejecting, whatever they are offered, until skipping ends. */
                size_t again = SIZE_MAX;
                size_t ref_again = SIZE_MAX - 1;
                FUZZ_ASSERT(smtp_data_scan(&s, &again, piece + used, n - used) == SMTP_DATA_REJECT);
                FUZZ_ASSERT(smtp_data_reference_scan(&r, &ref_again, piece + used, n - used) ==
                            SMTP_DATA_REJECT);
                FUZZ_ASSERT(again == 0 && ref_again == 0);
                skipping = true;
            }
        }
        free(block);
        pos += used;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) {
        return 0;
    }
    size_t align = data[0] & 0x0f;
    size_t n_cuts = data[1] % (FUZZ_CUTS_MAX + 1);
    size_t head = 2 + 2 * n_cuts;
    if (size < head) {
        return 0;
    }
    const char *content = (const char *)data + head;
    size_t len = size - head;
    struct fuzz_cuts cuts = {.n = n_cuts};
    for (size_t i = 0; i < n_cuts; i++) {
        size_t at = (size_t)data[2 + 2 * i] | (size_t)data[3 + 2 * i] << 8;
        cuts.at[i] = at % (len + 1);
    }
    qsort(cuts.at, cuts.n, sizeof(cuts.at[0]), fuzz_size_compare);
    for (int normalize = 0; normalize <= 1; normalize++) {
        fuzz_feed(content, len, &cuts, align, normalize != 0, false);
        fuzz_feed(content, len, &cuts, align, normalize != 0, true);
    }
    return 0;
}

/*
 * fuzz_smtp_data: libFuzzer target for the end-of-data scanner, smtp_data_scan() and
 * smtp_skip_bad_data(), in both bare-LF modes (reject and normalize). The first two input
 * bytes choose how the content is cut; the rest is DATA content, possibly several messages
 * in a row, read as the session does: scan until the end of a message, offer held-back
 * bytes again with the next ones, resume at a reported bare LF, and after a rejection skip
 * to the next CRLF.CRLF. The content is fed whole, in two pieces cut at a point chosen by
 * those bytes, in pseudo-random pieces, and one byte at a time, each call on a heap copy
 * of exactly the bytes offered (so ASan sees any read past them). Checked: every feeding
 * finds the same events (end of data, bare LF, rejection and its reason, end of the
 * skipped message) at the same offsets counted from the start of the content, the same
 * as a reference model written from smtp.h's rules; only "." or ".\r" at a line start is
 * held back; a rejecting scanner keeps rejecting with *out_used 0; and skipping a whole
 * message with a fresh scanner agrees with the reference.
 */
#include "smtp.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_ASSERT(cond)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: FUZZ_ASSERT(%s) failed\n", __FILE__, __LINE__, #cond);         \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

enum fuzz_event_kind {
    FUZZ_EVENT_END = 0, /* smtp_data_scan(): SMTP_DATA_END */
    FUZZ_EVENT_BARE_LF, /* smtp_data_scan(): SMTP_DATA_BARE_LF */
    FUZZ_EVENT_REJECT,  /* smtp_data_scan(): SMTP_DATA_REJECT */
    FUZZ_EVENT_SKIPPED, /* smtp_skip_bad_data(): true */
};

/* An event, the offset it reports counted from the start of the content, and for a
 * rejection its reason as smtp_data_reject_name() gives it. */
struct fuzz_event {
    enum fuzz_event_kind kind;
    size_t at;
    const char *why;
};

struct fuzz_events {
    struct fuzz_event *list;
    size_t n;
};

static void fuzz_event_add(struct fuzz_events *e, enum fuzz_event_kind kind, size_t at,
                           const char *why)
{
    e->list[e->n++] = (struct fuzz_event){.kind = kind, .at = at, .why = why};
}

static bool fuzz_events_equal(const struct fuzz_events *a, const struct fuzz_events *b)
{
    if (a->n != b->n) {
        return false;
    }
    for (size_t i = 0; i < a->n; i++) {
        if (a->list[i].kind != b->list[i].kind || a->list[i].at != b->list[i].at ||
            strcmp(a->list[i].why, b->list[i].why) != 0) {
            return false;
        }
    }
    return true;
}

/* "\r\n.\r\n" ends at byte |i| (inclusive), entirely at or after |from|. */
static bool fuzz_marker_ends_at(const char *c, size_t from, size_t i)
{
    return i >= from + 4 && memcmp(c + i - 4, "\r\n.\r\n", 5) == 0;
}

/*
 * The reference, line by line, from smtp.h's rules. A message starts at a line start. A
 * CR not followed by LF is rejected at the byte after it ("bare-cr"). A line that starts
 * with NUL, or with "." and NUL, is rejected at the NUL ("nul-at-line-start"). A "." line
 * ended by a bare LF, or a line after a bare LF that is "." followed by CR, LF or NUL, is
 * rejected at that byte ("dot-line-bare-lf"). Any other bare LF is rejected at itself in
 * reject mode ("bare-lf") and reported as a line end in normalize mode. A "." line ended
 * by CRLF after a CRLF (or at the start) ends the message. After a rejection only a
 * "\r\n.\r\n" entirely after the rejected byte ends the message.
 */
static void fuzz_reference(struct fuzz_events *e, const char *c, size_t len, bool normalize)
{
    bool skipping = false;
    size_t from = 0;       /* the rejected byte, while skipping */
    size_t col = 0;        /* bytes of the current line so far */
    bool after_lf = false; /* the current line follows a bare LF */
    bool dot = false;      /* the current line starts with "." */
    bool cr = false;       /* the last byte was a CR inside this line */
    for (size_t i = 0; i < len; i++) {
        char b = c[i];
        if (skipping) {
            if (fuzz_marker_ends_at(c, from, i)) {
                fuzz_event_add(e, FUZZ_EVENT_SKIPPED, i + 1, "");
                skipping = false;
                col = 0;
                after_lf = dot = cr = false;
            }
            continue;
        }
        const char *why = NULL;
        if (cr) {
            if (b != '\n') {
                why = "bare-cr";
            } else if (dot && col == 2 && !after_lf) {
                fuzz_event_add(e, FUZZ_EVENT_END, i + 1, "");
                col = 0;
                after_lf = dot = cr = false;
                continue;
            } else {
                col = 0;
                after_lf = dot = cr = false;
                continue;
            }
        } else if (b == '\r') {
            if (after_lf && dot && col == 1) {
                why = "dot-line-bare-lf";
            }
            cr = true;
        } else if (b == '\n') {
            if (dot && col == 1) {
                why = "dot-line-bare-lf";
            } else if (!normalize) {
                why = "bare-lf";
            } else {
                fuzz_event_add(e, FUZZ_EVENT_BARE_LF, i, "");
                col = 0;
                after_lf = true;
                dot = cr = false;
                continue;
            }
        } else if (b == '\0' && (col == 0 || (col == 1 && dot))) {
            why = "nul-at-line-start";
        } else if (b == '.' && col == 0) {
            dot = true;
        }
        if (why != NULL) {
            fuzz_event_add(e, FUZZ_EVENT_REJECT, i, why);
            skipping = true;
            from = i;
            continue;
        }
        col++;
    }
}

/* The reference for smtp_skip_bad_data() on a fresh scanner: the first "." line. */
static bool fuzz_reference_skip(size_t *out_end, const char *c, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if ((i == 2 && memcmp(c, ".\r\n", 3) == 0) || fuzz_marker_ends_at(c, 0, i)) {
            *out_end = i + 1;
            return true;
        }
    }
    return false;
}

/* How the content arrives: the end of the bytes received once |avail| have been. */
enum fuzz_cut {
    FUZZ_CUT_WHOLE = 0,
    FUZZ_CUT_TWO,
    FUZZ_CUT_RANDOM,
    FUZZ_CUT_BYTES,
};

struct fuzz_cutter {
    enum fuzz_cut how;
    size_t split; /* FUZZ_CUT_TWO */
    uint32_t rng; /* FUZZ_CUT_RANDOM */
};

static size_t fuzz_next_end(struct fuzz_cutter *c, size_t avail, size_t len)
{
    switch (c->how) {
    case FUZZ_CUT_WHOLE:
        return len;
    case FUZZ_CUT_TWO:
        return avail < c->split ? c->split : len;
    case FUZZ_CUT_RANDOM: {
        c->rng = c->rng * 1103515245u + 12345u;
        /* Mostly short reads, sometimes long ones. */
        size_t step = 1 + ((c->rng >> 16) & 0x0f);
        if (((c->rng >> 24) & 0x07) == 0) {
            step = 1 + ((c->rng >> 8) & 0x3ff);
        }
        return len - avail < step ? len : avail + step;
    }
    case FUZZ_CUT_BYTES:
        return avail + 1;
    }
    FUZZ_ASSERT(0);
    return len;
}

static char *fuzz_copy(const char *data, size_t len)
{
    char *copy = malloc(len == 0 ? 1 : len);
    FUZZ_ASSERT(copy != NULL);
    if (len != 0) {
        memcpy(copy, data, len);
    }
    return copy;
}

/* One smtp_data_scan() call on content[pos, avail); returns false to wait for more. */
static bool fuzz_scan_once(struct fuzz_events *e, struct smtp_data_scanner *s, bool *skipping,
                           size_t *pos, const char *content, size_t avail, size_t *msg_start)
{
    size_t n = avail - *pos;
    char *piece = fuzz_copy(content + *pos, n);
    size_t used = SIZE_MAX;
    bool go_on = true;
    switch (smtp_data_scan(s, &used, piece, n)) {
    case SMTP_DATA_MORE:
        FUZZ_ASSERT(used <= n);
        if (used < n) {
            /* Held back: "." or ".\r" starting a line, to be offered again with more. */
            size_t at = *pos + used;
            FUZZ_ASSERT(n - used <= 2 && piece[used] == '.');
            FUZZ_ASSERT(n - used == 1 || piece[used + 1] == '\r');
            FUZZ_ASSERT(at == *msg_start || content[at - 1] == '\n');
        }
        go_on = false;
        break;
    case SMTP_DATA_END: {
        FUZZ_ASSERT(used >= 1 && used <= n);
        size_t end = *pos + used;
        FUZZ_ASSERT(end >= *msg_start + 3 && memcmp(content + end - 3, ".\r\n", 3) == 0);
        FUZZ_ASSERT(end == *msg_start + 3 || memcmp(content + end - 5, "\r\n", 2) == 0);
        fuzz_event_add(e, FUZZ_EVENT_END, end, "");
        *msg_start = end;
        break;
    }
    case SMTP_DATA_BARE_LF:
        /* Resume at the LF itself: the caller has sent a CR before it. */
        FUZZ_ASSERT(used < n && piece[used] == '\n');
        fuzz_event_add(e, FUZZ_EVENT_BARE_LF, *pos + used, "");
        break;
    case SMTP_DATA_REJECT: {
        FUZZ_ASSERT(used < n);
        fuzz_event_add(e, FUZZ_EVENT_REJECT, *pos + used, smtp_data_reject_name(s));
        size_t again = SIZE_MAX;
        FUZZ_ASSERT(smtp_data_scan(s, &again, piece + used, n - used) == SMTP_DATA_REJECT);
        FUZZ_ASSERT(again == 0);
        *skipping = true;
        break;
    }
    default:
        FUZZ_ASSERT(0);
    }
    *pos += used;
    free(piece);
    return go_on;
}

/* Reads the content as it arrives in the pieces |cut| gives, as the session does. */
static void fuzz_feed(struct fuzz_events *e, struct fuzz_cutter *cut, const char *content,
                      size_t len, bool normalize)
{
    struct smtp_data_scanner s;
    smtp_data_scanner_init(&s, normalize);
    bool skipping = false;
    size_t pos = 0;       /* the first byte not taken yet */
    size_t avail = 0;     /* bytes received so far */
    size_t msg_start = 0; /* where the current message started */
    for (;;) {
        bool wait = pos == avail;
        if (!wait && skipping) {
            char *piece = fuzz_copy(content + pos, avail - pos);
            size_t used = SIZE_MAX;
            if (smtp_skip_bad_data(&s, &used, piece, avail - pos)) {
                FUZZ_ASSERT(used >= 1 && used <= avail - pos);
                fuzz_event_add(e, FUZZ_EVENT_SKIPPED, pos + used, "");
                skipping = false;
                msg_start = pos + used;
            } else {
                FUZZ_ASSERT(used == avail - pos);
            }
            pos += used;
            free(piece);
        } else if (!wait) {
            wait = !fuzz_scan_once(e, &s, &skipping, &pos, content, avail, &msg_start);
        }
        if (wait) {
            if (avail == len) {
                return;
            }
            size_t next = fuzz_next_end(cut, avail, len);
            FUZZ_ASSERT(next > avail && next <= len);
            avail = next;
        }
    }
}

/* smtp_skip_bad_data() from the start of a message, on a fresh scanner. */
static void fuzz_skip_fresh(struct fuzz_cutter *cut, const char *content, size_t len,
                            bool normalize)
{
    size_t want_end = 0;
    bool want = fuzz_reference_skip(&want_end, content, len);
    struct smtp_data_scanner s;
    smtp_data_scanner_init(&s, normalize);
    size_t pos = 0;
    while (pos < len) {
        size_t end = fuzz_next_end(cut, pos, len);
        char *piece = fuzz_copy(content + pos, end - pos);
        size_t used = SIZE_MAX;
        bool found = smtp_skip_bad_data(&s, &used, piece, end - pos);
        free(piece);
        if (found) {
            FUZZ_ASSERT(want && pos + used == want_end);
            return;
        }
        FUZZ_ASSERT(used == end - pos);
        pos = end;
    }
    FUZZ_ASSERT(!want);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) {
        return 0;
    }
    const char *content = (const char *)data + 2;
    size_t len = size - 2;
    size_t split = ((size_t)data[0] | (size_t)data[1] << 8) % (len + 1);
    uint32_t seed = 0x9e3779b9u ^ ((uint32_t)data[0] << 8 | data[1]) * 0x01000193u;

    /* At most one event per byte. */
    struct fuzz_event *lists = malloc(2 * (len + 1) * sizeof(*lists));
    FUZZ_ASSERT(lists != NULL);
    static const enum fuzz_cut cuts[] = {FUZZ_CUT_WHOLE, FUZZ_CUT_TWO, FUZZ_CUT_RANDOM,
                                         FUZZ_CUT_BYTES};
    for (int normalize = 0; normalize <= 1; normalize++) {
        struct fuzz_events want = {.list = lists};
        fuzz_reference(&want, content, len, normalize != 0);
        for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
            struct fuzz_cutter cut = {.how = cuts[i], .split = split, .rng = seed};
            struct fuzz_events got = {.list = lists + len + 1};
            fuzz_feed(&got, &cut, content, len, normalize != 0);
            FUZZ_ASSERT(fuzz_events_equal(&got, &want));

            cut = (struct fuzz_cutter){.how = cuts[i], .split = split, .rng = seed};
            fuzz_skip_fresh(&cut, content, len, normalize != 0);
        }
    }
    free(lists);
    return 0;
}

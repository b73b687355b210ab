/*
 * smtp_data_reference: proxy/smtp.c's end-of-data scanner as of 0e70bc3, verbatim but for
 * the names (smtp_data_* -> smtp_data_reference_*, the private enums -> ref_scan_*), kept
 * as the oracle for the differential tests (tests/fuzz/fuzz_smtp_data_diff.c, and
 * tests/unit/test_smtp.c). Do not "improve" it: its value is that it is the old code.
 */
#include "smtp_data_reference.h"

#include <string.h>

/*
 * Where the scanner stands in the content. RFC 5321 section 4.1.1.4: the content ends with
 * CRLF "." CRLF, where the first CRLF may be the end of the DATA command line itself.
 */
enum ref_scan_state {
    REF_SCAN_LINE_START = 0, /* after CRLF, or at the very start of the content */
    REF_SCAN_LINE_START_LF,  /* after a bare LF taken as a line end (normalize) */
    REF_SCAN_DOT,            /* "." at the start of a line after CRLF */
    REF_SCAN_DOT_CR,         /* "." CR at the start of a line after CRLF */
    REF_SCAN_DOT_LF,         /* "." at the start of a line after a bare LF */
    REF_SCAN_TEXT,           /* inside a line */
    REF_SCAN_CR,             /* CR inside a line: must be followed by LF */
    REF_SCAN_BARE_LF,        /* normalize: the next byte is the bare LF just reported */
    REF_SCAN_REJECTED,       /* rejected: only skipping goes on */
    REF_SCAN_END,            /* the end marker is complete (never stored) */
};

/* What one byte does: the next state, or a verdict. */
enum ref_scan_event {
    REF_SCAN_GO = 0,     /* move to the state given */
    REF_SCAN_NEWLINE_LF, /* normalize: a bare LF ends this line */
    REF_SCAN_REFUSE,     /* reject, for the reason given */
};

/*
 * ref_scan_step decides one byte of content in |state|. Bare CR, NUL starting a line, and
 * a "." line next to a bare LF are what SMTP smuggling (CVE-2023-51764) exploits: some
 * receiver reads them as an end of data while the proxy does not, or the other way round.
 */
static enum ref_scan_event ref_scan_step(enum ref_scan_state *state, enum smtp_data_reject *why,
                                         char c, bool normalize)
{
    enum ref_scan_state st = *state;
    switch (st) {
    case REF_SCAN_LINE_START:
    case REF_SCAN_LINE_START_LF:
    case REF_SCAN_TEXT:
        if (c == '\r') {
            *state = REF_SCAN_CR;
        } else if (c == '\n') {
            if (!normalize) {
                *why = SMTP_DATA_REJECT_BARE_LF;
                return REF_SCAN_REFUSE;
            }
            return REF_SCAN_NEWLINE_LF;
        } else if (c == '\0' && st != REF_SCAN_TEXT) {
            *why = SMTP_DATA_REJECT_NUL;
            return REF_SCAN_REFUSE;
        } else if (c == '.' && st != REF_SCAN_TEXT) {
            *state = st == REF_SCAN_LINE_START ? REF_SCAN_DOT : REF_SCAN_DOT_LF;
        } else {
            *state = REF_SCAN_TEXT;
        }
        return REF_SCAN_GO;
    case REF_SCAN_DOT:
        if (c == '\r') {
            *state = REF_SCAN_DOT_CR;
            return REF_SCAN_GO;
        }
        if (c == '\n' || c == '\0') {
            *why = c == '\n' ? SMTP_DATA_REJECT_DOT_BARE_LF : SMTP_DATA_REJECT_NUL;
            return REF_SCAN_REFUSE;
        }
        *state = REF_SCAN_TEXT;
        return REF_SCAN_GO;
    case REF_SCAN_DOT_LF:
        if (c == '\r' || c == '\n' || c == '\0') {
            *why = c == '\0' ? SMTP_DATA_REJECT_NUL : SMTP_DATA_REJECT_DOT_BARE_LF;
            return REF_SCAN_REFUSE;
        }
        *state = REF_SCAN_TEXT;
        return REF_SCAN_GO;
    case REF_SCAN_DOT_CR:
        if (c == '\n') {
            *state = REF_SCAN_END;
            return REF_SCAN_GO;
        }
        *why = SMTP_DATA_REJECT_BARE_CR;
        return REF_SCAN_REFUSE;
    case REF_SCAN_CR:
        if (c == '\n') {
            *state = REF_SCAN_LINE_START;
            return REF_SCAN_GO;
        }
        *why = SMTP_DATA_REJECT_BARE_CR;
        return REF_SCAN_REFUSE;
    case REF_SCAN_BARE_LF:
        /* The LF reported by SMTP_DATA_BARE_LF: the caller has sent a CR before it. */
        *state = c == '\n' ? REF_SCAN_LINE_START_LF : REF_SCAN_TEXT;
        return REF_SCAN_GO;
    case REF_SCAN_REJECTED:
    case REF_SCAN_END:
        break;
    }
    *why = SMTP_DATA_REJECT_BARE_CR;
    return REF_SCAN_REFUSE;
}

void smtp_data_reference_init(struct smtp_data_reference *s, bool normalize)
{
    s->state = REF_SCAN_LINE_START;
    s->reject = SMTP_DATA_REJECT_NONE;
    s->normalize = normalize;
}

enum smtp_data_result smtp_data_reference_scan(struct smtp_data_reference *s, size_t *out_used,
                                               const char *data, size_t len)
{
    enum ref_scan_state state = (enum ref_scan_state)s->state;
    *out_used = 0;
    if (state == REF_SCAN_REJECTED || s->reject != SMTP_DATA_REJECT_NONE) {
        return SMTP_DATA_REJECT; /* until smtp_data_reference_skip() found the end */
    }
    size_t line_at = 0; /* where the current line started, for holding back "." and ".\r" */
    for (size_t i = 0; i < len; i++) {
        if (state == REF_SCAN_TEXT) {
            /* Inside a line only CR and LF matter: skip to the first of them. Most of a
             * message is spent here, so this is the proxy's hottest loop. */
            const char *cr = memchr(data + i, '\r', len - i);
            size_t end = cr != NULL ? (size_t)(cr - data) : len;
            const char *lf = memchr(data + i, '\n', end - i);
            i = lf != NULL ? (size_t)(lf - data) : end;
            if (i == len) {
                break;
            }
        }
        if (state == REF_SCAN_LINE_START || state == REF_SCAN_LINE_START_LF) {
            line_at = i;
        }
        enum smtp_data_reject why = SMTP_DATA_REJECT_NONE;
        switch (ref_scan_step(&state, &why, data[i], s->normalize)) {
        case REF_SCAN_GO:
            if (state == REF_SCAN_END) {
                s->state = REF_SCAN_LINE_START;
                *out_used = i + 1;
                return SMTP_DATA_END;
            }
            break;
        case REF_SCAN_NEWLINE_LF:
            s->state = REF_SCAN_BARE_LF;
            *out_used = i;
            return SMTP_DATA_BARE_LF;
        case REF_SCAN_REFUSE:
            /* Byte i revealed it, so the offset does not depend on where the content was
             * split. */
            s->state = REF_SCAN_REJECTED;
            s->reject = why;
            *out_used = i;
            return SMTP_DATA_REJECT;
        }
    }
    /* A line that is so far "." or ".\r" could still become the end, or something a
     * receiver reads as one: it is not content yet, and is offered again with more. */
    if (state == REF_SCAN_DOT || state == REF_SCAN_DOT_CR || state == REF_SCAN_DOT_LF) {
        s->state = state == REF_SCAN_DOT_LF ? REF_SCAN_LINE_START_LF : REF_SCAN_LINE_START;
        *out_used = line_at;
        return SMTP_DATA_MORE;
    }
    s->state = state;
    *out_used = len;
    return SMTP_DATA_MORE;
}

const char *smtp_data_reference_reject_name(const struct smtp_data_reference *s)
{
    switch ((enum smtp_data_reject)s->reject) {
    case SMTP_DATA_REJECT_BARE_CR:
        return "bare-cr";
    case SMTP_DATA_REJECT_BARE_LF:
        return "bare-lf";
    case SMTP_DATA_REJECT_DOT_BARE_LF:
        return "dot-line-bare-lf";
    case SMTP_DATA_REJECT_NUL:
        return "nul-at-line-start";
    case SMTP_DATA_REJECT_NONE:
        break;
    }
    return "none";
}

bool smtp_data_reference_skip(struct smtp_data_reference *s, size_t *out_used, const char *data,
                              size_t len)
{
    enum ref_scan_state state = (enum ref_scan_state)s->state;
    /* smtp_data_reference_scan() stopped at the byte that showed the problem: not a line start. */
    if (state == REF_SCAN_REJECTED || state == REF_SCAN_BARE_LF ||
        state == REF_SCAN_LINE_START_LF || state == REF_SCAN_DOT_LF) {
        state = REF_SCAN_TEXT;
    }
    *out_used = len;
    for (size_t i = 0; i < len; i++) {
        char c = data[i];
        /* Only CRLF ends a line here: that is the end a conforming client sends, so
         * "\n.\n" or "\r.\r\n" hidden in the rejected content cannot end it early. */
        switch (state) {
        case REF_SCAN_LINE_START:
            state = c == '.' ? REF_SCAN_DOT : c == '\r' ? REF_SCAN_CR : REF_SCAN_TEXT;
            break;
        case REF_SCAN_DOT:
            state = c == '\r' ? REF_SCAN_DOT_CR : REF_SCAN_TEXT;
            break;
        case REF_SCAN_DOT_CR:
            if (c == '\n') {
                smtp_data_reference_init(s, s->normalize);
                *out_used = i + 1;
                return true;
            }
            state = c == '\r' ? REF_SCAN_CR : REF_SCAN_TEXT;
            break;
        case REF_SCAN_CR:
            state = c == '\n' ? REF_SCAN_LINE_START : c == '\r' ? REF_SCAN_CR : REF_SCAN_TEXT;
            break;
        default:
            state = c == '\r' ? REF_SCAN_CR : REF_SCAN_TEXT;
            break;
        }
    }
    s->state = state;
    return false;
}

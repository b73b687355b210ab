/*
 * smtp: SMTP text only. Splits lines, parses commands and replies, edits EHLO capabilities
 * and finds the end of DATA content. Every function works on the caller's bytes with
 * explicit lengths; nothing here allocates, does I/O or logs, and no input can make it
 * read or write outside the given arrays.
 */
#include "smtp.h"

#include <stdio.h>
#include <string.h>

/* SMTP_SCAN_PORTABLE forces the portable end-of-data search and SMTP_SCAN_NO_AVX2 the SSE2
 * one, so tests can cover each on a machine that has AVX2. */
#if defined(__SSE2__) && !defined(SMTP_SCAN_PORTABLE)
#include <emmintrin.h>
#define SMTP_SCAN_SSE2 1
#if defined(__x86_64__) && defined(__GNUC__) && !defined(SMTP_SCAN_NO_AVX2)
#include <immintrin.h>
#define SMTP_SCAN_AVX2 1 /* when the CPU has it: chosen at run time */
#endif
#endif

/* ASCII only: toupper() depends on the locale and is undefined for negative chars. */
static char smtp_upper(char c)
{
    return c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c;
}

/* smtp_equal_nocase compares |len| bytes of |data| with the upper-case ASCII |upper|. */
static bool smtp_equal_nocase(const char *data, const char *upper, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (smtp_upper(data[i]) != upper[i]) {
            return false;
        }
    }
    return true;
}

/* Output that stops at the first write that does not fit, so it never has gaps. */
struct smtp_writer {
    char *out;
    size_t len;
    size_t cap;
    bool overflow;
};

static void smtp_put(struct smtp_writer *w, const char *data, size_t len)
{
    if (w->overflow || len == 0) {
        return;
    }
    if (len > w->cap - w->len) {
        w->overflow = true;
        return;
    }
    if (w->out != NULL) { /* NULL: only reading the capabilities */
        memcpy(w->out + w->len, data, len);
    }
    w->len += len;
}

bool smtp_is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\v' || c == '\f' || c == '\r' || c == '\n';
}

/* smtp_word_len returns the length of the word that starts |data|: up to a space or the end
 * (reply text: only SP separates there). */
static size_t smtp_word_len(const char *data, size_t len)
{
    const char *space = len > 0 ? memchr(data, ' ', len) : NULL;
    return space != NULL ? (size_t)(space - data) : len;
}

/* smtp_token_len returns the length of the word that starts |data|: up to any whitespace
 * (command lines, read the laxest way). */
static size_t smtp_token_len(const char *data, size_t len)
{
    size_t i = 0;
    while (i < len && !smtp_is_space(data[i])) {
        i++;
    }
    return i;
}

/* smtp_skip_space returns the number of whitespace bytes that start |data|. */
static size_t smtp_skip_space(const char *data, size_t len)
{
    size_t i = 0;
    while (i < len && smtp_is_space(data[i])) {
        i++;
    }
    return i;
}

enum smtp_result smtp_line_find(size_t *out_line_len, size_t *out_eol_len, const char *data,
                                size_t len, size_t max_len)
{
    *out_line_len = 0;
    *out_eol_len = 0;
    if (len == 0) {
        return SMTP_NEED_MORE;
    }
    size_t allowed = len < max_len ? len : max_len;
    const char *lf = memchr(data, '\n', allowed);
    if (lf != NULL) {
        size_t lf_at = (size_t)(lf - data);
        *out_eol_len = lf_at > 0 && data[lf_at - 1] == '\r' ? 2 : 1;
        *out_line_len = lf_at + 1 - *out_eol_len;
        return SMTP_OK;
    }
    if (len < max_len) {
        return SMTP_NEED_MORE;
    }
    lf = len > allowed ? memchr(data + allowed, '\n', len - allowed) : NULL;
    if (lf != NULL) {
        *out_line_len = (size_t)(lf - data) + 1;
        *out_eol_len = 1;
    } else {
        *out_line_len = len;
    }
    return SMTP_TOO_LONG;
}

static const struct {
    const char *name;
    size_t len;
    enum smtp_verb verb;
} smtp_verbs[] = {
    {"HELO", 4, SMTP_VERB_HELO}, {"EHLO", 4, SMTP_VERB_EHLO},
    {"MAIL", 4, SMTP_VERB_MAIL}, {"RCPT", 4, SMTP_VERB_RCPT},
    {"DATA", 4, SMTP_VERB_DATA}, {"BDAT", 4, SMTP_VERB_BDAT},
    {"RSET", 4, SMTP_VERB_RSET}, {"NOOP", 4, SMTP_VERB_NOOP},
    {"QUIT", 4, SMTP_VERB_QUIT}, {"STARTTLS", 8, SMTP_VERB_STARTTLS},
    {"AUTH", 4, SMTP_VERB_AUTH}, {"XCLIENT", 7, SMTP_VERB_XCLIENT},
};

static enum smtp_verb smtp_verb_of(const char *word, size_t len)
{
    for (size_t i = 0; i < sizeof(smtp_verbs) / sizeof(smtp_verbs[0]); i++) {
        if (len == smtp_verbs[i].len && smtp_equal_nocase(word, smtp_verbs[i].name, len)) {
            return smtp_verbs[i].verb;
        }
    }
    return SMTP_VERB_OTHER;
}

/*
 * smtp_path_parse reads "FROM:<path>" or "TO:<path>" (|keyword| is "FROM:" or "TO:")
 * followed by nothing or by a space and ESMTP parameters (RFC 5321 section 4.1.1.2).
 */
static enum smtp_result smtp_path_parse(struct smtp_command *out, const char *keyword,
                                        size_t keyword_len)
{
    const char *args = out->args;
    size_t args_len = out->args_len;
    if (args_len < keyword_len || !smtp_equal_nocase(args, keyword, keyword_len)) {
        return SMTP_BAD_SYNTAX;
    }
    /* RFC 5321 allows no space before '<', but many clients send one; Postfix takes it. */
    size_t start = keyword_len + smtp_skip_space(args + keyword_len, args_len - keyword_len);
    if (start == args_len || args[start] != '<') {
        return SMTP_BAD_SYNTAX;
    }
    /* A quoted local part may hold '>' (RFC 5321 section 4.1.2, qtextSMTP). */
    bool quoted = false;
    size_t i = start + 1;
    while (i < args_len && (quoted || args[i] != '>')) {
        if (quoted && args[i] == '\\') {
            i++;
        } else if (args[i] == '"') {
            quoted = !quoted;
        }
        i++;
    }
    if (i >= args_len) {
        return SMTP_BAD_SYNTAX;
    }
    size_t end = i + 1;
    if (end < args_len && !smtp_is_space(args[end])) {
        return SMTP_BAD_SYNTAX;
    }
    if (end - start > SMTP_PATH_MAX) {
        return SMTP_PATH_TOO_LONG;
    }
    out->path = args + start;
    out->path_len = end - start;
    return SMTP_OK;
}

/*
 * RFC 3030: "BDAT" SP chunk-size [ SP "LAST" ]. The size frames the bytes that follow, so
 * reading it differently from the receiver would desynchronise the two: it is parsed the
 * way the laxest receiver splits words (any whitespace), and anything else is refused.
 */
static enum smtp_result smtp_bdat_parse(struct smtp_command *out)
{
    const char *args = out->args;
    size_t args_len = out->args_len;
    uint64_t size = 0;
    size_t i = 0;
    while (i < args_len && args[i] >= '0' && args[i] <= '9') {
        size = size * 10 + (uint64_t)(args[i] - '0');
        if (size > SMTP_BDAT_SIZE_MAX) {
            return SMTP_BAD_SYNTAX;
        }
        i++;
    }
    if (i == 0) {
        return SMTP_BAD_SYNTAX;
    }
    if (i < args_len) {
        size_t gap = smtp_skip_space(args + i, args_len - i);
        if (gap == 0 || args_len - i - gap != 4 || !smtp_equal_nocase(args + i + gap, "LAST", 4)) {
            return SMTP_BAD_SYNTAX;
        }
        out->bdat_last = true;
    }
    out->bdat_size = size;
    return SMTP_OK;
}

enum smtp_result smtp_command_parse(struct smtp_command *out, const char *line, size_t len)
{
    *out = (struct smtp_command){.verb = SMTP_VERB_OTHER, .args = line};
    if (len == 0) {
        return SMTP_OK;
    }
    size_t verb_len = smtp_token_len(line, len);
    size_t args_at = verb_len + smtp_skip_space(line + verb_len, len - verb_len);
    size_t args_end = len;
    while (args_end > args_at && smtp_is_space(line[args_end - 1])) {
        args_end--;
    }
    out->verb = verb_len > 0 ? smtp_verb_of(line, verb_len) : SMTP_VERB_OTHER;
    out->args = line + args_at;
    out->args_len = args_end - args_at;
    /* A CR or LF inside a command is how commands get smuggled past a line-based check;
     * leading whitespace is skipped by some servers and not by others. */
    if (verb_len == 0 || memchr(line, '\0', len) != NULL || memchr(line, '\r', len) != NULL ||
        memchr(line, '\n', len) != NULL) {
        return SMTP_BAD_SYNTAX;
    }
    switch (out->verb) {
    case SMTP_VERB_MAIL:
        return smtp_path_parse(out, "FROM:", 5);
    case SMTP_VERB_RCPT:
        return smtp_path_parse(out, "TO:", 3);
    case SMTP_VERB_BDAT:
        return smtp_bdat_parse(out);
    default:
        return SMTP_OK;
    }
}

void smtp_helo_name(const char **out_name, size_t *out_len, const struct smtp_command *cmd)
{
    *out_name = cmd->args;
    *out_len = smtp_token_len(cmd->args, cmd->args_len);
}

size_t smtp_xtext(char *out, size_t out_cap, const char *text, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        char enc[3] = {(char)c, 0, 0};
        size_t enc_len = 1;
        if (c < 33 || c > 126 || c == '+' || c == '=') {
            enc[0] = '+';
            enc[1] = hex[c >> 4];
            enc[2] = hex[c & 15];
            enc_len = 3;
        }
        for (size_t k = 0; k < enc_len; k++, n++) {
            if (n < out_cap) {
                out[n] = enc[k];
            }
        }
    }
    return n;
}

/* smtp_params_have tells whether the space-separated |params| name |attr| (any case). */
static bool smtp_params_have(const char *params, size_t len, const char *attr)
{
    size_t attr_len = strlen(attr);
    size_t i = 0;
    while (i < len) {
        i += smtp_skip_space(params + i, len - i);
        size_t word = smtp_token_len(params + i, len - i);
        if (word == attr_len && smtp_equal_nocase(params + i, attr, attr_len)) {
            return true;
        }
        i += word;
    }
    return false;
}

/* smtp_printable tells whether every byte is printable ASCII (33..126). */
static bool smtp_printable(const char *text, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)text[i] < 33 || (unsigned char)text[i] > 126) {
            return false;
        }
    }
    return true;
}

enum smtp_result smtp_xclient_format(char *out, size_t *out_len, size_t out_cap, const char *params,
                                     size_t params_len, const struct smtp_xclient *x)
{
    struct smtp_writer w = {.out = out, .cap = out_cap};
    char attr[96];
    *out_len = 0;
    if (!smtp_params_have(params, params_len, "ADDR") || x->addr == NULL) {
        return SMTP_BAD_SYNTAX;
    }
    smtp_put(&w, "XCLIENT", 7);
    /* Postfix wants IPv6 in the RFC 5321 address-literal form, with the IPV6: prefix. */
    int n = snprintf(attr, sizeof(attr), " ADDR=%s%s", x->ipv6 ? "IPV6:" : "", x->addr);
    if (n < 0 || (size_t)n >= sizeof(attr)) {
        return SMTP_TOO_LONG;
    }
    smtp_put(&w, attr, (size_t)n);
    if (smtp_params_have(params, params_len, "PORT")) {
        n = snprintf(attr, sizeof(attr), " PORT=%u", x->port);
        smtp_put(&w, attr, (size_t)n);
    }
    if (smtp_params_have(params, params_len, "PROTO")) {
        const char *proto = x->esmtp ? " PROTO=ESMTP" : " PROTO=SMTP";
        smtp_put(&w, proto, strlen(proto));
    }
    if (smtp_params_have(params, params_len, "HELO") && x->helo != NULL && x->helo_len > 0 &&
        x->helo_len <= 255 && smtp_printable(x->helo, x->helo_len)) {
        char name[3 * 255];
        size_t name_len = smtp_xtext(name, sizeof(name), x->helo, x->helo_len);
        smtp_put(&w, " HELO=", 6);
        smtp_put(&w, name, name_len);
    }
    smtp_put(&w, "\r\n", 2);
    if (w.overflow) {
        return SMTP_TOO_LONG;
    }
    *out_len = w.len;
    return SMTP_OK;
}

void smtp_reply_parser_init(struct smtp_reply_parser *p)
{
    p->code = 0;
}

enum smtp_result smtp_reply_parse_line(struct smtp_reply_parser *p, int *out_code, bool *out_done,
                                       const char *line, size_t len)
{
    *out_code = 0;
    *out_done = false;
    /* RFC 5321 section 4.2: Reply-code = %x32-35 %x30-35 %x30-39. */
    if (len < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '5' ||
        line[2] < '0' || line[2] > '9') {
        smtp_reply_parser_init(p);
        return SMTP_BAD_SYNTAX;
    }
    if (len > 3 && line[3] != '-' && line[3] != ' ') {
        smtp_reply_parser_init(p);
        return SMTP_BAD_SYNTAX;
    }
    int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    /* RFC 5321 section 4.2.1: every line of a multi-line reply carries the same code. */
    if (p->code != 0 && code != p->code) {
        smtp_reply_parser_init(p);
        return SMTP_BAD_SYNTAX;
    }
    bool done = len == 3 || line[3] == ' ';
    p->code = done ? 0 : code;
    *out_code = code;
    *out_done = done;
    return SMTP_OK;
}

static const struct {
    const char *name;
    size_t len;
    unsigned cap;
} smtp_caps[] = {
    {"STARTTLS", 8, SMTP_CAP_STARTTLS},
    {"PIPELINING", 10, SMTP_CAP_PIPELINING},
    {"CHUNKING", 8, SMTP_CAP_CHUNKING},
    {"8BITMIME", 8, SMTP_CAP_8BITMIME},
    {"SIZE", 4, SMTP_CAP_SIZE},
    {"XCLIENT", 7, SMTP_CAP_XCLIENT},
    {"BINARYMIME", 10, SMTP_CAP_BINARYMIME},
    {"AUTH", 4, SMTP_CAP_AUTH},
    {"REQUIRETLS", 10, SMTP_CAP_REQUIRETLS},
};

/* RFC 5321 section 4.1.1.1: ehlo-line = ehlo-keyword *( SP ehlo-param ). */
static unsigned smtp_cap_of(const char *text, size_t len)
{
    size_t keyword_len = smtp_word_len(text, len);
    for (size_t i = 0; i < sizeof(smtp_caps) / sizeof(smtp_caps[0]); i++) {
        if (keyword_len == smtp_caps[i].len &&
            smtp_equal_nocase(text, smtp_caps[i].name, keyword_len)) {
            return smtp_caps[i].cap;
        }
    }
    return 0;
}

enum smtp_result smtp_ehlo_edit(char *out, size_t *out_len, unsigned *out_caps, size_t out_cap,
                                const char *reply, size_t reply_len, bool add_starttls,
                                unsigned drop)
{
    struct smtp_writer w = {.out = out, .cap = out_cap};
    struct smtp_reply_parser parser;
    smtp_reply_parser_init(&parser);
    unsigned caps = 0;
    bool first = true;
    bool done = false;
    size_t last_separator_at = 0;
    size_t pos = 0;
    *out_len = 0;
    *out_caps = 0;
    while (pos < reply_len) {
        if (done) {
            return SMTP_BAD_SYNTAX;
        }
        const char *line = reply + pos;
        const char *lf = memchr(line, '\n', reply_len - pos);
        if (lf == NULL) {
            return SMTP_BAD_SYNTAX;
        }
        size_t line_len = (size_t)(lf - line);
        pos += line_len + 1;
        if (line_len > 0 && line[line_len - 1] == '\r') {
            line_len--;
        }
        /* Forwarding a bare CR or a NUL would hand the other leg a reply it may misread. */
        if (memchr(line, '\r', line_len) != NULL || memchr(line, '\0', line_len) != NULL) {
            return SMTP_BAD_SYNTAX;
        }
        int code;
        if (smtp_reply_parse_line(&parser, &code, &done, line, line_len) != SMTP_OK ||
            code != 250) {
            return SMTP_BAD_SYNTAX;
        }
        size_t text_at = line_len > 3 ? 4 : 3;
        const char *text = line + text_at;
        size_t text_len = line_len - text_at;
        /* The first line is the greeting (domain), never a capability. */
        if (!first) {
            unsigned cap = smtp_cap_of(text, text_len);
            caps |= cap;
            if (cap == SMTP_CAP_STARTTLS || (cap & drop) != 0) {
                continue;
            }
        }
        first = false;
        last_separator_at = w.len + 3;
        smtp_put(&w, "250-", 4);
        smtp_put(&w, text, text_len);
        smtp_put(&w, "\r\n", 2);
    }
    if (!done) {
        return SMTP_BAD_SYNTAX;
    }
    if (add_starttls) {
        smtp_put(&w, "250 STARTTLS\r\n", 14);
    } else if (!w.overflow && w.out != NULL) {
        w.out[last_separator_at] = ' ';
    }
    if (w.overflow) {
        return SMTP_TOO_LONG;
    }
    *out_len = w.len;
    *out_caps = caps;
    return SMTP_OK;
}

/*
 * Where the scanner stands in the content. RFC 5321 section 4.1.1.4: the content ends with
 * CRLF "." CRLF, where the first CRLF may be the end of the DATA command line itself.
 */
enum smtp_scan_state {
    SMTP_SCAN_LINE_START = 0, /* after CRLF, or at the very start of the content */
    SMTP_SCAN_LINE_START_LF,  /* after a bare LF taken as a line end (normalize) */
    SMTP_SCAN_DOT,            /* "." at the start of a line after CRLF */
    SMTP_SCAN_DOT_CR,         /* "." CR at the start of a line after CRLF */
    SMTP_SCAN_DOT_LF,         /* "." at the start of a line after a bare LF */
    SMTP_SCAN_TEXT,           /* inside a line */
    SMTP_SCAN_CR,             /* CR inside a line: must be followed by LF */
    SMTP_SCAN_BARE_LF,        /* normalize: the next byte is the bare LF just reported */
    SMTP_SCAN_REJECTED,       /* rejected: only skipping goes on */
    SMTP_SCAN_END,            /* the end marker is complete (never stored) */
};

/* What one byte does: the next state, or a verdict. */
enum smtp_scan_event {
    SMTP_SCAN_GO = 0,     /* move to the state given */
    SMTP_SCAN_NEWLINE_LF, /* normalize: a bare LF ends this line */
    SMTP_SCAN_REFUSE,     /* reject, for the reason given */
};

/*
 * smtp_scan_step decides one byte of content in |state|. Bare CR, NUL starting a line, and
 * a "." line next to a bare LF are what SMTP smuggling (CVE-2023-51764) exploits: some
 * receiver reads them as an end of data while the proxy does not, or the other way round.
 */
static enum smtp_scan_event smtp_scan_step(enum smtp_scan_state *state, enum smtp_data_reject *why,
                                           char c, bool normalize)
{
    enum smtp_scan_state st = *state;
    switch (st) {
    case SMTP_SCAN_LINE_START:
    case SMTP_SCAN_LINE_START_LF:
    case SMTP_SCAN_TEXT:
        if (c == '\r') {
            *state = SMTP_SCAN_CR;
        } else if (c == '\n') {
            if (!normalize) {
                *why = SMTP_DATA_REJECT_BARE_LF;
                return SMTP_SCAN_REFUSE;
            }
            return SMTP_SCAN_NEWLINE_LF;
        } else if (c == '\0' && st != SMTP_SCAN_TEXT) {
            *why = SMTP_DATA_REJECT_NUL;
            return SMTP_SCAN_REFUSE;
        } else if (c == '.' && st != SMTP_SCAN_TEXT) {
            *state = st == SMTP_SCAN_LINE_START ? SMTP_SCAN_DOT : SMTP_SCAN_DOT_LF;
        } else {
            *state = SMTP_SCAN_TEXT;
        }
        return SMTP_SCAN_GO;
    case SMTP_SCAN_DOT:
        if (c == '\r') {
            *state = SMTP_SCAN_DOT_CR;
            return SMTP_SCAN_GO;
        }
        if (c == '\n' || c == '\0') {
            *why = c == '\n' ? SMTP_DATA_REJECT_DOT_BARE_LF : SMTP_DATA_REJECT_NUL;
            return SMTP_SCAN_REFUSE;
        }
        *state = SMTP_SCAN_TEXT;
        return SMTP_SCAN_GO;
    case SMTP_SCAN_DOT_LF:
        if (c == '\r' || c == '\n' || c == '\0') {
            *why = c == '\0' ? SMTP_DATA_REJECT_NUL : SMTP_DATA_REJECT_DOT_BARE_LF;
            return SMTP_SCAN_REFUSE;
        }
        *state = SMTP_SCAN_TEXT;
        return SMTP_SCAN_GO;
    case SMTP_SCAN_DOT_CR:
        if (c == '\n') {
            *state = SMTP_SCAN_END;
            return SMTP_SCAN_GO;
        }
        *why = SMTP_DATA_REJECT_BARE_CR;
        return SMTP_SCAN_REFUSE;
    case SMTP_SCAN_CR:
        if (c == '\n') {
            *state = SMTP_SCAN_LINE_START;
            return SMTP_SCAN_GO;
        }
        *why = SMTP_DATA_REJECT_BARE_CR;
        return SMTP_SCAN_REFUSE;
    case SMTP_SCAN_BARE_LF:
        /* The LF reported by SMTP_DATA_BARE_LF: the caller has sent a CR before it. */
        *state = c == '\n' ? SMTP_SCAN_LINE_START_LF : SMTP_SCAN_TEXT;
        return SMTP_SCAN_GO;
    case SMTP_SCAN_REJECTED:
    case SMTP_SCAN_END:
        break;
    }
    *why = SMTP_DATA_REJECT_BARE_CR;
    return SMTP_SCAN_REFUSE;
}

/*
 * The hot path, where a large message spends its time. Most of it is ordinary lines, in
 * which smtp_scan_step() only moves between SMTP_SCAN_TEXT, SMTP_SCAN_CR and
 * SMTP_SCAN_LINE_START and reports nothing. With SSE2 (x86-64's baseline; AVX2 where the
 * CPU has it, half the instructions), smtp_scan_blocks() checks that for 64 bytes at once,
 * from bit masks of their CRs, LFs, dots and NULs, without a branch per line; a block that
 * holds anything else (the end, a "." line, a bare CR or LF, a NUL starting a line) is
 * stepped through byte by byte, with smtp_scan_find() skipping to the next CR or LF (8
 * bytes at a time where there is no SSE2). So every byte is looked at in one sweep; the
 * old loop ran memchr() twice per line (CR, then LF: every byte read twice, two calls and
 * two mispredicted loop exits per line), and on bare-LF lines the CR search ran to the end
 * of the buffer each time.
 * Hand-written because no library does this scan: memchr() and friends find one byte.
 */
#ifdef SMTP_SCAN_SSE2
/* The CRs, the LFs, and the dots and NULs among 64 bytes, as bit masks (bit k for byte k). */
struct smtp_scan_masks {
    uint64_t crs;
    uint64_t lfs;
    uint64_t dot_nul;
};

/* smtp_scan_masks_sse2 makes them with four 16-byte loads. */
static inline struct smtp_scan_masks smtp_scan_masks_sse2(const char *p)
{
    struct smtp_scan_masks m = {0, 0, 0};
#pragma GCC unroll 4
    for (int k = 0; k < 64; k += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + k));
        __m128i dn = _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('.')),
                                  _mm_cmpeq_epi8(v, _mm_setzero_si128()));
        m.crs |= (uint64_t)(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8('\r'))) << k;
        m.lfs |= (uint64_t)(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8('\n'))) << k;
        m.dot_nul |= (uint64_t)(unsigned)_mm_movemask_epi8(dn) << k;
    }
    return m;
}

/*
 * smtp_scan_clean_run passes whole 64-byte blocks of data[i, len) as long as each is clean:
 * every CR is followed by an LF and every LF preceded by a CR (no bare CR or LF; the pair
 * may straddle two blocks: |*cr_in| says the byte before the block was a CR, |*lf_in| an
 * LF, both updated block by block), and no line starts with "." or NUL. Returns where it
 * stopped. Inlined into one function per instruction set, with that set's |masks_of|.
 */
static inline __attribute__((always_inline)) size_t
smtp_scan_clean_run(struct smtp_scan_masks (*masks_of)(const char *), uint64_t *cr_in,
                    uint64_t *lf_in, const char *data, size_t i, size_t len)
{
    while (len - i >= 64) {
        struct smtp_scan_masks m = masks_of(data + i);
        /* The LFs must be exactly the bytes after the CRs, and no line may start with "."
         * or NUL. */
        uint64_t bad = ((m.crs << 1) | *cr_in) ^ m.lfs;
        bad |= ((m.lfs << 1) | *lf_in) & m.dot_nul;
        if (bad != 0) {
            break;
        }
        *cr_in = m.crs >> 63;
        *lf_in = m.lfs >> 63;
        i += 64;
    }
    return i;
}

static size_t smtp_scan_blocks_sse2(uint64_t *cr_in, uint64_t *lf_in, const char *data, size_t i,
                                    size_t len)
{
    return smtp_scan_clean_run(smtp_scan_masks_sse2, cr_in, lf_in, data, i, len);
}

#ifdef SMTP_SCAN_AVX2
/* smtp_scan_masks_avx2 makes them with two 32-byte loads. */
__attribute__((target("avx2"))) static inline struct smtp_scan_masks
smtp_scan_masks_avx2(const char *p)
{
    struct smtp_scan_masks m = {0, 0, 0};
#pragma GCC unroll 2
    for (int k = 0; k < 64; k += 32) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(p + k));
        __m256i dn = _mm256_or_si256(_mm256_cmpeq_epi8(v, _mm256_set1_epi8('.')),
                                     _mm256_cmpeq_epi8(v, _mm256_setzero_si256()));
        m.crs |=
            (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, _mm256_set1_epi8('\r')))
            << k;
        m.lfs |=
            (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, _mm256_set1_epi8('\n')))
            << k;
        m.dot_nul |= (uint64_t)(uint32_t)_mm256_movemask_epi8(dn) << k;
    }
    return m;
}

__attribute__((target("avx2"))) static size_t
smtp_scan_blocks_avx2(uint64_t *cr_in, uint64_t *lf_in, const char *data, size_t i, size_t len)
{
    return smtp_scan_clean_run(smtp_scan_masks_avx2, cr_in, lf_in, data, i, len);
}
#endif

/*
 * smtp_scan_blocks passes whole 64-byte blocks of data[i, len) from |*state| (which must be
 * SMTP_SCAN_TEXT, SMTP_SCAN_CR or SMTP_SCAN_LINE_START) as long as each is clean (see
 * smtp_scan_clean_run), with AVX2 where the CPU has it. Stepping through such a block byte
 * by byte would report nothing and end in the state its last byte gives, which it stores
 * in *state. Returns where it stopped: at the first block that is not clean, or with fewer
 * than 64 bytes left. Reads only data[i, len).
 */
static size_t smtp_scan_blocks(enum smtp_scan_state *state, const char *data, size_t i, size_t len)
{
    uint64_t cr_in = *state == SMTP_SCAN_CR;         /* data[i] must be an LF */
    uint64_t lf_in = *state == SMTP_SCAN_LINE_START; /* data[i] starts a line */
#ifdef SMTP_SCAN_AVX2
    if (__builtin_cpu_supports("avx2")) {
        i = smtp_scan_blocks_avx2(&cr_in, &lf_in, data, i, len);
    } else
#endif
    {
        i = smtp_scan_blocks_sse2(&cr_in, &lf_in, data, i, len);
    }
    *state = cr_in ? SMTP_SCAN_CR : lf_in ? SMTP_SCAN_LINE_START : SMTP_SCAN_TEXT;
    return i;
}
#else
/* smtp_scan_word_has tells whether one of the 8 bytes of |w| is |c|: "determine if a word
 * has a zero byte" on w ^ c...c, exact as a yes or no. */
static bool smtp_scan_word_has(uint64_t w, unsigned char c)
{
    uint64_t x = w ^ (UINT64_C(0x0101010101010101) * c);
    return ((x - UINT64_C(0x0101010101010101)) & ~x & UINT64_C(0x8080808080808080)) != 0;
}
#endif

/*
 * smtp_scan_find returns the offset of the first byte at or after |i| in data[0, len) that
 * is |a| or |b|, or len when there is none. Reads only data[0, len).
 */
static size_t smtp_scan_find(const char *data, size_t i, size_t len, char a, char b)
{
#ifdef SMTP_SCAN_SSE2
    const __m128i va = _mm_set1_epi8(a);
    const __m128i vb = _mm_set1_epi8(b);
    while (i < len && len >= 16) {
        /* The last block ends at len, overlapping bytes already seen: they are masked
         * off. */
        size_t at = len - i >= 16 ? i : len - 16;
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(data + at));
        __m128i hit = _mm_or_si128(_mm_cmpeq_epi8(v, va), _mm_cmpeq_epi8(v, vb));
        unsigned hits = (unsigned)_mm_movemask_epi8(hit) & (~0u << (i - at));
        if (hits != 0) {
            return at + (size_t)__builtin_ctz(hits);
        }
        i = at + 16;
    }
#else
    while (len - i >= 8) {
        uint64_t w;
        memcpy(&w, data + i, sizeof(w));
        if (smtp_scan_word_has(w, (unsigned char)a) || smtp_scan_word_has(w, (unsigned char)b)) {
            break;
        }
        i += 8;
    }
#endif
    for (; i < len; i++) {
        if (data[i] == a || data[i] == b) {
            return i;
        }
    }
    return len;
}

void smtp_data_scanner_init(struct smtp_data_scanner *s, bool normalize)
{
    s->state = SMTP_SCAN_LINE_START;
    s->reject = SMTP_DATA_REJECT_NONE;
    s->normalize = normalize;
}

enum smtp_data_result smtp_data_scan(struct smtp_data_scanner *s, size_t *out_used,
                                     const char *data, size_t len)
{
    enum smtp_scan_state state = (enum smtp_scan_state)s->state;
    *out_used = 0;
    if (state == SMTP_SCAN_REJECTED || s->reject != SMTP_DATA_REJECT_NONE) {
        return SMTP_DATA_REJECT; /* until smtp_skip_bad_data() found the end */
    }
    size_t line_at = 0; /* where the current line started, for holding back "." and ".\r" */
    size_t i = 0;
    while (i < len) {
        size_t stop = len;
#ifdef SMTP_SCAN_SSE2
        if (state == SMTP_SCAN_TEXT || state == SMTP_SCAN_CR || state == SMTP_SCAN_LINE_START) {
            i = smtp_scan_blocks(&state, data, i, len);
        }
        /* Step through the block that was not clean (or the last bytes), then try again. */
        stop = len - i > 64 ? i + 64 : len;
#endif
        for (; i < stop; i++) {
            if (state == SMTP_SCAN_TEXT) {
                /* Inside a line only CR and LF matter: other bytes keep SMTP_SCAN_TEXT. */
                i = smtp_scan_find(data, i, stop, '\r', '\n');
                if (i == stop) {
                    break;
                }
            }
            if (state == SMTP_SCAN_LINE_START || state == SMTP_SCAN_LINE_START_LF) {
                line_at = i;
            }
            enum smtp_data_reject why = SMTP_DATA_REJECT_NONE;
            switch (smtp_scan_step(&state, &why, data[i], s->normalize)) {
            case SMTP_SCAN_GO:
                if (state == SMTP_SCAN_END) {
                    s->state = SMTP_SCAN_LINE_START;
                    *out_used = i + 1;
                    return SMTP_DATA_END;
                }
                break;
            case SMTP_SCAN_NEWLINE_LF:
                s->state = SMTP_SCAN_BARE_LF;
                *out_used = i;
                return SMTP_DATA_BARE_LF;
            case SMTP_SCAN_REFUSE:
                /* Byte i revealed it, so the offset does not depend on where the content
                 * was split. */
                s->state = SMTP_SCAN_REJECTED;
                s->reject = why;
                *out_used = i;
                return SMTP_DATA_REJECT;
            }
        }
    }
    /* A line that is so far "." or ".\r" could still become the end, or something a
     * receiver reads as one: it is not content yet, and is offered again with more. */
    if (state == SMTP_SCAN_DOT || state == SMTP_SCAN_DOT_CR || state == SMTP_SCAN_DOT_LF) {
        s->state = state == SMTP_SCAN_DOT_LF ? SMTP_SCAN_LINE_START_LF : SMTP_SCAN_LINE_START;
        *out_used = line_at;
        return SMTP_DATA_MORE;
    }
    s->state = state;
    *out_used = len;
    return SMTP_DATA_MORE;
}

const char *smtp_data_reject_name(const struct smtp_data_scanner *s)
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

bool smtp_skip_bad_data(struct smtp_data_scanner *s, size_t *out_used, const char *data, size_t len)
{
    enum smtp_scan_state state = (enum smtp_scan_state)s->state;
    /* smtp_data_scan() stopped at the byte that showed the problem: not a line start. */
    if (state == SMTP_SCAN_REJECTED || state == SMTP_SCAN_BARE_LF ||
        state == SMTP_SCAN_LINE_START_LF || state == SMTP_SCAN_DOT_LF) {
        state = SMTP_SCAN_TEXT;
    }
    *out_used = len;
    for (size_t i = 0; i < len; i++) {
        if (state == SMTP_SCAN_TEXT) {
            /* Inside a line only a CR can start the end of data. */
            i = smtp_scan_find(data, i, len, '\r', '\r');
            if (i == len) {
                break;
            }
        }
        char c = data[i];
        /* Only CRLF ends a line here: that is the end a conforming client sends, so
         * "\n.\n" or "\r.\r\n" hidden in the rejected content cannot end it early. */
        switch (state) {
        case SMTP_SCAN_LINE_START:
            state = c == '.' ? SMTP_SCAN_DOT : c == '\r' ? SMTP_SCAN_CR : SMTP_SCAN_TEXT;
            break;
        case SMTP_SCAN_DOT:
            state = c == '\r' ? SMTP_SCAN_DOT_CR : SMTP_SCAN_TEXT;
            break;
        case SMTP_SCAN_DOT_CR:
            if (c == '\n') {
                smtp_data_scanner_init(s, s->normalize);
                *out_used = i + 1;
                return true;
            }
            state = c == '\r' ? SMTP_SCAN_CR : SMTP_SCAN_TEXT;
            break;
        case SMTP_SCAN_CR:
            state = c == '\n' ? SMTP_SCAN_LINE_START : c == '\r' ? SMTP_SCAN_CR : SMTP_SCAN_TEXT;
            break;
        default:
            state = c == '\r' ? SMTP_SCAN_CR : SMTP_SCAN_TEXT;
            break;
        }
    }
    s->state = state;
    return false;
}

enum smtp_result smtp_ehlo_caps(unsigned *out_caps, const char *reply, size_t reply_len)
{
    size_t len;
    return smtp_ehlo_edit(NULL, &len, out_caps, SIZE_MAX, reply, reply_len, false, 0);
}

bool smtp_ehlo_params(const char **out_params, size_t *out_len, const char *reply, size_t reply_len,
                      const char *keyword)
{
    size_t keyword_len = strlen(keyword);
    size_t pos = 0;
    bool first = true;
    while (pos < reply_len) {
        const char *line = reply + pos;
        const char *lf = memchr(line, '\n', reply_len - pos);
        size_t line_len = lf != NULL ? (size_t)(lf - line) : reply_len - pos;
        pos += line_len + 1;
        if (line_len > 0 && line[line_len - 1] == '\r') {
            line_len--;
        }
        if (first || line_len < 4) { /* the greeting line is no capability */
            first = false;
            continue;
        }
        const char *text = line + 4;
        size_t text_len = line_len - 4;
        size_t word = smtp_word_len(text, text_len);
        if (word == keyword_len && smtp_equal_nocase(text, keyword, word)) {
            *out_params = word < text_len ? text + word + 1 : text + word;
            *out_len = word < text_len ? text_len - word - 1 : 0;
            return true;
        }
    }
    return false;
}

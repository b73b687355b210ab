/*
 * smtp: SMTP text only. Splits lines, parses commands and replies, edits EHLO capabilities
 * and finds the end of DATA content. Every function works on the caller's bytes with
 * explicit lengths; nothing here allocates, does I/O or logs, and no input can make it
 * read or write outside the given arrays.
 */
#include "smtp.h"

#include <string.h>

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

/* smtp_word_len returns the length of the word that starts |data|: up to a space or the end. */
static size_t smtp_word_len(const char *data, size_t len)
{
    const char *space = len > 0 ? memchr(data, ' ', len) : NULL;
    return space != NULL ? (size_t)(space - data) : len;
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
    size_t start = keyword_len;
    while (start < args_len && args[start] == ' ') {
        start++;
    }
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
    if (end < args_len && args[end] != ' ') {
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
 * RFC 3030: "BDAT" SP chunk-size [ SP "LAST" ]. Parsed strictly, because the size frames
 * the bytes that follow: reading it differently from the receiver would desynchronise us.
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
        if (args_len - i != 5 || args[i] != ' ' || !smtp_equal_nocase(args + i + 1, "LAST", 4)) {
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
    size_t verb_len = smtp_word_len(line, len);
    out->verb = smtp_verb_of(line, verb_len);
    size_t args_at = verb_len < len ? verb_len + 1 : len;
    out->args = line + args_at;
    out->args_len = len - args_at;
    /* A CR or LF inside a command is how commands get smuggled past a line-based check. */
    if (memchr(line, '\0', len) != NULL || memchr(line, '\r', len) != NULL ||
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
    SMTP_SCAN_DOT,            /* "." at the start of a line */
    SMTP_SCAN_DOT_CR,         /* "." CR at the start of a line */
    SMTP_SCAN_TEXT,           /* inside a line */
    SMTP_SCAN_CR,             /* CR anywhere else: must be followed by LF */
    SMTP_SCAN_BARE_EOL,       /* a bare CR or LF was seen: only skipping goes on */
    SMTP_SCAN_END,            /* the end marker is complete (never stored) */
};

/*
 * smtp_scan_next moves over one byte of content. A bare LF, or a CR followed by anything
 * but LF, leads to SMTP_SCAN_BARE_EOL: receivers disagree on whether such a byte ends a
 * line, which is what SMTP smuggling (CVE-2023-51764) exploits.
 */
static enum smtp_scan_state smtp_scan_next(enum smtp_scan_state state, char c)
{
    bool after_cr = state == SMTP_SCAN_CR || state == SMTP_SCAN_DOT_CR;
    if (c == '\n') {
        if (state == SMTP_SCAN_DOT_CR) {
            return SMTP_SCAN_END;
        }
        return after_cr ? SMTP_SCAN_LINE_START : SMTP_SCAN_BARE_EOL;
    }
    if (after_cr) {
        return SMTP_SCAN_BARE_EOL;
    }
    if (c == '\r') {
        return state == SMTP_SCAN_DOT ? SMTP_SCAN_DOT_CR : SMTP_SCAN_CR;
    }
    if (c == '.' && state == SMTP_SCAN_LINE_START) {
        return SMTP_SCAN_DOT;
    }
    return SMTP_SCAN_TEXT;
}

void smtp_data_scanner_init(struct smtp_data_scanner *s)
{
    s->state = SMTP_SCAN_LINE_START;
}

enum smtp_data_result smtp_data_scan(struct smtp_data_scanner *s, size_t *out_used,
                                     const char *data, size_t len)
{
    enum smtp_scan_state state = (enum smtp_scan_state)s->state;
    *out_used = 0;
    if (state == SMTP_SCAN_BARE_EOL) {
        return SMTP_DATA_BARE_EOL;
    }
    for (size_t i = 0; i < len; i++) {
        if (state == SMTP_SCAN_TEXT) {
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
        state = smtp_scan_next(state, data[i]);
        if (state == SMTP_SCAN_END) {
            s->state = SMTP_SCAN_LINE_START;
            *out_used = i + 1;
            return SMTP_DATA_END;
        }
        if (state == SMTP_SCAN_BARE_EOL) {
            /* Byte i revealed it (the LF itself, or the byte after a bare CR), so the
             * offset does not depend on where the content was split. */
            s->state = SMTP_SCAN_BARE_EOL;
            *out_used = i;
            return SMTP_DATA_BARE_EOL;
        }
    }
    s->state = state;
    *out_used = len;
    return SMTP_DATA_MORE;
}

bool smtp_skip_bad_data(struct smtp_data_scanner *s, size_t *out_used, const char *data, size_t len)
{
    enum smtp_scan_state state = (enum smtp_scan_state)s->state;
    /* smtp_data_scan() stopped at a bare LF or just after a bare CR: not a line start. */
    if (state == SMTP_SCAN_BARE_EOL) {
        state = SMTP_SCAN_TEXT;
    }
    *out_used = len;
    for (size_t i = 0; i < len; i++) {
        enum smtp_scan_state next = smtp_scan_next(state, data[i]);
        if (next == SMTP_SCAN_END) {
            s->state = SMTP_SCAN_LINE_START;
            *out_used = i + 1;
            return true;
        }
        /* Only CRLF ends a line here: that is the end a conforming client sends, so
         * "\n.\n" or "\r.\r\n" hidden in the rejected content cannot end it early. */
        if (next == SMTP_SCAN_BARE_EOL) {
            next = data[i] == '\r' ? SMTP_SCAN_CR : SMTP_SCAN_TEXT;
        }
        state = next;
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

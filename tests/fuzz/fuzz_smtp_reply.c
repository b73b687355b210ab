/*
 * fuzz_smtp_reply: libFuzzer target for the reply side of smtp: smtp_reply_parse_line() on
 * every line of the input (what an upstream sends), checked against RFC 5321's grammar;
 * then smtp_ehlo_edit(), smtp_ehlo_caps() and smtp_ehlo_params() on the whole input and on
 * every complete reply in it, each as an EHLO reply in an exact-length heap copy, with
 * STARTTLS added or not and several capability masks dropped. Checked: the edit writes
 * at most out_cap bytes (an exact-length heap output, so ASan sees any write past it), the
 * documented capacity bound always suffices, one byte less than the result is TOO_LONG,
 * a successful edit is a well-formed 250 reply with CRLF endings and the expected
 * capabilities, editing it again changes nothing, and the three functions agree. When the
 * reply advertises XCLIENT, smtp_xclient_format() gets its parameters and a hostile HELO
 * name: the line it writes is one printable line with only advertised attributes.
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

static const struct {
    unsigned cap;
    const char *keyword;
} fuzz_caps[] = {
    {SMTP_CAP_STARTTLS, "STARTTLS"},
    {SMTP_CAP_PIPELINING, "PIPELINING"},
    {SMTP_CAP_CHUNKING, "CHUNKING"},
    {SMTP_CAP_8BITMIME, "8BITMIME"},
    {SMTP_CAP_SIZE, "SIZE"},
    {SMTP_CAP_XCLIENT, "XCLIENT"},
    {SMTP_CAP_BINARYMIME, "BINARYMIME"},
    {SMTP_CAP_AUTH, "AUTH"},
};
#define FUZZ_N_CAPS (sizeof(fuzz_caps) / sizeof(fuzz_caps[0]))
#define FUZZ_ALL_CAPS 0xffu

/* What the session drops: nothing, XCLIENT, AUTH too (cleartext front, TLS back), all. */
static const unsigned fuzz_drops[] = {0, SMTP_CAP_XCLIENT, SMTP_CAP_XCLIENT | SMTP_CAP_AUTH,
                                      FUZZ_ALL_CAPS};

static char *fuzz_copy(const char *data, size_t len)
{
    char *copy = malloc(len == 0 ? 1 : len);
    FUZZ_ASSERT(copy != NULL);
    if (len != 0) {
        memcpy(copy, data, len);
    }
    return copy;
}

/* RFC 5321 section 4.2: Reply-code = %x32-35 %x30-35 %x30-39, then SP, "-" or the end. */
static int fuzz_reply_code(const char *line, size_t len)
{
    if (len < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '5' ||
        line[2] < '0' || line[2] > '9') {
        return 0;
    }
    if (len > 3 && line[3] != ' ' && line[3] != '-') {
        return 0;
    }
    return (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
}

/* The reply parser against the grammar; *state is the code of the open multi-line reply. */
static void fuzz_reply_line(struct smtp_reply_parser *p, int *state, const char *data, size_t len)
{
    char *line = fuzz_copy(data, len);
    int code = -1;
    bool done = true;
    enum smtp_result r = smtp_reply_parse_line(p, &code, &done, line, len);
    int want = fuzz_reply_code(data, len);
    if (want == 0 || (*state != 0 && want != *state)) {
        FUZZ_ASSERT(r == SMTP_BAD_SYNTAX);
        *state = 0;
    } else {
        FUZZ_ASSERT(r == SMTP_OK && code == want);
        FUZZ_ASSERT(done == (len == 3 || data[3] == ' '));
        *state = done ? 0 : code;
    }
    FUZZ_ASSERT(p->code == *state);
    free(line);
}

static bool fuzz_crlf_only(const char *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (data[i] == '\n' && (i == 0 || data[i - 1] != '\r')) {
            return false;
        }
    }
    return true;
}

/* A successful edit's output: CRLF lines "250-..." then one "250 ...", nothing after. */
static void fuzz_check_well_formed(const char *out, size_t out_len, bool add_starttls)
{
    struct smtp_reply_parser p;
    smtp_reply_parser_init(&p);
    size_t pos = 0;
    bool done = false;
    size_t n_lines = 0;
    const char *last = NULL;
    size_t last_len = 0;
    while (pos < out_len) {
        FUZZ_ASSERT(!done);
        size_t line_len;
        size_t eol_len;
        FUZZ_ASSERT(smtp_line_find(&line_len, &eol_len, out + pos, out_len - pos, SIZE_MAX) ==
                    SMTP_OK);
        FUZZ_ASSERT(eol_len == 2);
        const char *line = out + pos;
        FUZZ_ASSERT(line_len >= 4 && memcmp(line, "250", 3) == 0);
        FUZZ_ASSERT(memchr(line, '\r', line_len) == NULL && memchr(line, '\0', line_len) == NULL);
        int code;
        FUZZ_ASSERT(smtp_reply_parse_line(&p, &code, &done, line, line_len) == SMTP_OK);
        FUZZ_ASSERT(code == 250);
        last = line;
        last_len = line_len;
        n_lines++;
        pos += line_len + eol_len;
    }
    FUZZ_ASSERT(done && n_lines >= 1);
    if (add_starttls) {
        FUZZ_ASSERT(n_lines >= 2 && last_len == 12 && memcmp(last, "250 STARTTLS", 12) == 0);
    }
}

/* The capabilities of a well-formed reply, read by smtp_ehlo_params() instead. */
static unsigned fuzz_caps_by_params(const char *reply, size_t reply_len)
{
    unsigned caps = 0;
    for (size_t i = 0; i < FUZZ_N_CAPS; i++) {
        const char *params = NULL;
        size_t params_len = SIZE_MAX;
        if (smtp_ehlo_params(&params, &params_len, reply, reply_len, fuzz_caps[i].keyword)) {
            FUZZ_ASSERT(params != NULL && params >= reply && params <= reply + reply_len);
            FUZZ_ASSERT(params_len <= (size_t)(reply + reply_len - params));
            caps |= fuzz_caps[i].cap;
        }
    }
    return caps;
}

static void fuzz_ehlo_edit(const char *reply, size_t reply_len, bool add_starttls, unsigned drop,
                           enum smtp_result want_r, unsigned want_caps)
{
    /* The documented bound, as an exact-length heap array. */
    size_t cap = reply_len + reply_len / 4 + 16;
    char *out = malloc(cap);
    FUZZ_ASSERT(out != NULL);
    size_t out_len = SIZE_MAX;
    unsigned out_caps = ~0u;
    enum smtp_result r =
        smtp_ehlo_edit(out, &out_len, &out_caps, cap, reply, reply_len, add_starttls, drop);
    FUZZ_ASSERT(r == want_r);
    if (r != SMTP_OK) {
        free(out);
        return;
    }
    FUZZ_ASSERT(out_caps == want_caps);
    FUZZ_ASSERT(out_len <= cap);
    if (fuzz_crlf_only(reply, reply_len)) {
        FUZZ_ASSERT(out_len <= reply_len + 16);
    }
    fuzz_check_well_formed(out, out_len, add_starttls);

    /* What the output advertises: the input's capabilities less STARTTLS and |drop|,
     * plus STARTTLS when it was added. */
    unsigned expected =
        (want_caps & ~(drop | SMTP_CAP_STARTTLS)) | (add_starttls ? SMTP_CAP_STARTTLS : 0u);
    unsigned reread = ~0u;
    FUZZ_ASSERT(smtp_ehlo_caps(&reread, out, out_len) == SMTP_OK);
    FUZZ_ASSERT(reread == expected);
    FUZZ_ASSERT(fuzz_caps_by_params(out, out_len) == expected);

    /* Exactly out_len bytes suffice; one fewer does not, and then nothing is reported. */
    char *exact = malloc(out_len);
    FUZZ_ASSERT(exact != NULL);
    size_t exact_len;
    unsigned exact_caps;
    FUZZ_ASSERT(smtp_ehlo_edit(exact, &exact_len, &exact_caps, out_len, reply, reply_len,
                               add_starttls, drop) == SMTP_OK);
    FUZZ_ASSERT(exact_len == out_len && exact_caps == out_caps);
    FUZZ_ASSERT(memcmp(exact, out, out_len) == 0);
    FUZZ_ASSERT(smtp_ehlo_edit(exact, &exact_len, &exact_caps, out_len - 1, reply, reply_len,
                               add_starttls, drop) == SMTP_TOO_LONG);
    FUZZ_ASSERT(exact_len == 0 && exact_caps == 0);
    free(exact);

    /* Editing the edited reply the same way changes nothing. */
    char *twice = malloc(out_len + 16);
    FUZZ_ASSERT(twice != NULL);
    size_t twice_len;
    unsigned twice_caps;
    FUZZ_ASSERT(smtp_ehlo_edit(twice, &twice_len, &twice_caps, out_len + 16, out, out_len,
                               add_starttls, drop) == SMTP_OK);
    FUZZ_ASSERT(twice_len == out_len && memcmp(twice, out, out_len) == 0);
    FUZZ_ASSERT(twice_caps == expected);
    free(twice);
    free(out);
}

static bool fuzz_is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\v' || c == '\f' || c == '\r' || c == '\n';
}

/* Whether the XCLIENT parameters name |attr| (words split by whitespace, any case). */
static bool fuzz_params_have(const char *params, size_t len, const char *attr)
{
    size_t attr_len = strlen(attr);
    size_t i = 0;
    while (i < len) {
        while (i < len && fuzz_is_space(params[i])) {
            i++;
        }
        size_t start = i;
        while (i < len && !fuzz_is_space(params[i])) {
            i++;
        }
        if (i - start == attr_len) {
            bool same = true;
            for (size_t k = 0; k < attr_len; k++) {
                char c = params[start + k];
                same = same && (c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c) == attr[k];
            }
            if (same) {
                return true;
            }
        }
    }
    return false;
}

static int fuzz_hex_digit(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/*
 * The XCLIENT line for an upstream advertising |params| (hostile) and a client that gave
 * |helo| (hostile): one line, printable, only advertised attributes, each once, HELO=
 * only for a printable name of 1..255 bytes and then xtext that decodes to it.
 */
static void fuzz_xclient(const char *params, size_t params_len, const char *helo, size_t helo_len)
{
    static const char head[] = "XCLIENT ADDR=IPV6:2001:db8::25";
    struct smtp_xclient x = {.addr = "2001:db8::25",
                             .ipv6 = true,
                             .port = 65535,
                             .esmtp = true,
                             .helo = helo,
                             .helo_len = helo_len};
    char *out = malloc(SMTP_XCLIENT_LINE_MAX);
    FUZZ_ASSERT(out != NULL);
    size_t out_len = SIZE_MAX;
    enum smtp_result r =
        smtp_xclient_format(out, &out_len, SMTP_XCLIENT_LINE_MAX, params, params_len, &x);
    if (!fuzz_params_have(params, params_len, "ADDR")) {
        FUZZ_ASSERT(r == SMTP_BAD_SYNTAX);
        free(out);
        return;
    }
    FUZZ_ASSERT(r == SMTP_OK);
    FUZZ_ASSERT(out_len >= sizeof(head) - 1 + 2 && out_len <= SMTP_XCLIENT_LINE_MAX);
    FUZZ_ASSERT(memcmp(out, head, sizeof(head) - 1) == 0);
    FUZZ_ASSERT(memcmp(out + out_len - 2, "\r\n", 2) == 0);
    size_t text_len = out_len - 2;
    for (size_t i = 0; i < text_len; i++) {
        FUZZ_ASSERT(out[i] >= 32 && out[i] <= 126);
    }
    bool helo_ok = helo_len >= 1 && helo_len <= 255;
    for (size_t i = 0; i < helo_len; i++) {
        helo_ok = helo_ok && helo[i] >= 33 && helo[i] <= 126;
    }
    static const char *const attrs[] = {"PORT=", "PROTO=", "HELO="};
    for (size_t a = 0; a < sizeof(attrs) / sizeof(attrs[0]); a++) {
        size_t name_len = strlen(attrs[a]);
        const char *found = NULL;
        for (size_t i = 0; i + name_len < text_len; i++) {
            if (out[i] == ' ' && memcmp(out + i + 1, attrs[a], name_len) == 0) {
                FUZZ_ASSERT(found == NULL);
                found = out + i + 1 + name_len;
            }
        }
        char name[8];
        memcpy(name, attrs[a], name_len - 1);
        name[name_len - 1] = '\0';
        bool want = fuzz_params_have(params, params_len, name);
        if (a == 2) {
            want = want && helo_ok;
        }
        FUZZ_ASSERT((found != NULL) == want);
        if (found == NULL || a != 2) {
            continue;
        }
        /* HELO= is last and decodes to the name. */
        size_t j = 0;
        const char *end = out + text_len;
        for (const char *p = found; p < end; j++) {
            FUZZ_ASSERT(*p != ' ' && *p != '=' && j < helo_len);
            char b = *p;
            if (*p == '+') {
                FUZZ_ASSERT(end - p >= 3);
                int hi = fuzz_hex_digit(p[1]);
                int lo = fuzz_hex_digit(p[2]);
                FUZZ_ASSERT(hi >= 0 && lo >= 0);
                b = (char)(hi << 4 | lo);
                p += 3;
            } else {
                p++;
            }
            FUZZ_ASSERT(helo[j] == b);
        }
        FUZZ_ASSERT(j == helo_len);
    }
    free(out);
}

/* |data| as a complete EHLO reply. */
static void fuzz_ehlo(const char *data, size_t len)
{
    char *reply = fuzz_copy(data, len);
    unsigned caps = ~0u;
    enum smtp_result r = smtp_ehlo_caps(&caps, reply, len);
    FUZZ_ASSERT(r == SMTP_OK || r == SMTP_BAD_SYNTAX);
    if (r == SMTP_OK) {
        FUZZ_ASSERT((caps & ~FUZZ_ALL_CAPS) == 0);
        FUZZ_ASSERT(fuzz_caps_by_params(reply, len) == caps);
        const char *params;
        size_t params_len;
        if (smtp_ehlo_params(&params, &params_len, reply, len, "XCLIENT")) {
            /* The client's name: the reply's greeting text, or the whole reply. */
            size_t first_len = (size_t)((const char *)memchr(reply, '\n', len) - reply);
            size_t text_len = first_len > 4 ? first_len - 4 : 0;
            if (text_len > 0 && reply[first_len - 1] == '\r') {
                text_len--;
            }
            fuzz_xclient(params, params_len, reply + 4, text_len);
            fuzz_xclient(params, params_len, reply, len < 300 ? len : 300);
        }
    } else {
        fuzz_caps_by_params(reply, len); /* bounds only: any input may be searched */
    }
    for (int add = 0; add <= 1; add++) {
        for (size_t d = 0; d < sizeof(fuzz_drops) / sizeof(fuzz_drops[0]); d++) {
            fuzz_ehlo_edit(reply, len, add != 0, fuzz_drops[d], r, caps);
        }
    }
    free(reply);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in = (const char *)data;
    if (size > SMTP_EHLO_REPLY_MAX) {
        return 0;
    }
    fuzz_ehlo(in, size);

    /* Line by line, as the session reads the upstream; each complete reply is also tried
     * as an EHLO reply. */
    struct smtp_reply_parser p;
    smtp_reply_parser_init(&p);
    int state = 0;
    size_t pos = 0;
    size_t reply_at = 0;
    while (pos < size) {
        size_t line_len;
        size_t eol_len;
        enum smtp_result r =
            smtp_line_find(&line_len, &eol_len, in + pos, size - pos, SMTP_REPLY_LINE_MAX);
        if (r == SMTP_NEED_MORE) {
            break;
        }
        if (r == SMTP_TOO_LONG) {
            if (eol_len == 0) {
                break;
            }
            pos += line_len;
            reply_at = pos;
            smtp_reply_parser_init(&p);
            state = 0;
            continue;
        }
        FUZZ_ASSERT(r == SMTP_OK);
        fuzz_reply_line(&p, &state, in + pos, line_len);
        pos += line_len + eol_len;
        if (state == 0) {
            if (reply_at != 0 || pos != size) {
                fuzz_ehlo(in + reply_at, pos - reply_at);
            }
            reply_at = pos;
        }
    }
    return 0;
}

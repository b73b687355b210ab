/*
 * fuzz_smtp_command: libFuzzer target for smtp_line_find() and smtp_command_parse(). The
 * input is what a client sends: it is cut into lines as the session does (with the default
 * 1000-byte cap and with a 32-byte one, so that over-long lines are common), and every line
 * is parsed from a heap copy of its exact length, so ASan sees any read past it.
 * Checked: line boundaries agree with the bytes, every pointer the parser returns lies
 * inside the line, paths are bracketed and within SMTP_PATH_MAX, BDAT sizes within
 * SMTP_BDAT_SIZE_MAX, NUL/CR/LF are always refused, the verb matches the line's first word,
 * and the answer does not change with letter case or on a second call. EHLO/HELO names
 * (smtp_helo_name()) are one word of the arguments, and every line survives a round trip
 * through smtp_xtext().
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

/* The session's default command line cap (max_line_length), CRLF included. */
#define FUZZ_LINE_MAX 1000
/* A small cap, so that the fuzzer meets SMTP_TOO_LONG without 1000-byte inputs. */
#define FUZZ_LINE_SMALL 32

static const struct {
    enum smtp_verb verb;
    const char *name;
} fuzz_verbs[] = {
    {SMTP_VERB_HELO, "HELO"}, {SMTP_VERB_EHLO, "EHLO"},         {SMTP_VERB_MAIL, "MAIL"},
    {SMTP_VERB_RCPT, "RCPT"}, {SMTP_VERB_DATA, "DATA"},         {SMTP_VERB_BDAT, "BDAT"},
    {SMTP_VERB_RSET, "RSET"}, {SMTP_VERB_NOOP, "NOOP"},         {SMTP_VERB_QUIT, "QUIT"},
    {SMTP_VERB_AUTH, "AUTH"}, {SMTP_VERB_STARTTLS, "STARTTLS"}, {SMTP_VERB_XCLIENT, "XCLIENT"},
};

static char fuzz_swap_case(char c)
{
    if (c >= 'a' && c <= 'z') {
        return (char)(c - 'a' + 'A');
    }
    if (c >= 'A' && c <= 'Z') {
        return (char)(c - 'A' + 'a');
    }
    return c;
}

static bool fuzz_equal_nocase(const char *data, const char *upper, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char c = data[i] >= 'a' && data[i] <= 'z' ? (char)(data[i] - 'a' + 'A') : data[i];
        if (c != upper[i]) {
            return false;
        }
    }
    return true;
}

/* What may end a verb: a space, or any C whitespace for a parser that reads commands the way
 * the laxest server does. */
static bool fuzz_is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\v' || c == '\f' || c == '\r' || c == '\n';
}

static bool fuzz_inside(const char *p, size_t p_len, const char *start, size_t len)
{
    return p >= start && p <= start + len && p_len <= (size_t)(start + len - p);
}

/* The EHLO/HELO name is the first word of the arguments. */
static void fuzz_helo_name(const struct smtp_command *cmd)
{
    const char *name = NULL;
    size_t name_len = SIZE_MAX;
    smtp_helo_name(&name, &name_len, cmd);
    FUZZ_ASSERT(name == cmd->args && name_len <= cmd->args_len);
    for (size_t i = 0; i < name_len; i++) {
        FUZZ_ASSERT(!fuzz_is_space(name[i]));
    }
    FUZZ_ASSERT(name_len == cmd->args_len || fuzz_is_space(name[name_len]));
}

static int fuzz_hex_digit(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* RFC 3461 xtext: printable, no '=', "+XX" exactly for the bytes that need it, decodes back
 * to the text; a smaller out_cap writes a prefix of the same encoding and nothing more. */
static void fuzz_xtext(const char *text, size_t len)
{
    size_t n = smtp_xtext(NULL, 0, text, len);
    FUZZ_ASSERT(n >= len && n <= 3 * len);
    char *out = malloc(n == 0 ? 1 : n);
    FUZZ_ASSERT(out != NULL);
    FUZZ_ASSERT(smtp_xtext(out, n, text, len) == n);
    size_t j = 0;
    for (size_t i = 0; i < n; j++) {
        unsigned char c = (unsigned char)out[i];
        FUZZ_ASSERT(c >= 33 && c <= 126 && c != '=' && j < len);
        unsigned char b = c;
        if (c == '+') {
            FUZZ_ASSERT(n - i >= 3);
            int hi = fuzz_hex_digit(out[i + 1]);
            int lo = fuzz_hex_digit(out[i + 2]);
            FUZZ_ASSERT(hi >= 0 && lo >= 0);
            b = (unsigned char)(hi << 4 | lo);
            FUZZ_ASSERT(b < 33 || b > 126 || b == '+' || b == '=');
            i += 3;
        } else {
            i++;
        }
        FUZZ_ASSERT((unsigned char)text[j] == b);
    }
    FUZZ_ASSERT(j == len);
    size_t part_cap = n / 2;
    char *part = malloc(part_cap == 0 ? 1 : part_cap);
    FUZZ_ASSERT(part != NULL);
    FUZZ_ASSERT(smtp_xtext(part, part_cap, text, len) == n);
    FUZZ_ASSERT(part_cap == 0 || memcmp(part, out, part_cap) == 0);
    free(part);
    free(out);
}

/* The parts of a parsed command that do not depend on where the line lies in memory. */
struct fuzz_parsed {
    enum smtp_result r;
    enum smtp_verb verb;
    size_t args_at;
    size_t args_len;
    size_t path_at;
    size_t path_len;
    uint64_t bdat_size;
    bool bdat_last;
};

static struct fuzz_parsed fuzz_parse(const char *line, size_t len)
{
    struct smtp_command cmd;
    memset(&cmd, 0xa5, sizeof(cmd)); /* the parser must fill every field */
    enum smtp_result r = smtp_command_parse(&cmd, line, len);
    FUZZ_ASSERT(r == SMTP_OK || r == SMTP_BAD_SYNTAX || r == SMTP_PATH_TOO_LONG);
    FUZZ_ASSERT(cmd.args != NULL && fuzz_inside(cmd.args, cmd.args_len, line, len));

    bool is_path = cmd.verb == SMTP_VERB_MAIL || cmd.verb == SMTP_VERB_RCPT;
    if (r == SMTP_OK && is_path) {
        FUZZ_ASSERT(cmd.path != NULL &&
                    fuzz_inside(cmd.path, cmd.path_len, cmd.args, cmd.args_len));
        FUZZ_ASSERT(cmd.path_len >= 2 && cmd.path_len <= SMTP_PATH_MAX);
        FUZZ_ASSERT(cmd.path[0] == '<' && cmd.path[cmd.path_len - 1] == '>');
    } else {
        FUZZ_ASSERT(cmd.path == NULL && cmd.path_len == 0);
    }
    if (r == SMTP_PATH_TOO_LONG) {
        FUZZ_ASSERT(is_path);
    }
    if (r == SMTP_OK && cmd.verb == SMTP_VERB_BDAT) {
        FUZZ_ASSERT(cmd.bdat_size <= SMTP_BDAT_SIZE_MAX);
        FUZZ_ASSERT(cmd.args_len >= 1 && cmd.args[0] >= '0' && cmd.args[0] <= '9');
        bool last = cmd.args_len >= 5 && fuzz_is_space(cmd.args[cmd.args_len - 5]) &&
                    fuzz_equal_nocase(cmd.args + cmd.args_len - 4, "LAST", 4);
        FUZZ_ASSERT(cmd.bdat_last == last);
    } else {
        FUZZ_ASSERT(cmd.bdat_size == 0 && !cmd.bdat_last);
    }

    /* NUL, CR and LF are how commands get smuggled: always refused. */
    if (len > 0 && (memchr(line, '\0', len) != NULL || memchr(line, '\r', len) != NULL ||
                    memchr(line, '\n', len) != NULL)) {
        FUZZ_ASSERT(r == SMTP_BAD_SYNTAX);
    }

    if (r == SMTP_OK && (cmd.verb == SMTP_VERB_EHLO || cmd.verb == SMTP_VERB_HELO)) {
        fuzz_helo_name(&cmd);
    }

    /* A known verb is the first word of the line, in any case. */
    if (cmd.verb != SMTP_VERB_OTHER) {
        bool found = false;
        for (size_t i = 0; i < sizeof(fuzz_verbs) / sizeof(fuzz_verbs[0]); i++) {
            if (fuzz_verbs[i].verb != cmd.verb) {
                continue;
            }
            size_t n = strlen(fuzz_verbs[i].name);
            FUZZ_ASSERT(len >= n && fuzz_equal_nocase(line, fuzz_verbs[i].name, n));
            FUZZ_ASSERT(len == n || fuzz_is_space(line[n]));
            found = true;
        }
        FUZZ_ASSERT(found);
    }

    return (struct fuzz_parsed){
        .r = r,
        .verb = cmd.verb,
        .args_at = (size_t)(cmd.args - line),
        .args_len = cmd.args_len,
        .path_at = cmd.path != NULL ? (size_t)(cmd.path - line) : 0,
        .path_len = cmd.path_len,
        .bdat_size = cmd.bdat_size,
        .bdat_last = cmd.bdat_last,
    };
}

static bool fuzz_same(const struct fuzz_parsed *a, const struct fuzz_parsed *b)
{
    return a->r == b->r && a->verb == b->verb && a->args_at == b->args_at &&
           a->args_len == b->args_len && a->path_at == b->path_at && a->path_len == b->path_len &&
           a->bdat_size == b->bdat_size && a->bdat_last == b->bdat_last;
}

static void fuzz_command(const char *data, size_t len)
{
    /* An exact-length heap copy: a read past the line is a read past the allocation. */
    char *line = malloc(len == 0 ? 1 : len);
    FUZZ_ASSERT(line != NULL);
    if (len != 0) {
        memcpy(line, data, len);
    }
    struct fuzz_parsed first = fuzz_parse(line, len);
    struct fuzz_parsed again = fuzz_parse(line, len);
    FUZZ_ASSERT(fuzz_same(&first, &again));

    /* Verbs, "FROM:"/"TO:" and "LAST" are matched in any case. */
    for (size_t i = 0; i < len; i++) {
        line[i] = fuzz_swap_case(line[i]);
    }
    struct fuzz_parsed swapped = fuzz_parse(line, len);
    FUZZ_ASSERT(fuzz_same(&first, &swapped));
    free(line);

    /* What the client sent may go upstream as xtext (XCLIENT HELO=). */
    fuzz_xtext(data, len);
}

/* Cuts |data| into lines with cap |max_len| and parses every complete one. */
static void fuzz_lines(const char *data, size_t len, size_t max_len)
{
    size_t pos = 0;
    while (pos < len) {
        const char *at = data + pos;
        size_t left = len - pos;
        size_t line_len;
        size_t eol_len;
        enum smtp_result r = smtp_line_find(&line_len, &eol_len, at, left, max_len);
        size_t allowed = left < max_len ? left : max_len;
        switch (r) {
        case SMTP_NEED_MORE:
            FUZZ_ASSERT(left < max_len && memchr(at, '\n', left) == NULL);
            FUZZ_ASSERT(line_len == 0 && eol_len == 0);
            return;
        case SMTP_OK: {
            FUZZ_ASSERT(eol_len == 1 || eol_len == 2);
            size_t total = line_len + eol_len;
            FUZZ_ASSERT(total <= left && total <= max_len);
            FUZZ_ASSERT(at[total - 1] == '\n' && memchr(at, '\n', total - 1) == NULL);
            FUZZ_ASSERT((eol_len == 2) == (total >= 2 && at[total - 2] == '\r'));
            /* The same answer from exactly the line, and none from one byte less. */
            size_t again_line;
            size_t again_eol;
            FUZZ_ASSERT(smtp_line_find(&again_line, &again_eol, at, total, max_len) == SMTP_OK);
            FUZZ_ASSERT(again_line == line_len && again_eol == eol_len);
            FUZZ_ASSERT(smtp_line_find(&again_line, &again_eol, at, total - 1, max_len) ==
                        SMTP_NEED_MORE);
            fuzz_command(at, line_len);
            pos += total;
            break;
        }
        case SMTP_TOO_LONG:
            FUZZ_ASSERT(left >= max_len && memchr(at, '\n', allowed) == NULL);
            if (eol_len == 0) {
                FUZZ_ASSERT(line_len == left && memchr(at, '\n', left) == NULL);
                return;
            }
            FUZZ_ASSERT(eol_len == 1 && line_len > max_len && line_len <= left);
            FUZZ_ASSERT(at[line_len - 1] == '\n' && memchr(at, '\n', line_len - 1) == NULL);
            pos += line_len;
            break;
        default:
            FUZZ_ASSERT(0);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_lines((const char *)data, size, FUZZ_LINE_MAX);
    fuzz_lines((const char *)data, size, FUZZ_LINE_SMALL);
    /* The whole input as one line, as if its line ending were still to come. */
    fuzz_command((const char *)data, size);
    return 0;
}

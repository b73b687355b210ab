/*
 * test_smtp: the SMTP text functions at their edges: line caps, NUL bytes, every verb with
 * every kind of whitespace, path and BDAT limits, HELO names, xtext and XCLIENT lines,
 * multi-line replies, EHLO editing, and the end-of-data scanner in both bare-LF modes, fed
 * at every possible split and checked against a plain whole-buffer reference, and call by
 * call against the scanner it replaced (tests/fuzz/smtp_data_reference.c). Built twice:
 * test_smtp_portable checks the scanner's portable search in place of SSE2.
 */
#include "smtp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../fuzz/smtp_data_reference.h"
#include "check.h"

/* A string literal as (pointer, length), so embedded NUL bytes count. */
#define LIT(s) (s), (sizeof(s) - 1)
#define CHECK_LIT(got, got_len, lit) CHECK_MEM((got), (got_len), (lit), sizeof(lit) - 1)

/* ---- smtp_line_find ---- */

static void check_line(const char *data, size_t len, size_t max_len, enum smtp_result want,
                       size_t want_line_len, size_t want_eol_len)
{
    size_t line_len = 99;
    size_t eol_len = 99;
    CHECK_INT(smtp_line_find(&line_len, &eol_len, data, len, max_len), want);
    CHECK_INT(line_len, want_line_len);
    CHECK_INT(eol_len, want_eol_len);
}

static void test_line_find(void)
{
    check_line(LIT("EHLO x\r\n"), 512, SMTP_OK, 6, 2);
    check_line(LIT("EHLO x\n"), 512, SMTP_OK, 6, 1);
    check_line(LIT("\r\n"), 512, SMTP_OK, 0, 2);
    check_line(LIT("\n"), 512, SMTP_OK, 0, 1);
    check_line(LIT("a\rb\n"), 512, SMTP_OK, 3, 1);  /* a CR not before the LF is line text */
    check_line(LIT("a\r\r\n"), 512, SMTP_OK, 2, 2); /* "a\r" then CRLF */
    check_line(LIT("\r"), 512, SMTP_NEED_MORE, 0, 0);
    check_line(LIT("EHLO x"), 512, SMTP_NEED_MORE, 0, 0);
    check_line(LIT(""), 512, SMTP_NEED_MORE, 0, 0);
    check_line(NULL, 0, 512, SMTP_NEED_MORE, 0, 0);

    /* NUL bytes are ordinary bytes: never a line end, never a truncation. */
    check_line(LIT("a\0b\r\n"), 512, SMTP_OK, 3, 2);
    check_line(LIT("\0\0\n"), 512, SMTP_OK, 2, 1);
    check_line(LIT("\0\0\0"), 512, SMTP_NEED_MORE, 0, 0);
    check_line(LIT("\0\0\0"), 3, SMTP_TOO_LONG, 3, 0);

    /* The cap counts the line ending: 8 + CRLF fits in 10, 9 + CRLF does not. */
    check_line(LIT("12345678\r\n"), 10, SMTP_OK, 8, 2);
    check_line(LIT("123456789\n"), 10, SMTP_OK, 9, 1);
    check_line(LIT("123456789\r\n"), 10, SMTP_TOO_LONG, 11, 1);
    check_line(LIT("1234567890\n"), 10, SMTP_TOO_LONG, 11, 1);
    check_line(LIT("12345678\r\nnext"), 10, SMTP_OK, 8, 2);
    check_line(LIT("123456789\r\nnext"), 10, SMTP_TOO_LONG, 11, 1);

    /* No LF yet: waiting is right only while a line ending could still fit. */
    check_line(LIT("12345678\r"), 10, SMTP_NEED_MORE, 0, 0);
    check_line(LIT("123456789"), 10, SMTP_NEED_MORE, 0, 0);
    check_line(LIT("123456789\r"), 10, SMTP_TOO_LONG, 10, 0);
    check_line(LIT("1234567890"), 10, SMTP_TOO_LONG, 10, 0);
    check_line(LIT("12345678901234"), 10, SMTP_TOO_LONG, 14, 0);

    /* Past the cap, everything up to and including the LF may go at once. */
    check_line(LIT("1234567890123\nNEXT\r\n"), 10, SMTP_TOO_LONG, 14, 1);
    check_line(LIT("1234567890123\r\nNEXT\r\n"), 10, SMTP_TOO_LONG, 15, 1);

    /* Several lines in one buffer, walked the way a caller does. */
    static const char lines[] = "A\r\nBB\nCCC\r\n\r\nDD";
    const char *at = lines;
    size_t left = sizeof(lines) - 1;
    size_t line_len;
    size_t eol_len;
    CHECK_INT(smtp_line_find(&line_len, &eol_len, at, left, 512), SMTP_OK);
    CHECK_LIT(at, line_len, "A");
    CHECK_INT(eol_len, 2);
    at += line_len + eol_len;
    left -= line_len + eol_len;
    CHECK_INT(smtp_line_find(&line_len, &eol_len, at, left, 512), SMTP_OK);
    CHECK_LIT(at, line_len, "BB");
    CHECK_INT(eol_len, 1);
    at += line_len + eol_len;
    left -= line_len + eol_len;
    CHECK_INT(smtp_line_find(&line_len, &eol_len, at, left, 512), SMTP_OK);
    CHECK_LIT(at, line_len, "CCC");
    CHECK_INT(eol_len, 2);
    at += line_len + eol_len;
    left -= line_len + eol_len;
    CHECK_INT(smtp_line_find(&line_len, &eol_len, at, left, 512), SMTP_OK);
    CHECK_INT(line_len, 0);
    CHECK_INT(eol_len, 2);
    at += line_len + eol_len;
    left -= line_len + eol_len;
    CHECK_INT(smtp_line_find(&line_len, &eol_len, at, left, 512), SMTP_NEED_MORE);
    CHECK_INT(left, 2);

    /* A line exactly at a realistic cap, and one byte over. */
    enum { CAP = 512 };
    char big[CAP + 2];
    memset(big, 'x', sizeof(big));
    big[CAP - 2] = '\r';
    big[CAP - 1] = '\n';
    check_line(big, CAP, CAP, SMTP_OK, CAP - 2, 2);
    memset(big, 'x', sizeof(big));
    big[CAP - 1] = '\r';
    big[CAP] = '\n';
    check_line(big, CAP + 1, CAP, SMTP_TOO_LONG, CAP + 1, 1);
    check_line(big, CAP, CAP, SMTP_TOO_LONG, CAP, 0);
    check_line(big, CAP - 1, CAP, SMTP_NEED_MORE, 0, 0);
}

/* ---- smtp_command_parse ---- */

static void check_verb(const char *line, size_t len, enum smtp_verb want, const char *want_args)
{
    struct smtp_command cmd;
    CHECK_INT(smtp_command_parse(&cmd, line, len), SMTP_OK);
    CHECK_INT(cmd.verb, want);
    CHECK_MEM(cmd.args, cmd.args_len, want_args, strlen(want_args));
    /* The arguments are a piece of the line itself. */
    CHECK(cmd.args >= line && cmd.args + cmd.args_len <= line + len);
}

/* check_bad checks that |line| is refused, and what verb and args it is read as. */
static void check_bad(const char *line, size_t len, enum smtp_verb want_verb, const char *want_args,
                      size_t want_args_len)
{
    struct smtp_command cmd;
    CHECK_INT(smtp_command_parse(&cmd, line, len), SMTP_BAD_SYNTAX);
    CHECK_INT(cmd.verb, want_verb);
    CHECK_MEM(cmd.args, cmd.args_len, want_args, want_args_len);
    CHECK(cmd.args >= line && cmd.args + cmd.args_len <= line + len);
    CHECK(cmd.path == NULL);
    CHECK_INT(cmd.path_len, 0);
    CHECK(cmd.bdat_size == 0);
    CHECK(!cmd.bdat_last);
}

/* BAD(line, verb, args): check_bad() on string literals, NUL bytes included. */
#define BAD(line, verb, args) check_bad(LIT(line), (verb), LIT(args))

static void test_is_space(void)
{
    int n_space = 0;
    for (int c = 0; c < 256; c++) {
        bool want = c == ' ' || c == '\t' || c == '\v' || c == '\f' || c == '\r' || c == '\n';
        CHECK_INT(smtp_is_space((char)c), want);
        n_space += smtp_is_space((char)c);
    }
    CHECK_INT(n_space, 6);
    /* Not whitespace for a C-locale server: NUL, NEL, NBSP, other controls. */
    CHECK(!smtp_is_space('\0'));
    CHECK(!smtp_is_space('\x85'));
    CHECK(!smtp_is_space('\xa0'));
    CHECK(!smtp_is_space('\x1c'));
}

static void test_command_verbs(void)
{
    check_verb(LIT("HELO a.example"), SMTP_VERB_HELO, "a.example");
    check_verb(LIT("EHLO a.example"), SMTP_VERB_EHLO, "a.example");
    check_verb(LIT("MAIL FROM:<a@b>"), SMTP_VERB_MAIL, "FROM:<a@b>");
    check_verb(LIT("RCPT TO:<a@b>"), SMTP_VERB_RCPT, "TO:<a@b>");
    check_verb(LIT("DATA"), SMTP_VERB_DATA, "");
    check_verb(LIT("BDAT 10"), SMTP_VERB_BDAT, "10");
    check_verb(LIT("RSET"), SMTP_VERB_RSET, "");
    check_verb(LIT("NOOP"), SMTP_VERB_NOOP, "");
    check_verb(LIT("NOOP hello there"), SMTP_VERB_NOOP, "hello there");
    check_verb(LIT("QUIT"), SMTP_VERB_QUIT, "");
    check_verb(LIT("STARTTLS"), SMTP_VERB_STARTTLS, "");
    check_verb(LIT("AUTH PLAIN AGFAAGI="), SMTP_VERB_AUTH, "PLAIN AGFAAGI=");
    check_verb(LIT("XCLIENT ADDR=192.0.2.1 NAME=x"), SMTP_VERB_XCLIENT, "ADDR=192.0.2.1 NAME=x");

    /* Verbs are case-insensitive (RFC 5321 section 2.4). */
    check_verb(LIT("ehlo a"), SMTP_VERB_EHLO, "a");
    check_verb(LIT("eHlO a"), SMTP_VERB_EHLO, "a");
    check_verb(LIT("helo a"), SMTP_VERB_HELO, "a");
    check_verb(LIT("mail from:<a>"), SMTP_VERB_MAIL, "from:<a>");
    check_verb(LIT("rcpt to:<a>"), SMTP_VERB_RCPT, "to:<a>");
    check_verb(LIT("data"), SMTP_VERB_DATA, "");
    check_verb(LIT("bdat 1 last"), SMTP_VERB_BDAT, "1 last");
    check_verb(LIT("rset"), SMTP_VERB_RSET, "");
    check_verb(LIT("noop"), SMTP_VERB_NOOP, "");
    check_verb(LIT("Quit"), SMTP_VERB_QUIT, "");
    check_verb(LIT("StartTLS"), SMTP_VERB_STARTTLS, "");
    check_verb(LIT("auth login"), SMTP_VERB_AUTH, "login");
    check_verb(LIT("xclient NAME=x"), SMTP_VERB_XCLIENT, "NAME=x");

    /* Arguments after argument-less verbs are the caller's business. */
    check_verb(LIT("STARTTLS foo"), SMTP_VERB_STARTTLS, "foo");
    check_verb(LIT("DATA x"), SMTP_VERB_DATA, "x");

    /* The verb ends at any whitespace; the arguments start after the whole run of it and
     * leave trailing whitespace out (Postfix splits the line into words). */
    check_verb(LIT("EHLO\tx"), SMTP_VERB_EHLO, "x");
    check_verb(LIT("EHLO\vx"), SMTP_VERB_EHLO, "x");
    check_verb(LIT("EHLO\fx"), SMTP_VERB_EHLO, "x");
    check_verb(LIT("EHLO  two"), SMTP_VERB_EHLO, "two");
    check_verb(LIT("EHLO \t\v\f two  words \t"), SMTP_VERB_EHLO, "two  words");
    check_verb(LIT("QUIT "), SMTP_VERB_QUIT, "");
    check_verb(LIT("QUIT\t"), SMTP_VERB_QUIT, "");
    check_verb(LIT("DATA \t\v\f"), SMTP_VERB_DATA, "");
    check_verb(LIT("NOOP a\tb"), SMTP_VERB_NOOP, "a\tb");

    /* A verb is a whole word: prefixes and extensions are other verbs. */
    check_verb(LIT("DATAX"), SMTP_VERB_OTHER, "");
    check_verb(LIT("STARTTLSX"), SMTP_VERB_OTHER, "");
    check_verb(LIT("STARTTL"), SMTP_VERB_OTHER, "");
    check_verb(LIT("DAT"), SMTP_VERB_OTHER, "");
    check_verb(LIT("MAILFROM:<a>"), SMTP_VERB_OTHER, "");
    check_verb(LIT("VRFY postmaster"), SMTP_VERB_OTHER, "postmaster");
    check_verb(LIT("VRFY\tpostmaster"), SMTP_VERB_OTHER, "postmaster");
    check_verb(LIT("\xc4\xb0HLO x"), SMTP_VERB_OTHER, "x");
    check_verb(LIT(""), SMTP_VERB_OTHER, "");
    /* Bytes that are not C whitespace do not end a verb. */
    check_verb(LIT("EHLO\x85x"), SMTP_VERB_OTHER, "");
    check_verb(LIT("EHLO\xa0x"), SMTP_VERB_OTHER, "");
    check_verb(LIT("EHLO_x"), SMTP_VERB_OTHER, "");
    check_verb(LIT("EHLO:x"), SMTP_VERB_OTHER, "");

    /* XCLIENT and STARTTLS in every spelling a server would accept, and near misses. */
    check_verb(LIT("XCLIENT\tADDR=x"), SMTP_VERB_XCLIENT, "ADDR=x");
    check_verb(LIT("XCLIENT\vADDR=x"), SMTP_VERB_XCLIENT, "ADDR=x");
    check_verb(LIT("XCLIENT\fADDR=x"), SMTP_VERB_XCLIENT, "ADDR=x");
    check_verb(LIT("XClient ADDR=x "), SMTP_VERB_XCLIENT, "ADDR=x");
    check_verb(LIT("xCLIENT"), SMTP_VERB_XCLIENT, "");
    check_verb(LIT("XCLIENT"), SMTP_VERB_XCLIENT, "");
    check_verb(LIT("XCLIENTX ADDR=x"), SMTP_VERB_OTHER, "ADDR=x");
    check_verb(LIT("XCLIEN ADDR=x"), SMTP_VERB_OTHER, "ADDR=x");
    check_verb(LIT("X-CLIENT ADDR=x"), SMTP_VERB_OTHER, "ADDR=x");
    check_verb(LIT("XCLIENT=ADDR"), SMTP_VERB_OTHER, "");
    check_verb(LIT("starttls"), SMTP_VERB_STARTTLS, "");
    check_verb(LIT("sTaRtTlS"), SMTP_VERB_STARTTLS, "");
    check_verb(LIT("STARTTLS\t"), SMTP_VERB_STARTTLS, "");
    check_verb(LIT("STARTTLS\v"), SMTP_VERB_STARTTLS, "");
    check_verb(LIT("STARTTLS\f"), SMTP_VERB_STARTTLS, "");
    check_verb(LIT("STARTTLS \t "), SMTP_VERB_STARTTLS, "");
    check_verb(LIT("STARTTLS\tnow"), SMTP_VERB_STARTTLS, "now");
    check_verb(LIT("START TLS"), SMTP_VERB_OTHER, "TLS");
    check_verb(LIT("STARTTLS;"), SMTP_VERB_OTHER, "");

    struct smtp_command cmd;
    CHECK_INT(smtp_command_parse(&cmd, NULL, 0), SMTP_OK);
    CHECK_INT(cmd.verb, SMTP_VERB_OTHER);
    CHECK_INT(cmd.args_len, 0);

    /* Fields that do not apply stay zero. */
    CHECK_INT(smtp_command_parse(&cmd, LIT("EHLO x")), SMTP_OK);
    CHECK(cmd.path == NULL);
    CHECK_INT(cmd.path_len, 0);
    CHECK_INT(cmd.bdat_size, 0);
    CHECK(!cmd.bdat_last);

    /* The args pointer is exactly after the whitespace run. */
    static const char spaced[] = "AUTH \t PLAIN x ";
    CHECK_INT(smtp_command_parse(&cmd, LIT(spaced)), SMTP_OK);
    CHECK(cmd.args == spaced + 7);
    CHECK_INT(cmd.args_len, 7);
}

/* Every verb, its arguments, and what the parser must give for it. */
static const struct {
    const char *name;
    enum smtp_verb verb;
    const char *args;
} verb_table[] = {
    {"HELO", SMTP_VERB_HELO, "a.example"},
    {"EHLO", SMTP_VERB_EHLO, "[192.0.2.1]"},
    {"MAIL", SMTP_VERB_MAIL, "FROM:<a@b> SIZE=10"},
    {"RCPT", SMTP_VERB_RCPT, "TO:<a@b>"},
    {"DATA", SMTP_VERB_DATA, ""},
    {"BDAT", SMTP_VERB_BDAT, "10 LAST"},
    {"RSET", SMTP_VERB_RSET, ""},
    {"NOOP", SMTP_VERB_NOOP, "x y"},
    {"QUIT", SMTP_VERB_QUIT, ""},
    {"STARTTLS", SMTP_VERB_STARTTLS, ""},
    {"AUTH", SMTP_VERB_AUTH, "PLAIN AGFAAGI="},
    {"XCLIENT", SMTP_VERB_XCLIENT, "ADDR=192.0.2.1 HELO=x"},
};

/* spell_verb writes |name| in one of three spellings: upper, lower, alternating case. */
static void spell_verb(char *out, const char *name, int spelling)
{
    size_t i = 0;
    for (; name[i] != '\0'; i++) {
        char c = name[i];
        bool lower = spelling == 1 || (spelling == 2 && i % 2 == 1);
        out[i] = lower && c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
    }
    out[i] = '\0';
}

static void test_command_whitespace(void)
{
    static const char *const separators[] = {" ", "\t", "\v", "\f", "  ", " \t", "\t\v\f "};
    static const char *const trailers[] = {"", " ", "\t", "\v\f", " \t "};
    static const char spaces[] = " \t\v\f\r\n";
    char line[128];
    char verb[16];
    for (size_t v = 0; v < sizeof(verb_table) / sizeof(verb_table[0]); v++) {
        const char *args = verb_table[v].args;
        size_t args_len = strlen(args);
        for (int spelling = 0; spelling < 3; spelling++) {
            spell_verb(verb, verb_table[v].name, spelling);
            size_t verb_len = strlen(verb);
            for (size_t sep = 0; sep < sizeof(separators) / sizeof(separators[0]); sep++) {
                for (size_t tr = 0; tr < sizeof(trailers) / sizeof(trailers[0]); tr++) {
                    int len = snprintf(line, sizeof(line), "%s%s%s%s", verb, separators[sep], args,
                                       trailers[tr]);
                    CHECK(len > 0 && (size_t)len < sizeof(line));
                    struct smtp_command cmd;
                    CHECK_INT(smtp_command_parse(&cmd, line, (size_t)len), SMTP_OK);
                    CHECK_INT(cmd.verb, verb_table[v].verb);
                    CHECK_MEM(cmd.args, cmd.args_len, args, args_len);
                    size_t args_at = verb_len + strlen(separators[sep]);
                    if (args_len == 0) {
                        args_at = (size_t)len; /* all whitespace after the verb */
                    }
                    CHECK(cmd.args == line + args_at);
                    if (verb_table[v].verb == SMTP_VERB_MAIL) {
                        CHECK_LIT(cmd.path, cmd.path_len, "<a@b>");
                        CHECK(cmd.path == cmd.args + 5);
                    } else if (verb_table[v].verb == SMTP_VERB_RCPT) {
                        CHECK_LIT(cmd.path, cmd.path_len, "<a@b>");
                        CHECK(cmd.path == cmd.args + 3);
                    } else if (verb_table[v].verb == SMTP_VERB_BDAT) {
                        CHECK(cmd.bdat_size == 10);
                        CHECK(cmd.bdat_last);
                    }
                }
            }
            /* The verb alone, as a whole line. */
            struct smtp_command cmd;
            CHECK_INT(smtp_command_parse(&cmd, verb, verb_len),
                      verb_table[v].verb == SMTP_VERB_MAIL ||
                              verb_table[v].verb == SMTP_VERB_RCPT ||
                              verb_table[v].verb == SMTP_VERB_BDAT
                          ? SMTP_BAD_SYNTAX
                          : SMTP_OK);
            CHECK_INT(cmd.verb, verb_table[v].verb);
            CHECK_INT(cmd.args_len, 0);

            /* Leading whitespace of any kind: refused, and no verb is vouched for. */
            for (size_t k = 0; k < sizeof(spaces) - 1; k++) {
                int len = snprintf(line, sizeof(line), "%c%s %s", spaces[k], verb, args);
                CHECK(len > 0 && (size_t)len < sizeof(line));
                char want_args[128];
                snprintf(want_args, sizeof(want_args), "%s %s", verb, args);
                size_t want_len = strlen(want_args);
                while (want_len > 0 && want_args[want_len - 1] == ' ') {
                    want_args[--want_len] = '\0';
                }
                check_bad(line, (size_t)len, SMTP_VERB_OTHER, want_args, want_len);
            }
        }
    }

    /* A line of nothing but whitespace starts with whitespace too. */
    for (size_t k = 0; k < sizeof(spaces) - 1; k++) {
        check_bad(&spaces[k], 1, SMTP_VERB_OTHER, "", 0);
    }
    BAD(" \t ", SMTP_VERB_OTHER, "");
    BAD(" EHLO x", SMTP_VERB_OTHER, "EHLO x");
    BAD("\t\tSTARTTLS", SMTP_VERB_OTHER, "STARTTLS");
    BAD("\vXCLIENT ADDR=x", SMTP_VERB_OTHER, "XCLIENT ADDR=x");
    BAD("\fDATA", SMTP_VERB_OTHER, "DATA");
    BAD(" MAIL FROM:<a@b>", SMTP_VERB_OTHER, "MAIL FROM:<a@b>");
    BAD(" BDAT 1 LAST", SMTP_VERB_OTHER, "BDAT 1 LAST");
}

static void test_command_bad_bytes(void)
{
    /* A CR, LF or NUL inside a command is rejected whatever the verb. CR and LF are
     * whitespace, so they also end the verb. */
    BAD("EHLO a\0b", SMTP_VERB_EHLO, "a\0b");
    BAD("EHLO a\rb", SMTP_VERB_EHLO, "a\rb");
    BAD("EHLO a\nb", SMTP_VERB_EHLO, "a\nb");
    BAD("EHLO\rx", SMTP_VERB_EHLO, "x");
    BAD("EHLO\nx", SMTP_VERB_EHLO, "x");
    BAD("EHLO x\r", SMTP_VERB_EHLO, "x");
    BAD("DATA\r", SMTP_VERB_DATA, "");
    BAD("DATA\n", SMTP_VERB_DATA, "");
    BAD("STARTTLS\r", SMTP_VERB_STARTTLS, "");
    BAD("STARTTLS\r\nMAIL FROM:<a>", SMTP_VERB_STARTTLS, "MAIL FROM:<a>");
    BAD("\0", SMTP_VERB_OTHER, "");
    BAD("MAIL FROM:<a\0b>", SMTP_VERB_MAIL, "FROM:<a\0b>");
    BAD("MAIL FROM:<a>\r", SMTP_VERB_MAIL, "FROM:<a>");
    BAD("RCPT TO:<a>\r", SMTP_VERB_RCPT, "TO:<a>");
    BAD("RCPT TO:<a>\nRCPT TO:<b>", SMTP_VERB_RCPT, "TO:<a>\nRCPT TO:<b>");
    BAD("QUIT\r\nRSET", SMTP_VERB_QUIT, "RSET");
    BAD("X\0", SMTP_VERB_OTHER, "");
    /* A NUL is not whitespace: it is part of the verb, which is then no verb. */
    BAD("NOOP\0", SMTP_VERB_OTHER, "");
    BAD("EHLO\0 x", SMTP_VERB_OTHER, "x");
    BAD("XCLIENT\0ADDR=x", SMTP_VERB_OTHER, "");
    BAD("BDAT 1\0", SMTP_VERB_BDAT, "1\0");
}

static void check_path(const char *line, size_t len, enum smtp_verb verb, const char *want_path)
{
    struct smtp_command cmd;
    CHECK_INT(smtp_command_parse(&cmd, line, len), SMTP_OK);
    CHECK_INT(cmd.verb, verb);
    CHECK_MEM(cmd.path, cmd.path_len, want_path, strlen(want_path));
    CHECK(cmd.path >= cmd.args && cmd.path + cmd.path_len <= cmd.args + cmd.args_len);
}

static void check_path_fails(const char *line, size_t len, enum smtp_result want)
{
    struct smtp_command cmd;
    CHECK_INT(smtp_command_parse(&cmd, line, len), want);
    CHECK(cmd.path == NULL);
    CHECK_INT(cmd.path_len, 0);
}

static void test_command_paths(void)
{
    check_path(LIT("MAIL FROM:<a@b.example>"), SMTP_VERB_MAIL, "<a@b.example>");
    check_path(LIT("RCPT TO:<a@b.example>"), SMTP_VERB_RCPT, "<a@b.example>");
    check_path(LIT("MAIL FROM:<>"), SMTP_VERB_MAIL, "<>");
    check_path(LIT("RCPT TO:<>"), SMTP_VERB_RCPT, "<>");
    check_path(LIT("mail From:<a@b>"), SMTP_VERB_MAIL, "<a@b>");
    check_path(LIT("RCPT to:<Postmaster>"), SMTP_VERB_RCPT, "<Postmaster>");
    check_path(LIT("MAIL FROM:<a@b> SIZE=1000 BODY=8BITMIME"), SMTP_VERB_MAIL, "<a@b>");
    check_path(LIT("MAIL FROM:<> SIZE=1000"), SMTP_VERB_MAIL, "<>");
    check_path(LIT("RCPT TO:<a@b> NOTIFY=NEVER ORCPT=rfc822;a@b"), SMTP_VERB_RCPT, "<a@b>");
    check_path(LIT("MAIL FROM:<a@b> "), SMTP_VERB_MAIL, "<a@b>");
    check_path(LIT("RCPT TO:<@r.example:a@b>"), SMTP_VERB_RCPT, "<@r.example:a@b>");
    /* Many clients put a space after the colon; accept it, and any whitespace. */
    check_path(LIT("MAIL FROM: <x>"), SMTP_VERB_MAIL, "<x>");
    check_path(LIT("RCPT TO:  <x> NOTIFY=NEVER"), SMTP_VERB_RCPT, "<x>");
    check_path(LIT("MAIL FROM:\t<x>"), SMTP_VERB_MAIL, "<x>");
    check_path(LIT("RCPT TO:\v\f<x>"), SMTP_VERB_RCPT, "<x>");
    /* Whitespace of any kind and length between the verb, the path and the parameters. */
    check_path(LIT("MAIL  FROM:<a@b>"), SMTP_VERB_MAIL, "<a@b>");
    check_path(LIT("MAIL\tFROM:<a@b>"), SMTP_VERB_MAIL, "<a@b>");
    check_path(LIT("RCPT\v\fTO:<a@b>"), SMTP_VERB_RCPT, "<a@b>");
    check_path(LIT("MAIL FROM:<a@b>\tSIZE=1"), SMTP_VERB_MAIL, "<a@b>");
    check_path(LIT("MAIL FROM:<a@b> \t\v\fSIZE=1 BODY=7BIT \t"), SMTP_VERB_MAIL, "<a@b>");
    check_path(LIT("RCPT TO:<a@b>\fNOTIFY=NEVER"), SMTP_VERB_RCPT, "<a@b>");
    check_path(LIT("RCPT TO:<a@b>\t"), SMTP_VERB_RCPT, "<a@b>");
    /* A '>' inside a quoted local part does not end the path (RFC 5321 section 4.1.2). */
    check_path(LIT("MAIL FROM:<\"a>b\"@c> SIZE=1"), SMTP_VERB_MAIL, "<\"a>b\"@c>");
    check_path(LIT("RCPT TO:<\"a\\\">b\"@c>"), SMTP_VERB_RCPT, "<\"a\\\">b\"@c>");
    check_path(LIT("RCPT TO:<\"a b\"@c>\tNOTIFY=NEVER"), SMTP_VERB_RCPT, "<\"a b\"@c>");
    /* 8-bit local parts (RFC 6531) pass through untouched. */
    check_path(LIT("RCPT TO:<\xc3\xa9@b>"), SMTP_VERB_RCPT, "<\xc3\xa9@b>");

    struct smtp_command cmd;
    CHECK_INT(smtp_command_parse(&cmd, LIT("MAIL FROM:<a@b> SIZE=9")), SMTP_OK);
    CHECK_LIT(cmd.args, cmd.args_len, "FROM:<a@b> SIZE=9");
    CHECK(cmd.path == cmd.args + 5);
    static const char tabbed[] = "RCPT\t\tTO:\t <a@b>\tNOTIFY=NEVER\t";
    CHECK_INT(smtp_command_parse(&cmd, LIT(tabbed)), SMTP_OK);
    CHECK(cmd.args == tabbed + 6);
    CHECK_LIT(cmd.args, cmd.args_len, "TO:\t <a@b>\tNOTIFY=NEVER");
    CHECK(cmd.path == tabbed + 11);
    CHECK_INT(cmd.path_len, 5);

    check_path_fails(LIT("MAIL FROM:a@b"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL FROM:<a@b"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL FROM:a@b>"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL FROM:"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL FROM: "), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL FROM:\t"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL FROM:<"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL FROM"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL FROM <a@b>"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL FROM\t:<a@b>"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL TO:<a@b>"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL "), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL\t"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL FROM:<a@b>SIZE=1"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL FROM:<a@b>\x85SIZE=1"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL FROM:<a@b>\xa0SIZE=1"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL FROM:\xa0<a@b>"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL FROM:<\"a>b@c>"), SMTP_BAD_SYNTAX); /* unclosed quote */
    check_path_fails(LIT("MAIL FROM:<\"a\\"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("RCPT TO:"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("RCPT FROM:<a@b>"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("RCPT TO:a@b"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("RCPT TO:<a@b"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("RCPT TO:<a@b>x"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("RCPT TO <a@b>"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("RCPT"), SMTP_BAD_SYNTAX);
    /* A CR or LF is whitespace for the split, but refused in a line. */
    check_path_fails(LIT("MAIL FROM:\r<a@b>"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL FROM:<a@b>\nSIZE=1"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("RCPT TO:<a@b>\r"), SMTP_BAD_SYNTAX);

    /* RFC 5321 section 4.5.3.1.3: 256 octets, brackets included, and no more. */
    static const char *const prefixes[] = {"MAIL FROM:<", "RCPT TO:<", "MAIL\tFROM:\t<",
                                           "rcpt \v to: \f<"};
    char line[400];
    for (size_t path_len = 250; path_len <= 260; path_len++) {
        for (size_t p = 0; p < sizeof(prefixes) / sizeof(prefixes[0]); p++) {
            const char *prefix = prefixes[p];
            size_t prefix_len = strlen(prefix);
            memcpy(line, prefix, prefix_len);
            memset(line + prefix_len, 'a', path_len - 2);
            line[prefix_len + path_len - 2] = '>';
            static const char params[] = "\tSIZE=1";
            memcpy(line + prefix_len + path_len - 1, params, sizeof(params) - 1);
            size_t len = prefix_len + path_len - 1 + sizeof(params) - 1;
            enum smtp_result want = path_len <= SMTP_PATH_MAX ? SMTP_OK : SMTP_PATH_TOO_LONG;
            CHECK_INT(smtp_command_parse(&cmd, line, len), want);
            if (want == SMTP_OK) {
                CHECK_INT(cmd.path_len, path_len);
                CHECK(cmd.path == line + prefix_len - 1);
            } else {
                CHECK(cmd.path == NULL);
                CHECK_INT(cmd.path_len, 0);
            }
            /* Without the closing bracket it is a syntax error, however long. */
            CHECK_INT(smtp_command_parse(&cmd, line, prefix_len + path_len - 2), SMTP_BAD_SYNTAX);
        }
    }
}

static void check_bdat(const char *line, size_t len, uint64_t want_size, bool want_last)
{
    struct smtp_command cmd;
    CHECK_INT(smtp_command_parse(&cmd, line, len), SMTP_OK);
    CHECK_INT(cmd.verb, SMTP_VERB_BDAT);
    CHECK(cmd.bdat_size == want_size);
    CHECK_INT(cmd.bdat_last, want_last);
}

static void check_bdat_fails(const char *line, size_t len)
{
    struct smtp_command cmd;
    CHECK_INT(smtp_command_parse(&cmd, line, len), SMTP_BAD_SYNTAX);
    CHECK_INT(cmd.verb, SMTP_VERB_BDAT);
    CHECK(cmd.bdat_size == 0);
    CHECK(!cmd.bdat_last);
}

static void test_command_bdat(void)
{
    check_bdat(LIT("BDAT 0"), 0, false);
    check_bdat(LIT("BDAT 0 LAST"), 0, true);
    check_bdat(LIT("BDAT 1"), 1, false);
    check_bdat(LIT("BDAT 86 LAST"), 86, true);
    check_bdat(LIT("bdat 5 last"), 5, true);
    check_bdat(LIT("BDAT 5 LaSt"), 5, true);
    check_bdat(LIT("BDAT 1048576"), 1048576, false);
    check_bdat(LIT("BDAT 1099511627776"), SMTP_BDAT_SIZE_MAX, false);
    check_bdat(LIT("BDAT 1099511627776 LAST"), SMTP_BDAT_SIZE_MAX, true);
    check_bdat(LIT("BDAT 0000000000000000000000000000000000012"), 12, false);
    /* Any whitespace run between the words, and trailing whitespace, as Postfix reads it. */
    check_bdat(LIT("BDAT\t5\tLAST"), 5, true);
    check_bdat(LIT("BDAT  1"), 1, false);
    check_bdat(LIT("BDAT 1 "), 1, false);
    check_bdat(LIT("BDAT 1\t"), 1, false);
    check_bdat(LIT("BDAT 1  LAST"), 1, true);
    check_bdat(LIT("BDAT 1 LAST "), 1, true);
    check_bdat(LIT("BDAT\v7\f \tlast\t\v"), 7, true);
    check_bdat(LIT("bDaT\f0\vLaSt"), 0, true);

    check_bdat_fails(LIT("BDAT 1099511627777"));
    check_bdat_fails(LIT("BDAT 1099511627777 LAST"));
    check_bdat_fails(LIT("BDAT 18446744073709551615"));
    check_bdat_fails(LIT("BDAT 18446744073709551616"));
    check_bdat_fails(LIT("BDAT 99999999999999999999999999999999"));
    check_bdat_fails(LIT("BDAT"));
    check_bdat_fails(LIT("BDAT "));
    check_bdat_fails(LIT("BDAT\t"));
    check_bdat_fails(LIT("BDAT x"));
    check_bdat_fails(LIT("BDAT 12x"));
    check_bdat_fails(LIT("BDAT 0x10"));
    check_bdat_fails(LIT("BDAT -1"));
    check_bdat_fails(LIT("BDAT +1"));
    check_bdat_fails(LIT("BDAT 1 LASTX"));
    check_bdat_fails(LIT("BDAT 1LAST"));
    check_bdat_fails(LIT("BDAT 1 LAST x"));
    check_bdat_fails(LIT("BDAT 1 LAST LAST"));
    check_bdat_fails(LIT("BDAT 1 LAS"));
    check_bdat_fails(LIT("BDAT 1 FIRST"));
    check_bdat_fails(LIT("BDAT 1 2"));
    check_bdat_fails(LIT("BDAT LAST"));
    check_bdat_fails(LIT("BDAT LAST 1"));
    check_bdat_fails(LIT("BDAT 1\0"));
    check_bdat_fails(LIT("BDAT 1 LAST\0"));
    check_bdat_fails(LIT("BDAT 1\0LAST"));
    check_bdat_fails(LIT("BDAT 1\x85LAST"));
    check_bdat_fails(LIT("BDAT 1\xa0LAST"));
    /* CR and LF are whitespace to the split, but never allowed in a line. */
    check_bdat_fails(LIT("BDAT 1\r"));
    check_bdat_fails(LIT("BDAT 1\rLAST"));
    check_bdat_fails(LIT("BDAT 1\nLAST"));
    check_bdat_fails(LIT("BDAT 1 LAST\r"));

    /* BDATX is not BDAT: no size is parsed and nothing is rejected. */
    struct smtp_command cmd;
    CHECK_INT(smtp_command_parse(&cmd, LIT("BDATX nonsense")), SMTP_OK);
    CHECK_INT(cmd.verb, SMTP_VERB_OTHER);
    CHECK(cmd.bdat_size == 0);
    /* Leading whitespace: refused, and not read as BDAT (no size to frame bytes with). */
    BAD(" BDAT 5", SMTP_VERB_OTHER, "BDAT 5");
    BAD("\tBDAT 5 LAST", SMTP_VERB_OTHER, "BDAT 5 LAST");
}

/* ---- smtp_helo_name ---- */

static void check_helo(const char *line, size_t len, enum smtp_verb verb, const char *want)
{
    struct smtp_command cmd;
    CHECK_INT(smtp_command_parse(&cmd, line, len), SMTP_OK);
    CHECK_INT(cmd.verb, verb);
    const char *name = NULL;
    size_t name_len = 99;
    smtp_helo_name(&name, &name_len, &cmd);
    CHECK_MEM(name, name_len, want, strlen(want));
    CHECK(name == cmd.args); /* the first word of the arguments, in place */
}

static void test_helo_name(void)
{
    check_helo(LIT("EHLO a.example"), SMTP_VERB_EHLO, "a.example");
    check_helo(LIT("HELO a.example"), SMTP_VERB_HELO, "a.example");
    check_helo(LIT("EHLO a.example extra words"), SMTP_VERB_EHLO, "a.example");
    check_helo(LIT("ehlo  a.example  "), SMTP_VERB_EHLO, "a.example");
    check_helo(LIT("HELO\t[192.0.2.1]\tx"), SMTP_VERB_HELO, "[192.0.2.1]");
    check_helo(LIT("EHLO [IPv6:2001:db8::1]"), SMTP_VERB_EHLO, "[IPv6:2001:db8::1]");
    check_helo(LIT("EHLO a\vb"), SMTP_VERB_EHLO, "a");
    check_helo(LIT("EHLO a\fb"), SMTP_VERB_EHLO, "a");
    check_helo(LIT("EHLO \xc3\xa9.example"), SMTP_VERB_EHLO, "\xc3\xa9.example");
    check_helo(LIT("EHLO a+b=c"), SMTP_VERB_EHLO, "a+b=c");
    /* No name at all. */
    check_helo(LIT("EHLO"), SMTP_VERB_EHLO, "");
    check_helo(LIT("HELO"), SMTP_VERB_HELO, "");
    check_helo(LIT("EHLO "), SMTP_VERB_EHLO, "");
    check_helo(LIT("EHLO \t\v\f"), SMTP_VERB_EHLO, "");

    /* A 255-byte name, whole. */
    char line[300] = "EHLO ";
    memset(line + 5, 'n', 255);
    memcpy(line + 260, " x", 2);
    struct smtp_command cmd;
    CHECK_INT(smtp_command_parse(&cmd, line, 262), SMTP_OK);
    const char *name;
    size_t name_len;
    smtp_helo_name(&name, &name_len, &cmd);
    CHECK(name == line + 5);
    CHECK_INT(name_len, 255);
}

/* ---- smtp_xtext ---- */

static void check_xtext(const char *text, size_t len, const char *want)
{
    size_t want_len = strlen(want);
    char out[64];
    memset(out, '#', sizeof(out));
    CHECK_INT(smtp_xtext(out, sizeof(out), text, len), want_len);
    CHECK_MEM(out, want_len, want, want_len);
    CHECK_INT(out[want_len], '#'); /* no NUL written */
    CHECK_INT(smtp_xtext(NULL, 0, text, len), want_len);
    /* Every smaller capacity: a prefix of the same encoding, nothing past the capacity. */
    for (size_t cap = 0; cap < want_len; cap++) {
        memset(out, '#', sizeof(out));
        CHECK_INT(smtp_xtext(out, cap, text, len), want_len);
        CHECK_MEM(out, cap, want, cap);
        CHECK_INT(out[cap], '#');
    }
}

static int hex_value(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static void test_xtext(void)
{
    check_xtext(LIT(""), "");
    check_xtext(LIT("client.example"), "client.example");
    check_xtext(LIT("[192.0.2.1]"), "[192.0.2.1]");
    check_xtext(LIT("a+b"), "a+2Bb");
    check_xtext(LIT("a=b"), "a+3Db");
    check_xtext(LIT("+="), "+2B+3D");
    check_xtext(LIT("a b"), "a+20b");
    check_xtext(LIT("\0"), "+00");
    check_xtext(LIT("\t\r\n"), "+09+0D+0A");
    check_xtext(LIT("\x1f"), "+1F");
    check_xtext(LIT("!~"), "!~"); /* 33 and 126: the printable edges stay */
    check_xtext(LIT("\x7f"), "+7F");
    check_xtext(LIT("\x80\xab\xff"), "+80+AB+FF"); /* upper-case hex */
    check_xtext(LIT("\xc3\xa9"), "+C3+A9");
    check_xtext(NULL, 0, "");

    /* Every byte: itself or "+XX", and it decodes back. */
    for (int c = 0; c < 256; c++) {
        char byte = (char)c;
        char out[4] = {0};
        size_t n = smtp_xtext(out, sizeof(out), &byte, 1);
        bool plain = c >= 33 && c <= 126 && c != '+' && c != '=';
        CHECK_INT(n, plain ? 1 : 3);
        if (plain) {
            CHECK_INT(out[0], byte);
        } else {
            CHECK_INT(out[0], '+');
            CHECK_INT(hex_value(out[1]) * 16 + hex_value(out[2]), c);
        }
    }
}

/* ---- smtp_xclient_format ---- */

/*
 * check_xclient formats |x| for |params| and checks the line is exactly |want|; then that
 * the exact capacity fits and one byte less is SMTP_TOO_LONG, writing nothing past it.
 */
static void check_xclient(const char *params, const struct smtp_xclient *x, const char *want)
{
    size_t want_len = strlen(want);
    char out[SMTP_XCLIENT_LINE_MAX + 8];
    size_t out_len = 99;
    CHECK_INT(smtp_xclient_format(out, &out_len, SMTP_XCLIENT_LINE_MAX, params, strlen(params), x),
              SMTP_OK);
    CHECK_MEM(out, out_len, want, want_len);
    CHECK(want_len >= 2 && memcmp(want + want_len - 2, "\r\n", 2) == 0);

    for (size_t cap = 0; cap <= want_len; cap++) {
        memset(out, '#', sizeof(out));
        out_len = 99;
        enum smtp_result r = smtp_xclient_format(out, &out_len, cap, params, strlen(params), x);
        if (cap == want_len) {
            CHECK_INT(r, SMTP_OK);
            CHECK_MEM(out, out_len, want, want_len);
        } else {
            CHECK_INT(r, SMTP_TOO_LONG);
            CHECK_INT(out_len, 0);
        }
        for (size_t i = cap; i < sizeof(out); i++) {
            if (out[i] != '#') {
                fprintf(stderr, "xclient: cap %zu, byte %zu written\n", cap, i);
                CHECK(out[i] == '#');
                break;
            }
        }
    }
}

static void check_xclient_fails(const char *params, size_t params_len, const struct smtp_xclient *x,
                                enum smtp_result want)
{
    char out[SMTP_XCLIENT_LINE_MAX];
    size_t out_len = 99;
    CHECK_INT(smtp_xclient_format(out, &out_len, sizeof(out), params, params_len, x), want);
    CHECK_INT(out_len, 0);
}

static void test_xclient_format(void)
{
    struct smtp_xclient v4 = {
        .addr = "192.0.2.1", .port = 25, .esmtp = true, .helo = "client.example", .helo_len = 14};
    check_xclient("ADDR PORT PROTO HELO NAME", &v4,
                  "XCLIENT ADDR=192.0.2.1 PORT=25 PROTO=ESMTP HELO=client.example\r\n");
    /* Only what is advertised, always in the same order. */
    check_xclient("ADDR", &v4, "XCLIENT ADDR=192.0.2.1\r\n");
    check_xclient("NAME ADDR", &v4, "XCLIENT ADDR=192.0.2.1\r\n");
    check_xclient("HELO PROTO PORT ADDR", &v4,
                  "XCLIENT ADDR=192.0.2.1 PORT=25 PROTO=ESMTP HELO=client.example\r\n");
    check_xclient("ADDR PORT", &v4, "XCLIENT ADDR=192.0.2.1 PORT=25\r\n");
    check_xclient("ADDR PROTO", &v4, "XCLIENT ADDR=192.0.2.1 PROTO=ESMTP\r\n");
    check_xclient("ADDR HELO", &v4, "XCLIENT ADDR=192.0.2.1 HELO=client.example\r\n");
    check_xclient("NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT", &v4,
                  "XCLIENT ADDR=192.0.2.1 PORT=25 PROTO=ESMTP HELO=client.example\r\n");
    /* EHLO keywords and parameters are case-insensitive. */
    check_xclient("addr port", &v4, "XCLIENT ADDR=192.0.2.1 PORT=25\r\n");
    /* Whole words only. */
    check_xclient("ADDR PORTS XHELO PROTOCOL", &v4, "XCLIENT ADDR=192.0.2.1\r\n");

    /* HELO: PROTO=SMTP. */
    struct smtp_xclient helo = v4;
    helo.esmtp = false;
    check_xclient("ADDR PROTO", &helo, "XCLIENT ADDR=192.0.2.1 PROTO=SMTP\r\n");

    /* IPv6 gets Postfix's prefix. */
    struct smtp_xclient v6 = {.addr = "2001:db8::1", .ipv6 = true, .port = 65535, .esmtp = true};
    check_xclient("ADDR PORT PROTO HELO", &v6,
                  "XCLIENT ADDR=IPV6:2001:db8::1 PORT=65535 PROTO=ESMTP\r\n");
    struct smtp_xclient zero_port = v4;
    zero_port.port = 0;
    check_xclient("ADDR PORT", &zero_port, "XCLIENT ADDR=192.0.2.1 PORT=0\r\n");

    /* HELO names: xtext-encoded; left out when absent, empty, too long or not printable. */
    struct smtp_xclient h = v4;
    h.helo = "a+b=c";
    h.helo_len = 5;
    check_xclient("ADDR HELO", &h, "XCLIENT ADDR=192.0.2.1 HELO=a+2Bb+3Dc\r\n");
    h.helo = "[192.0.2.9]";
    h.helo_len = 11;
    check_xclient("ADDR HELO", &h, "XCLIENT ADDR=192.0.2.1 HELO=[192.0.2.9]\r\n");
    h.helo = "!~";
    h.helo_len = 2;
    check_xclient("ADDR HELO", &h, "XCLIENT ADDR=192.0.2.1 HELO=!~\r\n");
    h.helo = NULL;
    h.helo_len = 5;
    check_xclient("ADDR HELO", &h, "XCLIENT ADDR=192.0.2.1\r\n");
    h.helo = "x";
    h.helo_len = 0;
    check_xclient("ADDR HELO", &h, "XCLIENT ADDR=192.0.2.1\r\n");
    static const char *const unprintable[] = {"a b", "a\tb", "a\x7f", "\xc3\xa9", "a\rb"};
    for (size_t i = 0; i < sizeof(unprintable) / sizeof(unprintable[0]); i++) {
        h.helo = unprintable[i];
        h.helo_len = strlen(unprintable[i]);
        check_xclient("ADDR PORT HELO", &h, "XCLIENT ADDR=192.0.2.1 PORT=25\r\n");
    }
    h.helo = "a\0b";
    h.helo_len = 3;
    check_xclient("ADDR HELO", &h, "XCLIENT ADDR=192.0.2.1\r\n");

    /* 255 bytes is the longest name sent; 256 is left out. */
    char name[300];
    memset(name, 'n', sizeof(name));
    char want[400];
    int n = snprintf(want, sizeof(want), "XCLIENT ADDR=192.0.2.1 HELO=%.255s\r\n", name);
    CHECK(n > 0 && (size_t)n < sizeof(want));
    h.helo = name;
    h.helo_len = 255;
    check_xclient("ADDR HELO", &h, want);
    h.helo_len = 256;
    check_xclient("ADDR HELO", &h, "XCLIENT ADDR=192.0.2.1\r\n");
    h.helo_len = sizeof(name);
    check_xclient("ADDR HELO", &h, "XCLIENT ADDR=192.0.2.1\r\n");

    /* Without ADDR the client's address cannot be conveyed. */
    check_xclient_fails(LIT(""), &v4, SMTP_BAD_SYNTAX);
    check_xclient_fails(NULL, 0, &v4, SMTP_BAD_SYNTAX);
    check_xclient_fails(LIT("NAME PORT PROTO HELO"), &v4, SMTP_BAD_SYNTAX);
    check_xclient_fails(LIT("ADDRX"), &v4, SMTP_BAD_SYNTAX);
    check_xclient_fails(LIT("XADDR"), &v4, SMTP_BAD_SYNTAX);
    check_xclient_fails(LIT("ADD"), &v4, SMTP_BAD_SYNTAX);
    check_xclient_fails(LIT("ADDR=1"), &v4, SMTP_BAD_SYNTAX);
}

/*
 * The header promises that SMTP_XCLIENT_LINE_MAX always suffices, but a printable HELO
 * name of up to 255 bytes is sent xtext-encoded, and '+' and '=' grow to three bytes
 * each: up to 765 bytes for the name alone. The session (session_back_send_xclient) formats
 * into a SMTP_XCLIENT_LINE_MAX buffer, so a client saying "EHLO ++++..." makes XCLIENT fail.
 */
static void test_xclient_line_max(void)
{
    char name[255];
    memset(name, '+', sizeof(name));
    struct smtp_xclient x = {.addr = "192.0.2.1", .helo = name, .helo_len = sizeof(name)};
    char out[SMTP_XCLIENT_LINE_MAX];
    size_t out_len = 0;
    CHECK_INT(smtp_xclient_format(out, &out_len, sizeof(out), LIT("ADDR HELO"), &x), SMTP_OK);
    CHECK(out_len <= SMTP_XCLIENT_LINE_MAX);
}

/* ---- replies ---- */

static void check_reply_line(struct smtp_reply_parser *p, const char *line, size_t len,
                             enum smtp_result want, int want_code, bool want_done)
{
    int code = -1;
    bool done = !want_done;
    CHECK_INT(smtp_reply_parse_line(p, &code, &done, line, len), want);
    CHECK_INT(code, want_code);
    CHECK_INT(done, want_done);
}

static void test_replies(void)
{
    struct smtp_reply_parser p;
    smtp_reply_parser_init(&p);
    check_reply_line(&p, LIT("220 mx.example ESMTP"), SMTP_OK, 220, true);
    check_reply_line(&p, LIT("250 "), SMTP_OK, 250, true);
    check_reply_line(&p, LIT("250"), SMTP_OK, 250, true);
    check_reply_line(&p, LIT("554 5.7.1 no"), SMTP_OK, 554, true);
    check_reply_line(&p, LIT("559 x"), SMTP_OK, 559, true);
    check_reply_line(&p, LIT("200 x"), SMTP_OK, 200, true);
    check_reply_line(&p, LIT("250 a\0b"), SMTP_OK, 250, true);

    check_reply_line(&p, LIT("250-a"), SMTP_OK, 250, false);
    check_reply_line(&p, LIT("250-b"), SMTP_OK, 250, false);
    check_reply_line(&p, LIT("250-"), SMTP_OK, 250, false);
    check_reply_line(&p, LIT("250 c"), SMTP_OK, 250, true);
    /* Ready for the next reply, with another code. */
    check_reply_line(&p, LIT("451-x"), SMTP_OK, 451, false);
    check_reply_line(&p, LIT("451"), SMTP_OK, 451, true);

    /* A continuation with a different code is broken, and the parser starts over. */
    check_reply_line(&p, LIT("250-a"), SMTP_OK, 250, false);
    check_reply_line(&p, LIT("251 b"), SMTP_BAD_SYNTAX, 0, false);
    CHECK_INT(p.code, 0);
    check_reply_line(&p, LIT("251 b"), SMTP_OK, 251, true);
    check_reply_line(&p, LIT("250-a"), SMTP_OK, 250, false);
    check_reply_line(&p, LIT("550-b"), SMTP_BAD_SYNTAX, 0, false);

    static const char *const bad[] = {
        "099 x", "199 x", "599 x", "269 x", "600 x", "900 x", "260 x", "2x0 x",
        "25x x", "x50 x", "25",    "2",     "",      "2500",  "250x",  "250\t",
        "250_",  "250:x", " 250",  "-250",  "250.",  "2 0 x",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        smtp_reply_parser_init(&p);
        check_reply_line(&p, bad[i], strlen(bad[i]), SMTP_BAD_SYNTAX, 0, false);
    }
    check_reply_line(&p, NULL, 0, SMTP_BAD_SYNTAX, 0, false);
    check_reply_line(&p, LIT("25\0 x"), SMTP_BAD_SYNTAX, 0, false);
    check_reply_line(&p, LIT("250\0x"), SMTP_BAD_SYNTAX, 0, false);
    check_reply_line(&p, LIT("250\r"), SMTP_BAD_SYNTAX, 0, false);

    /* A bad line in the middle of a reply resets the parser too. */
    smtp_reply_parser_init(&p);
    check_reply_line(&p, LIT("250-a"), SMTP_OK, 250, false);
    check_reply_line(&p, LIT("250x"), SMTP_BAD_SYNTAX, 0, false);
    CHECK_INT(p.code, 0);
}

/* ---- smtp_ehlo_edit ---- */

/* check_reply_whole checks that |data| is exactly one reply with CRLF line endings. */
static void check_reply_whole(const char *data, size_t len)
{
    struct smtp_reply_parser p;
    smtp_reply_parser_init(&p);
    bool done = false;
    size_t pos = 0;
    while (pos < len && !done) {
        size_t line_len;
        size_t eol_len;
        CHECK_INT(smtp_line_find(&line_len, &eol_len, data + pos, len - pos, len), SMTP_OK);
        CHECK_INT(eol_len, 2);
        int code;
        CHECK_INT(smtp_reply_parse_line(&p, &code, &done, data + pos, line_len), SMTP_OK);
        CHECK_INT(code, 250);
        pos += line_len + eol_len;
    }
    CHECK(done);
    CHECK_INT(pos, len);
}

static void check_ehlo(const char *reply, size_t reply_len, bool add_starttls, const char *want,
                       unsigned want_caps)
{
    char out[1024];
    size_t out_len = 99;
    unsigned caps = 99;
    size_t want_len = strlen(want);
    CHECK_INT(smtp_ehlo_edit(out, &out_len, &caps, sizeof(out), reply, reply_len, add_starttls, 0),
              SMTP_OK);
    CHECK_MEM(out, out_len, want, want_len);
    CHECK_INT(caps, want_caps);
    check_reply_whole(out, out_len);

    /* The exact size fits; one byte less is refused without writing past it. */
    char *exact = malloc(want_len + 1);
    CHECK(exact != NULL);
    memset(exact, '#', want_len + 1);
    CHECK_INT(smtp_ehlo_edit(exact, &out_len, &caps, want_len, reply, reply_len, add_starttls, 0),
              SMTP_OK);
    CHECK_MEM(exact, out_len, want, want_len);
    CHECK_INT(exact[want_len], '#');
    memset(exact, '#', want_len + 1);
    CHECK_INT(
        smtp_ehlo_edit(exact, &out_len, &caps, want_len - 1, reply, reply_len, add_starttls, 0),
        SMTP_TOO_LONG);
    CHECK_INT(out_len, 0);
    CHECK_INT(caps, 0);
    CHECK_INT(exact[want_len - 1], '#');
    CHECK_INT(exact[want_len], '#');
    free(exact);

    /* The documented bound always suffices. */
    CHECK(want_len <= reply_len + reply_len / 4 + 16);
}

static void check_ehlo_fails(const char *reply, size_t reply_len, enum smtp_result want)
{
    char out[1024];
    size_t out_len = 99;
    unsigned caps = 99;
    for (int add = 0; add <= 1; add++) {
        CHECK_INT(smtp_ehlo_edit(out, &out_len, &caps, sizeof(out), reply, reply_len, add, 0),
                  want);
        CHECK_INT(out_len, 0);
        CHECK_INT(caps, 0);
    }
}

static void test_ehlo_edit(void)
{
    /* STARTTLS removed in the middle, at the end, and as the only capability. */
    check_ehlo(LIT("250-mx.example Hello\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n"),
               false, "250-mx.example Hello\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
               SMTP_CAP_PIPELINING | SMTP_CAP_STARTTLS | SMTP_CAP_8BITMIME);
    check_ehlo(LIT("250-mx\r\n250-SIZE 1000\r\n250 STARTTLS\r\n"), false,
               "250-mx\r\n250 SIZE 1000\r\n", SMTP_CAP_SIZE | SMTP_CAP_STARTTLS);
    check_ehlo(LIT("250-mx\r\n250 STARTTLS\r\n"), false, "250 mx\r\n", SMTP_CAP_STARTTLS);
    check_ehlo(LIT("250-mx\r\n250-STARTTLS\r\n250 STARTTLS\r\n"), false, "250 mx\r\n",
               SMTP_CAP_STARTTLS);

    /* Added as the last line when absent; kept exactly once when present. */
    check_ehlo(LIT("250-mx\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"), true,
               "250-mx\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 STARTTLS\r\n",
               SMTP_CAP_PIPELINING | SMTP_CAP_SIZE);
    check_ehlo(LIT("250-mx\r\n250-STARTTLS\r\n250 8BITMIME\r\n"), true,
               "250-mx\r\n250-8BITMIME\r\n250 STARTTLS\r\n", SMTP_CAP_STARTTLS | SMTP_CAP_8BITMIME);
    check_ehlo(LIT("250-mx\r\n250-STARTTLS\r\n250-STARTTLS\r\n250 8BITMIME\r\n"), true,
               "250-mx\r\n250-8BITMIME\r\n250 STARTTLS\r\n", SMTP_CAP_STARTTLS | SMTP_CAP_8BITMIME);
    check_ehlo(LIT("250-mx\r\n250 STARTTLS\r\n"), true, "250-mx\r\n250 STARTTLS\r\n",
               SMTP_CAP_STARTTLS);

    /* A single-line reply. */
    check_ehlo(LIT("250 mx\r\n"), true, "250-mx\r\n250 STARTTLS\r\n", 0);
    check_ehlo(LIT("250 mx\r\n"), false, "250 mx\r\n", 0);
    check_ehlo(LIT("250 mx.example greets you\r\n"), true,
               "250-mx.example greets you\r\n250 STARTTLS\r\n", 0);
    check_ehlo(LIT("250\r\n"), false, "250 \r\n", 0);
    check_ehlo(LIT("250\r\n"), true, "250-\r\n250 STARTTLS\r\n", 0);

    /* Keywords are case-insensitive and whole words; the greeting is never one. */
    check_ehlo(LIT("250-mx\r\n250-starttls\r\n250 ok\r\n"), false, "250-mx\r\n250 ok\r\n",
               SMTP_CAP_STARTTLS);
    check_ehlo(LIT("250-mx\r\n250-StartTls\r\n250 ok\r\n"), true,
               "250-mx\r\n250-ok\r\n250 STARTTLS\r\n", SMTP_CAP_STARTTLS);
    check_ehlo(LIT("250-mx\r\n250-STARTTLS REQUIRED\r\n250 ok\r\n"), false, "250-mx\r\n250 ok\r\n",
               SMTP_CAP_STARTTLS);
    check_ehlo(LIT("250-mx\r\n250-STARTTLSX\r\n250 XSTARTTLS\r\n"), false,
               "250-mx\r\n250-STARTTLSX\r\n250 XSTARTTLS\r\n", 0);
    check_ehlo(LIT("250-mx\r\n250-STARTTLS-LIKE\r\n250 X STARTTLS\r\n"), true,
               "250-mx\r\n250-STARTTLS-LIKE\r\n250-X STARTTLS\r\n250 STARTTLS\r\n", 0);
    check_ehlo(LIT("250-STARTTLS\r\n250 ok\r\n"), false, "250-STARTTLS\r\n250 ok\r\n", 0);
    check_ehlo(LIT("250 STARTTLS\r\n"), false, "250 STARTTLS\r\n", 0);

    /* Bare LF (and a mix) comes out as CRLF. */
    check_ehlo(LIT("250-mx\n250-PIPELINING\n250 STARTTLS\n"), false, "250-mx\r\n250 PIPELINING\r\n",
               SMTP_CAP_PIPELINING | SMTP_CAP_STARTTLS);
    check_ehlo(LIT("250-mx\r\n250-PIPELINING\n250 CHUNKING\r\n"), true,
               "250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 STARTTLS\r\n",
               SMTP_CAP_PIPELINING | SMTP_CAP_CHUNKING);
    check_ehlo(LIT("250 mx\n"), true, "250-mx\r\n250 STARTTLS\r\n", 0);
    /* The worst growth: short bare-LF lines plus the added line, still under the bound. */
    check_ehlo(LIT("250-\n250-\n250-\n250-\n250\n"), true,
               "250-\r\n250-\r\n250-\r\n250-\r\n250-\r\n250 STARTTLS\r\n", 0);
    check_ehlo(LIT("250\n"), true, "250-\r\n250 STARTTLS\r\n", 0);

    /* Every capability flag, in any case, with parameters. */
    check_ehlo(LIT("250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-SIZE 1000\r\n"
                   "250-8BITMIME\r\n250-XCLIENT ADDR NAME\r\n250-BINARYMIME\r\n"
                   "250-AUTH PLAIN LOGIN\r\n250 STARTTLS\r\n"),
               false,
               "250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-SIZE 1000\r\n"
               "250-8BITMIME\r\n250-XCLIENT ADDR NAME\r\n250-BINARYMIME\r\n"
               "250 AUTH PLAIN LOGIN\r\n",
               SMTP_CAP_PIPELINING | SMTP_CAP_CHUNKING | SMTP_CAP_SIZE | SMTP_CAP_8BITMIME |
                   SMTP_CAP_XCLIENT | SMTP_CAP_BINARYMIME | SMTP_CAP_STARTTLS | SMTP_CAP_AUTH);
    check_ehlo(LIT("250-mx\r\n250-pipelining\r\n250-Chunking\r\n250-size\r\n"
                   "250-8bitmime\r\n250-xclient NAME\r\n250 binarymime\r\n"),
               false,
               "250-mx\r\n250-pipelining\r\n250-Chunking\r\n250-size\r\n"
               "250-8bitmime\r\n250-xclient NAME\r\n250 binarymime\r\n",
               SMTP_CAP_PIPELINING | SMTP_CAP_CHUNKING | SMTP_CAP_SIZE | SMTP_CAP_8BITMIME |
                   SMTP_CAP_XCLIENT | SMTP_CAP_BINARYMIME);
    check_ehlo(LIT("250-mx\r\n250-SIZEX\r\n250-PIPELINING2\r\n250 X PIPELINING\r\n"), false,
               "250-mx\r\n250-SIZEX\r\n250-PIPELINING2\r\n250 X PIPELINING\r\n", 0);

    /* Not a well-formed 250 reply. */
    check_ehlo_fails(LIT(""), SMTP_BAD_SYNTAX);
    check_ehlo_fails(NULL, 0, SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("220 mx\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("500 no\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("251 mx\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250-mx\r\n550 no\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250-mx\r\n251 x\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250 mx"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250 mx\r"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250-mx\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250-mx\r\n250-STARTTLS\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250 mx\r\n250 x\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250 mx\r\nx"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250 mx\r\n\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250-mx\r\n\r\n250 x\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250-m\rx\r\n250 a\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250-mx\r\n250 a\r\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250-mx\r\n250-STARTTLS\0\r\n250 a\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250x mx\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("25\r\n"), SMTP_BAD_SYNTAX);

    /* Too small an output; NULL with no room is fine too. */
    char out[8];
    size_t out_len = 99;
    unsigned caps = 99;
    CHECK_INT(smtp_ehlo_edit(NULL, &out_len, &caps, 0, LIT("250 mx\r\n"), false, 0), SMTP_TOO_LONG);
    CHECK_INT(out_len, 0);
    CHECK_INT(smtp_ehlo_edit(out, &out_len, &caps, sizeof(out), LIT("250 mx\r\n"), true, 0),
              SMTP_TOO_LONG);
    CHECK_INT(smtp_ehlo_edit(out, &out_len, &caps, sizeof(out), LIT("250 mx\r\n"), false, 0),
              SMTP_OK);
    CHECK_LIT(out, out_len, "250 mx\r\n");
    /* A syntax error wins over a full output. */
    CHECK_INT(smtp_ehlo_edit(out, &out_len, &caps, sizeof(out),
                             LIT("250-a long greeting line\r\n550 x\r\n"), false, 0),
              SMTP_BAD_SYNTAX);

    /* A realistic large reply, at the bound for CRLF input. */
    char reply[SMTP_EHLO_REPLY_MAX];
    size_t reply_len = 0;
    reply_len += (size_t)snprintf(reply, sizeof(reply), "250-mx.example\r\n");
    for (int i = 0; i < 200; i++) {
        reply_len += (size_t)snprintf(reply + reply_len, sizeof(reply) - reply_len,
                                      i == 100 ? "250-STARTTLS\r\n" : "250-X-CAP-%03d\r\n", i);
    }
    reply_len += (size_t)snprintf(reply + reply_len, sizeof(reply) - reply_len, "250 LAST\r\n");
    char big_out[SMTP_EHLO_REPLY_MAX + 16];
    CHECK_INT(smtp_ehlo_edit(big_out, &out_len, &caps, reply_len + 16, reply, reply_len, true, 0),
              SMTP_OK);
    CHECK_INT(out_len, reply_len); /* "250-STARTTLS\r\n" moved to "250 STARTTLS\r\n" */
    CHECK_INT(caps, SMTP_CAP_STARTTLS);
    check_reply_whole(big_out, out_len);
}

/* ---- the end-of-data scanner ---- */

/* The longest content the scanner tests feed; the relayed copy may double its LFs. */
#define SCAN_MAX 96

/*
 * What feeding a whole content produced, counted from the content start: the last result
 * (SMTP_DATA_BARE_LF is never last: it shows in |out| as the CR before an LF), where it
 * was, why it rejected, where skipping found the end after a rejection, and every byte
 * relayed (content, plus a CR before each bare LF in normalize mode).
 */
struct scan_outcome {
    enum smtp_data_result result; /* MORE, END or REJECT */
    size_t at;       /* MORE: bytes taken (held-back ones not); END: just past the marker;
                        REJECT: the offset of the byte that showed it */
    const char *why; /* smtp_data_reject_name() at the end */
    long skip_end;   /* after REJECT: where smtp_skip_bad_data() found the end, or -1 */
    char out[2 * SCAN_MAX];
    size_t out_len;
};

static void scan_outcome_init(struct scan_outcome *o)
{
    o->result = SMTP_DATA_MORE;
    o->at = 0;
    o->why = "none";
    o->skip_end = -1;
    o->out_len = 0;
}

static void scan_relay(struct scan_outcome *o, const char *data, size_t len)
{
    if (len > 0 && o->out_len + len <= sizeof(o->out)) {
        memcpy(o->out + o->out_len, data, len);
    }
    o->out_len += len;
}

static bool scan_outcome_equal(const struct scan_outcome *a, const struct scan_outcome *b)
{
    return a->result == b->result && a->at == b->at && strcmp(a->why, b->why) == 0 &&
           a->skip_end == b->skip_end && a->out_len == b->out_len && a->out_len <= sizeof(a->out) &&
           memcmp(a->out, b->out, a->out_len) == 0;
}

/* scan_piece returns data[0, len) to pass to the scanner: in place, or when |copy| an
 * exact-size heap copy (NULL when empty) so that ASan sees any read past it. */
static const char *scan_piece(const char *data, size_t len, bool copy)
{
    if (!copy) {
        return data;
    }
    if (len == 0) {
        return NULL;
    }
    char *piece = malloc(len);
    CHECK(piece != NULL);
    memcpy(piece, data, len);
    return piece;
}

static void scan_piece_free(const char *piece, bool copy)
{
    if (copy) {
        free((void *)piece);
    }
}

/*
 * scan_pieces is the driver: it receives data[0, len) cut at cuts[0] <= cuts[1] <= ...
 * (pieces may be empty) and reads it as the session does: the bytes smtp_data_scan() does
 * not take stay in front of the next piece; after SMTP_DATA_BARE_LF it relays the bytes
 * before the LF and a CR, and scans on from the LF; after SMTP_DATA_REJECT it passes the
 * rest, from the rejected byte on, to smtp_skip_bad_data(). Contract violations (counts
 * out of range, a held-back rest that is not "." or ".\r", a rejected scanner that does
 * not keep rejecting) count in *violations.
 */
static void scan_pieces(struct scan_outcome *o, const char *data, size_t len, bool normalize,
                        const size_t *cuts, size_t n_cuts, bool copy, int *violations)
{
    struct smtp_data_scanner s;
    smtp_data_scanner_init(&s, normalize);
    scan_outcome_init(o);
    bool rejected = false;
    size_t pos = 0; /* the first byte not taken yet */
    for (size_t i = 0; i <= n_cuts; i++) {
        size_t end = i < n_cuts ? cuts[i] : len;
        bool piece_done = false;
        size_t bare_lf_at = SIZE_MAX;
        while (!piece_done) {
            size_t n = end - pos;
            const char *piece = scan_piece(data + pos, n, copy);
            size_t used = 12345;
            if (rejected) {
                bool found = smtp_skip_bad_data(&s, &used, piece, n);
                scan_piece_free(piece, copy);
                if (used > n || (!found && used != n) || (found && used == 0)) {
                    (*violations)++;
                    return;
                }
                if (found) {
                    o->skip_end = (long)(pos + used);
                    return;
                }
                pos = end;
                break;
            }
            enum smtp_data_result r = smtp_data_scan(&s, &used, piece, n);
            if (used > n) {
                scan_piece_free(piece, copy);
                (*violations)++;
                return;
            }
            switch (r) {
            case SMTP_DATA_MORE: {
                /* What is held back is "." or ".\r" starting a line. */
                size_t held = n - used;
                if (held > 2 || (held >= 1 && piece[used] != '.') ||
                    (held == 2 && piece[used + 1] != '\r') ||
                    (held >= 1 && pos + used > 0 && data[pos + used - 1] != '\n')) {
                    (*violations)++;
                }
                scan_relay(o, data + pos, used);
                pos += used;
                o->at = pos;
                piece_done = true;
                break;
            }
            case SMTP_DATA_END:
                if (used < 3 || memcmp(piece + used - 3, ".\r\n", 3) != 0) {
                    (*violations)++;
                }
                scan_relay(o, data + pos, used);
                pos += used;
                o->result = r;
                o->at = pos;
                o->why = smtp_data_reject_name(&s);
                scan_piece_free(piece, copy);
                return;
            case SMTP_DATA_BARE_LF:
                /* The scanner must take the LF on the next call, not report it again. */
                if (!normalize || used >= n || piece[used] != '\n' || pos + used == bare_lf_at) {
                    scan_piece_free(piece, copy);
                    (*violations)++;
                    return;
                }
                scan_relay(o, data + pos, used);
                scan_relay(o, "\r", 1);
                pos += used;
                bare_lf_at = pos;
                break;
            case SMTP_DATA_REJECT: {
                if (used >= n) {
                    scan_piece_free(piece, copy);
                    (*violations)++;
                    return;
                }
                scan_relay(o, data + pos, used); /* clean */
                pos += used;
                o->result = r;
                o->at = pos;
                o->why = smtp_data_reject_name(&s);
                /* It keeps rejecting, whatever it is offered. */
                size_t again = 12345;
                if (smtp_data_scan(&s, &again, piece + used, n - used) != SMTP_DATA_REJECT ||
                    again != 0 || strcmp(smtp_data_reject_name(&s), o->why) != 0) {
                    (*violations)++;
                }
                rejected = true;
                break;
            }
            }
            scan_piece_free(piece, copy);
        }
    }
}

/* The first "\r\n.\r\n" whose CR is at |from| or later: the offset just past it, or -1. */
static long reference_marker(const char *data, size_t len, size_t from)
{
    for (size_t k = from; k + 5 <= len; k++) {
        if (memcmp(data + k, "\r\n.\r\n", 5) == 0) {
            return (long)k + 5;
        }
    }
    return -1;
}

/*
 * The reference for smtp_data_scan(), written from the specification line by line on the
 * whole buffer. A line ends at LF. How the previous line ended matters: CRLF (the content
 * start counts as one) or a bare LF (normalize mode only; in reject mode a bare LF is a
 * violation). In each line the earliest violation wins, then the end of data:
 *   - a CR followed by a byte other than LF: "bare-cr" at that byte;
 *   - a NUL starting the line, or "." then NUL: "nul-at-line-start" at the NUL;
 *   - ".\n": "dot-line-bare-lf" at the LF; "." then CR or LF after a bare LF:
 *     "dot-line-bare-lf" at that byte;
 *   - in reject mode, an LF not after CR: "bare-lf" at the LF;
 *   - ".\r\n" after CRLF: the end, just past it.
 * The last, incomplete line is held back when it is "." (or ".\r" after CRLF).
 */
static void reference_scan(struct scan_outcome *o, const char *d, size_t len, bool normalize)
{
    scan_outcome_init(o);
    bool after_bare_lf = false;
    size_t s = 0; /* the start of the current line */
    while (s < len) {
        const char *lf = memchr(d + s, '\n', len - s);
        size_t j = lf != NULL ? (size_t)(lf - d) : len; /* its LF, or the end */
        size_t bad_at = SIZE_MAX;
        const char *why = NULL;
#define CANDIDATE(at, name)                                                                        \
    do {                                                                                           \
        if ((at) < bad_at) {                                                                       \
            bad_at = (at);                                                                         \
            why = (name);                                                                          \
        }                                                                                          \
    } while (0)
        if (d[s] == '\0') {
            CANDIDATE(s, "nul-at-line-start");
        }
        if (d[s] == '.' && s + 1 < len) {
            char next = d[s + 1];
            if (next == '\0') {
                CANDIDATE(s + 1, "nul-at-line-start");
            } else if (next == '\n' || (next == '\r' && after_bare_lf)) {
                CANDIDATE(s + 1, "dot-line-bare-lf");
            }
        }
        for (size_t p = s; p < j; p++) {
            if (d[p] == '\r' && p + 1 < len && d[p + 1] != '\n') {
                CANDIDATE(p + 1, "bare-cr");
                break;
            }
        }
        bool bare_lf = lf != NULL && (j == s || d[j - 1] != '\r');
        if (bare_lf && !normalize) {
            CANDIDATE(j, "bare-lf");
        }
#undef CANDIDATE
        if (why != NULL) {
            scan_relay(o, d + s, bad_at - s);
            o->result = SMTP_DATA_REJECT;
            o->at = bad_at;
            o->why = why;
            o->skip_end = reference_marker(d, len, bad_at);
            return;
        }
        if (lf == NULL) {
            size_t n = len - s;
            bool hold = d[s] == '.' && (n == 1 || (n == 2 && d[s + 1] == '\r' && !after_bare_lf));
            size_t take = hold ? s : len;
            scan_relay(o, d + s, take - s);
            o->at = take;
            return;
        }
        if (!after_bare_lf && j == s + 2 && d[s] == '.' && d[s + 1] == '\r') {
            scan_relay(o, d + s, 3);
            o->result = SMTP_DATA_END;
            o->at = j + 1;
            return;
        }
        scan_relay(o, d + s, j - s);
        if (bare_lf) {
            scan_relay(o, "\r", 1);
        }
        scan_relay(o, "\n", 1);
        after_bare_lf = bare_lf;
        s = j + 1;
    }
    o->at = len;
}

static void print_bytes(const char *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)data[i];
        if (c == '\r') {
            fprintf(stderr, "\\r");
        } else if (c == '\n') {
            fprintf(stderr, "\\n");
        } else if (c < 0x20 || c >= 0x7f) {
            fprintf(stderr, "\\x%02x", c);
        } else {
            fputc(c, stderr);
        }
    }
}

static void print_outcome(const char *label, const struct scan_outcome *o)
{
    static const char *const results[] = {"MORE", "END", "BARE_LF", "REJECT"};
    fprintf(stderr, " %s %s at %zu why %s skip %ld out \"", label, results[o->result], o->at,
            o->why, o->skip_end);
    print_bytes(o->out, o->out_len < sizeof(o->out) ? o->out_len : sizeof(o->out));
    fprintf(stderr, "\"");
}

/* One mismatch is printed per input so a broken scanner does not flood the output. */
static int check_scan_split(const char *data, size_t len, bool normalize, const size_t *cuts,
                            size_t n_cuts, bool copy, const struct scan_outcome *want,
                            int bad_so_far)
{
    int violations = 0;
    struct scan_outcome got;
    scan_pieces(&got, data, len, normalize, cuts, n_cuts, copy, &violations);
    if (violations == 0 && scan_outcome_equal(&got, want)) {
        return 0;
    }
    if (bad_so_far == 0) {
        fprintf(stderr, "scanner (%s): \"", normalize ? "normalize" : "reject");
        print_bytes(data, len);
        fprintf(stderr, "\" cut at");
        for (size_t i = 0; i < n_cuts; i++) {
            fprintf(stderr, " %zu", cuts[i]);
        }
        fprintf(stderr, ":");
        print_outcome("got", &got);
        print_outcome("want", want);
        fprintf(stderr, "%s\n", violations ? " (contract violated)" : "");
    }
    return 1;
}

/*
 * check_scan_all_splits feeds |data| whole, in every 2-piece split, one byte at a time,
 * and (when |three|) in every 3-piece split, and checks each gives |want|. Returns the
 * number of feedings that did not.
 */
static int check_scan_all_splits(const char *data, size_t len, bool normalize, bool three,
                                 bool copy, const struct scan_outcome *want)
{
    int bad = 0;
    bad += check_scan_split(data, len, normalize, NULL, 0, copy, want, bad);
    for (size_t a = 0; a <= len; a++) {
        bad += check_scan_split(data, len, normalize, &a, 1, copy, want, bad);
    }
    size_t each[SCAN_MAX + 1];
    for (size_t i = 0; i <= len; i++) {
        each[i] = i;
    }
    bad += check_scan_split(data, len, normalize, each, len + 1, copy, want, bad);
    /* Byte by byte with an empty piece between any two. */
    size_t doubled[2 * SCAN_MAX + 2];
    for (size_t i = 0; i <= len; i++) {
        doubled[2 * i] = i;
        doubled[2 * i + 1] = i;
    }
    bad += check_scan_split(data, len, normalize, doubled, 2 * len + 2, copy, want, bad);
    for (size_t a = 0; three && a <= len; a++) {
        for (size_t b = a; b <= len; b++) {
            size_t cuts[2] = {a, b};
            bad += check_scan_split(data, len, normalize, cuts, 2, copy, want, bad);
        }
    }
    return bad;
}

struct scan_expect {
    enum smtp_data_result result;
    size_t at;
    const char *why;
    long skip_end;
};

struct scan_case {
    const char *data;
    size_t len;
    struct scan_expect mode[2]; /* [0]: reject mode, [1]: normalize mode */
};

#define MORE(at)                                                                                   \
    {                                                                                              \
        SMTP_DATA_MORE, (at), "none", -1                                                           \
    }
#define END(at)                                                                                    \
    {                                                                                              \
        SMTP_DATA_END, (at), "none", -1                                                            \
    }
#define REJ(at, why, skip_end)                                                                     \
    {                                                                                              \
        SMTP_DATA_REJECT, (at), (why), (skip_end)                                                  \
    }
/* The same outcome in both modes, or one each. */
#define SCAN_BOTH(lit, expect)                                                                     \
    {                                                                                              \
        (lit), sizeof(lit) - 1,                                                                    \
        {                                                                                          \
            expect, expect                                                                         \
        }                                                                                          \
    }
#define SCAN_MODES(lit, reject, normalize)                                                         \
    {                                                                                              \
        (lit), sizeof(lit) - 1,                                                                    \
        {                                                                                          \
            reject, normalize                                                                      \
        }                                                                                          \
    }

#define CR "bare-cr"
#define LF "bare-lf"
#define DOT "dot-line-bare-lf"
#define NUL "nul-at-line-start"

static const struct scan_case scan_cases[] = {
    /* The empty message and ordinary ones; bytes after the marker are not used. */
    SCAN_BOTH(".\r\n", END(3)),
    SCAN_BOTH(".\r\nQUIT\r\n", END(3)),
    SCAN_BOTH("\r\n.\r\n", END(5)),
    SCAN_BOTH("a\r\n.\r\n", END(6)),
    SCAN_BOTH("Subject: x\r\n\r\nbody\r\n.\r\nMAIL FROM:<a>\r\n", END(23)),
    SCAN_BOTH("a\r\n.\r\n.\r\n", END(6)),
    SCAN_BOTH("", MORE(0)),
    SCAN_BOTH("a", MORE(1)),
    SCAN_BOTH("a\r\nb\r\n", MORE(6)),
    SCAN_BOTH("a\r", MORE(2)),
    SCAN_BOTH("a\r\n.a\r\n", MORE(7)),
    /* A line that is so far "." or ".\r" is held back: it is not content yet. */
    SCAN_BOTH(".", MORE(0)),
    SCAN_BOTH(".\r", MORE(0)),
    SCAN_BOTH("a\r\n.", MORE(3)),
    SCAN_BOTH("a\r\n.\r", MORE(3)),
    SCAN_BOTH("a\r\n..", MORE(5)),
    SCAN_BOTH("a\r\n.x", MORE(5)),
    SCAN_BOTH("a.", MORE(2)),
    SCAN_BOTH("a.\r", MORE(3)),
    /* Dot-stuffed lines (RFC 5321 section 4.5.2) and dots that are not alone. */
    SCAN_BOTH("..\r\n.\r\n", END(7)),
    SCAN_BOTH("..x\r\n...\r\n.\r\n", END(13)),
    SCAN_BOTH(".x\r\n. \r\n.\r\n", END(11)),
    SCAN_BOTH("a.\r\n.\r\n", END(7)),
    SCAN_BOTH(". \r\n.\r\n", END(7)),
    /* 8-bit bytes are content; NUL is content inside a line, not at its start. */
    SCAN_BOTH("\xff\xfe\0\x80\r\nx\0.\r\n.\r\n", END(14)),
    SCAN_BOTH("a\0\r\n.\r\n", END(7)),
    SCAN_BOTH("..\0\r\n.\r\n", END(8)),
    SCAN_BOTH("\xff\xfe\0\x80\r\n\0.\r\n.\r\n", REJ(6, NUL, 13)),
    SCAN_BOTH("\0\r\n.\r\n", REJ(0, NUL, 6)),
    SCAN_BOTH("\r\n\0.\r\n", REJ(2, NUL, -1)),
    SCAN_BOTH("\r\n\0.\r\n.\r\n", REJ(2, NUL, 9)),
    SCAN_BOTH(".\0\r\n", REJ(1, NUL, -1)),
    SCAN_BOTH(".\0", REJ(1, NUL, -1)),
    SCAN_BOTH("\0", REJ(0, NUL, -1)),
    SCAN_BOTH("a\r\n.\0x\r\n.\r\n", REJ(4, NUL, 11)),
    SCAN_BOTH("a\r\n\0\r\n.\r\n", REJ(3, NUL, 9)),
    /* A "." line ended by a bare LF: rejected at the LF, in both modes. */
    SCAN_BOTH(".\n", REJ(1, DOT, -1)),
    SCAN_BOTH("a\r\n.\n", REJ(4, DOT, -1)),
    SCAN_BOTH("\r\n.\n", REJ(3, DOT, -1)),
    SCAN_BOTH("a\r\n.\nRCPT TO:<x>\r\n.\r\n", REJ(4, DOT, 21)),
    /* Any other bare LF: rejected in reject mode, a line end relayed as CRLF otherwise. */
    SCAN_MODES("\n", REJ(0, LF, -1), MORE(1)),
    SCAN_MODES("a\nb", REJ(1, LF, -1), MORE(3)),
    SCAN_MODES("a\r\n\n", REJ(3, LF, -1), MORE(4)),
    SCAN_MODES("a\n\n", REJ(1, LF, -1), MORE(3)),
    SCAN_MODES("x\r\n..\n", REJ(5, LF, -1), MORE(6)),
    SCAN_MODES("a\nb\r\n\r\n.\r\n", REJ(1, LF, 10), END(10)),
    SCAN_MODES("a\n\r\n.\r\n", REJ(1, LF, 7), END(7)),
    SCAN_MODES("\n\r\n.\r\n", REJ(0, LF, 6), END(6)),
    SCAN_MODES("a\n.x\r\n.\r\n", REJ(1, LF, 9), END(9)),
    SCAN_MODES("a\n..\r\n.\r\n", REJ(1, LF, 9), END(9)),
    SCAN_MODES("a\n.", REJ(1, LF, -1), MORE(2)),
    SCAN_MODES("a\n.x", REJ(1, LF, -1), MORE(4)),
    /* A "." line after a bare LF, whatever ends it: rejected at the byte after the dot. */
    SCAN_MODES("\n.\n", REJ(0, LF, -1), REJ(2, DOT, -1)),
    SCAN_MODES("a\n.\r\n", REJ(1, LF, -1), REJ(3, DOT, -1)),
    SCAN_MODES("\n.\r\n", REJ(0, LF, -1), REJ(2, DOT, -1)),
    SCAN_MODES("a\n.\r", REJ(1, LF, -1), REJ(3, DOT, -1)),
    SCAN_MODES("a\nb\n.\r\n", REJ(1, LF, -1), REJ(5, DOT, -1)),
    SCAN_MODES("a\n.\0", REJ(1, LF, -1), REJ(3, NUL, -1)),
    SCAN_MODES("a\n\0", REJ(1, LF, -1), REJ(2, NUL, -1)),
    /* Bare CR: rejected at the byte after it. */
    SCAN_BOTH("a\rb", REJ(2, CR, -1)),
    SCAN_BOTH("\r.\r", REJ(1, CR, -1)),
    SCAN_BOTH("\r.\r\n", REJ(1, CR, -1)),
    SCAN_BOTH("\r\r\n", REJ(1, CR, -1)),
    SCAN_BOTH("a\r\n.\rx", REJ(5, CR, -1)),
    SCAN_BOTH(".\r.", REJ(2, CR, -1)),
    SCAN_BOTH(".\r\r", REJ(2, CR, -1)),
    SCAN_BOTH("a\r\0", REJ(2, CR, -1)),
    SCAN_BOTH("a\r.\r", REJ(2, CR, -1)),
    SCAN_MODES("a\r\n\r\n", MORE(5), MORE(5)),
    /* Smuggling attempts (CVE-2023-51764): whatever follows is content to skip, and only a
     * real CRLF.CRLF from the rejected byte on ends it. */
    SCAN_MODES("a\n.\nMAIL FROM:<x>\r\n.\r\nQUIT\r\n", REJ(1, LF, 22), REJ(3, DOT, 22)),
    SCAN_BOTH("a\r.\r\nRCPT TO:<x>\r\n.\r\nQUIT", REJ(2, CR, 21)),
    SCAN_BOTH("a\r.\r\n.\r\n", REJ(2, CR, 8)),
    SCAN_MODES("a\n.\r\n.\r\n", REJ(1, LF, 8), REJ(3, DOT, 8)),
    SCAN_BOTH("a\r\r\n.\r\nx", REJ(2, CR, 7)),
    SCAN_BOTH("\r\r\n.\r\n", REJ(1, CR, 6)),
    SCAN_BOTH("a\r\n.\r\r\n.\r\n", REJ(5, CR, 10)),
    SCAN_MODES("a\n.\n.\n\r\n.\n\r.\r", REJ(1, LF, -1), REJ(3, DOT, -1)),
    SCAN_BOTH("a\r\n.\n.\r\n", REJ(4, DOT, -1)),
    SCAN_BOTH("a\r\n.\n\r\n.\r\n", REJ(4, DOT, 10)),
    SCAN_BOTH("\r\n\0.\r\nMAIL FROM:<x>\r\n.\r\n", REJ(2, NUL, 24)),
    SCAN_MODES("a\n\0.\r\n\r\n.\r\n", REJ(1, LF, 11), REJ(2, NUL, 11)),
};

#undef CR
#undef LF
#undef DOT
#undef NUL

static void test_data_scan_cases(void)
{
    for (size_t i = 0; i < sizeof(scan_cases) / sizeof(scan_cases[0]); i++) {
        const struct scan_case *c = &scan_cases[i];
        CHECK(c->len <= SCAN_MAX);
        for (int normalize = 0; normalize <= 1; normalize++) {
            const struct scan_expect *e = &c->mode[normalize];
            /* The hand-written expectation agrees with the reference... */
            struct scan_outcome want;
            reference_scan(&want, c->data, c->len, normalize);
            bool agree = want.result == e->result && want.at == e->at &&
                         strcmp(want.why, e->why) == 0 && want.skip_end == e->skip_end;
            if (!agree) {
                fprintf(stderr, "scan case %zu (%s): \"", i, normalize ? "normalize" : "reject");
                print_bytes(c->data, c->len);
                fprintf(stderr, "\":");
                print_outcome("reference", &want);
                fprintf(stderr, "\n");
            }
            CHECK(agree);
            /* ...and the scanner gives it however the content is cut, on exact copies. */
            CHECK_INT(check_scan_all_splits(c->data, c->len, normalize, true, true, &want), 0);
        }
    }
}

/* The relayed bytes themselves, for a few contents: normalize mode adds the CRs. */
static void check_relayed(const char *data, size_t len, bool normalize, const char *want,
                          size_t want_len)
{
    struct scan_outcome got;
    int violations = 0;
    scan_pieces(&got, data, len, normalize, NULL, 0, false, &violations);
    CHECK_INT(violations, 0);
    CHECK_MEM(got.out, got.out_len, want, want_len);
    struct scan_outcome ref;
    reference_scan(&ref, data, len, normalize);
    CHECK_MEM(ref.out, ref.out_len, want, want_len);
}

#define CHECK_RELAYED(lit, normalize, want) check_relayed(LIT(lit), (normalize), LIT(want))

static void test_data_scan_relayed(void)
{
    CHECK_RELAYED("a\nb\r\nc\n\r\n.\r\n", true, "a\r\nb\r\nc\r\n\r\n.\r\n");
    /* Rejected: the clean bytes before the rejected one. */
    CHECK_RELAYED("a\nb\r\nc\n\n.\r\n", true, "a\r\nb\r\nc\r\n\r\n.");
    CHECK_RELAYED("a\nb\r\n\r\n.\r\nNEXT", true, "a\r\nb\r\n\r\n.\r\n");
    CHECK_RELAYED("a\nb\r\n\r\n.\r\nNEXT", false, "a");
    CHECK_RELAYED("..\n.", true, "..\r\n");
    CHECK_RELAYED("x\r\n.\r", true, "x\r\n");
    CHECK_RELAYED("x\r\n.\r", false, "x\r\n");
    CHECK_RELAYED("x\r\nab\rc", false, "x\r\nab\r");
    CHECK_RELAYED("\n", true, "\r\n");
    CHECK_RELAYED("\n", false, "");

    /* The session's loop, spelled out: relay, CR, resume at the LF. */
    struct smtp_data_scanner s;
    size_t used = 99;
    smtp_data_scanner_init(&s, true);
    static const char content[] = "one\ntwo\r\n.\r\n";
    CHECK_INT(smtp_data_scan(&s, &used, LIT(content)), SMTP_DATA_BARE_LF);
    CHECK_INT(used, 3);
    CHECK_INT(smtp_data_scan(&s, &used, content + 3, sizeof(content) - 1 - 3), SMTP_DATA_END);
    CHECK_INT(used, sizeof(content) - 1 - 3);
    CHECK_STR(smtp_data_reject_name(&s), "none");
}

/*
 * Every content of up to 8 bytes over the bytes that matter ("\r", "\n", ".", "x"), and of
 * up to 6 with NUL too, in both modes, at every 2- and 3-piece split and byte by byte.
 */
static void test_data_scan_exhaustive(void)
{
    static const struct {
        const char *alphabet;
        size_t n_letters;
        size_t max_len;
        int n_inputs;
    } runs[] = {
        {"\r\n.x", 4, 8, 87381},
        {"\r\n.x\0", 5, 6, 19531},
    };
    for (size_t run = 0; run < sizeof(runs) / sizeof(runs[0]); run++) {
        size_t k = runs[run].n_letters;
        int bad = 0;
        int n_inputs = 0;
        for (size_t len = 0; len <= runs[run].max_len; len++) {
            size_t n = 1;
            for (size_t i = 0; i < len; i++) {
                n *= k;
            }
            for (size_t code = 0; code < n; code++) {
                char data[8];
                size_t rest = code;
                for (size_t i = 0; i < len; i++) {
                    data[i] = runs[run].alphabet[rest % k];
                    rest /= k;
                }
                for (int normalize = 0; normalize <= 1; normalize++) {
                    struct scan_outcome want;
                    reference_scan(&want, data, len, normalize);
                    bad += check_scan_all_splits(data, len, normalize, true, false, &want) != 0;
                }
                n_inputs++;
            }
        }
        CHECK_INT(n_inputs, runs[run].n_inputs);
        CHECK_INT(bad, 0);
    }
}

static void test_data_scan_state(void)
{
    struct smtp_data_scanner s;
    size_t used = 99;

    /* Empty pieces, even NULL ones, change nothing. */
    for (int normalize = 0; normalize <= 1; normalize++) {
        smtp_data_scanner_init(&s, normalize);
        CHECK_STR(smtp_data_reject_name(&s), "none");
        CHECK_INT(smtp_data_scan(&s, &used, NULL, 0), SMTP_DATA_MORE);
        CHECK_INT(used, 0);
        CHECK_INT(smtp_data_scan(&s, &used, LIT("x\r")), SMTP_DATA_MORE);
        CHECK_INT(used, 2);
        CHECK_INT(smtp_data_scan(&s, &used, NULL, 0), SMTP_DATA_MORE);
        CHECK_INT(used, 0);
        CHECK_INT(smtp_data_scan(&s, &used, LIT("")), SMTP_DATA_MORE);
        CHECK_INT(smtp_data_scan(&s, &used, LIT("\n")), SMTP_DATA_MORE);
        CHECK_INT(used, 1);
        /* ".\r" is held back, and offered again with the LF. */
        CHECK_INT(smtp_data_scan(&s, &used, LIT(".\r")), SMTP_DATA_MORE);
        CHECK_INT(used, 0);
        CHECK_INT(smtp_data_scan(&s, &used, NULL, 0), SMTP_DATA_MORE);
        CHECK_INT(used, 0);
        CHECK_INT(smtp_data_scan(&s, &used, LIT(".\r\nNEXT")), SMTP_DATA_END);
        CHECK_INT(used, 3);

        /* After the end the scanner is at the start of the next message, same mode. */
        CHECK_INT(smtp_data_scan(&s, &used, LIT("x\r\n.\r\n")), SMTP_DATA_END);
        CHECK_INT(used, 6);
        CHECK_INT(smtp_data_scan(&s, &used, LIT(".\r\n")), SMTP_DATA_END);
        CHECK_INT(used, 3);
        CHECK_INT(s.normalize, normalize);
        CHECK_INT(smtp_data_scan(&s, &used, LIT("a\nb")),
                  normalize ? SMTP_DATA_BARE_LF : SMTP_DATA_REJECT);
        CHECK_INT(used, 1);
    }

    /* A trailing CR waits for the next piece: fine with an LF, bare without. */
    smtp_data_scanner_init(&s, false);
    CHECK_INT(smtp_data_scan(&s, &used, LIT("a\r")), SMTP_DATA_MORE);
    CHECK_INT(used, 2);
    CHECK_INT(smtp_data_scan(&s, &used, LIT("\nb\r")), SMTP_DATA_MORE);
    CHECK_INT(used, 3);
    CHECK_INT(smtp_data_scan(&s, &used, LIT(".\r\n")), SMTP_DATA_REJECT);
    CHECK_INT(used, 0);
    CHECK_STR(smtp_data_reject_name(&s), "bare-cr");
    /* Once rejected it stays so until re-initialised, whatever comes. */
    CHECK_INT(smtp_data_scan(&s, &used, LIT("\r\n.\r\n")), SMTP_DATA_REJECT);
    CHECK_INT(used, 0);
    CHECK_INT(smtp_data_scan(&s, &used, LIT(".\r\n")), SMTP_DATA_REJECT);
    CHECK_INT(used, 0);
    CHECK_INT(smtp_data_scan(&s, &used, NULL, 0), SMTP_DATA_REJECT);
    CHECK_INT(used, 0);
    CHECK_STR(smtp_data_reject_name(&s), "bare-cr");
    smtp_data_scanner_init(&s, false);
    CHECK_STR(smtp_data_reject_name(&s), "none");
    CHECK_INT(smtp_data_scan(&s, &used, LIT(".\r\n")), SMTP_DATA_END);

    /* Each reason's name. */
    static const struct {
        const char *data;
        size_t len;
        bool normalize;
        const char *name;
    } reasons[] = {
        {LIT("a\rb"), false, "bare-cr"},
        {LIT("a\nb"), false, "bare-lf"},
        {LIT("a\n.\r\n"), true, "dot-line-bare-lf"},
        {LIT(".\n"), false, "dot-line-bare-lf"},
        {LIT("\0"), false, "nul-at-line-start"},
        {LIT(".\0"), true, "nul-at-line-start"},
    };
    for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++) {
        smtp_data_scanner_init(&s, reasons[i].normalize);
        enum smtp_data_result r;
        size_t at = 0;
        while ((r = smtp_data_scan(&s, &used, reasons[i].data + at, reasons[i].len - at)) ==
               SMTP_DATA_BARE_LF) {
            at += used;
        }
        CHECK_INT(r, SMTP_DATA_REJECT);
        CHECK_STR(smtp_data_reject_name(&s), reasons[i].name);
    }

    /* A zeroed scanner is one initialised in reject mode. */
    struct smtp_data_scanner zero = {0};
    CHECK_STR(smtp_data_reject_name(&zero), "none");
    CHECK_INT(smtp_data_scan(&zero, &used, LIT(".\r\n")), SMTP_DATA_END);
    CHECK_INT(used, 3);
    zero = (struct smtp_data_scanner){0};
    CHECK_INT(smtp_data_scan(&zero, &used, LIT("a\nb")), SMTP_DATA_REJECT);
    CHECK_INT(used, 1);
    CHECK_STR(smtp_data_reject_name(&zero), "bare-lf");
    zero = (struct smtp_data_scanner){0};
    CHECK_INT(smtp_data_scan(&zero, &used, LIT("a\r\n.")), SMTP_DATA_MORE);
    CHECK_INT(used, 3);
}

/*
 * The header: "After SMTP_DATA_REJECT it keeps answering SMTP_DATA_REJECT with *out_used
 * 0". Once smtp_skip_bad_data() has taken part of the rest (without finding the end), the
 * scanner reads content again, and even finds an end of data inside the rejected message.
 */
static void test_data_scan_rejected_after_skip(void)
{
    struct smtp_data_scanner s;
    size_t used = 99;
    smtp_data_scanner_init(&s, false);
    CHECK_INT(smtp_data_scan(&s, &used, LIT("a\rb")), SMTP_DATA_REJECT);
    CHECK_INT(used, 2);
    CHECK(!smtp_skip_bad_data(&s, &used, LIT("b\r\n")));
    CHECK_INT(used, 3);
    CHECK_INT(smtp_data_scan(&s, &used, LIT(".\r\n")), SMTP_DATA_REJECT);
    CHECK_INT(used, 0);
    CHECK_STR(smtp_data_reject_name(&s), "bare-cr");
}

/* ---- smtp_skip_bad_data from a fresh scanner ---- */

/*
 * The reference: where a strictly conforming client means the content to end, found by
 * looking at the whole buffer: the first CRLF "." CRLF, the content start counting as a
 * CRLF. Returns the offset just past it, or -1.
 */
static long reference_end(const char *data, size_t len)
{
    if (len >= 3 && memcmp(data, ".\r\n", 3) == 0) {
        return 3;
    }
    return reference_marker(data, len, 0);
}

struct skip_case {
    const char *data;
    size_t len;
    long end;
};

#define SKIP_CASE(lit, end)                                                                        \
    {                                                                                              \
        (lit), sizeof(lit) - 1, (end)                                                              \
    }

static const struct skip_case skip_cases[] = {
    SKIP_CASE(".\r\n", 3),
    SKIP_CASE(".\r\nQUIT\r\n", 3),
    SKIP_CASE("a\r\n.\r\nQUIT\r\n", 6),
    SKIP_CASE("\n.\n.\r\n", -1),
    SKIP_CASE("\n.\n\r\n.\r\n", 8),
    SKIP_CASE("a\r.\r\n", -1),
    SKIP_CASE("a\n.\r\n", -1),
    SKIP_CASE("\r.\r\n", -1),
    SKIP_CASE("\r\r\n.\r\n", 6),
    SKIP_CASE("a\r\n.\r\r\n.\r\n", 10),
    SKIP_CASE("\0\xff\r\n.\r\n", 7),
    SKIP_CASE("\r\n\0.\r\n", -1),
    SKIP_CASE("\r\n.\0\r\n.\r\n", 9),
    SKIP_CASE("a\r\n.", -1),
    SKIP_CASE("a\r\n.\r", -1),
    SKIP_CASE("", -1),
};

/* skip_pieces feeds a fresh scanner's smtp_skip_bad_data() data cut at |cuts|. */
static long skip_pieces(const char *data, size_t len, bool normalize, const size_t *cuts,
                        size_t n_cuts, bool copy, int *violations)
{
    struct smtp_data_scanner s;
    smtp_data_scanner_init(&s, normalize);
    size_t start = 0;
    for (size_t i = 0; i <= n_cuts; i++) {
        size_t end = i < n_cuts ? cuts[i] : len;
        size_t used = 12345;
        const char *piece = scan_piece(data + start, end - start, copy);
        bool found = smtp_skip_bad_data(&s, &used, piece, end - start);
        scan_piece_free(piece, copy);
        if (used > end - start || (!found && used != end - start)) {
            (*violations)++;
        }
        if (found) {
            return (long)(start + used);
        }
        start = end;
    }
    return -1;
}

static int check_skip_all_splits(const char *data, size_t len, long want, bool copy)
{
    int bad = 0;
    int violations = 0;
    for (int normalize = 0; normalize <= 1; normalize++) {
        bad += skip_pieces(data, len, normalize, NULL, 0, copy, &violations) != want;
        for (size_t a = 0; a <= len; a++) {
            bad += skip_pieces(data, len, normalize, &a, 1, copy, &violations) != want;
        }
        size_t each[SCAN_MAX + 1];
        for (size_t i = 0; i <= len; i++) {
            each[i] = i;
        }
        bad += skip_pieces(data, len, normalize, each, len + 1, copy, &violations) != want;
        for (size_t a = 0; a <= len; a++) {
            for (size_t b = a; b <= len; b++) {
                size_t cuts[2] = {a, b};
                bad += skip_pieces(data, len, normalize, cuts, 2, copy, &violations) != want;
            }
        }
    }
    return bad + violations;
}

static void test_skip_bad_data(void)
{
    for (size_t i = 0; i < sizeof(skip_cases) / sizeof(skip_cases[0]); i++) {
        const struct skip_case *c = &skip_cases[i];
        CHECK_INT(reference_end(c->data, c->len), c->end);
        CHECK_INT(check_skip_all_splits(c->data, c->len, c->end, true), 0);
    }
    for (size_t i = 0; i < sizeof(scan_cases) / sizeof(scan_cases[0]); i++) {
        const struct scan_case *c = &scan_cases[i];
        CHECK_INT(check_skip_all_splits(c->data, c->len, reference_end(c->data, c->len), true), 0);
    }

    /* Exhaustively, as for the scanner. */
    static const char alphabet[5] = {'\r', '\n', '.', 'x', '\0'};
    int bad = 0;
    for (size_t len = 0; len <= 7; len++) {
        size_t n = 1;
        for (size_t i = 0; i < len; i++) {
            n *= 5;
        }
        for (size_t code = 0; code < n; code++) {
            char data[8];
            size_t rest = code;
            for (size_t i = 0; i < len; i++) {
                data[i] = alphabet[rest % 5];
                rest /= 5;
            }
            long want = reference_end(data, len);
            int violations = 0;
            for (size_t a = 0; a <= len; a++) {
                bad += skip_pieces(data, len, false, &a, 1, false, &violations) != want;
            }
            bad += violations;
        }
    }
    CHECK_INT(bad, 0);

    /* After the end, the scanner is ready for the next message, in its mode. */
    struct smtp_data_scanner s;
    size_t used;
    for (int normalize = 0; normalize <= 1; normalize++) {
        smtp_data_scanner_init(&s, normalize);
        CHECK(smtp_skip_bad_data(&s, &used, LIT("x\r\n.\r\n")));
        CHECK_INT(used, 6);
        CHECK_INT(smtp_data_scan(&s, &used, LIT(".\r\n")), SMTP_DATA_END);
        CHECK(!smtp_skip_bad_data(&s, &used, NULL, 0));
        CHECK_INT(used, 0);
        CHECK_INT(smtp_data_scan(&s, &used, LIT("a\nb")),
                  normalize ? SMTP_DATA_BARE_LF : SMTP_DATA_REJECT);
    }

    /* After a rejection: the reason is kept while skipping, and cleared at the end. */
    smtp_data_scanner_init(&s, true);
    CHECK_INT(smtp_data_scan(&s, &used, LIT("a\r\n\0x\r\n")), SMTP_DATA_REJECT);
    CHECK_INT(used, 3);
    CHECK(!smtp_skip_bad_data(&s, &used, LIT("\0x\r\n")));
    CHECK_STR(smtp_data_reject_name(&s), "nul-at-line-start");
    CHECK(smtp_skip_bad_data(&s, &used, LIT(".\r\nMAIL")));
    CHECK_INT(used, 3);
    CHECK_STR(smtp_data_reject_name(&s), "none");
    CHECK_INT(smtp_data_scan(&s, &used, LIT("a\nb")), SMTP_DATA_BARE_LF);

    /* Re-initialising after a rejection instead of continuing is the misuse the header
     * warns about: "\r.\r\n" would then look like an end. */
    smtp_data_scanner_init(&s, false);
    CHECK_INT(smtp_data_scan(&s, &used, LIT("a\r.\r\n")), SMTP_DATA_REJECT);
    CHECK_INT(used, 2);
    CHECK(!smtp_skip_bad_data(&s, &used, LIT(".\r\n")));
    smtp_data_scanner_init(&s, false);
    CHECK(smtp_skip_bad_data(&s, &used, LIT(".\r\n")));
}

/* ---- the scanner's fast path: block edges, long runs, and the scanner it replaced ---- */

/*
 * With SSE2, smtp_data_scan() passes clean 64-byte blocks from bit masks and steps
 * through the others; test_smtp_portable runs these tests on the portable search (8 bytes
 * at a time) instead. The tests put what matters at every offset of a block and across
 * block edges, in pieces of every size and alignment, and compare call by call with the
 * scanner that came before (tests/fuzz/smtp_data_reference.c).
 */

/* check_scan_spec feeds |data| in both modes whole, at every 2-piece split and byte by
 * byte, on exact heap copies, and returns how many feedings differ from reference_scan(). */
static int check_scan_spec(const char *data, size_t len)
{
    int bad = 0;
    for (int normalize = 0; normalize <= 1; normalize++) {
        struct scan_outcome want;
        reference_scan(&want, data, len, normalize);
        bad += check_scan_all_splits(data, len, normalize, false, true, &want);
    }
    return bad;
}

/* scan_filler fills data[0, len) with text (|lines|: 18 bytes and CRLF, over and over). */
static void scan_filler(char *data, size_t len, bool lines)
{
    for (size_t i = 0; i < len; i++) {
        size_t col = i % 20;
        data[i] = (char)('a' + i % 26);
        if (lines && col >= 18) {
            data[i] = col == 18 ? '\r' : '\n';
        }
    }
}

/* What can end, break or smuggle a line, put at every offset of a block (0..47) and around
 * the 64-byte edge, in plain text and among CRLF lines. */
static void test_data_scan_block_offsets(void)
{
    static const struct {
        const char *mark;
        size_t len;
    } marks[] = {
        {LIT("\r\n")},      {LIT("\r")},      {LIT("\n")},         {LIT("\r\n.")},
        {LIT("\r\n.\r\n")}, {LIT("\r\n.\n")}, {LIT("\n.\r\n")},    {LIT("\r\n\0")},
        {LIT("\r\n.\0")},   {LIT("\r\n..")},  {LIT("\r\r\n")},     {LIT("\r\n\r\n")},
        {LIT(".")},         {LIT("\0")},      {LIT("\r\n.\r\nX")}, {LIT("\n\n")},
    };
    int bad = 0;
    int n_inputs = 0;
    for (size_t m = 0; m < sizeof(marks) / sizeof(marks[0]); m++) {
        for (size_t pos = 0; pos < 72; pos = pos == 47 ? 56 : pos + 1) {
            for (int lines = 0; lines <= 1; lines++) {
                char data[SCAN_MAX];
                scan_filler(data, sizeof(data), lines != 0);
                size_t n = marks[m].len < sizeof(data) - pos ? marks[m].len : sizeof(data) - pos;
                memcpy(data + pos, marks[m].mark, n);
                bad += check_scan_spec(data, sizeof(data)) != 0;
                n_inputs++;
            }
        }
    }
    CHECK_INT(n_inputs, 16 * 64 * 2);
    CHECK_INT(bad, 0);
}

/* A CR at byte k and what follows it at k + 1, across 16-byte and 64-byte edges. */
static void test_data_scan_block_pairs(void)
{
    static const size_t at[] = {0, 1, 14, 15, 16, 17, 31, 32, 47, 48, 62, 63, 64, 65, 79, 80};
    for (size_t i = 0; i < sizeof(at) / sizeof(at[0]); i++) {
        size_t k = at[i];
        char data[SCAN_MAX];
        struct scan_outcome o;
        memset(data, 'x', sizeof(data));

        memcpy(data + k, "\r\n.\r\n", 5); /* CRLF at k, k + 1: the end */
        for (int normalize = 0; normalize <= 1; normalize++) {
            reference_scan(&o, data, k + 5, normalize);
            CHECK_INT(o.result, SMTP_DATA_END);
            CHECK_INT(o.at, k + 5);
        }
        CHECK_INT(check_scan_spec(data, k + 5), 0);
        CHECK_INT(check_scan_spec(data, sizeof(data)), 0);

        memset(data, 'x', sizeof(data));
        memcpy(data + k, "\r\n\r\n", 4); /* an empty line, and text after it */
        CHECK_INT(check_scan_spec(data, sizeof(data)), 0);
        reference_scan(&o, data, sizeof(data), false);
        CHECK_INT(o.result, SMTP_DATA_MORE);
        CHECK_INT(o.at, sizeof(data));

        memset(data, 'x', sizeof(data));
        memcpy(data + k, "\ry", 2); /* a bare CR, found at the byte after it */
        reference_scan(&o, data, sizeof(data), true);
        CHECK_INT(o.result, SMTP_DATA_REJECT);
        CHECK_INT(o.at, k + 1);
        CHECK_STR(o.why, "bare-cr");
        CHECK_INT(check_scan_spec(data, sizeof(data)), 0);
        CHECK_INT(check_scan_spec(data, k + 1), 0); /* the CR is the last byte: wait */

        memcpy(data + k, "x\n", 2); /* a bare LF at k + 1 */
        reference_scan(&o, data, sizeof(data), false);
        CHECK_INT(o.result, SMTP_DATA_REJECT);
        CHECK_INT(o.at, k + 1);
        CHECK_STR(o.why, "bare-lf");
        reference_scan(&o, data, sizeof(data), true);
        CHECK_INT(o.result, SMTP_DATA_MORE);
        CHECK_INT(o.out_len, sizeof(data) + 1); /* relayed with a CR added */
        CHECK_INT(check_scan_spec(data, sizeof(data)), 0);

        memset(data, 'x', sizeof(data));
        memcpy(data + k, "\r\n\0", 3); /* NUL starting the next line */
        reference_scan(&o, data, sizeof(data), false);
        CHECK_INT(o.result, SMTP_DATA_REJECT);
        CHECK_INT(o.at, k + 2);
        CHECK_STR(o.why, "nul-at-line-start");
        CHECK_INT(check_scan_spec(data, sizeof(data)), 0);

        memset(data, 'x', sizeof(data));
        memcpy(data + k, "\r\n.", 3); /* "." starting the next line: held back at the end */
        reference_scan(&o, data, k + 3, false);
        CHECK_INT(o.result, SMTP_DATA_MORE);
        CHECK_INT(o.at, k + 2);
        CHECK_INT(check_scan_spec(data, k + 3), 0);
        CHECK_INT(check_scan_spec(data, sizeof(data)), 0); /* dot-stuffed text after it */
    }
}

/* Every length from 0 to SCAN_MAX: text, CRLF lines, and either one ended by the marker. */
static void test_data_scan_lengths(void)
{
    int bad = 0;
    for (size_t len = 0; len <= SCAN_MAX; len++) {
        for (int lines = 0; lines <= 1; lines++) {
            char data[SCAN_MAX];
            scan_filler(data, len, lines != 0);
            bad += check_scan_spec(data, len) != 0;
            if (len >= 5) {
                memcpy(data + len - 5, "\r\n.\r\n", 5);
                struct scan_outcome o;
                reference_scan(&o, data, len, lines != 0);
                /* Among lines the marker may follow a CR: "\r\r\n.\r\n" is rejected. */
                CHECK(lines || (o.result == SMTP_DATA_END && o.at == len));
                bad += check_scan_spec(data, len) != 0;
            }
        }
    }
    CHECK_INT(bad, 0);
}

/* What diff_feed() saw the new scanner report, counted from the start of the content. */
enum diff_kind {
    DIFF_END = 0, /* SMTP_DATA_END */
    DIFF_BARE_LF, /* SMTP_DATA_BARE_LF */
    DIFF_REJECT,  /* SMTP_DATA_REJECT */
    DIFF_SKIPPED, /* smtp_skip_bad_data() found the end */
};

struct diff_event {
    enum diff_kind kind;
    size_t at;
    const char *why; /* the reason, for DIFF_REJECT */
};

struct diff_events {
    size_t n;                  /* all of them */
    struct diff_event list[8]; /* the first 8 */
};

/* How diff_feed() cuts the content: whole (max 0), in pieces of |max| bytes (seed 0), or in
 * pseudo-random pieces of 0 to |max| bytes. */
struct diff_cuts {
    size_t max;
    uint32_t seed;
};

static uint32_t diff_random(uint32_t *x)
{
    /* xorshift32: the same inputs on every run. */
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    return *x;
}

static size_t diff_next_end(struct diff_cuts *c, size_t avail, size_t len)
{
    size_t step = c->max;
    if (c->max == 0) {
        step = len;
    } else if (c->seed != 0) {
        step = diff_random(&c->seed) % (c->max + 1);
    }
    return len - avail < step ? len : avail + step;
}

static void diff_event_add(struct diff_events *e, enum diff_kind kind, size_t at, const char *why)
{
    if (e->n < sizeof(e->list) / sizeof(e->list[0])) {
        e->list[e->n] = (struct diff_event){.kind = kind, .at = at, .why = why};
    }
    e->n++;
}

/*
 * diff_feed reads data[0, len) as the session does (held-back bytes offered again, bare LFs
 * resumed from, a rejected message skipped to its end, then the next message scanned) with
 * smtp_data_scan() and the old scanner in lockstep: both get the same pieces, each an exact
 * heap copy |align| bytes into its allocation (so ASan sees any read past it, and the
 * SIMD loads meet every alignment), and every call must give the same result, count and
 * reason. With |fresh_skip| both start by skipping a message, as for one refused before
 * its content. Records the new scanner's events in |e|; returns 0, or 1 after printing
 * the first call where the two differ.
 */
static int diff_feed(struct diff_events *e, const char *data, size_t len, bool normalize,
                     bool fresh_skip, struct diff_cuts cuts, size_t align)
{
    struct smtp_data_scanner s;
    struct smtp_data_reference r;
    smtp_data_scanner_init(&s, normalize);
    smtp_data_reference_init(&r, normalize);
    e->n = 0;
    bool skipping = fresh_skip;
    bool wait = true;
    size_t pos = 0;   /* the first byte not taken yet */
    size_t avail = 0; /* bytes received so far */
    for (;;) {
        if (wait || pos == avail) {
            if (avail == len) {
                return 0;
            }
            avail = diff_next_end(&cuts, avail, len);
            wait = false;
        }
        size_t n = avail - pos;
        char *block = malloc(align + n + 1);
        CHECK(block != NULL);
        char *piece = block + align;
        memcpy(piece, data + pos, n);
        size_t used = 11111;
        size_t ref_used = 22222;
        bool same;
        const char *call;
        int got = 0;
        int want = 0;
        if (skipping) {
            call = "smtp_skip_bad_data";
            got = smtp_skip_bad_data(&s, &used, piece, n);
            want = smtp_data_reference_skip(&r, &ref_used, piece, n);
            same = got == want && used == ref_used;
            if (same && got) {
                diff_event_add(e, DIFF_SKIPPED, pos + used, "");
                skipping = false;
            }
        } else {
            call = "smtp_data_scan";
            got = (int)smtp_data_scan(&s, &used, piece, n);
            want = (int)smtp_data_reference_scan(&r, &ref_used, piece, n);
            same = got == want && used == ref_used &&
                   strcmp(smtp_data_reject_name(&s), smtp_data_reference_reject_name(&r)) == 0;
            if (same && got == SMTP_DATA_MORE) {
                wait = true;
            } else if (same && got == SMTP_DATA_END) {
                diff_event_add(e, DIFF_END, pos + used, "");
            } else if (same && got == SMTP_DATA_BARE_LF) {
                diff_event_add(e, DIFF_BARE_LF, pos + used, "");
            } else if (same && got == SMTP_DATA_REJECT) {
                diff_event_add(e, DIFF_REJECT, pos + used, smtp_data_reject_name(&s));
                skipping = true;
            }
        }
        free(block);
        if (!same) {
            fprintf(stderr,
                    "%s (%s) at %zu of %zu, %zu bytes offered (cut %zu/%u, align %zu): "
                    "new %d used %zu why %s, old %d used %zu why %s\n",
                    call, normalize ? "normalize" : "reject", pos, len, n, cuts.max,
                    (unsigned)cuts.seed, align, got, used, smtp_data_reject_name(&s), want,
                    ref_used, smtp_data_reference_reject_name(&r));
            return 1;
        }
        pos += used;
    }
}

static bool diff_event_is(const struct diff_events *e, size_t i, enum diff_kind kind, size_t at,
                          const char *why)
{
    return i < e->n && i < sizeof(e->list) / sizeof(e->list[0]) && e->list[i].kind == kind &&
           e->list[i].at == at && strcmp(e->list[i].why, why) == 0;
}

/* Long runs without CR or LF (every byte value but those, at every offset of a block), with
 * what ends or breaks them far from the start, in pieces of many sizes and alignments. */
static void test_data_scan_long_runs(void)
{
    enum { RUN = 100000 };
    char *data = malloc(RUN + 16);
    CHECK(data != NULL);
    for (size_t i = 0; i < RUN; i++) {
        unsigned char c = (unsigned char)(i * 7 + i / 251);
        data[i] = c == '\r' || c == '\n' ? 'x' : (char)c;
    }
    data[0] = 'x'; /* not NUL: that would start the first line */
    memcpy(data + RUN, "\r\n.\r\n", 5);
    static const struct diff_cuts cuts[] = {
        {0, 0}, {65536, 0}, {64, 0}, {63, 0}, {65, 0}, {1, 0}, {200, 7}, {5000, 11},
    };
    static const size_t aligns[] = {0, 1, 7, 15};
    struct diff_events e;
    int bad = 0;
    for (size_t c = 0; c < sizeof(cuts) / sizeof(cuts[0]); c++) {
        for (size_t a = 0; a < sizeof(aligns) / sizeof(aligns[0]); a++) {
            for (int normalize = 0; normalize <= 1; normalize++) {
                bad += diff_feed(&e, data, RUN + 5, normalize, false, cuts[c], aligns[a]);
                bad += !(e.n == 1 && diff_event_is(&e, 0, DIFF_END, RUN + 5, ""));
                bad += diff_feed(&e, data, RUN + 5, normalize, true, cuts[c], aligns[a]);
                bad += !(e.n == 1 && diff_event_is(&e, 0, DIFF_SKIPPED, RUN + 5, ""));
            }
        }
    }
    CHECK_INT(bad, 0);

    /* A bare CR deep inside: rejected at the byte after it, then skipped to the end. */
    data[70001] = '\r';
    data[70002] = 'y';
    for (size_t c = 0; c < sizeof(cuts) / sizeof(cuts[0]); c++) {
        CHECK_INT(diff_feed(&e, data, RUN + 5, false, false, cuts[c], 3), 0);
        CHECK(e.n == 2 && diff_event_is(&e, 0, DIFF_REJECT, 70002, "bare-cr") &&
              diff_event_is(&e, 1, DIFF_SKIPPED, RUN + 5, ""));
    }
    data[70001] = 'x';

    /* A bare LF: rejected, or in normalize mode a line end. */
    data[4097] = '\n';
    for (size_t c = 0; c < sizeof(cuts) / sizeof(cuts[0]); c++) {
        CHECK_INT(diff_feed(&e, data, RUN + 5, false, false, cuts[c], 5), 0);
        CHECK(e.n == 2 && diff_event_is(&e, 0, DIFF_REJECT, 4097, "bare-lf") &&
              diff_event_is(&e, 1, DIFF_SKIPPED, RUN + 5, ""));
        CHECK_INT(diff_feed(&e, data, RUN + 5, true, false, cuts[c], 5), 0);
        CHECK(e.n == 2 && diff_event_is(&e, 0, DIFF_BARE_LF, 4097, "") &&
              diff_event_is(&e, 1, DIFF_END, RUN + 5, ""));
    }
    free(data);
}

/* One message of CRLF lines and the end, starting at every alignment. */
static void test_data_scan_alignments(void)
{
    static const char message[] =
        "From: a@example.org\r\nSubject: alignment\r\n\r\n"
        "A line of text that is longer than one block of sixteen bytes, and of sixty-four.\r\n"
        "..a dot-stuffed line\r\n\r\na \0 NUL inside a line is content\r\n"
        "short\r\nlines\r\nx\r\n\r\n"
        "The last line, then the end.\r\n.\r\nQUIT\r\n";
    size_t len = sizeof(message) - 1;
    size_t end = len - 6;
    static const struct diff_cuts cuts[] = {{0, 0}, {64, 0}, {17, 0}, {80, 5}};
    struct diff_events e;
    for (size_t align = 0; align < 32; align++) {
        for (size_t c = 0; c < sizeof(cuts) / sizeof(cuts[0]); c++) {
            for (int normalize = 0; normalize <= 1; normalize++) {
                CHECK_INT(diff_feed(&e, message, len, normalize, false, cuts[c], align), 0);
                CHECK(e.n == 1 && diff_event_is(&e, 0, DIFF_END, end, ""));
            }
        }
    }
}

/*
 * diff_content writes pseudo-random content to |out| (at most |cap| bytes) and returns its
 * length: mostly text runs and CRLF, with the bytes and sequences that matter to the
 * scanner (CR, LF, ".", NUL, the marker, forged markers) mixed in.
 */
static size_t diff_content(char *out, size_t cap, uint32_t *rng)
{
    static const char *const tokens[] = {
        "\r\n",  "\r\n", "\r\n",      "\r\n",  "\n",      "\r",      ".",       "\0",
        "\r\n.", "..",   "\r\n.\r\n", "\n.\n", "\r.\r\n", "\r\n.\n", "\n.\r\n", "\r\n\0",
    };
    size_t n_tokens = sizeof(tokens) / sizeof(tokens[0]);
    size_t target = diff_random(rng) % 8 == 0 ? diff_random(rng) % cap : diff_random(rng) % 400;
    size_t len = 0;
    while (len < target) {
        uint32_t r = diff_random(rng);
        if (r % 2 == 0) {
            /* A text run: mostly short, sometimes long; a few 8-bit bytes. */
            size_t run = r % 16 == 0 ? (r >> 8) % 1500 : (r >> 8) % 120;
            for (size_t i = 0; i < run && len < cap; i++) {
                uint32_t b = diff_random(rng);
                out[len++] = b % 64 == 0 ? (char)(0x80 | (b >> 8)) : (char)('a' + (b >> 8) % 26);
            }
        } else {
            const char *t = tokens[(r >> 1) % n_tokens];
            /* "\0" and "\r\n\0" hold a NUL that strlen() does not count. */
            size_t t_len = t[0] == '\0' ? 1 : strlen(t) + (strcmp(t, "\r\n") == 0 && r % 64 == 1);
            for (size_t i = 0; i < t_len && len < cap; i++) {
                out[len++] = t[i];
            }
        }
    }
    return len;
}

/* Thousands of pseudo-random contents, both modes, random pieces and alignments: the new
 * scanner gives what the old one gave, call by call (libFuzzer does more of this in
 * tests/fuzz/fuzz_smtp_data_diff.c). */
static void test_data_scan_differential(void)
{
    enum { N_INPUTS = 4000, CAP = 5000 };
    char *data = malloc(CAP);
    CHECK(data != NULL);
    uint32_t rng = 0x5eed1234u;
    int bad = 0;
    size_t n_events = 0;
    for (int round = 0; round < N_INPUTS; round++) {
        size_t len = diff_content(data, CAP, &rng);
        for (int normalize = 0; normalize <= 1; normalize++) {
            struct diff_cuts cuts = {diff_random(&rng) % 4 == 0 ? 0 : 1 + diff_random(&rng) % 200,
                                     diff_random(&rng) % 3 == 0 ? 0 : diff_random(&rng) | 1};
            size_t align = diff_random(&rng) % 16;
            struct diff_events e;
            bad += diff_feed(&e, data, len, normalize, round % 9 == 0, cuts, align);
            n_events += e.n;
        }
    }
    CHECK_INT(bad, 0);
    CHECK(n_events > N_INPUTS); /* the inputs do reach the events */
    free(data);
}

static void test_ehlo_caps(void)
{
    static const char reply[] = "250-mx.example\r\n250-STARTTLS\r\n250-CHUNKING\r\n250 SIZE 10\r\n";
    unsigned caps = 0;
    CHECK_INT(smtp_ehlo_caps(&caps, reply, sizeof(reply) - 1), SMTP_OK);
    CHECK_INT(caps, SMTP_CAP_STARTTLS | SMTP_CAP_CHUNKING | SMTP_CAP_SIZE);
    static const char single[] = "250 mx.example STARTTLS\r\n"; /* greeting line only */
    CHECK_INT(smtp_ehlo_caps(&caps, single, sizeof(single) - 1), SMTP_OK);
    CHECK_INT(caps, 0);
    static const char refused[] = "502 5.5.1 no\r\n";
    CHECK_INT(smtp_ehlo_caps(&caps, refused, sizeof(refused) - 1), SMTP_BAD_SYNTAX);
}

static void test_ehlo_drop_and_params(void)
{
    static const char reply[] = "250-mx.example\r\n250-XCLIENT NAME ADDR HELO\r\n"
                                "250-AUTH PLAIN\r\n250 8BITMIME\r\n";
    char out[256];
    size_t out_len = 0;
    unsigned caps = 0;
    CHECK_INT(smtp_ehlo_edit(out, &out_len, &caps, sizeof(out), reply, sizeof(reply) - 1, false,
                             SMTP_CAP_XCLIENT | SMTP_CAP_AUTH),
              SMTP_OK);
    CHECK_MEM(out, out_len, "250-mx.example\r\n250 8BITMIME\r\n", 30);
    CHECK_INT(caps, SMTP_CAP_XCLIENT | SMTP_CAP_AUTH | SMTP_CAP_8BITMIME);
    const char *params = NULL;
    size_t params_len = 0;
    CHECK(smtp_ehlo_params(&params, &params_len, reply, sizeof(reply) - 1, "XCLIENT"));
    CHECK_MEM(params, params_len, "NAME ADDR HELO", 14);
    CHECK(smtp_ehlo_params(&params, &params_len, reply, sizeof(reply) - 1, "8BITMIME"));
    CHECK_INT(params_len, 0);
    CHECK(!smtp_ehlo_params(&params, &params_len, reply, sizeof(reply) - 1, "MX.EXAMPLE"));
    CHECK(!smtp_ehlo_params(&params, &params_len, reply, sizeof(reply) - 1, "XCLIENTX"));
}

int main(void)
{
    test_ehlo_drop_and_params();
    test_ehlo_caps();
    test_line_find();
    test_is_space();
    test_command_verbs();
    test_command_whitespace();
    test_command_bad_bytes();
    test_command_paths();
    test_command_bdat();
    test_helo_name();
    test_xtext();
    test_xclient_format();
    test_xclient_line_max();
    test_replies();
    test_ehlo_edit();
    test_data_scan_cases();
    test_data_scan_relayed();
    test_data_scan_exhaustive();
    test_data_scan_state();
    test_data_scan_rejected_after_skip();
    test_skip_bad_data();
    test_data_scan_block_offsets();
    test_data_scan_block_pairs();
    test_data_scan_lengths();
    test_data_scan_long_runs();
    test_data_scan_alignments();
    test_data_scan_differential();
#ifdef SMTP_SCAN_PORTABLE
    return check_exit("test_smtp (portable scan)");
#else
    return check_exit("test_smtp");
#endif
}

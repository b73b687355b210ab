/*
 * smtp: SMTP text only. Splits lines, parses commands and (multi-line) replies, edits
 * EHLO capabilities, and finds the end of DATA content across arbitrary splits.
 *
 * Nothing here does I/O, allocates memory or logs: every function works on the caller's
 * bytes and, where it writes, on the caller's output array. Input is never trusted: all
 * lengths are explicit, NUL bytes are ordinary bytes, and every limit is checked.
 */
#ifndef PROXY_SMTP_H
#define PROXY_SMTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* RFC 5321 section 4.5.3.1.3: a path is at most 256 octets, angle brackets included. */
#define SMTP_PATH_MAX 256
/* RFC 5321 section 4.5.3.1.5 allows 512 octets per reply line; legacy servers exceed it. */
#define SMTP_REPLY_LINE_MAX 2048
/* An EHLO reply larger than this is refused as broken (it is buffered whole to edit it). */
#define SMTP_EHLO_REPLY_MAX 16384

enum smtp_result {
    SMTP_OK = 0,
    SMTP_NEED_MORE,     /* no complete line yet: read more */
    SMTP_TOO_LONG,      /* the line exceeds the cap */
    SMTP_BAD_SYNTAX,    /* malformed */
    SMTP_PATH_TOO_LONG, /* MAIL/RCPT path over SMTP_PATH_MAX */
};

/*
 * smtp_line_find looks for the end of the first line in |data|. A line ends with LF
 * (CRLF or bare LF; the caller decides whether a bare LF is acceptable by looking at
 * *out_eol_len). On SMTP_OK, *out_line_len is the length of the line without its ending
 * and *out_eol_len is 1 or 2. SMTP_NEED_MORE: no LF in |data| and len < max_len.
 * SMTP_TOO_LONG: the line, ending included, would exceed |max_len| bytes; *out_line_len
 * is then how many bytes may be discarded now (all of |data|, or up to and including the
 * LF when one was found past the cap) and *out_eol_len is 1 when that LF was found (the
 * next byte starts a new line) or 0 when the rest of the long line is still to come.
 * An empty |data| is SMTP_NEED_MORE.
 */
enum smtp_result smtp_line_find(size_t *out_line_len, size_t *out_eol_len, const char *data,
                                size_t len, size_t max_len);

enum smtp_verb {
    SMTP_VERB_OTHER = 0,
    SMTP_VERB_HELO,
    SMTP_VERB_EHLO,
    SMTP_VERB_MAIL,
    SMTP_VERB_RCPT,
    SMTP_VERB_DATA,
    SMTP_VERB_BDAT,
    SMTP_VERB_RSET,
    SMTP_VERB_NOOP,
    SMTP_VERB_QUIT,
    SMTP_VERB_STARTTLS,
    SMTP_VERB_AUTH,
    SMTP_VERB_XCLIENT,
};

/* A parsed command. Pointers borrow from the line given to smtp_command_parse(). */
struct smtp_command {
    enum smtp_verb verb;
    const char *args; /* after the verb and the whitespace after it, without trailing
                         whitespace; not NUL-terminated */
    size_t args_len;
    /* MAIL FROM:<path> / RCPT TO:<path>: the path, brackets included ("<>" is a path);
     * ESMTP parameters, if any, follow it after whitespace. */
    const char *path;
    size_t path_len;
    /* BDAT size [LAST] */
    uint64_t bdat_size;
    bool bdat_last;
};

/* Largest BDAT chunk size accepted (RFC 3030 puts no limit; this keeps arithmetic safe). */
#define SMTP_BDAT_SIZE_MAX ((uint64_t)1 << 40)

/* smtp_is_space tells whether |c| separates words in a command line the way the laxest
 * servers read it (Postfix, Sendmail: C isspace in the C locale). */
bool smtp_is_space(char c);

/*
 * smtp_command_parse parses one command line (without its line ending) the way the laxest
 * server behind the proxy would (Postfix splits on any whitespace and ignores case): the
 * verb is the text before the first whitespace byte (smtp_is_space), matched
 * case-insensitively, so "XCLIENT\tADDR=x" is XCLIENT; "DATAX" and the empty line are
 * SMTP_VERB_OTHER. |out| is always filled: verb and args even on failure, the other fields
 * zero unless parsed. Returns SMTP_OK, SMTP_PATH_TOO_LONG, or SMTP_BAD_SYNTAX for: a line
 * that starts with whitespace (a server that skips it would see a verb the proxy cannot
 * vouch for; the verb is then SMTP_VERB_OTHER); a NUL, CR or LF byte anywhere in the line;
 * a MAIL/RCPT whose arguments are not "FROM:<path>"/"TO:<path>" (any case; whitespace
 * before '<' accepted) followed by nothing or by whitespace and parameters (a '>' inside a
 * quoted local part does not end the path); a BDAT whose arguments are not "size" or
 * "size LAST" (any case, any whitespace between) with a decimal size up to
 * SMTP_BDAT_SIZE_MAX. Arguments after DATA/RSET/QUIT/STARTTLS etc. are NOT errors here:
 * the caller decides. Unknown verbs are SMTP_VERB_OTHER and SMTP_OK.
 */
enum smtp_result smtp_command_parse(struct smtp_command *out, const char *line, size_t len);

/*
 * smtp_helo_name finds the domain (or address literal) of a parsed EHLO/HELO: the first
 * word of its arguments. Sets *out_name and *out_len (length 0 when there is none).
 */
void smtp_helo_name(const char **out_name, size_t *out_len, const struct smtp_command *cmd);

/*
 * smtp_xtext writes |len| bytes of |text| as RFC 3461 xtext ('+', '=' and bytes outside
 * 33..126 as "+XX") into |out|, at most |out_cap| bytes, and returns the length of the
 * whole encoding (like snprintf; no NUL is written). |out| may be NULL when out_cap is 0.
 */
size_t smtp_xtext(char *out, size_t out_cap, const char *text, size_t len);

/* The client's identity for XCLIENT (Postfix's XCLIENT_README). */
struct smtp_xclient {
    const char *addr; /* the client's address as text: "192.0.2.1" or "2001:db8::1" */
    bool ipv6;        /* then ADDR gets Postfix's "IPV6:" prefix */
    unsigned port;
    bool esmtp;       /* PROTO=ESMTP (the client sent EHLO), else PROTO=SMTP */
    const char *helo; /* the client's EHLO/HELO name; may be NULL */
    size_t helo_len;
};

/* Longest XCLIENT line smtp_xclient_format() writes, CRLF included: "XCLIENT", ADDR with
 * the IPV6: prefix, PORT, PROTO, and a 255-byte HELO name as xtext (3 bytes a byte). */
#define SMTP_XCLIENT_LINE_MAX 1024

/*
 * smtp_xclient_format writes "XCLIENT ADDR=... PORT=... PROTO=... HELO=...\r\n" into
 * |out| (at most |out_cap| bytes; SMTP_XCLIENT_LINE_MAX always suffices), sending only the
 * attributes that |params| (the XCLIENT capability's parameters, as smtp_ehlo_params()
 * returns them) advertises. A HELO name longer than 255 bytes, or one that is not printable
 * ASCII, is left out. Returns SMTP_OK with *out_len set; SMTP_BAD_SYNTAX when ADDR is not
 * advertised (the client's address cannot be conveyed); SMTP_TOO_LONG when out_cap is too
 * small.
 */
enum smtp_result smtp_xclient_format(char *out, size_t *out_len, size_t out_cap, const char *params,
                                     size_t params_len, const struct smtp_xclient *x);

/* One reply in progress: a reply is one or more lines "ddd-text" ending with "ddd text". */
struct smtp_reply_parser {
    int code; /* the code of the reply being read; 0 before its first line */
};

/* smtp_reply_parser_init resets the parser to expect the first line of a reply. */
void smtp_reply_parser_init(struct smtp_reply_parser *p);

/*
 * smtp_reply_parse_line feeds one reply line (without its line ending). Returns SMTP_OK
 * with *out_done true when this line ended the reply (then the parser is ready for the
 * next reply), SMTP_OK with *out_done false for a continuation line ("ddd-"); either way
 * *out_code is the line's code. SMTP_BAD_SYNTAX: the line does not start with a
 * three-digit code (first digit 2-5, second 0-5, third 0-9; RFC 5321 section 4.2), the
 * code is followed by something other than '-', ' ' or the end of the line, or a
 * continuation line whose code differs from the first line's. After SMTP_BAD_SYNTAX the
 * parser is reset as by smtp_reply_parser_init().
 */
enum smtp_result smtp_reply_parse_line(struct smtp_reply_parser *p, int *out_code, bool *out_done,
                                       const char *line, size_t len);

/* Capabilities seen in an EHLO reply (bit flags). */
enum smtp_cap {
    SMTP_CAP_STARTTLS = 1u << 0,
    SMTP_CAP_PIPELINING = 1u << 1,
    SMTP_CAP_CHUNKING = 1u << 2,
    SMTP_CAP_8BITMIME = 1u << 3,
    SMTP_CAP_SIZE = 1u << 4,
    SMTP_CAP_XCLIENT = 1u << 5,
    SMTP_CAP_BINARYMIME = 1u << 6,
    SMTP_CAP_AUTH = 1u << 7,
    SMTP_CAP_REQUIRETLS = 1u << 8, /* RFC 8689 */
};

/*
 * smtp_ehlo_edit rewrites a complete, successful (250) EHLO reply |reply| (lines with
 * their CRLF endings) for the other leg: every STARTTLS capability line is removed (the
 * first line is the greeting and always kept), so is every capability in the |drop| mask
 * (enum smtp_cap bits), and when |add_starttls| is true one
 * "250 STARTTLS" line is added as the last line, so "250 host" becomes
 * "250-host\r\n250 STARTTLS\r\n". The last line always ends up as "250 ...", the others
 * "250-...". Lines end in CRLF in the output even if the input used bare LF. Writes at
 * most |out_cap| bytes to |out|; out_cap >= reply_len + 16 suffices for CRLF input, and
 * out_cap >= reply_len + reply_len / 4 + 16 always (bare LFs grow by one byte each).
 * *out_caps receives the capabilities the input advertised (STARTTLS included, even
 * though it is removed). Returns SMTP_OK, SMTP_TOO_LONG (out_cap too small; *out_len and
 * *out_caps are 0) or SMTP_BAD_SYNTAX (not a well-formed 250 reply: another code, a line
 * not ended by LF, bytes after the last line, a NUL or bare CR inside a line).
 */
enum smtp_result smtp_ehlo_edit(char *out, size_t *out_len, unsigned *out_caps, size_t out_cap,
                                const char *reply, size_t reply_len, bool add_starttls,
                                unsigned drop);

/*
 * smtp_ehlo_params finds the capability |keyword| (upper case, e.g. "XCLIENT") in a
 * complete 250 EHLO reply and points *out_params at its parameters (the text after the
 * keyword and one space; not NUL-terminated), *out_len their length. Returns false when
 * the reply does not advertise it.
 */
bool smtp_ehlo_params(const char **out_params, size_t *out_len, const char *reply, size_t reply_len,
                      const char *keyword);

/*
 * smtp_ehlo_caps reads the capabilities of a complete 250 EHLO reply without editing it.
 * Returns SMTP_OK or SMTP_BAD_SYNTAX, like smtp_ehlo_edit().
 */
enum smtp_result smtp_ehlo_caps(unsigned *out_caps, const char *reply, size_t reply_len);

/*
 * The end-of-data scanner (RFC 5321 section 4.1.1.4): finds CRLF "." CRLF in DATA
 * content fed in pieces split at any byte. The content is considered to start at the
 * beginning of a line, so ".\r\n" as the very first bytes ends an empty message.
 *
 * It also finds what some receiver could read differently from the proxy (SMTP smuggling,
 * CVE-2023-51764): a bare CR anywhere; a "." line ended by a bare LF or preceded by one; a
 * line that starts with NUL or with "." and NUL (a receiver that strips NUL bytes would see
 * a "." line); and, in reject mode, any bare LF. Such content is rejected. In normalize
 * mode (Postfix's smtpd_forbid_bare_newline = normalize) other lines ending in a bare LF
 * are content: the caller relays them with CRLF.
 */
struct smtp_data_scanner {
    int state;  /* private */
    int reject; /* private: enum smtp_data_reject once rejected */
    bool normalize;
};

enum smtp_data_result {
    SMTP_DATA_MORE = 0, /* the first *out_used bytes are content; the rest (at most the
                           start of a line that could still become "." CRLF) is to be
                           offered again with more bytes after it */
    SMTP_DATA_END,      /* the end marker ends at *out_used (marker included) */
    SMTP_DATA_BARE_LF,  /* normalize: a bare LF at *out_used; relay the bytes before it, then
                           a CR, then scan on from the LF itself */
    SMTP_DATA_REJECT,   /* the content is rejected: bytes before *out_used are clean */
};

/* Why content was rejected (smtp_data_reject_name() gives the log word). */
enum smtp_data_reject {
    SMTP_DATA_REJECT_NONE = 0,
    SMTP_DATA_REJECT_BARE_CR,     /* "bare-cr" */
    SMTP_DATA_REJECT_BARE_LF,     /* "bare-lf": reject mode */
    SMTP_DATA_REJECT_DOT_BARE_LF, /* "dot-line-bare-lf": a "." line next to a bare LF */
    SMTP_DATA_REJECT_NUL,         /* "nul-at-line-start": NUL or ".\0" starting a line */
};

/* smtp_data_scanner_init prepares a scanner for a new message; |normalize| chooses the
 * bare-LF handling (true: normalize, false: reject). */
void smtp_data_scanner_init(struct smtp_data_scanner *s, bool normalize);

/*
 * smtp_data_scan scans the next |len| bytes of content. SMTP_DATA_MORE: *out_used <= len
 * bytes are content, and the caller offers the remaining bytes again, followed by more
 * (they are at most the two bytes of a line start that is still ambiguous: "." or ".\r").
 * SMTP_DATA_END: the first *out_used bytes end with the final CRLF.CRLF; the rest belongs
 * to what follows the message; the scanner is then ready for a new message (same mode).
 * SMTP_DATA_BARE_LF (normalize only): data[*out_used] is a bare LF; call again with the
 * content from that LF on. SMTP_DATA_REJECT: *out_used is the offset of the byte that
 * showed the content is unclean (so the position counted from the start of the content is
 * the same however it was split); the bytes before it hold no end of data for any
 * receiver. After SMTP_DATA_REJECT it keeps answering SMTP_DATA_REJECT with *out_used 0
 * until smtp_skip_bad_data() has found the end; pass the rest, from *out_used on, to
 * smtp_skip_bad_data() with this same scanner.
 */
enum smtp_data_result smtp_data_scan(struct smtp_data_scanner *s, size_t *out_used,
                                     const char *data, size_t len);

/* smtp_data_reject_name returns why the scanner rejected its content ("bare-cr", ...), or
 * "none". */
const char *smtp_data_reject_name(const struct smtp_data_scanner *s);

/*
 * smtp_skip_bad_data is for the rejected message: after SMTP_DATA_REJECT the rest of the
 * content is read and thrown away until an end of data. It returns true when |data| holds
 * the end (a "." line ended by CRLF after a CRLF, as RFC 5321 requires the client to send
 * it) and then *out_used counts the bytes up to and including it; false when all |len|
 * bytes are to be thrown away. Only CRLF ends a line here, so "\n.\n" and the like inside
 * the content do not end it. |s| carries state across pieces: either the scanner that just
 * returned SMTP_DATA_REJECT (continue from its *out_used), or one freshly initialised with
 * smtp_data_scanner_init() to skip a whole message from its start. After it returns true
 * the scanner is ready for a new message.
 */
bool smtp_skip_bad_data(struct smtp_data_scanner *s, size_t *out_used, const char *data,
                        size_t len);

#endif

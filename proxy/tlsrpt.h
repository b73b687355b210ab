/*
 * tlsrpt: SMTP TLS Reporting (RFC 8460) as a pure module: an aggregator that counts the
 * sessions of each policy domain per UTC day, the daily report's JSON (section 4.4), its
 * file name (section 5.1) and the _smtp._tls TXT record (section 3). No I/O, no event
 * loop, no logging: the caller runs the timers, writes the files and submits the reports.
 * The aggregator has one mutex, so every worker records into the same one; the other
 * functions touch only their arguments and are safe from any thread.
 */
#ifndef PROXY_TLSRPT_H
#define PROXY_TLSRPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dnsname.h"

/* One report covers one UTC day (RFC 8460 section 4.1). */
#define TLSRPT_DAY_SECONDS 86400
/* Distinct failure-details rows per (domain, day); further distinct failures are counted in
 * the summary only (tlsrpt_report_policy.n_unlisted). */
#define TLSRPT_ROWS_MAX 100
/* Distinct policies per (domain, day): a policy that changed during the day is a separate
 * "policies" entry; past this many, sessions under yet another policy are not counted. */
#define TLSRPT_POLICIES_MAX 4
/* Days held at once (a day is held until tlsrpt_take() hands it out). */
#define TLSRPT_DAYS_MAX 8
/* A policy's strings: at most this many, and this many bytes in all (mx-host included).
 * An MTA-STS policy has at most 128 mx lines (MTASTS_MX_MAX) plus its other fields. */
#define TLSRPT_POLICY_STRINGS_MAX 256
#define TLSRPT_POLICY_BYTES_MAX 16384
/* receiving-mx-helo and failure-reason-code come from peers and libraries: longer texts
 * are cut to this many bytes (at a UTF-8 character boundary). */
#define TLSRPT_TEXT_MAX 255
/* additional-information (a URI) longer than this is refused. */
#define TLSRPT_URI_MAX 1024
/* The memory an aggregator may use for its reports, per domain of |max_domains|: with
 * the largest policies and rows, fewer domains than max_domains fit (tlsrpt_new). */
#define TLSRPT_BYTES_PER_DOMAIN 16384

/* "policy-type" (RFC 8460 section 4.4). */
enum tlsrpt_policy_type {
    TLSRPT_POLICY_NO_POLICY_FOUND = 0, /* "no-policy-found" */
    TLSRPT_POLICY_STS,                 /* "sts": an MTA-STS policy (RFC 8461) */
    TLSRPT_POLICY_TLSA,                /* "tlsa": DANE TLSA records (RFC 7672) */
};

/* The policy a session was judged by. Every pointer is borrowed for the call only. */
struct tlsrpt_policy {
    enum tlsrpt_policy_type type;
    /* "policy-domain": a host name of A-labels (dnsname_parse rules, a trailing dot
     * accepted); compared and reported in lowercase without the dot. */
    const char *policy_domain;
    /* "policy-string": for sts the policy's lines ("version: STSv1", "mode: enforce",
     * "mx: mx1.example.com", "max_age: 86400", one string per line, every "mx" line its
     * own string); for tlsa one string per TLSA record in presentation form with no inner
     * spaces, "3 1 1 <hex>" (tlsrpt_tlsa_string); none for no-policy-found. Any bytes but
     * NUL; at least one string for sts and tlsa. */
    const char *const *policy_strings;
    size_t n_policy_strings;
    /* "mx-host": sts only, the policy's mx patterns ("mx.example.com", "*.example.net",
     * A-labels, normalised as policy_domain); none for tlsa and no-policy-found. */
    const char *const *mx_hosts;
    size_t n_mx_hosts;
};

/* One failed session (a "failure-details" row, RFC 8460 section 4.4). NULL marks an
 * optional field absent. In a report (tlsrpt_report_policy.rows) the strings belong to
 * the report. */
struct tlsrpt_failure {
    /* One of RFC 8460 section 4.3's result types: "starttls-not-supported",
     * "certificate-host-mismatch", "certificate-expired", "certificate-not-trusted",
     * "validation-failure", "tlsa-invalid", "dnssec-invalid", "dane-required",
     * "sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid". */
    const char *result_type;
    /* "sending-mta-ip" and "receiving-ip": IPv4 dotted-decimal or IPv6 text (no zone);
     * reported in RFC 5952 form ("2001:db8::1"), so two spellings are one row, and an
     * IPv4-mapped address ("::ffff:192.0.2.1") as its IPv4 address. */
    const char *sending_mta_ip;
    const char *receiving_ip;
    const char *receiving_mx_hostname;  /* optional: a host name, normalised */
    const char *receiving_mx_helo;      /* optional: the EHLO/HELO name, any bytes */
    const char *additional_information; /* optional: a URI, printable ASCII */
    const char *failure_reason_code;    /* optional: an error code or text, any bytes */
};

/* A failure-details row of a report: the failure and how many sessions had it. */
struct tlsrpt_row {
    struct tlsrpt_failure failure;
    uint64_t failed_session_count;
};

/* One "policies" entry of a report. */
struct tlsrpt_report_policy {
    struct tlsrpt_policy policy;
    uint64_t total_successful_session_count;
    uint64_t total_failure_session_count; /* the rows' counts plus n_unlisted */
    const struct tlsrpt_row *rows;        /* n_rows rows, in the order first seen */
    size_t n_rows;
    /* Failed sessions without a row of their own: TLSRPT_ROWS_MAX rows, or the
     * aggregator's memory, were used up. RFC 8460 has no field for them; they are in
     * total-failure-session-count only. */
    uint64_t n_unlisted;
};

/*
 * One report: one policy domain, one UTC day. Read-only for the caller; every byte it
 * points to belongs to it, and tlsrpt_report_free() releases it all.
 */
struct tlsrpt_report {
    char policy_domain[DNSNAME_BUF];
    int64_t day_start; /* seconds since the epoch of that day's 00:00:00 UTC */
    /* The range reported ("date-range", and the file name's timestamps), in seconds since
     * the epoch, both inclusive: begin is day_start; end is day_start + 86399 (23:59:59),
     * except in a snapshot of a day not over yet, where it is the snapshot's |now|. */
    int64_t begin;
    int64_t end;
    bool partial;                                /* a snapshot of a day not over yet */
    const struct tlsrpt_report_policy *policies; /* n_policies >= 1, in the order first seen */
    size_t n_policies;
};

struct tlsrpt;

/*
 * tlsrpt_new makes an empty aggregator that tracks at most |max_domains| (>= 1) policy
 * domains per UTC day, and uses at most max_domains * TLSRPT_BYTES_PER_DOMAIN bytes for
 * what it holds. Returns NULL when out of memory or |max_domains| is 0.
 */
struct tlsrpt *tlsrpt_new(size_t max_domains);

/* tlsrpt_free releases the aggregator and every report it still holds; NULL does nothing.
 * No other call on it may be running. */
void tlsrpt_free(struct tlsrpt *agg);

/*
 * tlsrpt_success counts a session that negotiated TLS as |policy| requires
 * ("total-successful-session-count") for |policy|'s domain on the UTC day of |now|
 * (seconds since the epoch, 0 to the end of year 9999). tlsrpt_failure counts a failed
 * one, under its failure-details row: rows equal in every field (after normalisation)
 * are one row with a failed-session-count. A policy that differs from the ones already
 * counted that day (its type, strings or mx hosts) starts a new "policies" entry. Neither
 * keeps a pointer to its arguments. Thread-safe. Return:
 * - 0: counted (a failure possibly without a row: see n_unlisted);
 * - -EINVAL: an argument is not valid (see the structs above: an unknown result type, a
 *   bad address, a domain that is not a host name, strings past the TLSRPT_* limits, NULL
 *   where a string is required); nothing counted;
 * - -ENOSPC: the aggregator's limits are reached for that day (max_domains domains,
 *   TLSRPT_POLICIES_MAX policies, TLSRPT_DAYS_MAX days, its memory); nothing counted;
 * - -ENOMEM: out of memory; nothing counted.
 */
int tlsrpt_success(struct tlsrpt *agg, const struct tlsrpt_policy *policy, int64_t now);
int tlsrpt_failure(struct tlsrpt *agg, const struct tlsrpt_policy *policy,
                   const struct tlsrpt_failure *failure, int64_t now);

/*
 * tlsrpt_take hands out, and forgets, the report of every (domain, day) whose day ended
 * before |now| (its 23:59:59 < now), sorted by day then domain. On success *out is an
 * array of *n_out reports (NULL and 0 when there are none), which the caller owns: free
 * each with tlsrpt_report_free() and the array with free(), or both with
 * tlsrpt_reports_free(). Returns 0, or -ENOMEM with nothing taken. Thread-safe.
 */
int tlsrpt_take(struct tlsrpt *agg, struct tlsrpt_report ***out, size_t *n_out, int64_t now);

/*
 * tlsrpt_snapshot hands out a copy of every report the aggregator holds, forgetting
 * nothing: for a partial file at shutdown (call tlsrpt_take() first for the days that are
 * over). A day not over at |now| has partial set and end = |now| (never before begin).
 * Same order, ownership and return values as tlsrpt_take().
 */
int tlsrpt_snapshot(struct tlsrpt *agg, struct tlsrpt_report ***out, size_t *n_out, int64_t now);

/* tlsrpt_report_free releases a report from tlsrpt_take() or tlsrpt_snapshot(); NULL does
 * nothing. */
void tlsrpt_report_free(struct tlsrpt_report *report);

/* tlsrpt_reports_free releases |n| reports and the array holding them; NULL does
 * nothing. */
void tlsrpt_reports_free(struct tlsrpt_report **reports, size_t n);

/*
 * tlsrpt_report_json renders |report| as RFC 8460 section 4.4's JSON, on one line with no
 * insignificant whitespace, members in the section's order: organization-name,
 * date-range (start-datetime, end-datetime: RFC 3339 "2026-12-01T00:00:00Z"),
 * contact-info, report-id, policies (policy: policy-type, policy-string, policy-domain,
 * mx-host; summary; failure-details: result-type, sending-mta-ip, receiving-mx-hostname,
 * receiving-mx-helo, receiving-ip, failed-session-count, additional-information,
 * failure-reason-code). Absent optional members are left out: policy-string and mx-host
 * when there are none, failure-details when there are no rows, and each absent optional
 * field of a row. Strings are escaped with tlsrpt_json_string(), so the output is
 * printable ASCII and valid I-JSON (RFC 7493); counts above 2^53 - 1 are reported as
 * 2^53 - 1. |organization| (the organization-name), |contact| (contact-info: an RFC 5322
 * addr-spec, e.g. "tlsrpt@mx.example.com") and |report_id| are required, non-empty. On
 * success *out_json is a NUL-terminated string of *out_len bytes that the caller frees
 * with free(). Returns 0, -EINVAL (a NULL or empty argument), or -ENOMEM; on failure
 * *out_json is NULL.
 */
int tlsrpt_report_json(const struct tlsrpt_report *report, char **out_json, size_t *out_len,
                       const char *organization, const char *contact, const char *report_id);

/*
 * tlsrpt_json_string writes the |len| bytes at |s| (any bytes, NUL included) as a JSON
 * string with its quotes into |out| (|out_cap| bytes), NUL-terminated, and sets
 * *out_len to its length without the NUL: '"' and '\' are escaped with a backslash;
 * control characters (U+0000-U+001F), DEL and every non-ASCII character as \u00XX or
 * \uXXXX (a UTF-16 surrogate pair above U+FFFF); bytes that are not well-formed UTF-8
 * (overlong forms, surrogates, values above U+10FFFF, truncated sequences) become one
 * U+FFFD for each maximal ill-formed subpart (Unicode section 3.9). The result is
 * printable ASCII. At most 6 * len + 3 bytes are needed. Returns false, with "" and
 * *out_len 0 when |out_cap| > 0, when it does not fit.
 */
bool tlsrpt_json_string(char *out, size_t out_cap, size_t *out_len, const char *s, size_t len);

/* tlsrpt_result_type_valid says whether |s| is one of RFC 8460 section 4.3's result types
 * (the list at struct tlsrpt_failure; exact, case-sensitive). */
bool tlsrpt_result_type_valid(const char *s);

/* tlsrpt_policy_type_name returns "sts", "tlsa" or "no-policy-found" (NULL for other
 * values). */
const char *tlsrpt_policy_type_name(enum tlsrpt_policy_type type);

/*
 * tlsrpt_tlsa_string writes one TLSA record as RFC 8460 section 4.5 wants it in
 * policy-string: its four fields in presentation form (RFC 6698 section 2.2), separated
 * by one space, the data as uppercase hex without inner spaces ("3 1 1 1F85..."; data
 * of 0 bytes is "-", as RFC 6698 presentation form has no empty hex). Needs at most
 * 14 + 2 * data_len bytes in |out| (NUL included). Returns false, with "" when |out_cap|
 * > 0, when it does not fit.
 */
bool tlsrpt_tlsa_string(char *out, size_t out_cap, uint8_t usage, uint8_t selector, uint8_t mtype,
                        const uint8_t *data, size_t data_len);

/* The longest file name tlsrpt_file_name() makes (NAME_MAX on Linux file systems), and a
 * buffer for one. */
#define TLSRPT_FILE_NAME_MAX 255
#define TLSRPT_FILE_NAME_BUF (TLSRPT_FILE_NAME_MAX + 1)
/* The longest unique-id tlsrpt_file_name() accepts. */
#define TLSRPT_UNIQUE_ID_MAX 64

/*
 * tlsrpt_file_name writes RFC 8460 section 5.1's file name into |out| (|out_cap| bytes,
 * TLSRPT_FILE_NAME_BUF is enough): "<sender>!<policy-domain>!<begin>!<end>[!<unique-id>]"
 * then ".json", or ".json.gz" with |gzip|. |sender| is the domain of the report's
 * contact-info address and |policy_domain| the report's: host names of A-labels (see
 * dnsname_parse; a trailing dot accepted), written lowercase without the dot, so the name
 * never holds "/", "!" or "..". |begin| and |end| are the report's range in seconds since
 * the epoch (>= 0). |unique_id| is NULL or 1 to TLSRPT_UNIQUE_ID_MAX letters and digits.
 * Example: "mail.sndr.example.com!example.net!1470013200!1470099599.json". Returns 0,
 * -EINVAL (an argument not as described), or -ENAMETOOLONG (longer than
 * TLSRPT_FILE_NAME_MAX, or than |out_cap| - 1); on failure |out| holds "" when
 * |out_cap| > 0.
 */
int tlsrpt_file_name(char *out, size_t out_cap, const char *sender, const char *policy_domain,
                     int64_t begin, int64_t end, const char *unique_id, bool gzip);

/* How many report destinations tlsrpt_rua_parse() keeps; further ones are ignored. */
#define TLSRPT_RUA_MAX 8
/* The longest rua URI kept; longer ones are ignored. */
#define TLSRPT_RUA_URI_MAX 1024
/* The longest mailto address kept (RFC 5321 section 4.5.3.1.3: a 256-byte path less
 * its angle brackets). */
#define TLSRPT_RUA_ADDRESS_MAX 254

enum tlsrpt_rua_scheme {
    TLSRPT_RUA_MAILTO = 0, /* report by mail to |address| */
    TLSRPT_RUA_HTTPS,      /* report by HTTPS POST to |host|, |port|, |path| */
};

/* One report destination of a _smtp._tls record. Every string is NUL-terminated
 * printable ASCII with no space. */
struct tlsrpt_rua_uri {
    enum tlsrpt_rua_scheme scheme;
    char uri[TLSRPT_RUA_URI_MAX + 1]; /* as published */
    /* mailto: the percent-decoded addr-spec, "local@domain", the local part a dot-atom
     * (RFC 5322), the domain a host name in lowercase: safe between "RCPT TO:<" and ">".
     * https: "". */
    char address[TLSRPT_RUA_ADDRESS_MAX + 1];
    /* https: the host (a lowercase host name, dotted IPv4, or IPv6 without brackets), the
     * port (443 unless given), and the path with its query ("/" when empty), still
     * percent-encoded, without the fragment. mailto: "", 0 and "". */
    char host[DNSNAME_BUF];
    uint16_t port;
    char path[TLSRPT_RUA_URI_MAX + 1];
};

struct tlsrpt_rua {
    struct tlsrpt_rua_uri uris[TLSRPT_RUA_MAX];
    size_t n_uris;
};

enum tlsrpt_rua_result {
    TLSRPT_RUA_OK = 0,   /* one valid record with 1..TLSRPT_RUA_MAX usable destinations */
    TLSRPT_RUA_NONE,     /* no record is a TLSRPTv1 record */
    TLSRPT_RUA_MULTIPLE, /* more than one is: the domain does not implement TLSRPT */
    TLSRPT_RUA_INVALID,  /* exactly one is, but it does not follow the ABNF */
    TLSRPT_RUA_UNUSABLE, /* exactly one, valid, but no rua URI this module can use */
};

/*
 * tlsrpt_rua_parse judges the TXT RRset of _smtp._tls.<domain> (RFC 8460 section 3):
 * |n_records| records, record i being the |record_lens[i]| bytes at |records[i]|, each
 * the concatenation of its character-strings (mtasts_txt_from_rdata() makes them). A
 * record is a TLSRPTv1 record when it starts with "v=TLSRPTv1" and then ";" after optional
 * spaces or tabs (the section's "v=TLSRPTv1;", with the ABNF's field-delim); others are
 * discarded. Exactly one must remain, and must follow the ABNF to the letter:
 * "v=TLSRPTv1" (case-sensitive) then fields separated by *WSP ";" *WSP, an optional
 * delimiter at the end, each field "rua=" and URIs separated by *WSP "," *WSP, or an
 * extension (a name of 1 to 32 letters, digits, "_", "-", "." starting with a letter or a
 * digit, "=", a value of printable ASCII but "=" and ";"), at least one "rua" field. A
 * URI is RFC 3986 characters with well-formed percent-encoding and a scheme, never ",",
 * "!" or ";" (section 3: they MUST be encoded). The URIs of every rua field count, in
 * order, duplicates dropped; usable are mailto: URIs to one plain addr-spec (hfields are
 * ignored) and https: URIs with a host and no userinfo (schemes are case-insensitive);
 * other URIs, and those past TLSRPT_RUA_MAX or the size limits, are ignored, as are
 * unknown fields. |out| is always written: on OK its n_uris >= 1 destinations, otherwise
 * none.
 */
enum tlsrpt_rua_result tlsrpt_rua_parse(struct tlsrpt_rua *out, const char *const *records,
                                        const size_t *record_lens, size_t n_records);

/* tlsrpt_rua_result_name returns "ok", "none", "multiple", "invalid" or "unusable". */
const char *tlsrpt_rua_result_name(enum tlsrpt_rua_result r);

#endif

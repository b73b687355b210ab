/*
 * conf: the INI file, read with inih, into one validated struct conf.
 *
 * Every key is described once, in conf_keys[]: section, name, default text and setter.
 * Defaults are applied by running the setters on the default texts before the file is
 * read. Errors are collected, never printed; no network I/O, never exits.
 */
#include "conf.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <ini.h>

/* The longest line accepted, its line end not counted. */
#define CONF_LINE_MAX 65536
/* The longest line quoted in a syntax error. */
#define CONF_QUOTE_MAX 80
/* Room for an "expected ..." text listing words or keys. */
#define CONF_TEXT_MAX 512
#define CONF_WORDS_MAX 16

#define CONF_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

struct conf_load;
struct conf_key;

/* A setter parses one value (trimmed by inih) into the struct conf, or reports errors. */
typedef void conf_setter(struct conf_load *ld, const struct conf_key *key, const char *value);
/* An adder parses one item of a comma-separated list and stores it at |index|. */
typedef bool conf_adder(struct conf_load *ld, const struct conf_key *key, const char *item,
                        size_t index);

/* A word accepted for a key: an enum value, or a keyword of a number ("auto"). */
struct conf_name {
    const char *text;
    int value;
    bool alias; /* accepted, but not listed in error messages */
};

/* A unit suffix of a number; tables are ordered from the largest factor down. */
struct conf_suffix {
    const char *text;
    uint64_t factor;
    bool alias;
};

enum conf_unit {
    CONF_UNIT_COUNT = 0,
    CONF_UNIT_SIZE,
    CONF_UNIT_DURATION,
};

enum conf_key_flag {
    CONF_KEY_OPTIONAL = 1 << 0, /* an address may be empty */
    CONF_KEY_NUMERIC = 1 << 1,  /* an address must be numeric: we bind it */
    CONF_KEY_REPEAT = 1 << 2,   /* may be given on several lines; the values accumulate */
    CONF_KEY_READABLE = 1 << 3, /* a path that must be readable */
};

struct conf_key {
    const char *section;
    const char *name;
    const char *default_text; /* NULL: no default, nothing to apply */
    conf_setter *set;
    size_t offset;       /* of the member in struct conf */
    size_t size;         /* of that member */
    size_t count_offset; /* of the n_ member, for lists */
    const struct conf_name *names;
    enum conf_unit unit;
    uint64_t min;
    uint64_t max;
    unsigned flags;
};

struct conf_section {
    const char *name;
    const char *hint; /* appended to "unknown key" errors */
};

enum conf_addr_result {
    CONF_ADDR_OK = 0,
    CONF_ADDR_BAD_HOST,
    CONF_ADDR_BAD_PORT,
};

static conf_setter conf_set_enum;
static conf_setter conf_set_number;
static conf_setter conf_set_string;
static conf_setter conf_set_string_list;
static conf_setter conf_set_hostname;
static conf_setter conf_set_addr;
static conf_setter conf_set_listen;
static conf_setter conf_set_cidr_list;
static conf_setter conf_set_fallback_steps;
static conf_setter conf_set_policy;
static conf_setter conf_set_redis;
static conf_setter conf_set_store_prefix;

static const struct conf_name conf_bool_names[] = {
    {"on", 1, false},   {"off", 0, false}, {"yes", 1, true}, {"no", 0, true},  {"true", 1, true},
    {"false", 0, true}, {"1", 1, true},    {"0", 0, true},   {NULL, 0, false},
};

static const struct conf_name conf_mode_names[] = {
    {"forward", CONF_MODE_FORWARD, false},
    {"transparent", CONF_MODE_TRANSPARENT, false},
    {NULL, 0, false},
};

static const struct conf_name conf_auto_names[] = {
    {"auto", 0, false},
    {NULL, 0, false},
};

static const struct conf_name conf_off_names[] = {
    {"off", 0, false},
    {NULL, 0, false},
};

static const struct conf_name conf_proxy_protocol_names[] = {
    {"off", CONF_PROXY_PROTOCOL_OFF, false},
    {"v1", CONF_PROXY_PROTOCOL_V1, false},
    {"v2", CONF_PROXY_PROTOCOL_V2, false},
    {"any", CONF_PROXY_PROTOCOL_ANY, false},
    {NULL, 0, false},
};

static const struct conf_name conf_identity_names[] = {
    {"none", CONF_IDENTITY_NONE, false},         {"xclient", CONF_IDENTITY_XCLIENT, false},
    {"proxy-v1", CONF_IDENTITY_PROXY_V1, false}, {"proxy-v2", CONF_IDENTITY_PROXY_V2, false},
    {"spoof", CONF_IDENTITY_SPOOF, false},       {NULL, 0, false},
};

static const struct conf_name conf_bare_newline_names[] = {
    {"normalize", CONF_BARE_NEWLINE_NORMALIZE, false},
    {"reject", CONF_BARE_NEWLINE_REJECT, false},
    {NULL, 0, false},
};

static const struct conf_name conf_front_starttls_names[] = {
    {"offer", CONF_FRONT_STARTTLS_OFFER, false},
    {"strip", CONF_FRONT_STARTTLS_STRIP, false},
    {NULL, 0, false},
};

static const struct conf_name conf_back_starttls_names[] = {
    {"off", CONF_BACK_STARTTLS_OFF, false},
    {"may", CONF_BACK_STARTTLS_MAY, false},
    {"require", CONF_BACK_STARTTLS_REQUIRE, false},
    {NULL, 0, false},
};

static const struct conf_name conf_recipient_policies_names[] = {
    {"auto", CONF_RECIPIENT_POLICIES_AUTO, false},
    {"on", CONF_RECIPIENT_POLICIES_ON, false},
    {"off", CONF_RECIPIENT_POLICIES_OFF, false},
    {NULL, 0, false},
};

static const struct conf_name conf_tls_version_names[] = {
    {"TLSv1.0", CONF_TLS_1_0, false},
    {"TLSv1.1", CONF_TLS_1_1, false},
    {"TLSv1.2", CONF_TLS_1_2, false},
    {"TLSv1.3", CONF_TLS_1_3, false},
    {"1.0", CONF_TLS_1_0, true},
    {"1.1", CONF_TLS_1_1, true},
    {"1.2", CONF_TLS_1_2, true},
    {"1.3", CONF_TLS_1_3, true},
    {NULL, 0, false},
};

static const struct conf_name conf_fallback_step_names[] = {
    {"no-client-cert", CONF_FALLBACK_NO_CLIENT_CERT, false},
    {"tls12", CONF_FALLBACK_TLS12, false},
    {"cleartext", CONF_FALLBACK_CLEARTEXT, false},
    {NULL, 0, false},
};

static const struct conf_name conf_verify_names[] = {
    {"none", CONF_VERIFY_NONE, false},
    {"ca", CONF_VERIFY_CA, false},
    {NULL, 0, false},
};

static const struct conf_name conf_log_level_names[] = {
    {"error", CONF_LOG_ERROR, false},
    {"warn", CONF_LOG_WARN, false},
    {"info", CONF_LOG_INFO, false},
    {"debug", CONF_LOG_DEBUG, false},
    {NULL, 0, false},
};

static const struct conf_name conf_log_format_names[] = {
    {"text", CONF_LOG_TEXT, false},
    {"json", CONF_LOG_JSON, false},
    {NULL, 0, false},
};

static const struct conf_suffix conf_count_suffixes[] = {
    {"", 1, false},
    {NULL, 0, false},
};

static const struct conf_suffix conf_size_suffixes[] = {
    {"G", 1024 * 1024 * 1024, false},
    {"g", 1024 * 1024 * 1024, true},
    {"M", 1024 * 1024, false},
    {"m", 1024 * 1024, true},
    {"k", 1024, false},
    {"K", 1024, true},
    {"", 1, false},
    {NULL, 0, false},
};

static const struct conf_suffix conf_duration_suffixes[] = {
    {"d", 86400000, false}, {"h", 3600000, false}, {"m", 60000, false}, {"s", 1000, false},
    {"ms", 1, false},       {"", 1000, true},      {NULL, 0, false},
};

static const struct {
    const char *noun;
    const char *hint;
    const struct conf_suffix *suffixes;
} conf_units[] = {
    [CONF_UNIT_COUNT] = {"a number", "", conf_count_suffixes},
    [CONF_UNIT_SIZE] = {"a size", " (suffix k, M or G)", conf_size_suffixes},
    [CONF_UNIT_DURATION] = {"a duration", " (suffix ms, s, m, h or d)", conf_duration_suffixes},
};

static const struct conf_section conf_sections[] = {
    {"proxy", ""},
    {"client_tls", ""},
    {"upstream_tls", ""},
    /* inih splits "key = value" at the first ':', so patterns cannot be keys (IPv6). */
    {"upstream_policy", "; write the policy first, as in \"may = *.example.com\""},
    {"timeouts", ""},
    {"limits", ""},
    {"recipient_policy", ""},
    {"store", ""},
    {"log", ""},
    {"metrics", ""},
};

#define CONF_SECTION_NONE (-1)    /* before the first [section] */
#define CONF_SECTION_UNKNOWN (-2) /* in a section already reported as unknown */

/* Each entry is {section, name, default text, then designated fields from these macros}. */
#define CONF_FIELD(member)                                                                         \
    .offset = offsetof(struct conf, member), .size = sizeof(((struct conf *)NULL)->member)
#define CONF_ENUM(names_) .set = conf_set_enum, .names = (names_)
#define CONF_NUMBER(unit_, min_, max_)                                                             \
    .set = conf_set_number, .unit = (unit_), .min = (min_), .max = (max_)
#define CONF_STRING(flags_) .set = conf_set_string, .flags = (flags_)

#define CONF_SECOND 1000ULL
#define CONF_DAY (86400 * CONF_SECOND)
#define CONF_TIMEOUT CONF_NUMBER(CONF_UNIT_DURATION, 100, 7 * CONF_DAY)

static const struct conf_key conf_keys[] = {
    {"proxy", "listen", "0.0.0.0:25, [::]:25", CONF_FIELD(listen), .set = conf_set_listen,
     .flags = CONF_KEY_NUMERIC},
    {"proxy", "mode", "forward", CONF_FIELD(mode), CONF_ENUM(conf_mode_names)},
    {"proxy", "upstream", "127.0.0.1:10025", CONF_FIELD(upstream), .set = conf_set_addr,
     .flags = CONF_KEY_OPTIONAL},
    {"proxy", "hostname", "", CONF_FIELD(hostname), .set = conf_set_hostname},
    {"proxy", "workers", "auto", CONF_FIELD(workers), CONF_NUMBER(CONF_UNIT_COUNT, 1, 256),
     .names = conf_auto_names},
    {"proxy", "max_connections", "10000", CONF_FIELD(max_connections),
     CONF_NUMBER(CONF_UNIT_COUNT, 1, 1000000)},
    {"proxy", "max_line_length", "1000", CONF_FIELD(max_line_len),
     CONF_NUMBER(CONF_UNIT_SIZE, 512, 65536)},
    {"proxy", "drain_timeout", "30s", CONF_FIELD(drain_timeout_ms),
     CONF_NUMBER(CONF_UNIT_DURATION, 0, CONF_DAY)},
    {"proxy", "user", "", CONF_FIELD(user), CONF_STRING(0)},
    {"proxy", "proxy_protocol", "off", CONF_FIELD(proxy_protocol),
     CONF_ENUM(conf_proxy_protocol_names)},
    {"proxy", "upstream_identity", "none", CONF_FIELD(upstream_identity),
     CONF_ENUM(conf_identity_names)},
    {"proxy", "bare_newline", "normalize", CONF_FIELD(bare_newline),
     CONF_ENUM(conf_bare_newline_names)},

    {"client_tls", "starttls", "offer", CONF_FIELD(front_tls.starttls),
     CONF_ENUM(conf_front_starttls_names)},
    {"client_tls", "require", "off", CONF_FIELD(front_tls.require), CONF_ENUM(conf_bool_names)},
    {"client_tls", "certificate", "", CONF_FIELD(front_tls.certificate),
     .set = conf_set_string_list, .flags = CONF_KEY_READABLE},
    {"client_tls", "key", "", CONF_FIELD(front_tls.key), .set = conf_set_string_list,
     .flags = CONF_KEY_READABLE},
    {"client_tls", "min_protocol", "TLSv1.0", CONF_FIELD(front_tls.min_protocol),
     CONF_ENUM(conf_tls_version_names)},
    {"client_tls", "ciphers", "", CONF_FIELD(front_tls.ciphers), CONF_STRING(0)},
    {"client_tls", "learn_failures", "on", CONF_FIELD(front_tls.learn_failures),
     CONF_ENUM(conf_bool_names)},
    {"client_tls", "learn_ttl", "1d", CONF_FIELD(front_tls.learn_ttl_ms),
     CONF_NUMBER(CONF_UNIT_DURATION, CONF_SECOND, 365 * CONF_DAY)},
    {"client_tls", "learn_max_entries", "10000", CONF_FIELD(front_tls.learn_max_entries),
     CONF_NUMBER(CONF_UNIT_COUNT, 1, 10000000)},
    {"client_tls", "never_offer_to", "", CONF_FIELD(front_tls.never_offer_to),
     .set = conf_set_cidr_list, .count_offset = offsetof(struct conf, front_tls.n_never_offer_to)},
    {"client_tls", "always_offer_to", "", CONF_FIELD(front_tls.always_offer_to),
     .set = conf_set_cidr_list, .count_offset = offsetof(struct conf, front_tls.n_always_offer_to)},
    {"client_tls", "ask_client_certificate", "off", CONF_FIELD(front_tls.ask_client_certificate),
     CONF_ENUM(conf_bool_names)},

    {"upstream_tls", "starttls", "may", CONF_FIELD(back_tls.starttls),
     CONF_ENUM(conf_back_starttls_names)},
    {"upstream_tls", "fallback", "on", CONF_FIELD(back_tls.fallback), CONF_ENUM(conf_bool_names)},
    {"upstream_tls", "fallback_steps", "no-client-cert, tls12, cleartext",
     CONF_FIELD(back_tls.fallback_steps), .set = conf_set_fallback_steps,
     .names = conf_fallback_step_names},
    {"upstream_tls", "remember_failures", "1h", CONF_FIELD(back_tls.remember_failures_ms),
     CONF_NUMBER(CONF_UNIT_DURATION, CONF_SECOND, 365 * CONF_DAY)},
    {"upstream_tls", "remember_max_entries", "10000", CONF_FIELD(back_tls.remember_max_entries),
     CONF_NUMBER(CONF_UNIT_COUNT, 1, 10000000)},
    {"upstream_tls", "certificate", "", CONF_FIELD(back_tls.certificate),
     CONF_STRING(CONF_KEY_READABLE)},
    {"upstream_tls", "key", "", CONF_FIELD(back_tls.key), CONF_STRING(CONF_KEY_READABLE)},
    {"upstream_tls", "verify", "none", CONF_FIELD(back_tls.verify), CONF_ENUM(conf_verify_names)},
    {"upstream_tls", "ca_file", "", CONF_FIELD(back_tls.ca_file), CONF_STRING(CONF_KEY_READABLE)},
    {"upstream_tls", "recipient_policies", "auto", CONF_FIELD(back_tls.recipient_policies),
     CONF_ENUM(conf_recipient_policies_names)},

    /* The downgrade gate's sources and bounds (RFC 8461, 7672, 8689, 8460). */
    {"recipient_policy", "mta_sts", "on", CONF_FIELD(recipients.mta_sts),
     CONF_ENUM(conf_bool_names)},
    {"recipient_policy", "dane", "on", CONF_FIELD(recipients.dane), CONF_ENUM(conf_bool_names)},
    {"recipient_policy", "requiretls", "on", CONF_FIELD(recipients.requiretls),
     CONF_ENUM(conf_bool_names)},
    {"recipient_policy", "ca_file", "", CONF_FIELD(recipients.ca_file),
     CONF_STRING(CONF_KEY_READABLE)},
    {"recipient_policy", "unbound_config", "", CONF_FIELD(recipients.unbound_config),
     CONF_STRING(CONF_KEY_READABLE)},
    {"recipient_policy", "dns_timeout", "5s", CONF_FIELD(recipients.dns_timeout_ms),
     CONF_NUMBER(CONF_UNIT_DURATION, 100, 60 * CONF_SECOND)},
    {"recipient_policy", "fetch_timeout", "10s", CONF_FIELD(recipients.fetch_timeout_ms),
     CONF_NUMBER(CONF_UNIT_DURATION, 100, 60 * CONF_SECOND)},
    {"recipient_policy", "max_policy_size", "64k", CONF_FIELD(recipients.max_policy_size),
     CONF_NUMBER(CONF_UNIT_SIZE, 1024, 1048576)},
    {"recipient_policy", "cache_entries", "10000", CONF_FIELD(recipients.cache_entries),
     CONF_NUMBER(CONF_UNIT_COUNT, 1, 10000000)},
    {"recipient_policy", "wait", "30s", CONF_FIELD(recipients.wait_ms),
     CONF_NUMBER(CONF_UNIT_DURATION, CONF_SECOND, 5 * 60 * CONF_SECOND)},
    {"recipient_policy", "tlsrpt_directory", "", CONF_FIELD(recipients.tlsrpt_directory),
     CONF_STRING(0)},
    {"recipient_policy", "tlsrpt_submit", "off", CONF_FIELD(recipients.tlsrpt_submit),
     CONF_ENUM(conf_bool_names)},
    {"recipient_policy", "tlsrpt_organization", "", CONF_FIELD(recipients.tlsrpt_organization),
     CONF_STRING(0)},
    {"recipient_policy", "tlsrpt_contact", "", CONF_FIELD(recipients.tlsrpt_contact),
     CONF_STRING(0)},

    /* The policy is the key, the patterns the value; see conf_sections[]. */
    {"upstream_policy", "off", NULL, .set = conf_set_policy, .flags = CONF_KEY_REPEAT},
    {"upstream_policy", "may", NULL, .set = conf_set_policy, .flags = CONF_KEY_REPEAT},
    {"upstream_policy", "require", NULL, .set = conf_set_policy, .flags = CONF_KEY_REPEAT},

    /* Defaults are RFC 5321 section 4.5.3.2's minimums; connect and tls_handshake are ours. */
    {"timeouts", "connect", "30s", CONF_FIELD(timeouts.connect_ms), CONF_TIMEOUT},
    {"timeouts", "greeting", "5m", CONF_FIELD(timeouts.greeting_ms), CONF_TIMEOUT},
    {"timeouts", "tls_handshake", "30s", CONF_FIELD(timeouts.tls_handshake_ms), CONF_TIMEOUT},
    {"timeouts", "command", "5m", CONF_FIELD(timeouts.command_ms), CONF_TIMEOUT},
    {"timeouts", "data_block", "3m", CONF_FIELD(timeouts.data_block_ms), CONF_TIMEOUT},
    {"timeouts", "data_end", "10m", CONF_FIELD(timeouts.data_end_ms), CONF_TIMEOUT},

    /* Per client address, like Postfix's anvil; the rates are off by default, as there. */
    {"limits", "client_sessions", "50", CONF_FIELD(limits.sessions),
     CONF_NUMBER(CONF_UNIT_COUNT, 1, 1000000), .names = conf_off_names},
    {"limits", "client_session_rate", "off", CONF_FIELD(limits.session_rate),
     CONF_NUMBER(CONF_UNIT_COUNT, 1, 1000000), .names = conf_off_names},
    {"limits", "client_message_rate", "off", CONF_FIELD(limits.message_rate),
     CONF_NUMBER(CONF_UNIT_COUNT, 1, 1000000), .names = conf_off_names},
    {"limits", "window", "1m", CONF_FIELD(limits.window_ms),
     CONF_NUMBER(CONF_UNIT_DURATION, CONF_SECOND, CONF_DAY)},
    {"limits", "ipv6_prefix", "64", CONF_FIELD(limits.ipv6_prefix),
     CONF_NUMBER(CONF_UNIT_COUNT, 16, 128)},
    {"limits", "exempt", "127.0.0.0/8, ::1", CONF_FIELD(limits.exempt), .set = conf_set_cidr_list,
     .count_offset = offsetof(struct conf, limits.n_exempt)},
    {"limits", "reserve", "10", CONF_FIELD(limits.reserve),
     CONF_NUMBER(CONF_UNIT_COUNT, 0, 100000)},
    {"limits", "max_clients", "100000", CONF_FIELD(limits.max_clients),
     CONF_NUMBER(CONF_UNIT_COUNT, 1, 10000000)},

    /* Shared learned state; the default, off, keeps everything in the process. */
    {"store", "redis", "", CONF_FIELD(store.redis), .set = conf_set_redis},
    {"store", "password_file", "", CONF_FIELD(store.password_file), CONF_STRING(CONF_KEY_READABLE)},
    {"store", "timeout", "50ms", CONF_FIELD(store.timeout_ms),
     CONF_NUMBER(CONF_UNIT_DURATION, 1, 10 * CONF_SECOND)},
    {"store", "prefix", "smtp-tls-proxy:", CONF_FIELD(store.prefix), .set = conf_set_store_prefix},

    {"log", "level", "info", CONF_FIELD(log_level), CONF_ENUM(conf_log_level_names)},
    {"log", "format", "text", CONF_FIELD(log_format), CONF_ENUM(conf_log_format_names)},

    {"metrics", "listen", "", CONF_FIELD(metrics_listen), .set = conf_set_addr,
     .flags = CONF_KEY_OPTIONAL | CONF_KEY_NUMERIC},
};

#define CONF_N_KEYS CONF_ARRAY_LEN(conf_keys)

/* conf_store writes integers through memcpy, so every enum must be 32 bits wide. */
_Static_assert(sizeof(enum conf_mode) == sizeof(uint32_t), "enums are 32 bits");
_Static_assert(sizeof(unsigned) == sizeof(uint32_t), "unsigned is 32 bits");

/* The state of one conf_load() call, shared by the reader, the handler and the setters. */
struct conf_load {
    struct conf *conf;
    struct conf_errors *errors;
    const char *path;
    FILE *file;
    char *line;          /* the current line: CONF_LINE_MAX + "\r\n" + NUL bytes */
    bool stopped;        /* reading ended before the end of the file (an error says why) */
    const char *pending; /* what inih has not taken yet of the current line */
    size_t pending_len;
    unsigned lineno; /* of the current line; 0 while applying defaults and cross-checks */
    int section;     /* index in conf_sections[], or CONF_SECTION_NONE / _UNKNOWN */
    unsigned key_line[CONF_N_KEYS];        /* where each key was first set; 0: not set */
    unsigned policy_line[CONF_POLICY_MAX]; /* where each pattern was given */
    bool out_of_memory;
};

/* inih's default prefixes, plus '#' for inline comments; the reader relies on the same. */
static char conf_comment_prefixes[] = ";#";

/* Errors. */

__attribute__((format(printf, 1, 0))) static char *conf_vformat(const char *fmt, va_list ap)
{
    va_list copy;
    va_copy(copy, ap);
    int len = vsnprintf(NULL, 0, fmt, copy);
    va_end(copy);
    if (len < 0) {
        return NULL;
    }
    char *text = malloc((size_t)len + 1);
    if (text != NULL) {
        vsnprintf(text, (size_t)len + 1, fmt, ap);
    }
    return text;
}

__attribute__((format(printf, 1, 2))) static char *conf_format(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *text = conf_vformat(fmt, ap);
    va_end(ap);
    return text;
}

static bool conf_errors_add(struct conf_errors *errors, char *line)
{
    char **lines = realloc(errors->lines, (errors->n_lines + 1) * sizeof(*lines));
    if (lines == NULL) {
        return false;
    }
    lines[errors->n_lines++] = line;
    errors->lines = lines;
    return true;
}

/* conf_error adds "path:line: key: message"; ":line" is left out for line 0, "key: " for
 * a NULL key. */
__attribute__((format(printf, 4, 5))) static void conf_error(struct conf_load *ld, unsigned line,
                                                             const char *key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *message = conf_vformat(fmt, ap);
    va_end(ap);
    char where[16] = "";
    if (line != 0) {
        snprintf(where, sizeof(where), ":%u", line);
    }
    char *text = NULL;
    if (message != NULL) {
        text = conf_format("%s%s: %s%s%s", ld->path, where, key != NULL ? key : "",
                           key != NULL ? ": " : "", message);
    }
    free(message);
    if (text == NULL || !conf_errors_add(ld->errors, text)) {
        free(text);
        ld->out_of_memory = true;
    }
}

static char *conf_strdup(struct conf_load *ld, const char *text)
{
    char *copy = strdup(text);
    if (copy == NULL) {
        ld->out_of_memory = true;
    }
    return copy;
}

/* Text helpers. ASCII only, whatever the locale. */

static bool conf_is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static bool conf_is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool conf_is_alnum(char c)
{
    return conf_is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static char *conf_trim(char *text)
{
    while (conf_is_space(*text)) {
        text++;
    }
    size_t len = strlen(text);
    while (len > 0 && conf_is_space(text[len - 1])) {
        text[--len] = '\0';
    }
    return text;
}

/* conf_join writes "a, b or c" into |out|. */
static void conf_join(char *out, size_t out_size, const char *const *words, size_t n_words)
{
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n_words; i++) {
        const char *sep = i == 0 ? "" : i + 1 == n_words ? " or " : ", ";
        int n = snprintf(out + used, out_size - used, "%s%s", sep, words[i]);
        if (n < 0 || (size_t)n >= out_size - used) {
            return;
        }
        used += (size_t)n;
    }
}

static void conf_join_names(char *out, size_t out_size, const struct conf_name *names)
{
    const char *words[CONF_WORDS_MAX];
    size_t n_words = 0;
    for (; names->text != NULL; names++) {
        if (!names->alias) {
            assert(n_words < CONF_WORDS_MAX);
            words[n_words++] = names->text;
        }
    }
    conf_join(out, out_size, words, n_words);
}

static const struct conf_name *conf_find_name(const struct conf_name *names, const char *text)
{
    for (; names->text != NULL; names++) {
        if (strcasecmp(names->text, text) == 0) {
            return names;
        }
    }
    return NULL;
}

/* Numbers. */

static bool conf_parse_digits(uint64_t *out, const char **cursor)
{
    const char *p = *cursor;
    if (!conf_is_digit(*p)) {
        return false;
    }
    uint64_t value = 0;
    for (; conf_is_digit(*p); p++) {
        unsigned digit = (unsigned)(*p - '0');
        if (value > (UINT64_MAX - digit) / 10) {
            return false;
        }
        value = value * 10 + digit;
    }
    *out = value;
    *cursor = p;
    return true;
}

static bool conf_parse_scaled(uint64_t *out, const char *text, const struct conf_suffix *suffixes)
{
    uint64_t number;
    if (!conf_parse_digits(&number, &text)) {
        return false;
    }
    for (; suffixes->text != NULL; suffixes++) {
        if (strcmp(text, suffixes->text) == 0) {
            if (number > UINT64_MAX / suffixes->factor) {
                return false;
            }
            *out = number * suffixes->factor;
            return true;
        }
    }
    return false;
}

/* conf_format_scaled writes |value| with the largest suffix that divides it exactly. */
static void conf_format_scaled(char *out, size_t out_size, uint64_t value,
                               const struct conf_suffix *suffixes)
{
    for (; suffixes->text != NULL; suffixes++) {
        if (!suffixes->alias && value % suffixes->factor == 0 &&
            (value != 0 || suffixes->factor == 1)) {
            snprintf(out, out_size, "%" PRIu64 "%s", value / suffixes->factor, suffixes->text);
            return;
        }
    }
    snprintf(out, out_size, "%" PRIu64, value);
}

bool conf_parse_duration(uint64_t *out_ms, const char *text)
{
    return conf_parse_scaled(out_ms, text, conf_duration_suffixes);
}

bool conf_parse_size(uint64_t *out_bytes, const char *text)
{
    return conf_parse_scaled(out_bytes, text, conf_size_suffixes);
}

/* Names and addresses. */

/* conf_valid_name accepts 1..255 letters, digits, '-' and '.', with no empty label. */
static bool conf_valid_name(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > CONF_HOST_MAX) {
        return false;
    }
    char prev = '.';
    for (const char *p = name; *p != '\0'; p++) {
        if (*p == '.' ? prev == '.' : !(conf_is_alnum(*p) || *p == '-')) {
            return false;
        }
        prev = *p;
    }
    return prev != '.';
}

/* conf_looks_numeric: digits and dots only, which no DNS name is ("1.2.3" is a typo). */
static bool conf_looks_numeric(const char *text)
{
    return text[strspn(text, "0123456789.")] == '\0';
}

static enum conf_addr_result conf_addr_parse(struct conf_addr *out, const char *text)
{
    memset(out, 0, sizeof(*out));
    const char *host = text;
    const char *host_end;
    bool bracketed = text[0] == '[';
    if (bracketed) {
        host++;
        host_end = strchr(host, ']');
        if (host_end == NULL) {
            return CONF_ADDR_BAD_HOST;
        }
        if (host_end[1] != ':') {
            return CONF_ADDR_BAD_PORT;
        }
    } else {
        host_end = strrchr(text, ':');
        if (host_end == NULL) {
            return CONF_ADDR_BAD_PORT;
        }
    }
    size_t host_len = (size_t)(host_end - host);
    /* An IPv6 address needs brackets: "::1:25" could be read two ways. */
    if (host_len == 0 || host_len > CONF_HOST_MAX ||
        (!bracketed && memchr(host, ':', host_len) != NULL)) {
        return CONF_ADDR_BAD_HOST;
    }
    memcpy(out->host, host, host_len);

    const char *digits = host_end + (bracketed ? 2 : 1);
    uint64_t number;
    if (!conf_parse_digits(&number, &digits) || *digits != '\0' || number == 0 || number > 65535) {
        return CONF_ADDR_BAD_PORT;
    }
    out->port = (uint16_t)number;

    if (!bracketed && strcmp(out->host, "*") == 0) {
        strcpy(out->host, "0.0.0.0");
    }
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(out->port)};
    struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6, .sin6_port = htons(out->port)};
    if (bracketed) {
        if (inet_pton(AF_INET6, out->host, &sin6.sin6_addr) != 1) {
            return CONF_ADDR_BAD_HOST;
        }
        memcpy(&out->sa, &sin6, sizeof(sin6));
        out->sa_len = sizeof(sin6);
        out->numeric = true;
    } else if (inet_pton(AF_INET, out->host, &sin.sin_addr) == 1) {
        memcpy(&out->sa, &sin, sizeof(sin));
        out->sa_len = sizeof(sin);
        out->numeric = true;
    } else if (!conf_valid_name(out->host) || conf_looks_numeric(out->host)) {
        return CONF_ADDR_BAD_HOST;
    }
    return CONF_ADDR_OK;
}

bool conf_parse_addr(struct conf_addr *out, const char *text)
{
    return conf_addr_parse(out, text) == CONF_ADDR_OK;
}

bool conf_parse_cidr(struct conf_cidr *out, const char *text)
{
    memset(out, 0, sizeof(*out));
    const char *slash = strchr(text, '/');
    size_t addr_len = slash != NULL ? (size_t)(slash - text) : strlen(text);
    char addr[INET6_ADDRSTRLEN];
    if (addr_len >= sizeof(addr)) {
        return false;
    }
    memcpy(addr, text, addr_len);
    addr[addr_len] = '\0';
    unsigned max_prefix;
    if (inet_pton(AF_INET, addr, out->addr) == 1) {
        out->family = AF_INET;
        max_prefix = 32;
    } else if (inet_pton(AF_INET6, addr, out->addr) == 1) {
        out->family = AF_INET6;
        max_prefix = 128;
    } else {
        return false;
    }
    uint64_t prefix_len = max_prefix;
    if (slash != NULL) {
        const char *digits = slash + 1;
        if (!conf_parse_digits(&prefix_len, &digits) || *digits != '\0' ||
            prefix_len > max_prefix) {
            return false;
        }
    }
    out->prefix_len = (uint8_t)prefix_len;
    /* Clear the host bits so that equal networks compare equal ("10.1.2.3/8"). */
    for (unsigned bit = out->prefix_len; bit < max_prefix; bit++) {
        out->addr[bit / 8] &= (uint8_t) ~(0x80u >> (bit % 8));
    }
    return true;
}

bool conf_cidr_match(const struct conf_cidr *cidr, const struct sockaddr *sa)
{
    uint8_t addr[16];
    int family = sa->sa_family;
    if (family == AF_INET) {
        struct sockaddr_in sin;
        memcpy(&sin, sa, sizeof(sin));
        memcpy(addr, &sin.sin_addr, 4);
    } else if (family == AF_INET6) {
        struct sockaddr_in6 sin6;
        memcpy(&sin6, sa, sizeof(sin6));
        memcpy(addr, &sin6.sin6_addr, 16);
        if (cidr->family == AF_INET && IN6_IS_ADDR_V4MAPPED(&sin6.sin6_addr)) {
            family = AF_INET;
            memmove(addr, addr + 12, 4);
        }
    } else {
        return false;
    }
    if (family != cidr->family) {
        return false;
    }
    size_t full = cidr->prefix_len / 8;
    unsigned rest = cidr->prefix_len % 8;
    if (memcmp(addr, cidr->addr, full) != 0) {
        return false;
    }
    uint8_t mask = (uint8_t)(0xff00u >> rest);
    return rest == 0 || (addr[full] & mask) == (cidr->addr[full] & mask);
}

/* conf_name_equal compares a host name with a lower-case pattern, ignoring ASCII case. */
static bool conf_name_equal(const char *name, size_t name_len, const char *lower)
{
    if (strlen(lower) != name_len) {
        return false;
    }
    for (size_t i = 0; i < name_len; i++) {
        char c = name[i];
        if (c >= 'A' && c <= 'Z') {
            c = (char)(c - 'A' + 'a');
        }
        if (c != lower[i]) {
            return false;
        }
    }
    return true;
}

bool conf_policy_lookup(enum conf_back_starttls *out, const struct conf *conf,
                        const char *const *names, size_t n_names, const struct sockaddr *sa)
{
    /* Ranks: exact names beat every wildcard, wildcards beat every network; within a
     * kind, longer beats shorter. */
    long best_rank = -1;
    for (size_t i = 0; i < conf->n_policy; i++) {
        const struct conf_policy *p = &conf->policy[i];
        long rank = -1;
        if (p->kind == CONF_PATTERN_CIDR) {
            if (sa != NULL && conf_cidr_match(&p->cidr, sa)) {
                rank = p->cidr.prefix_len;
            }
        } else {
            for (size_t n = 0; n < n_names; n++) {
                if (names[n] == NULL) {
                    continue;
                }
                size_t len = strlen(names[n]);
                if (p->kind == CONF_PATTERN_NAME && conf_name_equal(names[n], len, p->name)) {
                    rank = 2000;
                } else if (p->kind == CONF_PATTERN_WILDCARD) {
                    size_t suffix = strlen(p->name); /* ".example.com" */
                    if (len > suffix && conf_name_equal(names[n] + len - suffix, suffix, p->name)) {
                        rank = rank > 1000 + (long)suffix ? rank : 1000 + (long)suffix;
                    }
                }
            }
        }
        if (rank > best_rank) {
            best_rank = rank;
            *out = p->starttls;
        }
    }
    return best_rank >= 0;
}

static bool conf_cidr_equal(const struct conf_cidr *a, const struct conf_cidr *b)
{
    return a->family == b->family && a->prefix_len == b->prefix_len &&
           memcmp(a->addr, b->addr, sizeof(a->addr)) == 0;
}

/* Setters. A bad value leaves the default in place, so that cross-field checks do not
 * report consequences of an error already reported. */

static void *conf_field(struct conf_load *ld, const struct conf_key *key)
{
    return (char *)ld->conf + key->offset;
}

static void conf_store(struct conf_load *ld, const struct conf_key *key, uint64_t value)
{
    unsigned char *field = conf_field(ld, key);
    if (key->size == sizeof(bool)) {
        bool b = value != 0;
        memcpy(field, &b, sizeof(b));
    } else if (key->size == sizeof(uint32_t)) {
        uint32_t u = (uint32_t)value;
        memcpy(field, &u, sizeof(u));
    } else {
        assert(key->size == sizeof(uint64_t));
        memcpy(field, &value, sizeof(value));
    }
}

__attribute__((format(printf, 3, 4))) static void
conf_key_error(struct conf_load *ld, const struct conf_key *key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *message = conf_vformat(fmt, ap);
    va_end(ap);
    if (message == NULL) {
        ld->out_of_memory = true;
        return;
    }
    conf_error(ld, ld->lineno, key->name, "%s", message);
    free(message);
}

static void conf_set_enum(struct conf_load *ld, const struct conf_key *key, const char *value)
{
    const struct conf_name *name = conf_find_name(key->names, value);
    if (name == NULL) {
        char expected[CONF_TEXT_MAX];
        conf_join_names(expected, sizeof(expected), key->names);
        conf_key_error(ld, key, "\"%s\" is not valid; expected %s", value, expected);
        return;
    }
    conf_store(ld, key, (uint64_t)name->value);
}

static void conf_set_number(struct conf_load *ld, const struct conf_key *key, const char *value)
{
    const struct conf_name *word = key->names != NULL ? conf_find_name(key->names, value) : NULL;
    if (word != NULL) {
        conf_store(ld, key, (uint64_t)word->value);
        return;
    }
    uint64_t number;
    bool parsed = conf_parse_scaled(&number, value, conf_units[key->unit].suffixes);
    if (parsed && number >= key->min && number <= key->max) {
        conf_store(ld, key, number);
        return;
    }
    char words[CONF_TEXT_MAX] = "";
    if (key->names != NULL) {
        conf_join_names(words, sizeof(words), key->names);
    }
    char min[32];
    char max[32];
    conf_format_scaled(min, sizeof(min), key->min, conf_units[key->unit].suffixes);
    conf_format_scaled(max, sizeof(max), key->max, conf_units[key->unit].suffixes);
    conf_key_error(ld, key, "\"%s\" is %s; expected %s%s%s from %s to %s%s", value,
                   parsed ? "out of range" : "not valid", words, words[0] != '\0' ? " or " : "",
                   conf_units[key->unit].noun, min, max, conf_units[key->unit].hint);
}

static void conf_check_readable(struct conf_load *ld, const struct conf_key *key, const char *path)
{
    if ((key->flags & CONF_KEY_READABLE) && access(path, R_OK) == -1) {
        conf_key_error(ld, key, "\"%s\" cannot be read: %s", path, strerror(errno));
    }
}

static void conf_set_string(struct conf_load *ld, const struct conf_key *key, const char *value)
{
    char **field = conf_field(ld, key);
    free(*field);
    *field = NULL;
    if (value[0] != '\0') {
        conf_check_readable(ld, key, value);
        *field = conf_strdup(ld, value);
    }
}

static void conf_set_hostname(struct conf_load *ld, const struct conf_key *key, const char *value)
{
    if (value[0] != '\0' && !conf_valid_name(value)) {
        conf_key_error(ld, key,
                       "\"%s\" is not valid; expected a host name of up to 255 letters, "
                       "digits, '-' and '.'",
                       value);
        return;
    }
    /* Empty: conf_finish() asks the system, once the file cannot set it any more. */
    memcpy(conf_field(ld, key), value, strlen(value) + 1);
}

static void conf_set_redis(struct conf_load *ld, const struct conf_key *key, const char *value)
{
    struct conf *conf = ld->conf;
    conf->store.enabled = false;
    if (value[0] == '\0') {
        return;
    }
    const char *error = redis_url_parse(&conf->store.redis, value);
    if (error != NULL) {
        /* The text may hold a password: name the problem, not the value. */
        conf_key_error(ld, key, "the URL %s", error);
        return;
    }
    conf->store.enabled = true;
}

static void conf_set_store_prefix(struct conf_load *ld, const struct conf_key *key,
                                  const char *value)
{
    size_t len = strlen(value);
    bool ok = len >= 1 && len <= CONF_STORE_PREFIX_MAX;
    for (size_t i = 0; ok && i < len; i++) {
        char c = value[i];
        ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             strchr(":_.-/", c) != NULL;
    }
    if (!ok) {
        conf_key_error(
            ld, key, "\"%s\" is not valid; expected 1 to 64 letters, digits and \":_.-/\"", value);
        return;
    }
    memcpy(ld->conf->store.prefix, value, len + 1);
}

/* conf_check_addr parses |text| into |out| and reports what is wrong with it. */
static bool conf_check_addr(struct conf_load *ld, const struct conf_key *key, struct conf_addr *out,
                            const char *text)
{
    bool numeric = (key->flags & CONF_KEY_NUMERIC) != 0;
    const char *expected = numeric ? "IPv4:port, [IPv6]:port or *:port"
                                   : "host:port, IPv4:port, [IPv6]:port or *:port";
    switch (conf_addr_parse(out, text)) {
    case CONF_ADDR_OK:
        if (numeric && !out->numeric) {
            conf_key_error(ld, key, "\"%s\" is not a numeric address; expected %s", text, expected);
            return false;
        }
        return true;
    case CONF_ADDR_BAD_HOST:
        conf_key_error(ld, key, "\"%s\" is not a valid address; expected %s", text, expected);
        return false;
    case CONF_ADDR_BAD_PORT:
        conf_key_error(ld, key, "\"%s\" has no valid port; expected %s, port from 1 to 65535", text,
                       expected);
        return false;
    }
    return false;
}

static void conf_set_addr(struct conf_load *ld, const struct conf_key *key, const char *value)
{
    struct conf_addr addr = {.port = 0};
    if (value[0] == '\0' && (key->flags & CONF_KEY_OPTIONAL)) {
        memcpy(conf_field(ld, key), &addr, sizeof(addr));
        return;
    }
    if (conf_check_addr(ld, key, &addr, value)) {
        memcpy(conf_field(ld, key), &addr, sizeof(addr));
    }
}

/* Lists. */

/* conf_next_item cuts the next comma-separated item off *cursor, trimmed. */
static char *conf_next_item(char **cursor)
{
    char *item = *cursor;
    if (item == NULL) {
        return NULL;
    }
    char *comma = strchr(item, ',');
    if (comma != NULL) {
        *comma = '\0';
        *cursor = comma + 1;
    } else {
        *cursor = NULL;
    }
    return conf_trim(item);
}

/*
 * conf_each_item gives each item of the comma-separated |value| to |add|, with the index
 * to store it at: |first| for the first item |add| accepts, then up. Returns the index
 * after the last accepted item. An empty |value| has no items.
 */
static size_t conf_each_item(struct conf_load *ld, const struct conf_key *key, const char *value,
                             size_t first, size_t capacity, const char *what, conf_adder *add)
{
    if (value[0] == '\0') {
        return first;
    }
    char *copy = conf_strdup(ld, value);
    if (copy == NULL) {
        return first;
    }
    size_t next = first;
    bool too_many = false;
    char *cursor = copy;
    char *item;
    while ((item = conf_next_item(&cursor)) != NULL) {
        if (item[0] == '\0') {
            conf_key_error(ld, key, "\"%s\" has an empty item; expected %s separated by commas",
                           value, what);
        } else if (next == capacity) {
            too_many = true;
        } else if (add(ld, key, item, next)) {
            next++;
        }
    }
    if (too_many) {
        conf_key_error(ld, key, "too many %s; at most %zu accepted", what, capacity);
    }
    free(copy);
    return next;
}

static size_t *conf_count(struct conf_load *ld, const struct conf_key *key)
{
    return (size_t *)((char *)ld->conf + key->count_offset);
}

static bool conf_add_string(struct conf_load *ld, const struct conf_key *key, const char *item,
                            size_t index)
{
    char **list = conf_field(ld, key);
    conf_check_readable(ld, key, item);
    /* Kept even when unreadable, so that certificate[i] still pairs with key[i]. */
    list[index] = conf_strdup(ld, item);
    return list[index] != NULL;
}

static void conf_set_string_list(struct conf_load *ld, const struct conf_key *key,
                                 const char *value)
{
    char **list = conf_field(ld, key);
    size_t capacity = key->size / sizeof(*list);
    for (size_t i = 0; i < capacity; i++) {
        free(list[i]);
        list[i] = NULL;
    }
    conf_each_item(ld, key, value, 0, capacity, "paths", conf_add_string);
}

static bool conf_add_listen(struct conf_load *ld, const struct conf_key *key, const char *item,
                            size_t index)
{
    struct conf_addr addr;
    if (!conf_check_addr(ld, key, &addr, item)) {
        return false;
    }
    for (size_t i = 0; i < index; i++) {
        const struct conf_addr *other = &ld->conf->listen[i];
        if (other->sa_len == addr.sa_len && memcmp(&other->sa, &addr.sa, addr.sa_len) == 0) {
            conf_key_error(ld, key, "\"%s\" is listed twice", item);
            return false;
        }
    }
    ld->conf->listen[index] = addr;
    return true;
}

static void conf_set_listen(struct conf_load *ld, const struct conf_key *key, const char *value)
{
    if (value[0] == '\0') {
        conf_key_error(ld, key,
                       "\"\" is not valid; expected at least one IPv4:port, "
                       "[IPv6]:port or *:port");
        return;
    }
    ld->conf->n_listen =
        conf_each_item(ld, key, value, 0, CONF_LISTEN_MAX, "addresses", conf_add_listen);
}

static bool conf_add_cidr(struct conf_load *ld, const struct conf_key *key, const char *item,
                          size_t index)
{
    struct conf_cidr cidr;
    if (!conf_parse_cidr(&cidr, item)) {
        conf_key_error(ld, key,
                       "\"%s\" is not a valid network; expected an IPv4 or IPv6 address, "
                       "optionally with /prefix",
                       item);
        return false;
    }
    struct conf_cidr *list = conf_field(ld, key);
    list[index] = cidr;
    return true;
}

static void conf_set_cidr_list(struct conf_load *ld, const struct conf_key *key, const char *value)
{
    *conf_count(ld, key) = conf_each_item(ld, key, value, 0, key->size / sizeof(struct conf_cidr),
                                          "networks", conf_add_cidr);
}

static bool conf_add_fallback_step(struct conf_load *ld, const struct conf_key *key,
                                   const char *item, size_t index)
{
    const struct conf_name *step = conf_find_name(key->names, item);
    if (step == NULL) {
        char expected[CONF_TEXT_MAX];
        conf_join_names(expected, sizeof(expected), key->names);
        conf_key_error(ld, key, "\"%s\" is not valid; expected %s", item, expected);
        return false;
    }
    enum conf_fallback_step *steps = ld->conf->back_tls.fallback_steps;
    for (size_t i = 0; i < index; i++) {
        if ((int)steps[i] == step->value) {
            conf_key_error(ld, key, "\"%s\" is listed twice", item);
            return false;
        }
    }
    steps[index] = (enum conf_fallback_step)step->value;
    return true;
}

static void conf_set_fallback_steps(struct conf_load *ld, const struct conf_key *key,
                                    const char *value)
{
    if (value[0] == '\0') {
        char expected[CONF_TEXT_MAX];
        conf_join_names(expected, sizeof(expected), key->names);
        conf_key_error(ld, key, "\"\" is not valid; expected one or more of %s", expected);
        return;
    }
    ld->conf->back_tls.n_fallback_steps =
        conf_each_item(ld, key, value, 0, CONF_FALLBACK_STEPS_MAX, "steps", conf_add_fallback_step);
}

static void conf_lower(char *out, const char *text)
{
    for (; *text != '\0'; text++) {
        *out++ = (*text >= 'A' && *text <= 'Z') ? (char)(*text - 'A' + 'a') : *text;
    }
    *out = '\0';
}

/* conf_parse_pattern reads "*.example.com", "mx.example.com", "192.0.2.0/24" or "2001:db8::1". */
static bool conf_parse_pattern(struct conf_policy *out, const char *text)
{
    memset(out, 0, sizeof(*out));
    if (strchr(text, '/') != NULL || strchr(text, ':') != NULL || conf_looks_numeric(text)) {
        out->kind = CONF_PATTERN_CIDR;
        return conf_parse_cidr(&out->cidr, text);
    }
    const char *name = text;
    out->kind = CONF_PATTERN_NAME;
    if (text[0] == '*') {
        if (text[1] != '.' || strlen(text + 1) > CONF_HOST_MAX) {
            return false;
        }
        out->kind = CONF_PATTERN_WILDCARD;
        name = text + 2;
    }
    if (!conf_valid_name(name) || conf_looks_numeric(name)) {
        return false;
    }
    conf_lower(out->name, out->kind == CONF_PATTERN_WILDCARD ? text + 1 : text);
    return true;
}

static bool conf_add_policy(struct conf_load *ld, const struct conf_key *key, const char *item,
                            size_t index)
{
    struct conf_policy policy;
    if (!conf_parse_pattern(&policy, item)) {
        conf_key_error(ld, key,
                       "\"%s\" is not a valid pattern; expected *.domain, a host name, an "
                       "address or a network",
                       item);
        return false;
    }
    policy.starttls =
        (enum conf_back_starttls)conf_find_name(conf_back_starttls_names, key->name)->value;
    for (size_t i = 0; i < index; i++) {
        const struct conf_policy *other = &ld->conf->policy[i];
        bool same = other->kind == policy.kind &&
                    (policy.kind == CONF_PATTERN_CIDR ? conf_cidr_equal(&other->cidr, &policy.cidr)
                                                      : strcmp(other->name, policy.name) == 0);
        if (same) {
            conf_key_error(ld, key, "\"%s\" given twice, first on line %u", item,
                           ld->policy_line[i]);
            return false;
        }
    }
    ld->conf->policy[index] = policy;
    ld->policy_line[index] = ld->lineno;
    return true;
}

static void conf_set_policy(struct conf_load *ld, const struct conf_key *key, const char *value)
{
    if (value[0] == '\0') {
        conf_key_error(ld, key, "\"\" is not valid; expected one or more patterns");
        return;
    }
    ld->conf->n_policy = conf_each_item(ld, key, value, ld->conf->n_policy, CONF_POLICY_MAX,
                                        "patterns", conf_add_policy);
}

/* The reader: hands inih one line at a time, and checks what inih would not report. */

static int conf_find_section(const char *name, size_t name_len)
{
    for (size_t i = 0; i < CONF_ARRAY_LEN(conf_sections); i++) {
        if (strlen(conf_sections[i].name) == name_len &&
            strncasecmp(conf_sections[i].name, name, name_len) == 0) {
            return (int)i;
        }
    }
    return CONF_SECTION_UNKNOWN;
}

/* Mirrors inih's find_chars_or_comment(), so that we see each line as inih will. */
static const char *conf_find_chars_or_comment(const char *s, const char *chars)
{
    bool was_space = false;
    while (*s != '\0' && strchr(chars, *s) == NULL &&
           !(was_space && strchr(conf_comment_prefixes, *s) != NULL)) {
        was_space = conf_is_space(*s);
        s++;
    }
    return s;
}

static void conf_syntax_error(struct conf_load *ld, const char *start)
{
    size_t len = strlen(start);
    while (len > 0 && conf_is_space(start[len - 1])) {
        len--;
    }
    conf_error(ld, ld->lineno, "syntax",
               "\"%.*s%s\" is not valid; expected [section], key = value or a comment",
               (int)(len > CONF_QUOTE_MAX ? CONF_QUOTE_MAX : len), start,
               len > CONF_QUOTE_MAX ? "..." : "");
}

/* conf_enter_section handles a "[name]" line; returns false if it is malformed. */
static bool conf_enter_section(struct conf_load *ld, const char *start)
{
    const char *close = conf_find_chars_or_comment(start + 1, "]");
    const char *rest = close;
    if (*close == ']') {
        for (rest++; conf_is_space(*rest); rest++) {
        }
    }
    if (*close != ']' || (*rest != '\0' && strchr(conf_comment_prefixes, *rest) == NULL)) {
        conf_syntax_error(ld, start);
        return false;
    }
    const char *name = start + 1;
    while (name < close && conf_is_space(*name)) {
        name++;
    }
    size_t name_len = (size_t)(close - name);
    while (name_len > 0 && conf_is_space(name[name_len - 1])) {
        name_len--;
    }
    ld->section = conf_find_section(name, name_len);
    if (ld->section == CONF_SECTION_UNKNOWN) {
        const char *words[CONF_ARRAY_LEN(conf_sections)];
        for (size_t i = 0; i < CONF_ARRAY_LEN(conf_sections); i++) {
            words[i] = conf_sections[i].name;
        }
        char expected[CONF_TEXT_MAX];
        conf_join(expected, sizeof(expected), words, CONF_ARRAY_LEN(words));
        conf_error(ld, ld->lineno, NULL, "[%.*s]: \"%.*s\" is not a section; expected %s",
                   (int)name_len, name, (int)name_len, name, expected);
    }
    return true;
}

/* conf_check_line reports lines inih would reject or misread; false hides it from inih. */
static bool conf_check_line(struct conf_load *ld, const char *text)
{
    const char *start = text;
    while (conf_is_space(*start)) {
        start++;
    }
    if (*start == '\0' || strchr(conf_comment_prefixes, *start) != NULL) {
        return true;
    }
    if (*start == '[') {
        return conf_enter_section(ld, start);
    }
    const char *end = conf_find_chars_or_comment(start, "=:");
    if ((*end != '=' && *end != ':') || end == start) {
        conf_syntax_error(ld, start);
        return false;
    }
    return true;
}

/* conf_stop_reading reports an error that ends the reading: the rest is not trusted. */
__attribute__((format(printf, 3, 4))) static void
conf_stop_reading(struct conf_load *ld, unsigned line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *message = conf_vformat(fmt, ap);
    va_end(ap);
    if (message == NULL) {
        ld->out_of_memory = true;
    } else if (line != 0) {
        conf_error(ld, line, "syntax", "%s; the rest of the file was not read", message);
    } else {
        conf_error(ld, 0, NULL, "%s", message);
    }
    free(message);
    ld->stopped = true;
}

/*
 * conf_read_raw reads the next line, its line end included, into ld->line and sets
 * *out_len (0 at the end of the file). It never holds more than CONF_LINE_MAX bytes plus
 * "\r\n": a longer line, or a NUL byte, stops the reading there, without looking for the
 * next line end (there may be none: /dev/zero). A config file is text, and whatever
 * follows such a line cannot be trusted to be split into the lines its author meant.
 * Returns false when the reading stopped (the error is collected).
 */
static bool conf_read_raw(struct conf_load *ld, size_t *out_len)
{
    static const char bom[] = "\xEF\xBB\xBF";
    unsigned lineno = ld->lineno + 1;
    bool maybe_bom = lineno == 1;
    size_t len = 0;
    *out_len = 0;
    for (;;) {
        int c = getc(ld->file);
        if (c == EOF) {
            if (ferror(ld->file)) {
                conf_stop_reading(ld, 0, "cannot read: %s", strerror(errno != 0 ? errno : EIO));
                return false;
            }
            break;
        }
        if (c == '\0') {
            conf_stop_reading(ld, lineno, "line contains a NUL byte");
            return false;
        }
        ld->line[len++] = (char)c;
        if (c == '\n') {
            break;
        }
        /* A UTF-8 byte order mark is not part of line 1. */
        if (maybe_bom && len == sizeof(bom) - 1) {
            maybe_bom = false;
            if (memcmp(ld->line, bom, len) == 0) {
                len = 0;
                continue;
            }
        }
        /* The line end is not counted: this byte may be the '\r' of a "\r\n". */
        if (len > CONF_LINE_MAX + (c == '\r' ? 1 : 0)) {
            conf_stop_reading(ld, lineno, "line longer than %d bytes", CONF_LINE_MAX);
            return false;
        }
    }
    ld->line[len] = '\0';
    *out_len = len;
    return true;
}

static bool conf_next_line(struct conf_load *ld)
{
    size_t len;
    if (ld->stopped || !conf_read_raw(ld, &len) || len == 0) {
        return false;
    }
    ld->lineno++;
    const char *text = ld->line;
    if (!conf_check_line(ld, text)) {
        text = "\n";
        len = 1;
    }
    ld->pending = text;
    ld->pending_len = len;
    return true;
}

/*
 * conf_read_line is inih's fgets(). inih may take a long line in several calls (its
 * buffer grows), so the line number counts lines read here, not calls.
 */
static char *conf_read_line(char *str, int num, void *stream)
{
    struct conf_load *ld = stream;
    if (num < 2 || (ld->pending_len == 0 && !conf_next_line(ld))) {
        return NULL;
    }
    size_t n = ld->pending_len < (size_t)num - 1 ? ld->pending_len : (size_t)num - 1;
    memcpy(str, ld->pending, n);
    str[n] = '\0';
    ld->pending += n;
    ld->pending_len -= n;
    return str;
}

static size_t conf_find_key(const char *section, const char *name)
{
    for (size_t i = 0; i < CONF_N_KEYS; i++) {
        if (strcmp(conf_keys[i].section, section) == 0 &&
            strcasecmp(conf_keys[i].name, name) == 0) {
            return i;
        }
    }
    return CONF_N_KEYS;
}

static void conf_unknown_key(struct conf_load *ld, const char *name)
{
    const struct conf_section *section = &conf_sections[ld->section];
    const char *words[CONF_WORDS_MAX];
    size_t n_words = 0;
    for (size_t i = 0; i < CONF_N_KEYS; i++) {
        if (strcmp(conf_keys[i].section, section->name) == 0) {
            assert(n_words < CONF_WORDS_MAX);
            words[n_words++] = conf_keys[i].name;
        }
    }
    char expected[CONF_TEXT_MAX];
    conf_join(expected, sizeof(expected), words, n_words);
    conf_error(ld, ld->lineno, name, "\"%s\" is not a key of [%s]; expected %s%s", name,
               section->name, expected, section->hint);
}

/* The inih handler. It always returns nonzero: errors are collected, not signalled. */
static int conf_on_key(void *user, const char *section, const char *name, const char *value)
{
    struct conf_load *ld = user;
    /* inih cuts section names at 49 bytes; the reader keeps the section it saw. */
    (void)section;
    if (ld->section == CONF_SECTION_NONE) {
        conf_error(ld, ld->lineno, name, "\"%s\" comes before the first [section]", name);
        return 1;
    }
    if (ld->section == CONF_SECTION_UNKNOWN) {
        return 1;
    }
    size_t i = conf_find_key(conf_sections[ld->section].name, name);
    if (i == CONF_N_KEYS) {
        conf_unknown_key(ld, name);
        return 1;
    }
    const struct conf_key *key = &conf_keys[i];
    if (ld->key_line[i] != 0 && !(key->flags & CONF_KEY_REPEAT)) {
        conf_error(ld, ld->lineno, key->name, "given twice, first on line %u", ld->key_line[i]);
        return 1;
    }
    if (ld->key_line[i] == 0) {
        ld->key_line[i] = ld->lineno;
    }
    key->set(ld, key, value);
    return 1;
}

/* After the file: derived fields and the rules that tie keys together. */

static unsigned conf_line_of(const struct conf_load *ld, const char *section, const char *name)
{
    size_t i = conf_find_key(section, name);
    assert(i < CONF_N_KEYS);
    return ld->key_line[i];
}

static size_t conf_count_strings(char *const *list, size_t capacity)
{
    size_t n = 0;
    while (n < capacity && list[n] != NULL) {
        n++;
    }
    return n;
}

static void conf_default_hostname(struct conf_load *ld)
{
    char name[CONF_HOST_MAX + 1] = "";
    if (gethostname(name, sizeof(name)) == -1) {
        name[0] = '\0';
    }
    name[CONF_HOST_MAX] = '\0';
    if (name[0] == '\0') {
        strcpy(name, "localhost");
    }
    if (!conf_valid_name(name)) {
        conf_error(ld, 0, "hostname", "the system host name \"%s\" is not valid; set hostname",
                   name);
        return;
    }
    memcpy(ld->conf->hostname, name, sizeof(name));
}

/* conf_read_password reads the first line of [store] password_file into the URL's
 * password (a Kubernetes Secret or a Docker secret file, so that the INI file can be
 * shared without it). */
static void conf_read_password(struct conf_load *ld)
{
    struct conf *conf = ld->conf;
    const char *path = conf->store.password_file;
    unsigned line = conf_line_of(ld, "store", "password_file");
    if (!conf->store.enabled) {
        conf_error(ld, line, "password_file", "is given without redis; expected both or neither");
        return;
    }
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        conf_error(ld, line, "password_file", "\"%s\" cannot be read: %s", path, strerror(errno));
        return;
    }
    char text[REDIS_URL_PASSWORD_MAX + 3];
    bool read = fgets(text, sizeof(text), f) != NULL;
    fclose(f);
    size_t len = read ? strcspn(text, "\r\n") : 0;
    if (len == 0 || len > REDIS_URL_PASSWORD_MAX) {
        conf_error(ld, line, "password_file",
                   "\"%s\" must hold the password on its first line, 1 to %d bytes", path,
                   REDIS_URL_PASSWORD_MAX);
        return;
    }
    memcpy(conf->store.redis.password, text, len);
    conf->store.redis.password[len] = '\0';
    explicit_bzero(text, sizeof(text));
}

static void conf_finish(struct conf_load *ld)
{
    struct conf *conf = ld->conf;
    if (conf->hostname[0] == '\0') {
        conf_default_hostname(ld);
    }
    conf->metrics_enabled = conf->metrics_listen.port != 0;

    if (conf->mode == CONF_MODE_FORWARD && conf->upstream.port == 0) {
        conf_error(ld, conf_line_of(ld, "proxy", "upstream"), "upstream",
                   "\"\" is not valid; expected host:port when mode = forward");
    }
    if (conf->upstream_identity == CONF_IDENTITY_SPOOF && conf->mode != CONF_MODE_TRANSPARENT) {
        conf_error(ld, conf_line_of(ld, "proxy", "upstream_identity"), "upstream_identity",
                   "\"spoof\" needs mode = transparent");
    }

    if (conf->front_tls.require && conf->front_tls.starttls == CONF_FRONT_STARTTLS_STRIP) {
        conf_error(ld, conf_line_of(ld, "client_tls", "require"), "require",
                   "TLS cannot be required with starttls = strip; expected off");
    }
    conf->front_tls.n_certificate = conf_count_strings(conf->front_tls.certificate, CONF_CERT_MAX);
    size_t n_key = conf_count_strings(conf->front_tls.key, CONF_CERT_MAX);
    if (n_key != conf->front_tls.n_certificate) {
        unsigned line = conf_line_of(ld, "client_tls", "key");
        bool on_key = line != 0;
        conf_error(ld, on_key ? line : conf_line_of(ld, "client_tls", "certificate"),
                   on_key ? "key" : "certificate",
                   "%zu certificate path(s) but %zu key path(s); expected one key per "
                   "certificate, in the same order",
                   conf->front_tls.n_certificate, n_key);
    }

    if ((conf->back_tls.certificate == NULL) != (conf->back_tls.key == NULL)) {
        bool has_cert = conf->back_tls.certificate != NULL;
        const char *given = has_cert ? "certificate" : "key";
        conf_error(ld, conf_line_of(ld, "upstream_tls", given), given,
                   "\"%s\" is given without %s; expected both or neither",
                   has_cert ? conf->back_tls.certificate : conf->back_tls.key,
                   has_cert ? "key" : "certificate");
    }
    if (conf->back_tls.verify == CONF_VERIFY_CA && conf->back_tls.ca_file == NULL) {
        conf_error(ld, conf_line_of(ld, "upstream_tls", "ca_file"), "ca_file",
                   "missing; a CA file is required when verify = ca");
    }
    if (conf->store.password_file != NULL) {
        conf_read_password(ld);
    }
    enum conf_recipient_policies rp = conf->back_tls.recipient_policies;
    conf->recipients.enabled =
        rp == CONF_RECIPIENT_POLICIES_ON ||
        (rp == CONF_RECIPIENT_POLICIES_AUTO && conf->mode == CONF_MODE_TRANSPARENT);
}

static void conf_set_inih_options(void)
{
    ini_use_stack = false;
    ini_allow_realloc = true;
    ini_max_line = CONF_LINE_MAX + 3; /* "\r\n" and the NUL */
    ini_allow_multiline = false;
    ini_allow_bom = false; /* the reader strips it */
    ini_allow_inline_comments = true;
    ini_start_comment_prefixes = conf_comment_prefixes;
    ini_inline_comment_prefixes = conf_comment_prefixes;
    ini_stop_on_first_error = false;
    ini_allow_no_value = false;
}

struct conf *conf_load(struct conf_errors *out_errors, const char *path)
{
    *out_errors = (struct conf_errors){.lines = NULL};
    struct conf_load ld = {.errors = out_errors, .path = path, .section = CONF_SECTION_NONE};
    ld.conf = calloc(1, sizeof(*ld.conf));
    if (ld.conf == NULL || (ld.conf->path = strdup(path)) == NULL) {
        conf_free(ld.conf);
        conf_error(&ld, 0, NULL, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < CONF_N_KEYS; i++) {
        if (conf_keys[i].default_text != NULL) {
            conf_keys[i].set(&ld, &conf_keys[i], conf_keys[i].default_text);
        }
    }
    assert(out_errors->n_lines == 0);

    ld.file = fopen(path, "r");
    if (ld.file == NULL) {
        conf_error(&ld, 0, NULL, "cannot open: %s", strerror(errno));
        conf_free(ld.conf);
        return NULL;
    }
    ld.line = malloc(CONF_LINE_MAX + 3);
    if (ld.line == NULL) {
        ld.out_of_memory = true;
    } else {
        conf_set_inih_options();
        if (ini_parse_stream(conf_read_line, &ld, conf_on_key, &ld) == -2) {
            ld.out_of_memory = true;
        }
    }
    fclose(ld.file);
    free(ld.line);
    ld.lineno = 0;

    /* Rules that tie keys together would judge a file read only in part. */
    if (!ld.stopped) {
        conf_finish(&ld);
    }
    if (ld.out_of_memory) {
        conf_error(&ld, 0, NULL, "out of memory");
    }
    if (ld.out_of_memory || out_errors->n_lines > 0) {
        conf_free(ld.conf);
        return NULL;
    }
    return ld.conf;
}

void conf_free(struct conf *conf)
{
    if (conf == NULL) {
        return;
    }
    free(conf->path);
    free(conf->user);
    for (size_t i = 0; i < CONF_CERT_MAX; i++) {
        free(conf->front_tls.certificate[i]);
        free(conf->front_tls.key[i]);
    }
    free(conf->front_tls.ciphers);
    free(conf->back_tls.certificate);
    free(conf->back_tls.key);
    free(conf->back_tls.ca_file);
    free(conf->store.password_file);
    free(conf->recipients.ca_file);
    free(conf->recipients.unbound_config);
    free(conf->recipients.tlsrpt_directory);
    free(conf->recipients.tlsrpt_organization);
    free(conf->recipients.tlsrpt_contact);
    explicit_bzero(conf->store.redis.password, sizeof(conf->store.redis.password));
    free(conf);
}

void conf_errors_cleanup(struct conf_errors *errors)
{
    for (size_t i = 0; i < errors->n_lines; i++) {
        free(errors->lines[i]);
    }
    free(errors->lines);
    errors->lines = NULL;
    errors->n_lines = 0;
}

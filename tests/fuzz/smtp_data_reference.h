/*
 * smtp_data_reference: the end-of-data scanner as it was before the single-pass rewrite
 * (proxy/smtp.c at 0e70bc3: a byte state machine, with two memchr() calls per line), kept
 * only as the reference the differential tests compare smtp_data_scan() and
 * smtp_skip_bad_data() with. Same contract as those (smtp.h), same result and reason
 * enums; never linked into the proxy.
 */
#ifndef PROXY_SMTP_DATA_REFERENCE_H
#define PROXY_SMTP_DATA_REFERENCE_H

#include <stdbool.h>
#include <stddef.h>

#include "smtp.h"

/* The reference scanner's state: as struct smtp_data_scanner. */
struct smtp_data_reference {
    int state;
    int reject;
    bool normalize;
};

/* smtp_data_reference_init is smtp_data_scanner_init(). */
void smtp_data_reference_init(struct smtp_data_reference *s, bool normalize);

/* smtp_data_reference_scan is smtp_data_scan(). */
enum smtp_data_result smtp_data_reference_scan(struct smtp_data_reference *s, size_t *out_used,
                                               const char *data, size_t len);

/* smtp_data_reference_reject_name is smtp_data_reject_name(). */
const char *smtp_data_reference_reject_name(const struct smtp_data_reference *s);

/* smtp_data_reference_skip is smtp_skip_bad_data(). */
bool smtp_data_reference_skip(struct smtp_data_reference *s, size_t *out_used, const char *data,
                              size_t len);

#endif

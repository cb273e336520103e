#include "rhema_build.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

uint64_t rhema_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t rhema_realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void rhema_deadline_after(clockid_t clock, uint64_t ns, struct timespec *ts)
{
    clock_gettime(clock, ts);
    uint64_t n = (uint64_t)ts->tv_nsec + ns % 1000000000u;
    ts->tv_sec += (time_t)(ns / 1000000000u + n / 1000000000u);
    ts->tv_nsec = (long)(n % 1000000000u);
}

/*
 * Called for every access-log line and audit record: gmtime_r and snprintf
 * cost about 7,000 instructions a call, so each thread keeps the text of the
 * last second it formatted (nginx keeps its cached time strings the same
 * way) and writes only the milliseconds.
 */
void rhema_time_format(uint64_t ms, char out[RHEMA_TIME_MAX])
{
    static _Thread_local uint64_t cached_secs = UINT64_MAX;
    static _Thread_local char cached[24]; /* "YYYY-MM-DDTHH:MM:SS." */
    static _Thread_local size_t cached_len;
    uint64_t secs = ms / 1000u;
    if (secs != cached_secs) {
        time_t t = (time_t)secs;
        struct tm tm;
        gmtime_r(&t, &tm);
        int n = snprintf(cached, sizeof cached, "%04d-%02d-%02dT%02d:%02d:%02d.",
                         tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                         tm.tm_sec);
        if (n <= 0 || (size_t)n >= sizeof cached || (size_t)n + 5 > RHEMA_TIME_MAX) {
            snprintf(out, RHEMA_TIME_MAX, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, (unsigned)(ms % 1000u));
            cached_secs = UINT64_MAX;
            return;
        }
        cached_len = (size_t)n;
        cached_secs = secs;
    }
    unsigned frac = (unsigned)(ms % 1000u);
    memcpy(out, cached, cached_len);
    out[cached_len] = (char)('0' + frac / 100);
    out[cached_len + 1] = (char)('0' + frac / 10 % 10);
    out[cached_len + 2] = (char)('0' + frac % 10);
    out[cached_len + 3] = 'Z';
    out[cached_len + 4] = '\0';
}

static int digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return -1;
        v = v * 10 + (c - '0');
    }
    *p += n;
    *out = v;
    return 0;
}

static int days_in_month(int y, int m)
{
    static const int d[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return 29;
    return d[m - 1];
}

/* Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

int rhema_time_parse(const char *s, uint64_t *ms)
{
    int y, mo, d, h, mi, sec, frac_ms = 0;
    const char *p = s;
    if (!s || digits(&p, 4, &y) || *p++ != '-' || digits(&p, 2, &mo) || *p++ != '-' ||
        digits(&p, 2, &d))
        return -1;
    if (*p != 'T' && *p != 't' && *p != ' ')
        return -1;
    p++;
    if (digits(&p, 2, &h) || *p++ != ':' || digits(&p, 2, &mi) || *p++ != ':' ||
        digits(&p, 2, &sec))
        return -1;
    if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 ||
        sec > 60)
        return -1;
    if (*p == '.') {
        p++;
        int n = 0, scale = 100;
        while (*p >= '0' && *p <= '9') {
            if (n < 3)
                frac_ms += (*p - '0') * scale, scale /= 10;
            n++, p++;
        }
        if (n == 0 || n > 9)
            return -1;
    }
    int64_t offset_min = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p++ == '-' ? -1 : 1, oh, om;
        if (digits(&p, 2, &oh) || *p++ != ':' || digits(&p, 2, &om) || oh > 23 || om > 59)
            return -1;
        offset_min = sign * (oh * 60 + om);
    } else {
        return -1;
    }
    if (*p != '\0')
        return -1;
    if (sec == 60)
        sec = 59; /* leap second: clamp */
    int64_t t = days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 + sec -
                offset_min * 60;
    if (t < 0)
        return -1;
    *ms = (uint64_t)t * 1000u + (uint64_t)frac_ms;
    return 0;
}

int rhema_id_valid(const char *s)
{
    size_t n = 0;
    if (!s)
        return 0;
    for (; s[n]; n++) {
        char c = s[n];
        if (n >= RHEMA_ID_MAX)
            return 0;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-'))
            return 0;
    }
    return n > 0;
}

int rhema_utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char lo = 0x80, hi = 0xBF;
    int len;

    if (s[0] < 0x80)
        return 1;
    if (s[0] < 0xC2 || s[0] > 0xF4)
        return 0;
    if (s[0] < 0xE0) {
        len = 2;
    } else if (s[0] < 0xF0) {
        len = 3;
        if (s[0] == 0xE0)
            lo = 0xA0; /* overlong */
        else if (s[0] == 0xED)
            hi = 0x9F; /* surrogates */
    } else {
        len = 4;
        if (s[0] == 0xF0)
            lo = 0x90; /* overlong */
        else if (s[0] == 0xF4)
            hi = 0x8F; /* above U+10FFFF */
    }
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n)
            return -1;
        if (s[i] < (i == 1 ? lo : 0x80) || s[i] > (i == 1 ? hi : 0xBF))
            return 0;
    }
    return len;
}

size_t rhema_utf8_copy(char *dst, size_t cap, const char *src, size_t len, int cut)
{
    static const char replacement[] = "\xEF\xBF\xBD"; /* U+FFFD */
    size_t out = 0, i = 0;

    while (i < len) {
        int n = rhema_utf8_seq((const unsigned char *)src + i, len - i);
        const char *from = src + i;
        size_t width = (size_t)n;

        if (n < 0 && cut)
            break;
        if (n <= 0) {
            from = replacement;
            width = 3;
            n = 1;
        }
        if (out + width > cap - 1)
            break;
        memcpy(dst + out, from, width);
        out += width;
        i += (size_t)n;
    }
    dst[out] = '\0';
    return out;
}

int rhema_ncpu(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (int)n;
}

int rhema_set_error(char **err, int code, const char *fmt, ...)
{
    va_list ap;
    if (!err)
        return code;
    free(*err);
    va_start(ap, fmt);
    if (vasprintf(err, fmt, ap) < 0)
        *err = NULL;
    va_end(ap);
    return code;
}

int rhema_set_errbuf(char *err, int code, const char *fmt, ...)
{
    va_list ap;
    int n;
    if (!err)
        return code;
    va_start(ap, fmt);
    n = vsnprintf(err, RHEMA_ERRMSG_MAX, fmt, ap);
    va_end(ap);
    if (n >= RHEMA_ERRMSG_MAX) { /* cut: do not leave half a UTF-8 sequence at the end */
        size_t end = RHEMA_ERRMSG_MAX - 1;
        while (end > 0 && ((unsigned char)err[end - 1] & 0xC0) == 0x80)
            end--; /* continuation bytes */
        if (end > 0 && ((unsigned char)err[end - 1] & 0x80)) {
            /* a lead byte: keep its sequence only when it is complete */
            unsigned char lead = (unsigned char)err[end - 1];
            size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
            if (RHEMA_ERRMSG_MAX - 1 - (end - 1) < need)
                end--;
            else
                end = RHEMA_ERRMSG_MAX - 1;
        } else {
            end = RHEMA_ERRMSG_MAX - 1;
        }
        err[end] = '\0';
    }
    return code;
}

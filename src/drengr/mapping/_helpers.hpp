/* The C++ helpers of drengr.mapping._mapping_c, beside simdjson: buffers, JSON
   string escaping, number and timestamp text, key sets, the PII matcher, the
   field scanners. Nothing here touches Python objects or the GIL.

   Included by the generated _mapping_c.cpp (one translation unit, hence the
   static functions); declared to Cython in _mapping_c.pyx. */

#ifndef DRENGR_MAPPING_HELPERS_HPP
#define DRENGR_MAPPING_HELPERS_HPP

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>
#include "simdjson.h"

#if defined(__GNUC__)
#define DRENGR_HOT inline __attribute__((always_inline))
#define DRENGR_COLD __attribute__((noinline))
#else
#define DRENGR_HOT inline
#define DRENGR_COLD
#endif

namespace drengr {

typedef simdjson::dom::element El;
typedef simdjson::dom::object Obj;
typedef simdjson::dom::array Arr;
typedef simdjson::dom::parser Parser;

/* simdjson access through error codes; callers check the type first. */
static inline int el_kind(const El &e) { return (int)e.type(); }
static inline Obj el_obj(const El &e) {
    return e.get_object().value_unsafe();
}
static inline Arr el_arr(const El &e) {
    return e.get_array().value_unsafe();
}
static inline const char *el_str(const El &e, size_t *n) {
    std::string_view v = e.get_string().value_unsafe();
    *n = v.size();
    return v.data();
}
static inline int64_t el_i64(const El &e) {
    return e.get_int64().value_unsafe();
}
static inline uint64_t el_u64(const El &e) {
    return e.get_uint64().value_unsafe();
}
static inline double el_f64(const El &e) {
    return e.get_double().value_unsafe();
}
static inline bool el_bool(const El &e) {
    return e.get_bool().value_unsafe();
}
/* simdjson's lookup returns the first of duplicated keys, as the twin. */
static inline bool obj_get(const Obj &o, const char *key, El *out) {
    return o.at_key(std::string_view(key)).get(*out) == simdjson::SUCCESS;
}
static inline int parse_body(Parser *p, const char *buf, size_t n,
                             El *out) {
    /* realloc_if_needed: Python bytes carry no SIMDJSON_PADDING. */
    return (int)p->parse(buf, n, true).get(*out);
}
static inline const char *error_text(int code) {
    return simdjson::error_message((simdjson::error_code)code);
}

/* A growable byte buffer; after a failed allocation it stops writing
   and says so in `failed` (checked once per item). */
struct Buf {
    char *p;
    size_t n;
    size_t cap;
    bool failed;
    Buf() : p(nullptr), n(0), cap(0), failed(false) {}
    ~Buf() { std::free(p); }
    Buf(const Buf &) = delete;
    Buf &operator=(const Buf &) = delete;
    bool reserve(size_t extra) {
        return n + extra <= cap || grow(extra);
    }
    DRENGR_COLD bool grow(size_t extra) {
        if (failed) return false;
        size_t want = cap ? cap * 2 : 256;
        while (want < n + extra) want *= 2;
        char *q = (char *)std::realloc(p, want);
        if (!q) { failed = true; return false; }
        p = q;
        cap = want;
        return true;
    }
    DRENGR_HOT void put(const char *s, size_t k) {
        if (!reserve(k)) return;
        char *d = p + n;
        if (k > 16) {
            std::memcpy(d, s, k);
        } else if (k >= 8) {  /* short copies inline, as two overlapping words */
            uint64_t a, b;
            std::memcpy(&a, s, 8);
            std::memcpy(&b, s + k - 8, 8);
            std::memcpy(d, &a, 8);
            std::memcpy(d + k - 8, &b, 8);
        } else if (k >= 4) {
            uint32_t a, b;
            std::memcpy(&a, s, 4);
            std::memcpy(&b, s + k - 4, 4);
            std::memcpy(d, &a, 4);
            std::memcpy(d + k - 4, &b, 4);
        } else if (k) {
            d[0] = s[0];
            d[k / 2] = s[k / 2];
            d[k - 1] = s[k - 1];
        }
        n += k;
    }
    DRENGR_HOT void putc(char c) {
        if (reserve(1)) p[n++] = c;
    }
    void clear() { n = 0; }
};

static unsigned char LOWER[256];
static unsigned char ESCAPE[256];   /* 0: raw; else the escape letter */
static unsigned char ESCAPED_SIZE[256];
static const char HEX[] = "0123456789abcdef";
static const double POW10[] = {
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
static const uint64_t POW10_INT[] = {
    1ull, 10ull, 100ull, 1000ull, 10000ull, 100000ull, 1000000ull,
    10000000ull, 100000000ull, 1000000000ull, 10000000000ull,
    100000000000ull, 1000000000000ull, 10000000000000ull,
    100000000000000ull, 1000000000000000ull, 10000000000000000ull,
    100000000000000000ull, 1000000000000000000ull,
    10000000000000000000ull};

static void init_tables() {
    for (int c = 0; c < 256; c++) {
        LOWER[c] = (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32)
                                          : (unsigned char)c;
        ESCAPE[c] = c < 32 ? 'u' : 0;
        ESCAPED_SIZE[c] = c < 32 ? 6 : 1;
    }
    /* json.dumps(s, ensure_ascii=False): quote, backslash and the five
       short escapes; other controls as lowercase u00XX. */
    const int shorts[7][2] = {{'"', '"'}, {'\\', '\\'}, {'\b', 'b'}, {'\f', 'f'},
                              {'\n', 'n'}, {'\r', 'r'}, {'\t', 't'}};
    for (int i = 0; i < 7; i++) {
        ESCAPE[shorts[i][0]] = (unsigned char)shorts[i][1];
        ESCAPED_SIZE[shorts[i][0]] = 2;
    }
}

/* Whether any of the 8 bytes needs escaping: < 0x20, a quote or a
   backslash (SWAR: a byte is zero iff its high bit survives). */
static inline bool needs_escape(uint64_t w) {
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    uint64_t quote = w ^ (ones * '"'), slash = w ^ (ones * '\\');
    uint64_t control = (w - ones * 0x20) & ~w;
    uint64_t q = (quote - ones) & ~quote, b = (slash - ones) & ~slash;
    return ((control | q | b) & highs) != 0;
}

/* "text" with json.dumps(ensure_ascii=False)'s escaping. */
static void put_json_string(Buf &b, const char *p, size_t n) {
    if (!b.reserve(n * 6 + 2)) return;
    char *o = b.p + b.n;
    *o++ = '"';
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {  /* most text needs no escape at all */
        uint64_t w;
        std::memcpy(&w, p + i, 8);
        if (needs_escape(w)) break;
        std::memcpy(o, &w, 8);
        o += 8;
    }
    size_t rest = n - i;
    if (rest && rest < 8) {  /* the tail as one (overlapping) word */
        uint64_t w;
        if (n >= 8) {
            std::memcpy(&w, p + n - 8, 8);
        } else if (rest >= 4) {
            uint32_t a, b;
            std::memcpy(&a, p, 4);
            std::memcpy(&b, p + n - 4, 4);
            w = (uint64_t)a << 32 | b;
        } else {
            w = 0x6161610000000000ull | (uint64_t)(unsigned char)p[0] << 16 |
                (uint64_t)(unsigned char)p[n / 2] << 8 | (unsigned char)p[n - 1];
            w |= 0x6161ull << 24;
        }
        if (!needs_escape(w)) {
            if (n >= 8) {
                std::memcpy(o + rest - 8, &w, 8);
            } else if (rest >= 4) {
                std::memcpy(o, p, 4);
                std::memcpy(o + rest - 4, p + n - 4, 4);
            } else {
                o[0] = p[0];
                o[rest / 2] = p[rest / 2];
                o[rest - 1] = p[rest - 1];
            }
            o += rest;
            i = n;
        }
    }
    for (; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        unsigned char e = ESCAPE[c];
        if (!e) { *o++ = (char)c; continue; }
        *o++ = '\\';
        *o++ = (char)e;
        if (e == 'u') {
            *o++ = '0';
            *o++ = '0';
            *o++ = HEX[c >> 4];
            *o++ = HEX[c & 15];
        }
    }
    *o++ = '"';
    b.n = (size_t)(o - b.p);
}

static inline size_t json_string_size(const char *p, size_t n) {
    size_t size = 2, i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        std::memcpy(&w, p + i, 8);
        if (!needs_escape(w)) { size += 8; continue; }
        for (size_t j = i; j < i + 8; j++)
            size += ESCAPED_SIZE[(unsigned char)p[j]];
    }
    for (; i < n; i++) size += ESCAPED_SIZE[(unsigned char)p[i]];
    return size;
}

/* Bytes of the first `max_chars` code points (valid UTF-8 in, so a
   code point starts at every byte that is not 10xxxxxx). */
static inline size_t utf8_prefix(const char *p, size_t n, size_t max_chars) {
    if (n <= max_chars) return n;
    size_t chars = 0;
    for (size_t i = 0; i < n; i++) {
        if (((unsigned char)p[i] & 0xC0) != 0x80) {
            if (chars == max_chars) return i;
            chars++;
        }
    }
    return n;
}

static inline bool is_ascii(const char *p, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        std::memcpy(&w, p + i, 8);
        if (w & 0x8080808080808080ull) return false;
    }
    for (; i < n; i++) {
        if ((unsigned char)p[i] & 0x80) return false;
    }
    return true;
}

static inline uint64_t hash_bytes(const char *p, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t w;
        std::memcpy(&w, p, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 31;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;  /* the last 0-7 bytes, without a variable-size copy */
    if (n >= 4) {
        uint32_t a, b;
        std::memcpy(&a, p, 4);
        std::memcpy(&b, p + n - 4, 4);
        w = (uint64_t)a << 32 | b;
    } else if (n) {
        w = (uint64_t)(unsigned char)p[0] << 16 |
            (uint64_t)(unsigned char)p[n / 2] << 8 | (unsigned char)p[n - 1];
    }
    h = (h ^ w) * 0x94d049bb133111ebull;
    return h ^ (h >> 29);
}

/* ---- numbers: str(int) and repr(float) */
static inline int fmt_u64(uint64_t v, char *out) {
    char tmp[24];
    int n = 0;
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    for (int i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    return n;
}
static inline int fmt_i64(int64_t v, char *out) {
    if (v < 0) {
        out[0] = '-';
        return 1 + fmt_u64(0 - (uint64_t)v, out + 1);
    }
    return fmt_u64((uint64_t)v, out);
}
/* repr(v) for the common case, else 0 (the caller asks CPython).
   Python prints the shortest digits that round-trip, positionally
   when 1e-4 <= |v| < 1e16. If r / 10**k == |v| exactly with
   r < 10**15, that decimal has at most 15 significant digits; any two
   such decimals reading as one double are equal (DBL_DIG), so it is
   the shortest one. */
static int fmt_double(double v, char *out) {
    if (v == 0) {
        if (std::signbit(v)) { std::memcpy(out, "-0.0", 4); return 4; }
        std::memcpy(out, "0.0", 3);
        return 3;
    }
    double a = std::fabs(v);
    if (!(a >= 1e-4 && a < 1e15)) return 0;
    for (int k = 0; k <= 19; k++) {
        double m = a * POW10[k];
        if (m >= 1e15) return 0;
        uint64_t digits = (uint64_t)(m + 0.5);  /* the nearest integer, or a tie */
        double r = (double)digits;
        /* Cheap necessary test first: a == r / 10**k puts m within a few
           ulps of r. Then the exact one (one correctly rounded division). */
        if (std::fabs(m - r) > m * 1e-15 || r / POW10[k] != a) continue;
        int places = k;
        while (places > 0 && digits % 10 == 0) { digits /= 10; places--; }
        uint64_t whole = digits / POW10_INT[places];
        uint64_t frac = digits % POW10_INT[places];
        int n = 0;
        if (v < 0) out[n++] = '-';
        n += fmt_u64(whole, out + n);
        out[n++] = '.';
        if (places == 0) { out[n++] = '0'; return n; }
        for (int j = places - 1; j >= 0; j--) {
            out[n + j] = (char)('0' + frac % 10);
            frac /= 10;
        }
        return n + places;
    }
    return 0;
}

/* ---- timestamps: core/timestamps.py in integer C */
static inline int64_t floordiv(int64_t a, int64_t b) {
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) q--;
    return q;
}
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d) {
    y -= m <= 2;
    int64_t era = floordiv(y, 400);
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}
static void civil_from_days(int64_t days, int64_t *y, int64_t *m,
                            int64_t *d) {
    days += 719468;
    int64_t era = floordiv(days, 146097);
    int64_t doe = days - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = yoe + era * 400 + (*m <= 2);
}
static inline void put2(char *o, int64_t v) {
    o[0] = (char)('0' + v / 10);
    o[1] = (char)('0' + v % 10);
}
/* 2026-11-26T02:50:53.123Z (`out` holds 48 bytes) */
static int format_ms(int64_t ms, char *out) {
    int64_t days = floordiv(ms, 86400000);
    int64_t rest = ms - days * 86400000;
    int64_t y, mo, d;
    civil_from_days(days, &y, &mo, &d);
    int64_t secs = rest / 1000, millis = rest % 1000;
    int64_t hh = secs / 3600, mi = (secs % 3600) / 60, ss = secs % 60;
    if (y < 0 || y > 9999) {
        return std::snprintf(out, 48, "%04lld-%02d-%02dT%02d:%02d:%02d.%03dZ",
                             (long long)y, (int)mo, (int)d, (int)hh,
                             (int)mi, (int)ss, (int)millis);
    }
    put2(out, y / 100);
    put2(out + 2, y % 100);
    out[4] = '-';
    put2(out + 5, mo);
    out[7] = '-';
    put2(out + 8, d);
    out[10] = 'T';
    put2(out + 11, hh);
    out[13] = ':';
    put2(out + 14, mi);
    out[16] = ':';
    put2(out + 17, ss);
    out[19] = '.';
    out[20] = (char)('0' + millis / 100);
    put2(out + 21, millis % 100);
    out[23] = 'Z';
    return 24;
}
static inline bool digits(const char *s, size_t at, size_t count,
                          int64_t *value) {
    int64_t v = 0;
    for (size_t i = at; i < at + count; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        v = v * 10 + (s[i] - '0');
    }
    *value = v;
    return true;
}
/* The twin's regex, by hand: YYYY-MM-DD[Tt ]hh:mm:ss, then .f{1,9},
   then Z, z, +hh:mm, +hhmm or nothing; ASCII digits only. */
static bool parse_ms(const char *s, size_t n, int64_t *out) {
    static const int month_days[12] = {31, 28, 31, 30, 31, 30,
                                       31, 31, 30, 31, 30, 31};
    int64_t year, month, day, hour, minute, second;
    if (n < 19 || s[4] != '-' || s[7] != '-' || s[13] != ':' ||
        s[16] != ':' || (s[10] != 'T' && s[10] != 't' && s[10] != ' '))
        return false;
    if (!digits(s, 0, 4, &year) || !digits(s, 5, 2, &month) ||
        !digits(s, 8, 2, &day) || !digits(s, 11, 2, &hour) ||
        !digits(s, 14, 2, &minute) || !digits(s, 17, 2, &second))
        return false;
    size_t i = 19;
    int64_t millis = 0;
    if (i < n && s[i] == '.') {
        size_t start = ++i;
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
        size_t count = i - start;
        if (count < 1 || count > 9) return false;
        for (size_t j = 0; j < 3; j++) {
            millis = millis * 10 + (j < count ? s[start + j] - '0' : 0);
        }
    }
    int64_t offset_minutes = 0;
    if (i < n) {
        if (s[i] == 'Z' || s[i] == 'z') {
            i++;
        } else if (s[i] == '+' || s[i] == '-') {
            bool minus = s[i] == '-';
            int64_t oh, om;
            i++;
            if (n - i < 4 || !digits(s, i, 2, &oh)) return false;
            i += 2;
            if (s[i] == ':') i++;
            if (n - i < 2 || !digits(s, i, 2, &om)) return false;
            i += 2;
            if (oh > 23 || om > 59) return false;
            offset_minutes = minus ? -(oh * 60 + om) : oh * 60 + om;
        } else {
            return false;
        }
    }
    if (i != n) return false;
    if (month < 1 || month > 12 || day < 1 || hour > 23 || minute > 59 ||
        second > 59)
        return false;
    bool leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    if (day > month_days[month - 1] + (month == 2 && leap)) return false;
    int64_t seconds = days_from_civil(year, month, day) * 86400 +
                      hour * 3600 + minute * 60 + second;
    *out = (seconds - offset_minutes * 60) * 1000 + millis;
    return true;
}

/* ---- event names: normalize_event_name for ASCII input */
static inline bool is_alnum(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}
/* False when the name is not ASCII (the twin decides). */
static bool normalize_ascii(const char *p, size_t n, size_t max_chars,
                            Buf &out) {
    out.clear();
    if (!is_ascii(p, n) || !out.reserve(n + 1)) return false;
    bool gap = false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = LOWER[(unsigned char)p[i]];
        if (!is_alnum(c)) { gap = true; continue; }
        if (gap && out.n) out.p[out.n++] = '_';
        gap = false;
        out.p[out.n++] = (char)c;
    }
    if (out.n > max_chars) out.n = max_chars;
    while (out.n && out.p[out.n - 1] == '_') out.n--;
    return true;
}

/* ---- word lists built at import from the twin's constants */
enum { WORDS_TYPES, WORDS_ECOMMERCE, WORDS_PRIORITY, WORDS_NUMERIC,
       WORDS_COUNT };
static std::vector<std::string> WORDS[WORDS_COUNT];
static std::vector<int> TYPE_CODES;
static void words_add(int list, const char *p, size_t n, int code) {
    WORDS[list].emplace_back(p, n);
    if (list == WORDS_TYPES) TYPE_CODES.push_back(code);
}
/* Index of p in the list (exact bytes), else -1. */
static inline int words_find(int list, const char *p, size_t n) {
    const std::vector<std::string> &w = WORDS[list];
    for (size_t i = 0; i < w.size(); i++) {
        if (w[i].size() == n && std::memcmp(w[i].data(), p, n) == 0)
            return (int)i;
    }
    return -1;
}
/* canonical_type for ASCII: -1 unknown, -2 not ASCII (ask Python). */
static int type_code(const char *p, size_t n) {
    char low[16];
    if (!is_ascii(p, n)) return -2;
    if (n > sizeof(low)) return -1;
    for (size_t i = 0; i < n; i++) low[i] = (char)LOWER[(unsigned char)p[i]];
    int at = words_find(WORDS_TYPES, low, n);
    return at < 0 ? -1 : TYPE_CODES[at];
}

/* ---- is_pii_key for ASCII keys: substring search after lowercasing,
   prefiltered by the fragments' first two bytes. */
struct PiiMatcher {
    std::vector<std::string> fragments;
    unsigned char single[256];
    uint64_t bigram[1024];
    bool everything;
    bool has_single;
    /* Answers for keys of up to 16 bytes, which (length, first 8 bytes,
       last 8 bytes) name exactly: property names repeat from event to
       event, so most tests are one lookup. */
    struct Answer { uint64_t a, b; uint32_t n; int32_t pii; };
    static const int ANSWERS = 1024;
    Answer answers[ANSWERS];
    PiiMatcher() : everything(false), has_single(false) {
        std::memset(single, 0, sizeof single);
        std::memset(bigram, 0, sizeof bigram);
        for (int i = 0; i < ANSWERS; i++) answers[i].n = 0xFFFFFFFFu;
    }
    /* `p` is a fragment already lowercased by Python. A non-ASCII
       fragment cannot occur in a lowercased ASCII key: skipped here. */
    void add(const char *p, size_t n) {
        if (n == 0) { everything = true; return; }
        if (!is_ascii(p, n)) return;
        if (n == 1) {
            single[(unsigned char)p[0]] = 1;
            has_single = true;
            return;
        }
        unsigned pair = (unsigned)(unsigned char)p[0] << 8
                        | (unsigned char)p[1];
        bigram[pair >> 6] |= 1ull << (pair & 63);
        fragments.emplace_back(p, n);
    }
    /* test(), remembered for short keys. */
    int test_cached(const char *k, size_t n) {
        if (n == 0 || n > 16) return test(k, n);
        uint64_t a, b;
        if (n >= 8) {
            std::memcpy(&a, k, 8);
            std::memcpy(&b, k + n - 8, 8);
        } else if (n >= 4) {
            uint32_t x, y;
            std::memcpy(&x, k, 4);
            std::memcpy(&y, k + n - 4, 4);
            a = x;
            b = y;
        } else {
            a = (uint64_t)(unsigned char)k[0] |
                (uint64_t)(unsigned char)k[n / 2] << 8 |
                (uint64_t)(unsigned char)k[n - 1] << 16;
            b = 0;
        }
        uint64_t mix = (a * 0x9E3779B97F4A7C15ull) ^ (b * 0xC2B2AE3D27D4EB4Full);
        mix ^= n;
        Answer &answer = answers[(mix ^ (mix >> 29)) & (ANSWERS - 1)];
        if (answer.n == n && answer.a == a && answer.b == b) return answer.pii;
        int pii = test(k, n);
        if (pii >= 0) {
            answer.a = a;
            answer.b = b;
            answer.n = (uint32_t)n;
            answer.pii = pii;
        }
        return pii;
    }
    /* 1: PII; 0: not; -1: the key is not ASCII (ask Python). */
    int test(const char *k, size_t n) const {
        if (everything) return 1;
        if (!is_ascii(k, n)) return -1;
        if (has_single) {
            for (size_t i = 0; i < n; i++) {
                if (single[LOWER[(unsigned char)k[i]]]) return 1;
            }
        }
        if (n < 2) return 0;
        unsigned c = LOWER[(unsigned char)k[0]];
        for (size_t i = 0; i + 1 < n; i++) {
            unsigned c2 = LOWER[(unsigned char)k[i + 1]];
            unsigned pair = c << 8 | c2;
            c = c2;
            if ((bigram[pair >> 6] >> (pair & 63)) & 1 && match_at(k, n, i))
                return 1;
        }
        return 0;
    }
    bool match_at(const char *k, size_t n, size_t i) const {
        for (const std::string &f : fragments) {
            if (f.size() > n - i) continue;
            size_t j = 0;
            while (j < f.size() &&
                   LOWER[(unsigned char)k[i + j]] == (unsigned char)f[j])
                j++;
            if (j == f.size()) return true;
        }
        return false;
    }
};

/* First-wins duplicate detection over one object's keys (the twin's
   dicts keep the first of duplicated keys; simdjson keeps them all). */
struct KeySet {
    /* A slot is in use when its stamp is the current one: starting over
       is one increment, not a memset. */
    struct Slot { const char *p; uint64_t h; uint32_t n; uint32_t stamp; };
    const char *lp[16];
    uint32_t ln[16];
    uint32_t count;
    uint64_t bloom;
    Slot *table;
    size_t mask;
    uint32_t stamp;
    bool hashed;
    KeySet()
        : count(0), bloom(0), table(nullptr), mask(0), stamp(0), hashed(false) {}
    ~KeySet() { std::free(table); }
    KeySet(const KeySet &) = delete;
    KeySet &operator=(const KeySet &) = delete;
    int start(size_t size) {
        count = 0;
        bloom = 0;
        hashed = size > 16;
        if (!hashed) return 0;
        size_t cap = 64;
        while (cap < size * 2) cap <<= 1;
        if (!table || cap > mask + 1 || stamp == 0xFFFFFFFFu) {
            std::free(table);
            table = (Slot *)std::calloc(cap > mask + 1 ? cap : mask + 1,
                                        sizeof(Slot));
            if (!table) { mask = 0; return -1; }
            if (cap > mask + 1) mask = cap - 1;
            stamp = 0;
        }
        stamp++;
        return 0;
    }
    /* True the first time a key is seen in this object. */
    bool add(const char *p, uint32_t n) {
        if (!hashed) {
            unsigned mix = n * 7u;
            if (n) mix += (unsigned char)p[0] * 3u + (unsigned char)p[n - 1];
            uint64_t bit = 1ull << (mix & 63);
            if (bloom & bit) {
                for (uint32_t j = 0; j < count; j++) {
                    if (ln[j] == n && std::memcmp(lp[j], p, n) == 0)
                        return false;
                }
            }
            bloom |= bit;
            lp[count] = p;
            ln[count] = n;
            count++;
            return true;
        }
        uint64_t h = hash_bytes(p, n);
        size_t i = (size_t)h & mask;
        while (table[i].stamp == stamp) {
            if (table[i].h == h && table[i].n == n &&
                std::memcmp(table[i].p, p, n) == 0)
                return false;
            i = (i + 1) & mask;
        }
        table[i].p = p;
        table[i].h = h;
        table[i].n = n;
        table[i].stamp = stamp;
        return true;
    }
};

/* The keys already in dims, priority or others for one item (after
   the 64-character cut), copied into an arena. */
struct Kept {
    /* `p` points into the simdjson document (or at a literal) for keys
       that outlive the item; other keys are copied to the arena. */
    struct Slot { uint64_t h; const char *p; uint32_t off; uint32_t n; };
    static const int SLOTS = 512;  /* 4 reserved + 40 dims + 4 + 20 measures */
    static const uint32_t EMPTY = 0xFFFFFFFFu;
    Slot slots[SLOTS];
    uint16_t used[SLOTS];
    int n_used;
    Buf arena;
    Kept() : n_used(0) {
        for (int i = 0; i < SLOTS; i++) slots[i].n = EMPTY;
    }
    void reset() {
        for (int i = 0; i < n_used; i++) slots[used[i]].n = EMPTY;
        n_used = 0;
        arena.clear();
    }
    bool has(const char *p, size_t n, uint64_t h) const {
        size_t i = (size_t)h & (SLOTS - 1);
        while (slots[i].n != EMPTY) {
            const Slot &s = slots[i];
            if (s.h == h && s.n == n &&
                std::memcmp(s.p ? s.p : arena.p + s.off, p, n) == 0)
                return true;
            i = (i + 1) & (SLOTS - 1);
        }
        return false;
    }
    void add(const char *p, size_t n, uint64_t h, bool stable) {
        if (n_used >= SLOTS / 2) { arena.failed = true; return; }
        size_t i = (size_t)h & (SLOTS - 1);
        while (slots[i].n != EMPTY) i = (i + 1) & (SLOTS - 1);
        slots[i].h = h;
        slots[i].p = stable ? p : nullptr;
        slots[i].off = (uint32_t)arena.n;
        slots[i].n = (uint32_t)n;
        used[n_used++] = (uint16_t)i;
        if (!stable) arena.put(p, n);
    }
};

/* One level of an iterative walk over nested values: heap frames, so
   simdjson's 1024 levels of nesting never meet a small thread stack. */
struct Frame {
    Obj::iterator it, end;
    Arr::iterator ait, aend;
    KeySet seen;
    bool is_object;
    bool first;
    size_t size;
};
struct Frames {
    std::vector<Frame *> levels;
    Frames() {}
    Frames(const Frames &) = delete;
    Frames &operator=(const Frames &) = delete;
    ~Frames() { for (Frame *f : levels) delete f; }
    /* The frame for `depth`, made on first use; nullptr without memory. */
    Frame *at(size_t depth) {
        if (depth < levels.size()) return levels[depth];
        try {
            while (levels.size() <= depth) {
                levels.push_back(nullptr);
                levels.back() = new Frame();
            }
        } catch (...) {
            if (!levels.empty() && !levels.back()) levels.pop_back();
            return nullptr;
        }
        return levels[depth];
    }
};

/* Per-thread working memory, reused by every map() on that thread. */
struct Scratch {
    Buf dims, measures, others, tmp, key, name, num, lib;
    Buf priority[4];
    size_t others_end[64];
    int n_others;
    int n_dims;
    int n_dim_entries;
    bool busy;
    long long strips[5];  /* keys left out, by strip reason, this request */
    Buf strip_last[5];  /* the last key noted per reason: a repeat is not decoded */
    void *names;  /* the owning _ThreadParser's list of name lists */
    /* this map()'s frozenset of exact key names kept despite PII, or NULL */
    void *allow;
    /* this item's list of (reason, key name) while events are named, or NULL */
    void *item;
    Kept kept;
    KeySet seen;  /* the properties' keys: its table outlives the item */
    Frames frames;
    Scratch() : n_others(0), n_dims(0), n_dim_entries(0), busy(false), names(0),
                allow(0), item(0) {
        for (int i = 0; i < 5; i++) strips[i] = 0;
    }
    void start_item() {
        dims.clear();
        others.clear();
        for (int i = 0; i < 4; i++) priority[i].clear();
        n_others = 0;
        n_dims = 0;
        n_dim_entries = 0;
        kept.reset();
        dims.putc('{');
    }
    bool failed() const {
        return dims.failed || measures.failed || others.failed ||
               tmp.failed || key.failed || name.failed || num.failed ||
               lib.failed ||
               priority[0].failed || priority[1].failed ||
               priority[2].failed || priority[3].failed ||
               kept.arena.failed;
    }
};

/* The item's top-level members the mapping reads, found in one pass;
   the first of duplicated keys wins. */
enum { F_TYPE, F_USER_ID, F_ANONYMOUS_ID, F_EVENT, F_PROPERTIES,
       F_TRAITS, F_CONTEXT, F_TIMESTAMP, F_ORIGINAL_TIMESTAMP, F_SENT_AT,
       F_MESSAGE_ID, F_NAME, F_GROUP_ID, F_PREVIOUS_ID, F_COUNT };
struct Fields {
    El v[F_COUNT];
    bool has[F_COUNT];
};
static inline int field_of(const char *k, uint32_t n) {
#define DRENGR_IS(word) (std::memcmp(k, word, sizeof(word) - 1) == 0)
    switch (n) {
    case 4:
        if (DRENGR_IS("type")) return F_TYPE;
        if (DRENGR_IS("name")) return F_NAME;
        return -1;
    case 5: return DRENGR_IS("event") ? F_EVENT : -1;
    case 6:
        if (DRENGR_IS("userId")) return F_USER_ID;
        if (DRENGR_IS("traits")) return F_TRAITS;
        if (DRENGR_IS("sentAt")) return F_SENT_AT;
        return -1;
    case 7:
        if (DRENGR_IS("context")) return F_CONTEXT;
        if (DRENGR_IS("groupId")) return F_GROUP_ID;
        return -1;
    case 9:
        if (DRENGR_IS("timestamp")) return F_TIMESTAMP;
        if (DRENGR_IS("messageId")) return F_MESSAGE_ID;
        return -1;
    case 10:
        if (DRENGR_IS("properties")) return F_PROPERTIES;
        if (DRENGR_IS("previousId")) return F_PREVIOUS_ID;
        return -1;
    case 11: return DRENGR_IS("anonymousId") ? F_ANONYMOUS_ID : -1;
    case 17: return DRENGR_IS("originalTimestamp") ? F_ORIGINAL_TIMESTAMP : -1;
    default: return -1;
    }
}
static void scan_fields(const Obj &o, Fields &f) {
    for (int i = 0; i < F_COUNT; i++) f.has[i] = false;
    for (Obj::iterator it = o.begin(); it != o.end(); ++it) {
        int at = field_of(it.key_c_str(), it.key_length());
        if (at >= 0 && !f.has[at]) {
            f.has[at] = true;
            f.v[at] = it.value();
        }
    }
}

/* context.app / .os / .device / .traits / .library in one pass, first key wins. */
enum { C_APP, C_OS, C_DEVICE, C_TRAITS, C_LIBRARY, C_COUNT };
static void scan_context(const Obj &o, Fields &f) {
    for (int i = 0; i < C_COUNT; i++) f.has[i] = false;
    for (Obj::iterator it = o.begin(); it != o.end(); ++it) {
        const char *k = it.key_c_str();
        int at = -1;
        switch (it.key_length()) {
        case 2: at = DRENGR_IS("os") ? C_OS : -1; break;
        case 3: at = DRENGR_IS("app") ? C_APP : -1; break;
        case 6:
            at = DRENGR_IS("device") ? C_DEVICE
               : DRENGR_IS("traits") ? C_TRAITS : -1;
            break;
        case 7: at = DRENGR_IS("library") ? C_LIBRARY : -1; break;
        }
        if (at >= 0 && !f.has[at]) {
            f.has[at] = true;
            f.v[at] = it.value();
        }
    }
}
#undef DRENGR_IS

}  // namespace drengr

#endif  /* DRENGR_MAPPING_HELPERS_HPP */

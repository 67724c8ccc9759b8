/* The flow-enricher hot path: FlowUpdateBatch msgpack messages -> enrichment -> ClickHouse Native blocks
 * for the three flow tables + the enriched messages to republish, in one pass and without building a
 * Python object per flow.
 *
 * process(messages, by_tid, by_mac, by_ip, host_of, pick) -> dict with
 *   flows, metrics, raw: Native blocks (bytes; raw is None when no packet was captured)
 *   rows: flow updates in the blocks, raw_rows
 *   enriched: list (one per message) of the enriched message bytes, None for a rejected message
 *   errors: list of (message index, reason) for messages rejected (their rows are not in the blocks)
 *   ts: list of each message's `ts` (0 when rejected), unresolved: flows whose NodeTID found no node
 *
 * The lookups are EndpointLookup's dicts: key -> node ID (str), or -> {node ID: host} when several nodes own
 * the key; then pick(index, key, host) decides (Python). Column order and wire types: COLUMNS below, checked
 * against netsonde.common.flowschema by the unit tests.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ---------------------------------------------------------------- growable buffers */
typedef struct { char *p; size_t len, cap; } buf_t;

static int buf_reserve(buf_t *b, size_t n) {
    if (b->len + n <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) { PyErr_NoMemory(); return -1; }
    b->p = p; b->cap = cap;
    return 0;
}
static inline int put(buf_t *b, const void *s, size_t n) {
    if (buf_reserve(b, n)) return -1;
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}
static inline int put_u8(buf_t *b, uint8_t v) { return put(b, &v, 1); }
static inline int put_i64(buf_t *b, int64_t v) { return put(b, &v, 8); } /* little-endian host (x86/arm) */
static inline int put_u32(buf_t *b, uint32_t v) { return put(b, &v, 4); }
static inline int put_u16(buf_t *b, uint16_t v) { return put(b, &v, 2); }
static int put_varint(buf_t *b, uint64_t v) {
    uint8_t tmp[10]; int n = 0;
    do { uint8_t c = v & 0x7f; v >>= 7; if (v) c |= 0x80; tmp[n++] = c; } while (v);
    return put(b, tmp, n);
}
static inline int put_str(buf_t *b, const char *s, size_t n) {
    if (put_varint(b, n)) return -1;
    return put(b, s, n);
}
static void buf_free(buf_t *b) { free(b->p); b->p = NULL; b->len = b->cap = 0; }

/* msgpack writers (for the enriched messages) */
static int mp_map_header(buf_t *b, uint32_t n) {
    if (n < 16) return put_u8(b, 0x80 | n);
    if (n < 65536) { uint8_t h[3] = {0xde, n >> 8, n & 0xff}; return put(b, h, 3); }
    uint8_t h[5] = {0xdf, n >> 24, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff};
    return put(b, h, 5);
}
static int mp_str(buf_t *b, const char *s, size_t n) {
    if (n < 32) { if (put_u8(b, 0xa0 | n)) return -1; }
    else if (n < 256) { uint8_t h[2] = {0xd9, n}; if (put(b, h, 2)) return -1; }
    else if (n < 65536) { uint8_t h[3] = {0xda, n >> 8, n & 0xff}; if (put(b, h, 3)) return -1; }
    else { uint8_t h[5] = {0xdb, n >> 24, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff}; if (put(b, h, 5)) return -1; }
    return put(b, s, n);
}

/* ---------------------------------------------------------------- msgpack reader */
typedef struct { const uint8_t *p, *end; const char *err; } rd_t;
typedef struct { const char *s; size_t n; } sv_t;

#define FAIL(r, msg) do { if (!(r)->err) (r)->err = (msg); return -1; } while (0)

static inline uint64_t be(const uint8_t *p, int n) { uint64_t v = 0; for (int i = 0; i < n; i++) v = (v << 8) | p[i]; return v; }
static inline int need(rd_t *r, size_t n) { if ((size_t)(r->end - r->p) < n) FAIL(r, "truncated"); return 0; }

static int rd_nil(rd_t *r) { if (r->p < r->end && *r->p == 0xc0) { r->p++; return 1; } return 0; }

static int rd_str(rd_t *r, sv_t *out) {
    if (need(r, 1)) return -1;
    uint8_t t = *r->p; size_t n, h;
    if ((t & 0xe0) == 0xa0) { n = t & 0x1f; h = 1; }
    else if (t == 0xd9) { if (need(r, 2)) return -1; n = r->p[1]; h = 2; }
    else if (t == 0xda) { if (need(r, 3)) return -1; n = be(r->p + 1, 2); h = 3; }
    else if (t == 0xdb) { if (need(r, 5)) return -1; n = be(r->p + 1, 4); h = 5; }
    else FAIL(r, "expected str");
    if (need(r, h + n)) return -1;
    out->s = (const char *)r->p + h; out->n = n; r->p += h + n;
    return 0;
}
static int rd_bin(rd_t *r, sv_t *out) {
    if (need(r, 1)) return -1;
    uint8_t t = *r->p; size_t n, h;
    if (t == 0xc4) { if (need(r, 2)) return -1; n = r->p[1]; h = 2; }
    else if (t == 0xc5) { if (need(r, 3)) return -1; n = be(r->p + 1, 2); h = 3; }
    else if (t == 0xc6) { if (need(r, 5)) return -1; n = be(r->p + 1, 4); h = 5; }
    else return rd_str(r, out);
    if (need(r, h + n)) return -1;
    out->s = (const char *)r->p + h; out->n = n; r->p += h + n;
    return 0;
}
static int rd_int(rd_t *r, int64_t *out) {
    if (need(r, 1)) return -1;
    uint8_t t = *r->p;
    if (t <= 0x7f) { *out = t; r->p++; return 0; }
    if (t >= 0xe0) { *out = (int8_t)t; r->p++; return 0; }
    int n; int sign;
    switch (t) {
    case 0xcc: n = 1; sign = 0; break; case 0xcd: n = 2; sign = 0; break;
    case 0xce: n = 4; sign = 0; break; case 0xcf: n = 8; sign = 0; break;
    case 0xd0: n = 1; sign = 1; break; case 0xd1: n = 2; sign = 1; break;
    case 0xd2: n = 4; sign = 1; break; case 0xd3: n = 8; sign = 1; break;
    default: FAIL(r, "expected int");
    }
    if (need(r, 1 + n)) return -1;
    uint64_t v = be(r->p + 1, n);
    if (sign && n < 8 && (v >> (8 * n - 1))) v |= ~((1ULL << (8 * n)) - 1);
    *out = (int64_t)v; r->p += 1 + n;
    return 0;
}
static int rd_container(rd_t *r, uint8_t fix, uint8_t b16, uint8_t b32, uint32_t *n, const char *what) {
    if (need(r, 1)) return -1;
    uint8_t t = *r->p;
    if ((t & 0xf0) == fix) { *n = t & 0x0f; r->p++; return 0; }
    if (t == b16) { if (need(r, 3)) return -1; *n = be(r->p + 1, 2); r->p += 3; return 0; }
    if (t == b32) { if (need(r, 5)) return -1; *n = be(r->p + 1, 4); r->p += 5; return 0; }
    FAIL(r, what);
}
static int rd_map(rd_t *r, uint32_t *n) { return rd_container(r, 0x80, 0xde, 0xdf, n, "expected map"); }
static int rd_array(rd_t *r, uint32_t *n) { return rd_container(r, 0x90, 0xdc, 0xdd, n, "expected array"); }

static int skip(rd_t *r, int depth) {
    if (depth > 64) FAIL(r, "too deep");
    if (need(r, 1)) return -1;
    uint8_t t = *r->p; uint32_t n; sv_t s; int64_t i;
    if (t <= 0x7f || t >= 0xe0 || (t >= 0xcc && t <= 0xd3)) return rd_int(r, &i);
    if ((t & 0xe0) == 0xa0 || (t >= 0xd9 && t <= 0xdb)) return rd_str(r, &s);
    if (t >= 0xc4 && t <= 0xc6) return rd_bin(r, &s);
    if (t == 0xc0 || t == 0xc2 || t == 0xc3) { r->p++; return 0; }
    if (t == 0xca) { if (need(r, 5)) return -1; r->p += 5; return 0; }
    if (t == 0xcb) { if (need(r, 9)) return -1; r->p += 9; return 0; }
    if ((t & 0xf0) == 0x90 || t == 0xdc || t == 0xdd) {
        if (rd_array(r, &n)) return -1;
        for (uint32_t k = 0; k < n; k++) if (skip(r, depth + 1)) return -1;
        return 0;
    }
    if ((t & 0xf0) == 0x80 || t == 0xde || t == 0xdf) {
        if (rd_map(r, &n)) return -1;
        for (uint32_t k = 0; k < 2 * n; k++) if (skip(r, depth + 1)) return -1;
        return 0;
    }
    if (t >= 0xd4 && t <= 0xd8) { size_t len = (size_t)1 << (t - 0xd4); if (need(r, 2 + len)) return -1; r->p += 2 + len; return 0; }
    if (t >= 0xc7 && t <= 0xc9) {
        int h = t == 0xc7 ? 1 : t == 0xc8 ? 2 : 4;
        if (need(r, 1 + h)) return -1;
        size_t len = be(r->p + 1, h);
        if (need(r, 2 + h + len)) return -1;
        r->p += 2 + h + len; return 0;
    }
    FAIL(r, "bad msgpack byte");
}

/* msgpack value -> JSON text (for Extra) */
static int json_str(buf_t *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    if (put_u8(b, '"')) return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c == '"' || c == '\\') { char e[2] = {'\\', c}; if (put(b, e, 2)) return -1; }
        else if (c < 0x20) { char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]}; if (put(b, e, 6)) return -1; }
        else if (put_u8(b, c)) return -1;
    }
    return put_u8(b, '"');
}
static int to_json(rd_t *r, buf_t *b, int depth) {
    if (depth > 64) FAIL(r, "too deep");
    if (need(r, 1)) return -1;
    uint8_t t = *r->p; uint32_t n; sv_t s; int64_t i; char num[32];
    if (t <= 0x7f || t >= 0xe0 || (t >= 0xd0 && t <= 0xd3) || (t >= 0xcc && t <= 0xce)) {
        if (rd_int(r, &i)) return -1;
        return put(b, num, snprintf(num, sizeof num, "%lld", (long long)i));
    }
    if (t == 0xcf) { if (need(r, 9)) return -1; uint64_t u = be(r->p + 1, 8); r->p += 9;
        return put(b, num, snprintf(num, sizeof num, "%llu", (unsigned long long)u)); }
    if ((t & 0xe0) == 0xa0 || (t >= 0xd9 && t <= 0xdb)) { if (rd_str(r, &s)) return -1; return json_str(b, s.s, s.n); }
    if (t == 0xc0) { r->p++; return put(b, "null", 4); }
    if (t == 0xc2) { r->p++; return put(b, "false", 5); }
    if (t == 0xc3) { r->p++; return put(b, "true", 4); }
    if (t == 0xca || t == 0xcb) {
        double d;
        if (t == 0xca) { if (need(r, 5)) return -1; uint32_t u = be(r->p + 1, 4); float f; memcpy(&f, &u, 4); d = f; r->p += 5; }
        else { if (need(r, 9)) return -1; uint64_t u = be(r->p + 1, 8); memcpy(&d, &u, 8); r->p += 9; }
        if (d != d || d - d != 0) return put(b, "null", 4);
        return put(b, num, snprintf(num, sizeof num, "%.17g", d));
    }
    if ((t & 0xf0) == 0x90 || t == 0xdc || t == 0xdd) {
        if (rd_array(r, &n) || put_u8(b, '[')) return -1;
        for (uint32_t k = 0; k < n; k++) {
            if ((k && put_u8(b, ',')) || to_json(r, b, depth + 1)) return -1;
        }
        return put_u8(b, ']');
    }
    if ((t & 0xf0) == 0x80 || t == 0xde || t == 0xdf) {
        if (rd_map(r, &n) || put_u8(b, '{')) return -1;
        for (uint32_t k = 0; k < n; k++) {
            if (k && put_u8(b, ',')) return -1;
            if (rd_str(r, &s) || json_str(b, s.s, s.n) || put_u8(b, ':') || to_json(r, b, depth + 1)) return -1;
        }
        return put_u8(b, '}');
    }
    /* bin / ext: no JSON form */
    if (skip(r, depth)) return -1;
    return put(b, "null", 4);
}

/* ---------------------------------------------------------------- columns */
enum { S, I64, U64, U32, U16, MAP };
#define NMETRIC 9 /* FlowMetric's fields: METRIC_KEYS */
typedef struct { const char *name; const char *type; int kind; } col_t;

/* the columns of netsonde.common.flowschema (FLOW_COLUMNS, METRIC_COLUMNS, RAW_PACKET_COLUMNS) as sent on the
 * wire: `python -m netsonde.flow_enricher.ctables` (make install, unit tests) checks these tables against it */
#define NFLOWCOLS 55
static const col_t FLOWCOLS[NFLOWCOLS] = {
    {"UUID", "String", S}, {"NodeTID", "String", S}, {"Start", "Int64", I64}, {"Last", "Int64", I64},
    {"TrackingID", "String", S}, {"L3TrackingID", "String", S}, {"ParentUUID", "String", S},
    {"CaptureID", "String", S}, {"LayersPath", "String", S}, {"Application", "String", S},
    {"LinkProtocol", "String", S}, {"LinkA", "String", S}, {"LinkB", "String", S}, {"LinkID", "Int64", I64},
    {"NetworkProtocol", "String", S}, {"NetworkA", "String", S}, {"NetworkB", "String", S}, {"NetworkID", "Int64", I64},
    {"TransportProtocol", "String", S}, {"TransportA", "Int64", I64}, {"TransportB", "Int64", I64},
    {"TransportID", "Int64", I64},
    {"ICMPType", "String", S}, {"ICMPCode", "Int64", I64}, {"ICMPID", "Int64", I64},
    {"MetricABPackets", "UInt64", U64}, {"MetricABBytes", "UInt64", U64}, {"MetricBAPackets", "UInt64", U64},
    {"MetricBABytes", "UInt64", U64}, {"MetricStart", "Int64", I64}, {"MetricLast", "Int64", I64},
    {"MetricRTT", "Int64", I64}, {"MetricABDrops", "UInt64", U64}, {"MetricBADrops", "UInt64", U64},
    {"LastUpdateMetricABPackets", "UInt64", U64}, {"LastUpdateMetricABBytes", "UInt64", U64},
    {"LastUpdateMetricBAPackets", "UInt64", U64}, {"LastUpdateMetricBABytes", "UInt64", U64},
    {"LastUpdateMetricStart", "Int64", I64}, {"LastUpdateMetricLast", "Int64", I64},
    {"LastUpdateMetricRTT", "Int64", I64}, {"LastUpdateMetricABDrops", "UInt64", U64},
    {"LastUpdateMetricBADrops", "UInt64", U64},
    {"TCPMetric", "Map(String, Int64)", MAP}, {"IPMetric", "Map(String, Int64)", MAP},
    {"DropReasons", "Map(String, Int64)", MAP}, {"Extra", "String", S},
    {"FinishType", "String", S}, {"SamplingRate", "UInt32", U32}, {"RawPacketsCaptured", "UInt64", U64},
    {"NodeID", "String", S}, {"ANodeID", "String", S}, {"BNodeID", "String", S}, {"Host", "String", S},
    {"BatchID", "String", S},
};
enum { C_UUID, C_NODETID, C_START, C_LAST, C_TRK, C_L3TRK, C_PARENT, C_CAPTURE, C_LAYERS, C_APP,
       C_LINK, C_NET = C_LINK + 4, C_TR = C_NET + 4, C_ICMPT = C_TR + 4, C_ICMPC, C_ICMPID,
       C_MET, C_LUM = C_MET + NMETRIC, C_TCPM = C_LUM + NMETRIC, C_IPM, C_DROPS, C_EXTRA, C_FINISH, C_SAMPLING,
       C_RAWCAP,
       C_NODEID, C_ANODE, C_BNODE, C_HOST, C_BATCH };

#define NMETCOLS 13
static const col_t METCOLS[NMETCOLS] = {
    {"UUID", "String", S}, {"NodeTID", "String", S}, {"TrackingID", "String", S},
    {"ABPackets", "UInt64", U64}, {"ABBytes", "UInt64", U64}, {"BAPackets", "UInt64", U64},
    {"BABytes", "UInt64", U64}, {"Start", "Int64", I64}, {"Last", "Int64", I64}, {"RTT", "Int64", I64},
    {"ABDrops", "UInt64", U64}, {"BADrops", "UInt64", U64}, {"BatchID", "String", S},
};
#define NRAWCOLS 7
static const col_t RAWCOLS[NRAWCOLS] = {
    {"UUID", "String", S}, {"NodeTID", "String", S}, {"Timestamp", "Int64", I64}, {"Index", "UInt64", U64},
    {"Data", "String", S}, {"LinkType", "UInt16", U16}, {"BatchID", "String", S},
};

/* a map column needs offsets + keys + values */
typedef struct { buf_t data; buf_t keys; buf_t vals; uint64_t total; } colbuf_t;

typedef struct {
    colbuf_t f[NFLOWCOLS], m[NMETCOLS], r[NRAWCOLS];
    size_t rows, raw_rows;
} tables_t;

typedef struct { size_t f[NFLOWCOLS][3], m[NMETCOLS], r[NRAWCOLS]; uint64_t tot[NFLOWCOLS]; size_t rows, raw_rows; } mark_t;

static void mark(tables_t *t, mark_t *k) {
    for (int i = 0; i < NFLOWCOLS; i++) { k->f[i][0] = t->f[i].data.len; k->f[i][1] = t->f[i].keys.len;
        k->f[i][2] = t->f[i].vals.len; k->tot[i] = t->f[i].total; }
    for (int i = 0; i < NMETCOLS; i++) k->m[i] = t->m[i].data.len;
    for (int i = 0; i < NRAWCOLS; i++) k->r[i] = t->r[i].data.len;
    k->rows = t->rows; k->raw_rows = t->raw_rows;
}
static void rollback(tables_t *t, mark_t *k) {
    for (int i = 0; i < NFLOWCOLS; i++) { t->f[i].data.len = k->f[i][0]; t->f[i].keys.len = k->f[i][1];
        t->f[i].vals.len = k->f[i][2]; t->f[i].total = k->tot[i]; }
    for (int i = 0; i < NMETCOLS; i++) t->m[i].data.len = k->m[i];
    for (int i = 0; i < NRAWCOLS; i++) t->r[i].data.len = k->r[i];
    t->rows = k->rows; t->raw_rows = k->raw_rows;
}
static void tables_free(tables_t *t) {
    for (int i = 0; i < NFLOWCOLS; i++) { buf_free(&t->f[i].data); buf_free(&t->f[i].keys); buf_free(&t->f[i].vals); }
    for (int i = 0; i < NMETCOLS; i++) buf_free(&t->m[i].data);
    for (int i = 0; i < NRAWCOLS; i++) buf_free(&t->r[i].data);
}

static size_t varint_len(uint64_t v) { size_t n = 1; while (v >= 0x80) { v >>= 7; n++; } return n; }
static char *write_varint(char *p, uint64_t v) {
    do { uint8_t c = v & 0x7f; v >>= 7; if (v) c |= 0x80; *p++ = c; } while (v);
    return p;
}
static char *write_str(char *p, const char *s, size_t n) { p = write_varint(p, n); memcpy(p, s, n); return p + n; }

/* the Native block, written directly into the bytes object (one copy of the column data) */
static PyObject *block(const col_t *cols, colbuf_t *bufs, int n, size_t rows) {
    size_t total = varint_len(n) + varint_len(rows);
    for (int i = 0; i < n; i++) {
        size_t ln = strlen(cols[i].name), lt = strlen(cols[i].type);
        total += varint_len(ln) + ln + varint_len(lt) + lt + bufs[i].data.len;
        if (cols[i].kind == MAP) total += bufs[i].keys.len + bufs[i].vals.len;
    }
    PyObject *res = PyBytes_FromStringAndSize(NULL, total);
    if (!res) return NULL;
    char *p = PyBytes_AS_STRING(res);
    p = write_varint(p, n);
    p = write_varint(p, rows);
    for (int i = 0; i < n; i++) {
        p = write_str(p, cols[i].name, strlen(cols[i].name));
        p = write_str(p, cols[i].type, strlen(cols[i].type));
        if (bufs[i].data.len) { memcpy(p, bufs[i].data.p, bufs[i].data.len); p += bufs[i].data.len; }
        if (cols[i].kind == MAP) {
            if (bufs[i].keys.len) { memcpy(p, bufs[i].keys.p, bufs[i].keys.len); p += bufs[i].keys.len; }
            if (bufs[i].vals.len) { memcpy(p, bufs[i].vals.p, bufs[i].vals.len); p += bufs[i].vals.len; }
        }
    }
    return res;
}

/* the column buffers are kept between calls (lengths reset): no page faults and no regrowth per flush.
 * process() never releases the GIL, so calls from several threads are serialized. */
static tables_t *shared_tables = NULL;
static size_t shared_uses = 0;
static int shared_busy = 0;

static void tables_reset(tables_t *t) {
    for (int i = 0; i < NFLOWCOLS; i++) { t->f[i].data.len = t->f[i].keys.len = t->f[i].vals.len = 0; t->f[i].total = 0; }
    for (int i = 0; i < NMETCOLS; i++) t->m[i].data.len = 0;
    for (int i = 0; i < NRAWCOLS; i++) t->r[i].data.len = 0;
    t->rows = t->raw_rows = 0;
}

/* ---------------------------------------------------------------- one flow */
typedef struct { int present; sv_t proto; sv_t a, b; int64_t ia, ib, id; } layer_t;
typedef struct {
    sv_t uuid, nodetid, trk, l3trk, parent, capture, layers, app, finish;
    int64_t start, last, sampling, rawcap;
    layer_t link, net, tr;
    int icmp; sv_t icmp_type; int64_t icmp_code, icmp_id;
    int64_t met[NMETRIC]; int lum_present; int64_t lum[NMETRIC];
    const uint8_t *tcp, *ipm, *drops, *extra, *rawp;
    int has_enrich_keys;
    const uint8_t *content; size_t content_len; uint32_t nkeys;
    int seen;
} flow_t;

static const char *METRIC_KEYS[9] = {"ABPackets", "ABBytes", "BAPackets", "BABytes", "Start", "Last", "RTT", "ABDrops",
                                     "BADrops"};

static inline int keyeq(sv_t k, const char *s) { size_t n = strlen(s); return k.n == n && memcmp(k.s, s, n) == 0; }

static int rd_metric(rd_t *r, int64_t out[NMETRIC]) {
    uint32_t n; sv_t k;
    if (rd_map(r, &n)) return -1;
    for (uint32_t i = 0; i < n; i++) {
        if (rd_str(r, &k)) return -1;
        int j;
        for (j = 0; j < NMETRIC; j++) if (keyeq(k, METRIC_KEYS[j])) break;
        if (j < NMETRIC) { if (rd_int(r, &out[j])) return -1; }
        else if (skip(r, 1)) return -1;
    }
    return 0;
}

/* Link/Network: A, B strings; Transport: A, B ints */
static int rd_layer(rd_t *r, layer_t *l, int int_ends) {
    uint32_t n; sv_t k; int have = 0;
    if (rd_map(r, &n)) return -1;
    l->present = 1;
    for (uint32_t i = 0; i < n; i++) {
        if (rd_str(r, &k)) return -1;
        if (keyeq(k, "Protocol")) { if (rd_str(r, &l->proto)) return -1; have |= 1; }
        else if (keyeq(k, "A")) { if (int_ends ? rd_int(r, &l->ia) : rd_str(r, &l->a)) return -1; have |= 2; }
        else if (keyeq(k, "B")) { if (int_ends ? rd_int(r, &l->ib) : rd_str(r, &l->b)) return -1; have |= 4; }
        else if (keyeq(k, "ID")) { if (rd_int(r, &l->id)) return -1; }
        else if (skip(r, 1)) return -1;
    }
    if (have != 7) FAIL(r, "layer lacks Protocol, A or B");
    return 0;
}

enum { R_UUID = 1, R_LAYERS = 2, R_APP = 4, R_TRK = 8, R_L3 = 16, R_TID = 32, R_START = 64, R_LAST = 128, R_MET = 256 };
#define R_ALL 511

static int rd_flow(rd_t *r, flow_t *f) {
    uint32_t n; sv_t k;
    memset(f, 0, sizeof *f);
    f->finish.s = "NOT_FINISHED"; f->finish.n = 12;
    if (rd_map(r, &n)) return -1;
    f->content = r->p; f->nkeys = n;
    for (uint32_t i = 0; i < n; i++) {
        if (rd_str(r, &k)) return -1;
        const uint8_t *v = r->p;
        switch (k.n ? k.s[0] : 0) {
        case 'U': if (keyeq(k, "UUID")) { if (rd_str(r, &f->uuid)) return -1; f->seen |= R_UUID; continue; } break;
        case 'L':
            if (keyeq(k, "LayersPath")) { if (rd_str(r, &f->layers)) return -1; f->seen |= R_LAYERS; continue; }
            if (keyeq(k, "Last")) { if (rd_int(r, &f->last)) return -1; f->seen |= R_LAST; continue; }
            if (keyeq(k, "L3TrackingID")) { if (rd_str(r, &f->l3trk)) return -1; f->seen |= R_L3; continue; }
            if (keyeq(k, "Link")) { if (!rd_nil(r) && rd_layer(r, &f->link, 0)) return -1; continue; }
            if (keyeq(k, "LastUpdateMetric")) { if (!rd_nil(r)) { if (rd_metric(r, f->lum)) return -1; f->lum_present = 1; } continue; }
            if (keyeq(k, "LastRawPackets")) { if (!rd_nil(r)) { f->rawp = v; if (skip(r, 1)) return -1; } continue; }
            break;
        case 'A':
            if (keyeq(k, "Application")) { if (rd_str(r, &f->app)) return -1; f->seen |= R_APP; continue; }
            if (keyeq(k, "ANodeID")) { f->has_enrich_keys = 1; break; }
            break;
        case 'T':
            if (keyeq(k, "TrackingID")) { if (rd_str(r, &f->trk)) return -1; f->seen |= R_TRK; continue; }
            if (keyeq(k, "Transport")) { if (!rd_nil(r) && rd_layer(r, &f->tr, 1)) return -1; continue; }
            if (keyeq(k, "TCPMetric")) { if (!rd_nil(r)) { f->tcp = v; if (skip(r, 1)) return -1; } continue; }
            break;
        case 'N':
            if (keyeq(k, "NodeTID")) { if (rd_str(r, &f->nodetid)) return -1; f->seen |= R_TID; continue; }
            if (keyeq(k, "Network")) { if (!rd_nil(r) && rd_layer(r, &f->net, 0)) return -1; continue; }
            if (keyeq(k, "NodeID")) { f->has_enrich_keys = 1; break; }
            break;
        case 'S':
            if (keyeq(k, "Start")) { if (rd_int(r, &f->start)) return -1; f->seen |= R_START; continue; }
            if (keyeq(k, "SamplingRate")) { if (rd_int(r, &f->sampling)) return -1; continue; }
            break;
        case 'M': if (keyeq(k, "Metric")) { if (rd_metric(r, f->met)) return -1; f->seen |= R_MET; continue; } break;
        case 'I':
            if (keyeq(k, "ICMP")) {
                if (rd_nil(r)) continue;
                uint32_t m; sv_t kk; int have = 0;
                if (rd_map(r, &m)) return -1;
                f->icmp = 1;
                for (uint32_t j = 0; j < m; j++) {
                    if (rd_str(r, &kk)) return -1;
                    if (keyeq(kk, "Type")) { if (rd_str(r, &f->icmp_type)) return -1; have = 1; }
                    else if (keyeq(kk, "Code")) { if (rd_int(r, &f->icmp_code)) return -1; }
                    else if (keyeq(kk, "ID")) { if (rd_int(r, &f->icmp_id)) return -1; }
                    else if (skip(r, 1)) return -1;
                }
                if (!have) FAIL(r, "ICMP lacks Type");
                continue;
            }
            if (keyeq(k, "IPMetric")) { if (!rd_nil(r)) { f->ipm = v; if (skip(r, 1)) return -1; } continue; }
            break;
        case 'P': if (keyeq(k, "ParentUUID")) { if (rd_str(r, &f->parent)) return -1; continue; } break;
        case 'C': if (keyeq(k, "CaptureID")) { if (rd_str(r, &f->capture)) return -1; continue; } break;
        case 'D': if (keyeq(k, "DropReasons")) { if (!rd_nil(r)) { f->drops = v; if (skip(r, 1)) return -1; } continue; } break;
        case 'F': if (keyeq(k, "FinishType")) { if (rd_str(r, &f->finish)) return -1; continue; } break;
        case 'R': if (keyeq(k, "RawPacketsCaptured")) { if (rd_int(r, &f->rawcap)) return -1; continue; } break;
        case 'E': if (keyeq(k, "Extra")) { if (!rd_nil(r)) { f->extra = v; if (skip(r, 1)) return -1; } continue; } break;
        case 'B': if (keyeq(k, "BNodeID")) f->has_enrich_keys = 1; break;
        case 'H': if (keyeq(k, "Host")) f->has_enrich_keys = 1; break;
        }
        if (skip(r, 1)) return -1;
    }
    f->content_len = r->p - f->content;
    if ((f->seen & R_ALL) != R_ALL) FAIL(r, "flow lacks a required field");
    return 0;
}

/* counters map (TCPMetric / IPMetric / DropReasons) -> Map(String, Int64) column */
static int emit_counter_map(rd_t *r, colbuf_t *c, const uint8_t *at) {
    if (at) {
        rd_t rr = {at, r->end, NULL};
        uint32_t n; sv_t k; int64_t v;
        if (rd_map(&rr, &n)) { r->err = rr.err; return -1; }
        for (uint32_t i = 0; i < n; i++) {
            if (rd_str(&rr, &k) || rd_int(&rr, &v)) { r->err = rr.err; return -1; }
            if (put_str(&c->keys, k.s, k.n) || put_i64(&c->vals, v)) return -1;
            c->total++;
        }
    }
    return put_i64(&c->data, (int64_t)c->total);
}

/* ---------------------------------------------------------------- enrichment lookups */
typedef struct {
    PyObject *by_tid, *by_mac, *by_ip, *host_of, *pick;
    /* cache of the last NodeTID (flows of one batch mostly share it) */
    sv_t last_tid; PyObject *last_nid; PyObject *last_host; const char *last_batch_host; size_t last_batch_host_n;
} lookups_t;

/* -> new reference to the node ID (str, maybe ""), or NULL on error */
static PyObject *resolve(lookups_t *L, PyObject *index, sv_t key, PyObject *host) {
    PyObject *k = PyUnicode_DecodeUTF8(key.s, key.n, "replace");
    if (!k) return NULL;
    PyObject *v = PyDict_GetItemWithError(index, k);
    if (!v) {
        Py_DECREF(k);
        if (PyErr_Occurred()) return NULL;
        return PyUnicode_FromStringAndSize("", 0);
    }
    if (PyUnicode_Check(v)) { Py_DECREF(k); Py_INCREF(v); return v; }
    PyObject *res = PyObject_CallFunctionObjArgs(L->pick, index, k, host, NULL);
    Py_DECREF(k);
    if (res && !PyUnicode_Check(res)) { Py_DECREF(res); PyErr_SetString(PyExc_TypeError, "pick() must return str"); return NULL; }
    return res;
}

static int put_pystr(buf_t *b, PyObject *s) {
    Py_ssize_t n; const char *p = PyUnicode_AsUTF8AndSize(s, &n);
    if (!p) return -1;
    return put_str(b, p, n);
}
/* ---------------------------------------------------------------- emit one flow into the tables */
static int emit_flow(tables_t *t, rd_t *r, flow_t *f, sv_t batch_id, PyObject *nid, PyObject *an, PyObject *bn,
                     PyObject *host) {
    colbuf_t *c = t->f;
    if (put_str(&c[C_UUID].data, f->uuid.s, f->uuid.n) || put_str(&c[C_NODETID].data, f->nodetid.s, f->nodetid.n) ||
        put_i64(&c[C_START].data, f->start) || put_i64(&c[C_LAST].data, f->last) ||
        put_str(&c[C_TRK].data, f->trk.s, f->trk.n) || put_str(&c[C_L3TRK].data, f->l3trk.s, f->l3trk.n) ||
        put_str(&c[C_PARENT].data, f->parent.s, f->parent.n) || put_str(&c[C_CAPTURE].data, f->capture.s, f->capture.n) ||
        put_str(&c[C_LAYERS].data, f->layers.s, f->layers.n) || put_str(&c[C_APP].data, f->app.s, f->app.n))
        return -1;
    layer_t *ls[2] = {&f->link, &f->net};
    for (int i = 0; i < 2; i++) {
        colbuf_t *lc = &c[C_LINK + 4 * i];
        if (put_str(&lc[0].data, ls[i]->proto.s, ls[i]->proto.n) || put_str(&lc[1].data, ls[i]->a.s, ls[i]->a.n) ||
            put_str(&lc[2].data, ls[i]->b.s, ls[i]->b.n) || put_i64(&lc[3].data, ls[i]->id))
            return -1;
    }
    if (put_str(&c[C_TR].data, f->tr.proto.s, f->tr.proto.n) || put_i64(&c[C_TR + 1].data, f->tr.ia) ||
        put_i64(&c[C_TR + 2].data, f->tr.ib) || put_i64(&c[C_TR + 3].data, f->tr.id) ||
        put_str(&c[C_ICMPT].data, f->icmp_type.s, f->icmp_type.n) || put_i64(&c[C_ICMPC].data, f->icmp_code) ||
        put_i64(&c[C_ICMPID].data, f->icmp_id))
        return -1;
    int64_t *lum = f->lum_present ? f->lum : f->met;
    for (int j = 0; j < NMETRIC; j++)
        if (put_i64(&c[C_MET + j].data, f->met[j]) || put_i64(&c[C_LUM + j].data, lum[j])) return -1;
    if (emit_counter_map(r, &c[C_TCPM], f->tcp) || emit_counter_map(r, &c[C_IPM], f->ipm) ||
        emit_counter_map(r, &c[C_DROPS], f->drops)) return -1;
    if (f->extra) {
        /* JSON text, written after a placeholder length: build it aside, then copy */
        buf_t tmp = {0};
        rd_t rr = {f->extra, r->end, NULL};
        uint32_t n;
        const uint8_t *save = rr.p;
        if (rd_map(&rr, &n)) { r->err = rr.err; buf_free(&tmp); return -1; }
        if (n == 0) { if (put_str(&c[C_EXTRA].data, "", 0)) return -1; }
        else {
            rr.p = save;
            if (to_json(&rr, &tmp, 0)) { r->err = rr.err; buf_free(&tmp); return -1; }
            int rc = put_str(&c[C_EXTRA].data, tmp.p, tmp.len);
            buf_free(&tmp);
            if (rc) return -1;
        }
    } else if (put_str(&c[C_EXTRA].data, "", 0)) return -1;
    if (put_str(&c[C_FINISH].data, f->finish.s, f->finish.n) || put_u32(&c[C_SAMPLING].data, (uint32_t)f->sampling) ||
        put_i64(&c[C_RAWCAP].data, f->rawcap) || put_pystr(&c[C_NODEID].data, nid) || put_pystr(&c[C_ANODE].data, an) ||
        put_pystr(&c[C_BNODE].data, bn) || put_pystr(&c[C_HOST].data, host) ||
        put_str(&c[C_BATCH].data, batch_id.s, batch_id.n))
        return -1;
    /* flow_metrics */
    colbuf_t *m = t->m;
    if (put_str(&m[0].data, f->uuid.s, f->uuid.n) || put_str(&m[1].data, f->nodetid.s, f->nodetid.n) ||
        put_str(&m[2].data, f->trk.s, f->trk.n))
        return -1;
    for (int j = 0; j < NMETRIC; j++) if (put_i64(&m[3 + j].data, lum[j])) return -1;
    if (put_str(&m[3 + NMETRIC].data, batch_id.s, batch_id.n)) return -1;
    t->rows++;
    /* raw packets */
    if (f->rawp) {
        rd_t rr = {f->rawp, r->end, NULL};
        uint32_t n;
        if (rd_array(&rr, &n)) { r->err = rr.err; return -1; }
        for (uint32_t i = 0; i < n; i++) {
            uint32_t mk; sv_t k, data = {"", 0}; int64_t ts = 0, idx = 0, lt = 1;
            if (rd_map(&rr, &mk)) { r->err = rr.err; return -1; }
            for (uint32_t j = 0; j < mk; j++) {
                int rc;
                if (rd_str(&rr, &k)) { r->err = rr.err; return -1; }
                if (keyeq(k, "Timestamp")) rc = rd_int(&rr, &ts);
                else if (keyeq(k, "Index")) rc = rd_int(&rr, &idx);
                else if (keyeq(k, "Data")) rc = rd_bin(&rr, &data);
                else if (keyeq(k, "LinkType")) rc = rd_int(&rr, &lt);
                else rc = skip(&rr, 1);
                if (rc) { r->err = rr.err; return -1; }
            }
            colbuf_t *w = t->r;
            if (put_str(&w[0].data, f->uuid.s, f->uuid.n) || put_str(&w[1].data, f->nodetid.s, f->nodetid.n) ||
                put_i64(&w[2].data, ts) || put_i64(&w[3].data, idx) || put_str(&w[4].data, data.s, data.n) ||
                put_u16(&w[5].data, (uint16_t)lt) || put_str(&w[6].data, batch_id.s, batch_id.n))
                return -1;
            t->raw_rows++;
        }
    }
    return 0;
}

/* copy a flow map, enriched: existing enrichment keys dropped, non-empty new values appended */
static int mp_pair(buf_t *b, const char *key, PyObject *s) {
    Py_ssize_t n; const char *p = PyUnicode_AsUTF8AndSize(s, &n);
    if (!p) return -1;
    if (n == 0) return 0;
    return mp_str(b, key, strlen(key)) || mp_str(b, p, n) ? -1 : 0;
}

/* copy a flow map, enriched: existing enrichment keys dropped, non-empty new values appended */
static int emit_enriched_flow(buf_t *out, flow_t *f, const uint8_t *end, PyObject *nid, PyObject *an, PyObject *bn,
                              PyObject *host) {
    PyObject *vals[4] = {nid, an, bn, host};
    uint32_t added = 0, kept = f->nkeys;
    for (int i = 0; i < 4; i++) if (PyUnicode_GET_LENGTH(vals[i]) > 0) added++;
    int rc = 0;
    if (!f->has_enrich_keys) {
        rc = mp_map_header(out, kept + added) || put(out, f->content, f->content_len);
    } else {
        buf_t body = {0};
        rd_t rr = {f->content, end, NULL};
        kept = 0;
        for (uint32_t i = 0; i < f->nkeys && !rc; i++) {
            const uint8_t *s = rr.p; sv_t k;
            rc = rd_str(&rr, &k) || skip(&rr, 1);
            if (!rc && !(keyeq(k, "NodeID") || keyeq(k, "ANodeID") || keyeq(k, "BNodeID") || keyeq(k, "Host"))) {
                rc = put(&body, s, rr.p - s); kept++;
            }
        }
        if (!rc) rc = mp_map_header(out, kept + added) || put(out, body.p, body.len);
        buf_free(&body);
    }
    if (!rc) rc = mp_pair(out, "NodeID", nid) || mp_pair(out, "ANodeID", an) || mp_pair(out, "BNodeID", bn) ||
                  mp_pair(out, "Host", host);
    return rc ? -1 : 0;
}

/* ---------------------------------------------------------------- one message */
typedef struct {
    sv_t host, batch_id; int64_t ts, v; const uint8_t *flows_at, *flows_end; uint32_t nflows, keys_after;
} batch_t;
/* flows_end is NULL when host, batch_id and ts come before `flows` (msgspec's order): the flows are then read
 * once, by process_message, which reads the `keys_after` keys that follow them afterwards (rd_batch_tail),
 * instead of a validating skip over every flow first and the real read after. */

/* The keys after the flows, read once the flows are: only `v` (or unknown keys) may follow them here. */
static int rd_batch_tail(rd_t *r, batch_t *b) {
    sv_t k;
    for (uint32_t i = 0; i < b->keys_after; i++) {
        if (rd_str(r, &k)) return -1;
        if (keyeq(k, "v")) { if (rd_int(r, &b->v)) return -1; }
        else if (keyeq(k, "host") || keyeq(k, "batch_id") || keyeq(k, "ts") || keyeq(k, "flows"))
            FAIL(r, "duplicate batch key");
        else if (skip(r, 1)) return -1;
    }
    if (r->p != r->end) FAIL(r, "trailing bytes");
    if (b->v != 1) FAIL(r, "version");
    return 0;
}

static int rd_batch(rd_t *r, batch_t *b) {
    uint32_t n; sv_t k; int have = 0;
    memset(b, 0, sizeof *b);
    b->v = 1;
    if (rd_map(r, &n)) return -1;
    for (uint32_t i = 0; i < n; i++) {
        if (rd_str(r, &k)) return -1;
        if (keyeq(k, "host")) { if (rd_str(r, &b->host)) return -1; have |= 1; }
        else if (keyeq(k, "batch_id")) { if (rd_str(r, &b->batch_id)) return -1; have |= 2; }
        else if (keyeq(k, "ts")) { if (rd_int(r, &b->ts)) return -1; have |= 4; }
        else if (keyeq(k, "v")) { if (rd_int(r, &b->v)) return -1; }
        else if (keyeq(k, "flows")) {
            b->flows_at = r->p;
            if (rd_array(r, &b->nflows)) return -1;
            have |= 8;
            if (have == 15) { b->flows_end = NULL; b->keys_after = n - i - 1; r->p = r->end; return 0; }
            /* host, batch_id or ts come after the flows (not msgspec's order): a first pass finds where the
             * flows end, so that they are known before the flows are read */
            for (uint32_t j = 0; j < b->nflows; j++) if (skip(r, 1)) return -1;
            b->flows_end = r->p;
        } else if (skip(r, 1)) return -1;
    }
    if (have != 15) FAIL(r, "batch lacks host, batch_id, ts or flows");
    if (b->v != 1) FAIL(r, "version");
    return 0;
}

static int process_message(tables_t *t, lookups_t *L, const uint8_t *data, size_t len, buf_t *enr, PyObject *unres,
                           const char **err, int64_t *ts_out, long *unresolved) {
    rd_t r = {data, data + len, NULL};
    batch_t b;
    if (rd_batch(&r, &b)) { *err = r.err; return -1; }
    if (r.p != r.end) { *err = "trailing bytes"; return -1; }
    *ts_out = b.ts;
    PyObject *batch_host = PyUnicode_DecodeUTF8(b.host.s, b.host.n, "replace");
    if (!batch_host) return -2;
    int rc = 0;
    /* enriched message: everything before the flows array + its header as is, the flows rewritten, the rest */
    rd_t fr = {b.flows_at, data + len, NULL};
    uint32_t nf;
    rd_array(&fr, &nf);
    if (put(enr, data, fr.p - data)) { Py_DECREF(batch_host); return -2; }
    for (uint32_t i = 0; i < nf && rc == 0; i++) {
        flow_t f;
        if (rd_flow(&fr, &f)) { *err = fr.err; rc = -1; break; }
        PyObject *nid, *host, *an = NULL, *bn = NULL;
        if (L->last_nid && f.nodetid.n == L->last_tid.n && memcmp(f.nodetid.s, L->last_tid.s, f.nodetid.n) == 0 &&
            L->last_batch_host_n == b.host.n && memcmp(L->last_batch_host, b.host.s, b.host.n) == 0) {
            nid = L->last_nid; host = L->last_host; Py_INCREF(nid); Py_INCREF(host);
        } else {
            nid = resolve(L, L->by_tid, f.nodetid, batch_host);
            if (!nid) { rc = -2; break; }
            host = NULL;
            if (PyUnicode_GET_LENGTH(nid) > 0) {
                host = PyDict_GetItemWithError(L->host_of, nid);
                if (!host && PyErr_Occurred()) { Py_DECREF(nid); rc = -2; break; }
                if (host && !PyUnicode_Check(host)) host = NULL;
                Py_XINCREF(host);
            }
            if (!host) { host = batch_host; Py_INCREF(host); }
            Py_XDECREF(L->last_nid); Py_XDECREF(L->last_host);
            L->last_nid = nid; L->last_host = host; Py_INCREF(nid); Py_INCREF(host);
            L->last_tid = f.nodetid; L->last_batch_host = b.host.s; L->last_batch_host_n = b.host.n;
        }
        if (PyUnicode_GET_LENGTH(nid) == 0) (*unresolved)++;
        if (f.link.present) {
            an = resolve(L, L->by_mac, f.link.a, host);
            bn = an ? resolve(L, L->by_mac, f.link.b, host) : NULL;
        } else {
            an = PyUnicode_FromStringAndSize("", 0);
            bn = PyUnicode_FromStringAndSize("", 0);
        }
        if (an && bn && f.net.present) {
            if (PyUnicode_GET_LENGTH(an) == 0) { Py_DECREF(an); an = resolve(L, L->by_ip, f.net.a, host); }
            if (an && PyUnicode_GET_LENGTH(bn) == 0) { Py_DECREF(bn); bn = resolve(L, L->by_ip, f.net.b, host); }
        }
        if (!an || !bn) rc = -2;
        else if (emit_flow(t, &fr, &f, b.batch_id, nid, an, bn, host)) rc = fr.err ? -1 : -2;
        else if (emit_enriched_flow(enr, &f, data + len, nid, an, bn, host)) rc = -2;
        if (rc == -1) *err = fr.err;
        Py_DECREF(nid); Py_DECREF(host); Py_XDECREF(an); Py_XDECREF(bn);
    }
    Py_DECREF(batch_host);
    if (rc) return rc;
    if (!b.flows_end) {  /* one pass: what follows the flows is read now (its rows are rolled back on error) */
        b.flows_end = fr.p;
        if (rd_batch_tail(&fr, &b)) { *err = fr.err; return -1; }
    }
    if (put(enr, b.flows_end, (data + len) - b.flows_end)) return -2;
    return 0;
}

static PyObject *process(PyObject *self, PyObject *args) {
    PyObject *messages;
    lookups_t L = {0};
    if (!PyArg_ParseTuple(args, "OO!O!O!O!O", &messages, &PyDict_Type, &L.by_tid, &PyDict_Type, &L.by_mac,
                          &PyDict_Type, &L.by_ip, &PyDict_Type, &L.host_of, &L.pick))
        return NULL;
    PyObject *seq = PySequence_Fast(messages, "messages must be a sequence of bytes");
    if (!seq) return NULL;
    Py_ssize_t nm = PySequence_Fast_GET_SIZE(seq);
    /* pick() is Python: while it runs another thread may enter process(); it then gets private buffers */
    int own = shared_busy;
    if (!own && !shared_tables) shared_tables = calloc(1, sizeof(tables_t));
    tables_t *t = own ? calloc(1, sizeof(tables_t)) : shared_tables;
    if (t) tables_reset(t);
    if (!own) shared_busy = 1;
    mark_t *mk = malloc(sizeof(mark_t));
    PyObject *enriched = PyList_New(nm), *errors = PyList_New(0), *tss = PyList_New(nm), *res = NULL;
    long unresolved = 0;
    buf_t enr = {0};  /* one buffer for every enriched message of the call: no malloc + free per message */
    if (!t || !mk || !enriched || !errors || !tss) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < nm; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        char *data; Py_ssize_t len;
        if (PyBytes_AsStringAndSize(item, &data, &len)) goto done;
        mark(t, mk);
        enr.len = 0;
        if (buf_reserve(&enr, (size_t)len + (size_t)len / 4 + 64)) goto done;
        const char *err = NULL; int64_t ts = 0; long unres = 0;
        Py_INCREF(item);  /* keep the bytes alive: the views point into them */
        int rc = process_message(t, &L, (const uint8_t *)data, len, &enr, NULL, &err, &ts, &unres);
        /* the NodeTID cache holds views into this message: drop it */
        Py_CLEAR(L.last_nid); Py_CLEAR(L.last_host); L.last_tid.n = (size_t)-1; L.last_batch_host_n = (size_t)-1;
        Py_DECREF(item);
        if (rc == -2) goto done;
        if (rc == -1) {
            rollback(t, mk);
            Py_INCREF(Py_None);
            PyList_SET_ITEM(enriched, i, Py_None);
            PyList_SET_ITEM(tss, i, PyLong_FromLong(0));
            PyObject *e = Py_BuildValue("(ns)", i, err ? err : "invalid");
            if (!e || PyList_Append(errors, e)) { Py_XDECREF(e); goto done; }
            Py_DECREF(e);
            continue;
        }
        unresolved += unres;
        PyObject *eb = PyBytes_FromStringAndSize(enr.p, enr.len);
        if (!eb) goto done;
        PyList_SET_ITEM(enriched, i, eb);
        PyList_SET_ITEM(tss, i, PyLong_FromLongLong(ts));
    }
    {
        PyObject *fb = block(FLOWCOLS, t->f, NFLOWCOLS, t->rows);
        PyObject *mb = fb ? block(METCOLS, t->m, NMETCOLS, t->rows) : NULL;
        PyObject *rb = NULL;
        if (mb) {
            if (t->raw_rows) rb = block(RAWCOLS, t->r, NRAWCOLS, t->raw_rows);
            else { rb = Py_None; Py_INCREF(rb); }
        }
        if (rb)
            res = Py_BuildValue("{s:N,s:N,s:N,s:n,s:n,s:O,s:O,s:O,s:l}", "flows", fb, "metrics", mb, "raw", rb,
                                "rows", (Py_ssize_t)t->rows, "raw_rows", (Py_ssize_t)t->raw_rows, "enriched", enriched,
                                "errors", errors, "ts", tss, "unresolved", unresolved);
        else { Py_XDECREF(fb); Py_XDECREF(mb); }
    }
done:
    buf_free(&enr);
    Py_XDECREF(L.last_nid); Py_XDECREF(L.last_host);
    if (own) { if (t) { tables_free(t); free(t); } }
    else {
        shared_busy = 0;
        /* give the memory back now and then (after a burst of huge flushes, say) */
        if (t && ++shared_uses % 256 == 0) { tables_free(t); tables_reset(t); }
    }
    free(mk);
    Py_XDECREF(enriched); Py_XDECREF(errors); Py_XDECREF(tss);
    Py_DECREF(seq);
    return res;
}

static PyObject *columns(PyObject *self, PyObject *args) {
    const col_t *sets[3] = {FLOWCOLS, METCOLS, RAWCOLS};
    int ns[3] = {NFLOWCOLS, NMETCOLS, NRAWCOLS};
    PyObject *out = PyTuple_New(3);
    if (!out) return NULL;
    for (int s = 0; s < 3; s++) {
        PyObject *l = PyList_New(ns[s]);
        if (!l) { Py_DECREF(out); return NULL; }
        for (int i = 0; i < ns[s]; i++) PyList_SET_ITEM(l, i, Py_BuildValue("(ss)", sets[s][i].name, sets[s][i].type));
        PyTuple_SET_ITEM(out, s, l);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"process", process, METH_VARARGS, "process(messages, by_tid, by_mac, by_ip, host_of, pick) -> dict"},
    {"columns", columns, METH_NOARGS, "(flow columns, metric columns, raw columns) as (name, wire type) lists"},
    {NULL, NULL, 0, NULL},
};
static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_fastflow", NULL, -1, methods};
PyMODINIT_FUNC PyInit__fastflow(void) { return PyModule_Create(&moddef); }

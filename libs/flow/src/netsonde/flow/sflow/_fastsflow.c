/* Hot path of the sFlow collector: validate an sFlow v5 datagram and aggregate its flow samples.
 *
 * scan(data, agg, ts_ns) checks the whole datagram first (the same rules as decode.py: every length and count
 * against the bytes left, known records at least their fixed size), so a bad datagram is rejected before
 * anything is counted. Then each flow sample that carries an Ethernet raw-packet-header record is keyed
 * by (agent, source, input, output, sampling rate, frame length, the header's L2/L3/L4 flow fields and
 * TCP flags) and counted in `agg`. IPv4/IPv6 raw headers (protocols 11/12) are keyed by the whole header.
 * Samples with the same key are the same packet for the flow logic, so Python only runs the flow logic once
 * per distinct key and scales by the number of samples.
 *
 * `agg` is either
 * - a SampleFold (the collector's hot path): a hash table in C, no Python object per sample; drain() hands
 *   Python one row per distinct key, in the order the keys were first seen:
 *   (key, samples, header, rate, frame_length, input, output, agent, source_index, stripped,
 *    header_protocol, first_ts_ns, last_ts_ns), the timestamps being the ts_ns given to scan/recv_scan; or
 * - a dict key -> [samples, header, rate, frame_length, input, output, agent, source_index, stripped,
 *   header_protocol] (the readable form, tests and tools; the reference for the fold is fold.py).
 *
 * Returns (reason or None, flow_samples, counter_samples, agent_address_bytes).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>

#define MAX_COUNT 4096

typedef struct {
    const uint8_t *p;
    Py_ssize_t len;
} buf_t;

static inline uint32_t rd32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}
static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }

/* reasons, identical to decode.REASONS */
static const char *R_VERSION = "version", *R_TRUNC = "truncated", *R_LENGTH = "length", *R_COUNT = "count",
                  *R_ATYPE = "address_type";

static const char *check_address(const uint8_t *b, Py_ssize_t off, Py_ssize_t end, Py_ssize_t *out) {
    if (off + 4 > end) return R_TRUNC;
    uint32_t t = rd32(b + off);
    off += 4;
    if (t == 1) { if (off + 4 > end) return R_TRUNC; off += 4; }
    else if (t == 2) { if (off + 16 > end) return R_TRUNC; off += 16; }
    else if (t != 0) return R_ATYPE;
    *out = off;
    return NULL;
}

static inline const char *check_count(uint32_t n, uint32_t min_size, Py_ssize_t off, Py_ssize_t end) {
    if (n > MAX_COUNT || (Py_ssize_t)n * (Py_ssize_t)min_size > end - off) return R_COUNT;
    return NULL;
}

static const char *check_flow_record(uint32_t fmt, const uint8_t *b, Py_ssize_t off, Py_ssize_t end) {
    if (fmt >> 12) return NULL;
    const char *e;
    switch (fmt & 0xFFF) {
    case 1:
        if (off + 16 > end) return R_TRUNC;
        if ((Py_ssize_t)rd32(b + off + 12) > end - off - 16) return R_LENGTH;
        return NULL;
    case 2: return off + 24 > end ? R_TRUNC : NULL;
    case 3: return off + 32 > end ? R_TRUNC : NULL;
    case 4: return off + 56 > end ? R_TRUNC : NULL;
    case 1001: return off + 16 > end ? R_TRUNC : NULL;
    case 1002: {
        Py_ssize_t p;
        if ((e = check_address(b, off, end, &p))) return e;
        return p + 8 > end ? R_TRUNC : NULL;
    }
    case 1003: {
        Py_ssize_t p;
        if ((e = check_address(b, off, end, &p))) return e;
        if (p + 16 > end) return R_TRUNC;
        uint32_t nseg = rd32(b + p + 12);
        p += 16;
        if ((e = check_count(nseg, 8, p, end))) return e;
        for (uint32_t i = 0; i < nseg; i++) {
            if (p + 8 > end) return R_TRUNC;
            uint32_t n = rd32(b + p + 4);
            p += 8;
            if ((e = check_count(n, 4, p, end))) return e;
            p += 4 * (Py_ssize_t)n;
        }
        if (p + 4 > end) return R_TRUNC;
        uint32_t nc = rd32(b + p);
        p += 4;
        if ((e = check_count(nc, 4, p, end))) return e;
        p += 4 * (Py_ssize_t)nc;
        return p + 4 > end ? R_TRUNC : NULL;
    }
    }
    return NULL;
}

static const char *check_counter_record(uint32_t fmt, const uint8_t *b, Py_ssize_t off, Py_ssize_t end) {
    if (fmt >> 12) return NULL;
    switch (fmt & 0xFFF) {
    case 1: return off + 88 > end ? R_TRUNC : NULL;
    case 2: return off + 52 > end ? R_TRUNC : NULL;
    case 1004: return off + 12 > end ? R_TRUNC : NULL;
    case 1005:
        if (off + 4 > end) return R_TRUNC;
        return (Py_ssize_t)rd32(b + off) > end - off - 4 ? R_LENGTH : NULL;
    }
    return NULL;
}

static const char *check_records(const uint8_t *b, Py_ssize_t off, Py_ssize_t end, uint32_t n, int flow) {
    const char *e;
    if ((e = check_count(n, 8, off, end))) return e;
    for (uint32_t i = 0; i < n; i++) {
        if (off + 8 > end) return R_TRUNC;
        uint32_t fmt = rd32(b + off), length = rd32(b + off + 4);
        off += 8;
        if ((Py_ssize_t)length > end - off) return R_LENGTH;
        e = flow ? check_flow_record(fmt, b, off, off + length) : check_counter_record(fmt, b, off, off + length);
        if (e) return e;
        off += length;
    }
    return NULL;
}

/* Walk the samples. With sink == NULL only validate; else aggregate flow samples into the sink. */
typedef struct {
    uint32_t flow_samples, counter_samples;
    Py_ssize_t agent_off, agent_len;
} walk_out;

typedef struct FoldObject FoldObject;
typedef struct {
    PyObject *dict; /* the dict form, or */
    FoldObject *fold;
    int64_t ts_ns; /* the fold's timestamp of these samples */
} sink_t;

static int aggregate_sample(const sink_t *agg, const uint8_t *b, Py_ssize_t agent_off, Py_ssize_t agent_len,
                            uint32_t src_type, uint32_t src_idx, uint32_t rate, uint32_t in_fmt, uint32_t in_val,
                            uint32_t out_fmt, uint32_t out_val, Py_ssize_t roff, Py_ssize_t end, uint32_t nrec);

static const char *walk(const uint8_t *b, Py_ssize_t end, const sink_t *agg, walk_out *w, int *pyerr) {
    const char *e;
    if (end < 8) return R_TRUNC;
    if (rd32(b) != 5) return R_VERSION;
    Py_ssize_t off;
    if ((e = check_address(b, 4, end, &off))) return e;
    w->agent_off = 8;
    w->agent_len = off - 8;
    if (off + 16 > end) return R_TRUNC;
    uint32_t ns = rd32(b + off + 12);
    off += 16;
    if ((e = check_count(ns, 8, off, end))) return e;
    w->flow_samples = w->counter_samples = 0;
    for (uint32_t i = 0; i < ns; i++) {
        if (off + 8 > end) return R_TRUNC;
        uint32_t fmt = rd32(b + off), length = rd32(b + off + 4);
        off += 8;
        if ((Py_ssize_t)length > end - off) return R_LENGTH;
        Py_ssize_t s_end = off + length;
        if (fmt == 1 || fmt == 3) {
            Py_ssize_t hsz = fmt == 1 ? 32 : 44;
            if (off + hsz > s_end) return R_TRUNC;
            uint32_t nrec = rd32(b + off + hsz - 4);
            if (!agg) {
                if ((e = check_records(b, off + hsz, s_end, nrec, 1))) return e;
            } else {
                uint32_t st, si, rate, inf, inv, outf, outv;
                if (fmt == 1) {
                    uint32_t src = rd32(b + off + 4), in = rd32(b + off + 20), out = rd32(b + off + 24);
                    st = src >> 24; si = src & 0xFFFFFF; rate = rd32(b + off + 8);
                    inf = in >> 30; inv = in & 0x3FFFFFFF; outf = out >> 30; outv = out & 0x3FFFFFFF;
                } else {
                    st = rd32(b + off + 4); si = rd32(b + off + 8); rate = rd32(b + off + 12);
                    inf = rd32(b + off + 24); inv = rd32(b + off + 28); outf = rd32(b + off + 32);
                    outv = rd32(b + off + 36);
                }
                if (aggregate_sample(agg, b, w->agent_off, w->agent_len, st, si, rate, inf, inv, outf, outv,
                                     off + hsz, s_end, nrec) < 0) {
                    *pyerr = 1;
                    return NULL;
                }
            }
            w->flow_samples++;
        } else if (fmt == 2 || fmt == 4) {
            Py_ssize_t hsz = fmt == 2 ? 12 : 16;
            if (off + hsz > s_end) return R_TRUNC;
            if (!agg && (e = check_records(b, off + hsz, s_end, rd32(b + off + hsz - 4), 0))) return e;
            w->counter_samples++;
        }
        off = s_end;
    }
    return NULL;
}

/* Flow key from an Ethernet header. kind: 0 = parsed L2/L3/L4, 1 = opaque (whole header is the key). */
#define KEY_MAX 96
static Py_ssize_t header_key(const uint8_t *h, Py_ssize_t n, uint8_t *k) {
    Py_ssize_t kl = 0;
    if (n < 14) return -1;
    memcpy(k, h, 12); /* dst, src MAC */
    kl = 12;
    Py_ssize_t p = 12;
    uint16_t et = rd16(h + p);
    int tags = 0;
    while ((et == 0x8100 || et == 0x88a8 || et == 0x9100) && tags < 4) {
        if (p + 6 > n) return -1;
        memcpy(k + kl, h + p + 2, 2); kl += 2;
        p += 4;
        et = rd16(h + p);
        tags++;
    }
    k[kl++] = (uint8_t)tags;
    k[kl++] = et >> 8; k[kl++] = et & 0xff;
    p += 2;
    int proto = -1;
    Py_ssize_t l4 = 0;
    if (et == 0x0800) {
        if (p + 20 > n) return -1;
        Py_ssize_t ihl = (h[p] & 0x0f) * 4;
        if (ihl < 20) return -1;
        uint16_t frag = rd16(h + p + 6);
        proto = h[p + 9];
        memcpy(k + kl, h + p + 12, 8); kl += 8;
        k[kl++] = (uint8_t)proto;
        k[kl++] = (frag & 0x1fff) ? 1 : ((frag & 0x2000) ? 2 : 0); /* fragments: no L4 */
        if (frag & 0x1fff) return kl;
        l4 = p + ihl;
    } else if (et == 0x86dd) {
        if (p + 40 > n) return -1;
        proto = h[p + 6];
        memcpy(k + kl, h + p + 8, 32); kl += 32;
        l4 = p + 40;
        /* common extension headers */
        for (int i = 0; i < 4 && (proto == 0 || proto == 43 || proto == 60 || proto == 44); i++) {
            if (l4 + 8 > n) return -1;
            if (proto == 44) {
                if (rd16(h + l4 + 2) & 0xfff8) { k[kl++] = 44; return kl; } /* not first fragment */
                proto = h[l4];
                l4 += 8;
            } else {
                int nh = h[l4];
                l4 += (Py_ssize_t)(h[l4 + 1] + 1) * 8;
                proto = nh;
            }
        }
        k[kl++] = (uint8_t)proto;
    } else if (et == 0x0806) {
        if (p + 28 > n) return -1;
        memcpy(k + kl, h + p + 6, 2); kl += 2;          /* ARP op */
        memcpy(k + kl, h + p + 14, 4); kl += 4;         /* sender IP */
        memcpy(k + kl, h + p + 24, 4); kl += 4;         /* target IP */
        return kl;
    } else {
        return -1;
    }
    if (proto == 6) {
        if (l4 + 14 > n) return -1;
        memcpy(k + kl, h + l4, 4); kl += 4;
        k[kl++] = h[l4 + 13]; /* flags: FIN/RST/SYN matter to the flow logic */
    } else if (proto == 17) {
        if (l4 + 8 > n) return -1;
        uint16_t sp = rd16(h + l4), dp = rd16(h + l4 + 2);
        /* tunnels (VXLAN, GENEVE, VXLAN-GPE, MPLS-over-UDP) carry inner flows: opaque */
        if (dp == 4789 || dp == 6081 || dp == 4790 || dp == 6635 || dp == 8472 || sp == 4789 || sp == 6081)
            return -1;
        memcpy(k + kl, h + l4, 4); kl += 4;
    } else if (proto == 132) {
        if (l4 + 4 > n) return -1;
        memcpy(k + kl, h + l4, 4); kl += 4;
    } else if (proto == 1 || proto == 58) {
        if (l4 + 8 > n) return -1;
        memcpy(k + kl, h + l4, 2); kl += 2;        /* type, code */
        memcpy(k + kl, h + l4 + 4, 2); kl += 2;    /* identifier (echo) */
    } else if (proto == 2 || proto == 89 || proto == 112) {
        /* IGMP, OSPF, VRRP: no ports */
    } else {
        return -1; /* GRE, IP-in-IP and the rest: opaque */
    }
    return kl;
}

/* --- SampleFold: the aggregates in a C hash table ------------------------------------------------------
 * Entries in insertion order (drain() keeps the order in which keys were first seen, as a dict does) and an
 * open-addressing index of entry numbers. Keys are hashed with a per-process random seed. One allocation per
 * new key holds the key bytes followed by the first sample's header. */
typedef struct {
    uint64_t hash;
    uint8_t *mem; /* klen key bytes, then hlen header bytes */
    uint32_t klen, hlen;
    uint64_t samples;
    int64_t first_ns, last_ns;
    uint32_t rate, frame_len, in_val, out_val, src_idx, stripped, proto;
    uint8_t agent[16];
    uint8_t agent_len;
} fold_entry;

struct FoldObject {
    PyObject_HEAD
    fold_entry *e;
    Py_ssize_t n, cap;
    int32_t *slots; /* -1: empty; else an index into e */
    size_t mask;    /* slots - 1 (a power of two, at least 2 * cap) */
};

#define FOLD_MIN_CAP 1024
static uint64_t hash_seed;

/* A wyhash-style hash: one 64x64->128-bit multiply per 16 bytes (keys are ~50-100 bytes). */
static inline uint64_t mum(uint64_t a, uint64_t b) {
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}
static inline uint64_t rd64le(const uint8_t *p) { uint64_t w; memcpy(&w, p, 8); return w; }
static inline uint64_t rd32le(const uint8_t *p) { uint32_t w; memcpy(&w, p, 4); return w; }

#define HS1 0xa0761d6478bd642fULL
#define HS2 0xe7037ed1a0b428dbULL
#define HS3 0x8ebc6af09c88c6e3ULL

static inline uint64_t hash_more(uint64_t h, const uint8_t *p, size_t n) {
    uint64_t len = n;
    while (n > 16) {
        h = mum(rd64le(p) ^ HS1, rd64le(p + 8) ^ h);
        p += 16;
        n -= 16;
    }
    uint64_t a = 0, b = 0;
    if (n >= 8) { a = rd64le(p); b = rd64le(p + n - 8); }
    else if (n >= 4) { a = rd32le(p); b = rd32le(p + n - 4); }
    else if (n) { a = ((uint64_t)p[0] << 16) | ((uint64_t)p[n >> 1] << 8) | p[n - 1]; }
    return mum(HS3 ^ len, mum(a ^ HS2, b ^ h));
}

static inline uint64_t hash_end(uint64_t h) { return h ^ (h >> 29); }

static int fold_grow(FoldObject *f) {
    Py_ssize_t cap = f->cap ? f->cap * 2 : FOLD_MIN_CAP;
    fold_entry *e = PyMem_Realloc(f->e, (size_t)cap * sizeof(fold_entry));
    if (!e) { PyErr_NoMemory(); return -1; }
    f->e = e;
    size_t nslots = (size_t)cap * 2;
    int32_t *slots = PyMem_Malloc(nslots * sizeof(int32_t));
    if (!slots) { PyErr_NoMemory(); return -1; }
    memset(slots, 0xff, nslots * sizeof(int32_t));
    size_t mask = nslots - 1;
    for (Py_ssize_t i = 0; i < f->n; i++) {
        size_t j = (size_t)f->e[i].hash & mask;
        while (slots[j] >= 0) j = (j + 1) & mask;
        slots[j] = (int32_t)i;
    }
    PyMem_Free(f->slots);
    f->slots = slots;
    f->mask = mask;
    f->cap = cap;
    return 0;
}

/* Count one sample whose key is prefix + tail (tail: the whole header of an opaque key, else empty). */
static int fold_add(FoldObject *f, int64_t ts_ns, const uint8_t *prefix, size_t plen, const uint8_t *tail,
                    size_t tlen, const uint8_t *h, uint32_t hlen, uint32_t rate, uint32_t frame_len,
                    uint32_t in_val, uint32_t out_val, const uint8_t *agent, Py_ssize_t agent_len,
                    uint32_t src_idx, uint32_t stripped, uint32_t proto) {
    uint64_t hv = hash_more(hash_seed, prefix, plen);
    if (tlen) hv = hash_more(hv, tail, tlen);
    hv = hash_end(hv);
    size_t klen = plen + tlen;
    if (f->cap) {
        for (size_t j = (size_t)hv & f->mask;; j = (j + 1) & f->mask) {
            int32_t i = f->slots[j];
            if (i < 0) break;
            fold_entry *x = &f->e[i];
            if (x->hash == hv && x->klen == klen && !memcmp(x->mem, prefix, plen) &&
                (!tlen || !memcmp(x->mem + plen, tail, tlen))) {
                x->samples++;
                if (ts_ns > x->last_ns) x->last_ns = ts_ns;
                return 0;
            }
        }
    }
    if (f->n == f->cap && fold_grow(f) < 0) return -1;
    uint8_t *mem = PyMem_Malloc(klen + hlen ? klen + hlen : 1);
    if (!mem) { PyErr_NoMemory(); return -1; }
    memcpy(mem, prefix, plen);
    if (tlen) memcpy(mem + plen, tail, tlen);
    memcpy(mem + klen, h, hlen);
    fold_entry *x = &f->e[f->n];
    x->hash = hv; x->mem = mem; x->klen = (uint32_t)klen; x->hlen = hlen;
    x->samples = 1; x->first_ns = x->last_ns = ts_ns;
    x->rate = rate; x->frame_len = frame_len; x->in_val = in_val; x->out_val = out_val;
    x->src_idx = src_idx; x->stripped = stripped; x->proto = proto;
    memcpy(x->agent, agent, (size_t)agent_len);
    x->agent_len = (uint8_t)agent_len;
    size_t j = (size_t)hv & f->mask;
    while (f->slots[j] >= 0) j = (j + 1) & f->mask;
    f->slots[j] = (int32_t)f->n++;
    return 0;
}

static void fold_clear(FoldObject *f) {
    for (Py_ssize_t i = 0; i < f->n; i++) PyMem_Free(f->e[i].mem);
    f->n = 0;
    if (f->cap > 64 * FOLD_MIN_CAP) { /* a burst of keys: give the memory back */
        PyMem_Free(f->e); PyMem_Free(f->slots);
        f->e = NULL; f->slots = NULL; f->cap = 0; f->mask = 0;
    } else if (f->slots) {
        memset(f->slots, 0xff, (f->mask + 1) * sizeof(int32_t));
    }
}

static PyObject *fold_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    if (PyTuple_GET_SIZE(args) || (kw && PyDict_GET_SIZE(kw))) {
        PyErr_SetString(PyExc_TypeError, "SampleFold() takes no arguments");
        return NULL;
    }
    return type->tp_alloc(type, 0);
}

static void fold_dealloc(FoldObject *f) {
    fold_clear(f);
    PyMem_Free(f->e);
    PyMem_Free(f->slots);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

static Py_ssize_t fold_len(FoldObject *f) { return f->n; }

static PyObject *fold_drain(FoldObject *f, PyObject *unused) {
    PyObject *out = PyList_New(f->n);
    if (!out) return NULL;
    for (Py_ssize_t i = 0; i < f->n; i++) {
        fold_entry *x = &f->e[i];
        PyObject *row = Py_BuildValue("(y#Ky#IIIIy#IIILL)", (const char *)x->mem, (Py_ssize_t)x->klen,
                                      (unsigned long long)x->samples, (const char *)(x->mem + x->klen),
                                      (Py_ssize_t)x->hlen, x->rate, x->frame_len, x->in_val, x->out_val,
                                      (const char *)x->agent, (Py_ssize_t)x->agent_len, x->src_idx, x->stripped,
                                      x->proto, (long long)x->first_ns, (long long)x->last_ns);
        if (!row) { Py_DECREF(out); return NULL; }
        PyList_SET_ITEM(out, i, row);
    }
    fold_clear(f);
    return out;
}

static PyMethodDef fold_methods[] = {
    {"drain", (PyCFunction)fold_drain, METH_NOARGS,
     "drain() -> [(key, samples, header, rate, frame_length, input, output, agent, source_index, stripped,\n"
     "header_protocol, first_ts_ns, last_ts_ns)] in first-seen order; the fold is emptied."},
    {NULL, NULL, 0, NULL}};

static PySequenceMethods fold_as_sequence = {.sq_length = (lenfunc)fold_len};

static PyTypeObject FoldType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "netsonde.flow.sflow._fastsflow.SampleFold",
    .tp_basicsize = sizeof(FoldObject),
    .tp_dealloc = (destructor)fold_dealloc,
    .tp_as_sequence = &fold_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Flow samples aggregated per key (see _fastsflow.c and the reference, fold.SampleFold).",
    .tp_methods = fold_methods,
    .tp_new = fold_new,
};

static int aggregate_sample(const sink_t *agg, const uint8_t *b, Py_ssize_t agent_off, Py_ssize_t agent_len,
                            uint32_t src_type, uint32_t src_idx, uint32_t rate, uint32_t in_fmt, uint32_t in_val,
                            uint32_t out_fmt, uint32_t out_val, Py_ssize_t off, Py_ssize_t end, uint32_t nrec) {
    for (uint32_t i = 0; i < nrec; i++) {
        uint32_t fmt = rd32(b + off), length = rd32(b + off + 4);
        off += 8;
        uint32_t hp = fmt == 1 && length >= 16 ? rd32(b + off) : 0;
        if (hp == 1 || hp == 11 || hp == 12) { /* Ethernet, IPv4, IPv6 headers */
            uint32_t frame_len = rd32(b + off + 4), stripped = rd32(b + off + 8), hlen = rd32(b + off + 12);
            const uint8_t *h = b + off + 16;
            uint8_t key[32 + KEY_MAX + 256];
            Py_ssize_t kl = 0;
            memcpy(key, b + agent_off, agent_len); kl = agent_len;
            uint32_t f[7] = {src_type, src_idx, (in_fmt << 30) | in_val, (out_fmt << 30) | out_val, rate, frame_len,
                             stripped};
            for (int j = 0; j < 7; j++) {
                key[kl++] = f[j] >> 24; key[kl++] = f[j] >> 16; key[kl++] = f[j] >> 8; key[kl++] = f[j];
            }
            Py_ssize_t hk = hp == 1 ? header_key(h, hlen, key + kl + 1) : -1;
            /* parsed: key = prefix + kind 0 + header fields; opaque: prefix + kind (1 = Ethernet, 11/12 = IP
             * header) + the whole header */
            key[kl] = hk >= 0 ? 0 : (hp == 1 ? 1 : (uint8_t)hp);
            const uint8_t *tail = hk >= 0 ? NULL : h;
            size_t plen = (size_t)(hk >= 0 ? kl + 1 + hk : kl + 1), tlen = hk >= 0 ? 0 : hlen;
            if (agg->fold)
                return fold_add(agg->fold, agg->ts_ns, key, plen, tail, tlen, h, hlen, rate, frame_len, in_val,
                                out_val, b + agent_off, agent_len, src_idx, stripped, hp);
            PyObject *k = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(plen + tlen));
            if (!k) return -1;
            memcpy(PyBytes_AS_STRING(k), key, plen);
            if (tlen) memcpy(PyBytes_AS_STRING(k) + plen, tail, tlen);
            PyObject *v = PyDict_GetItemWithError(agg->dict, k);
            if (v) {
                PyObject *cnt = PyList_GET_ITEM(v, 0);
                PyObject *nc = PyLong_FromSsize_t(PyLong_AsSsize_t(cnt) + 1);
                if (!nc) { Py_DECREF(k); return -1; }
                PyList_SET_ITEM(v, 0, nc);
                Py_DECREF(cnt);
            } else if (PyErr_Occurred()) {
                Py_DECREF(k);
                return -1;
            } else {
                v = Py_BuildValue("[iy#IIIIy#III]", 1, (const char *)h, (Py_ssize_t)hlen, rate, frame_len,
                                  in_val, out_val, (const char *)(b + agent_off), agent_len, src_idx, stripped, hp);
                if (!v || PyDict_SetItem(agg->dict, k, v) < 0) { Py_XDECREF(v); Py_DECREF(k); return -1; }
                Py_DECREF(v);
            }
            Py_DECREF(k);
            return 0; /* one raw header per sample */
        }
        off += length;
    }
    return 0;
}

/* agg: None, a dict or a SampleFold -> sink (sink->dict and sink->fold NULL for None). -1 on a wrong type. */
static int make_sink(PyObject *agg, int64_t ts_ns, sink_t *sink) {
    sink->dict = NULL;
    sink->fold = NULL;
    sink->ts_ns = ts_ns;
    if (!agg || agg == Py_None) return 0;
    if (PyDict_Check(agg)) sink->dict = agg;
    else if (Py_IS_TYPE(agg, &FoldType)) sink->fold = (FoldObject *)agg;
    else {
        PyErr_SetString(PyExc_TypeError, "agg must be a dict or a SampleFold");
        return -1;
    }
    return 0;
}

static PyObject *py_scan(PyObject *self, PyObject *args) {
    Py_buffer view;
    PyObject *agg = NULL;
    long long ts_ns = 0;
    sink_t sink;
    if (!PyArg_ParseTuple(args, "y*|OL", &view, &agg, &ts_ns)) return NULL;
    if (make_sink(agg, ts_ns, &sink) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const sink_t *to = sink.dict || sink.fold ? &sink : NULL;
    walk_out w = {0, 0, 0, 0};
    int pyerr = 0;
    const uint8_t *b = view.buf;
    const char *e = walk(b, view.len, NULL, &w, &pyerr);
    if (!e && to) e = walk(b, view.len, to, &w, &pyerr);
    PyObject *res;
    if (pyerr) res = NULL;
    else if (e) res = Py_BuildValue("(sIIy#)", e, 0, 0, "", (Py_ssize_t)0);
    else res = Py_BuildValue("(OIIy#)", Py_None, w.flow_samples, w.counter_samples,
                             (const char *)(b + w.agent_off), w.agent_len);
    PyBuffer_Release(&view);
    return res;
}

/* recv_scan(fd, agg, max_datagrams, seqs, ts_ns=0, max_keys=0) -> (received, groups, bad, counters)
 *
 * Reads up to max_datagrams from a non-blocking UDP socket with recvmmsg (64 per system call, into a reusable
 * buffer), scans and aggregates each datagram like scan(), and keeps the per-datagram bookkeeping in C:
 * - groups: [sender, datagrams, flow_samples, counter_samples, lost] per run of consecutive valid datagrams
 *   from one (sender, agent, sub-agent); `lost` counts gaps in the agent's sequence numbers, continuing from
 *   seqs[(sender, agent, sub_agent)] (a dict the caller keeps; updated here) with the rule of
 *   SFlowCollector._account: a gap of 1..999,999 is loss; the last sequence moves forward, or back after a
 *   jump of more than 1,000,000 (agent restart), and a reordered datagram is no loss.
 * - bad: (sender, reason) per malformed datagram;  counters: (sender, datagram) per datagram with counter
 *   samples (decoded in Python).
 * `sender` is the packed source address (4 or 16 bytes). `agg` is a dict or a SampleFold (samples stamped
 * ts_ns). Stops at EAGAIN, or once a SampleFold holds max_keys keys (when max_keys > 0): bounded memory until
 * the caller drains it. */
#define BATCH 64
#define DGRAM_MAX 65536
#define MAX_SEQ_KEYS 10000
static uint8_t *rbufs = NULL;

typedef struct {
    char sender[16];
    Py_ssize_t sender_len;
    char agent[16];
    Py_ssize_t agent_len;
    uint32_t sub;
    int active;
    long long last; /* -1: none */
    int had_last;
    unsigned long datagrams, flow, counter;
    long long lost;
} group_t;

static PyObject *seq_key(const group_t *g) {
    return Py_BuildValue("(y#y#I)", g->sender, g->sender_len, g->agent, g->agent_len, g->sub);
}

static int group_flush(group_t *g, PyObject *groups, PyObject *seqs) {
    if (!g->active) return 0;
    g->active = 0;
    PyObject *row = Py_BuildValue("[y#kkkL]", g->sender, g->sender_len, g->datagrams, g->flow, g->counter, g->lost);
    if (!row || PyList_Append(groups, row) < 0) { Py_XDECREF(row); return -1; }
    Py_DECREF(row);
    if (g->last < 0) return 0;
    PyObject *k = seq_key(g);
    if (!k) return -1;
    if (!g->had_last && PyDict_Size(seqs) >= MAX_SEQ_KEYS) PyDict_Clear(seqs);
    PyObject *v = PyLong_FromLongLong(g->last);
    int rc = v ? PyDict_SetItem(seqs, k, v) : -1;
    Py_XDECREF(v);
    Py_DECREF(k);
    return rc;
}

static int group_start(group_t *g, PyObject *seqs, const char *sb, Py_ssize_t sl, const uint8_t *agent,
                       Py_ssize_t al, uint32_t sub) {
    memcpy(g->sender, sb, (size_t)sl);
    g->sender_len = sl;
    memcpy(g->agent, agent, (size_t)al);
    g->agent_len = al;
    g->sub = sub;
    g->active = 1;
    g->datagrams = g->flow = g->counter = 0;
    g->lost = 0;
    g->last = -1;
    g->had_last = 0;
    PyObject *k = seq_key(g);
    if (!k) return -1;
    PyObject *v = PyDict_GetItemWithError(seqs, k);
    Py_DECREF(k);
    if (v) {
        g->last = PyLong_AsLongLong(v);
        if (g->last == -1 && PyErr_Occurred()) return -1;
        g->had_last = 1;
    } else if (PyErr_Occurred()) {
        return -1;
    }
    return 0;
}

static PyObject *py_recv_scan(PyObject *self, PyObject *args) {
    int fd, maxd;
    PyObject *agg, *seqs;
    long long ts_ns = 0;
    Py_ssize_t max_keys = 0;
    sink_t sink;
    if (!PyArg_ParseTuple(args, "iOiO!|Ln", &fd, &agg, &maxd, &PyDict_Type, &seqs, &ts_ns, &max_keys)) return NULL;
    if (make_sink(agg, ts_ns, &sink) < 0) return NULL;
    if (!sink.dict && !sink.fold) {
        PyErr_SetString(PyExc_TypeError, "agg must be a dict or a SampleFold");
        return NULL;
    }
    if (!rbufs) {
        rbufs = PyMem_RawMalloc((size_t)BATCH * DGRAM_MAX);
        if (!rbufs) return PyErr_NoMemory();
    }
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_storage addrs[BATCH];
    PyObject *groups = PyList_New(0), *bad = PyList_New(0), *counters = PyList_New(0);
    group_t g;
    g.active = 0;
    int total = 0;
    if (!groups || !bad || !counters) goto fail;
    while (total < maxd) {
        int want = maxd - total < BATCH ? maxd - total : BATCH;
        memset(msgs, 0, sizeof(struct mmsghdr) * (size_t)want);
        for (int i = 0; i < want; i++) {
            iov[i].iov_base = rbufs + (size_t)i * DGRAM_MAX;
            iov[i].iov_len = DGRAM_MAX;
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &addrs[i];
            msgs[i].msg_hdr.msg_namelen = sizeof(addrs[i]);
        }
        int n = recvmmsg(fd, msgs, (unsigned int)want, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK || total > 0) break;
            PyErr_SetFromErrno(PyExc_OSError);
            goto fail;
        }
        for (int i = 0; i < n; i++) {
            const uint8_t *b = rbufs + (size_t)i * DGRAM_MAX;
            Py_ssize_t len = (Py_ssize_t)msgs[i].msg_len;
            const char *sb = "";
            Py_ssize_t sl = 0;
            if (addrs[i].ss_family == AF_INET) {
                sb = (const char *)&((struct sockaddr_in *)&addrs[i])->sin_addr;
                sl = 4;
            } else if (addrs[i].ss_family == AF_INET6) {
                sb = (const char *)&((struct sockaddr_in6 *)&addrs[i])->sin6_addr;
                sl = 16;
            }
            walk_out w = {0, 0, 0, 0};
            int pyerr = 0;
            const char *e = walk(b, len, NULL, &w, &pyerr);
            if (!e) e = walk(b, len, &sink, &w, &pyerr);
            if (pyerr) goto fail;
            if (e) {
                PyObject *t = Py_BuildValue("(y#s)", sb, sl, e);
                if (!t || PyList_Append(bad, t) < 0) { Py_XDECREF(t); goto fail; }
                Py_DECREF(t);
                continue;
            }
            const uint8_t *agent = b + w.agent_off;
            Py_ssize_t so = w.agent_off + w.agent_len;
            uint32_t sub = rd32(b + so), seq = rd32(b + so + 4);
            if (!g.active || g.sender_len != sl || memcmp(g.sender, sb, (size_t)sl) || g.agent_len != w.agent_len ||
                memcmp(g.agent, agent, (size_t)w.agent_len) || g.sub != sub) {
                if (group_flush(&g, groups, seqs) < 0 || group_start(&g, seqs, sb, sl, agent, w.agent_len, sub) < 0)
                    goto fail;
            }
            long long s = seq;
            if (g.last >= 0 && s - g.last - 1 > 0 && s - g.last - 1 < 1000000) g.lost += s - g.last - 1;
            if (g.last < 0 || s > g.last || g.last - s > 1000000) g.last = s;
            g.datagrams++;
            g.flow += w.flow_samples;
            g.counter += w.counter_samples;
            if (w.counter_samples) {
                PyObject *t = Py_BuildValue("(y#y#)", sb, sl, (const char *)b, len);
                if (!t || PyList_Append(counters, t) < 0) { Py_XDECREF(t); goto fail; }
                Py_DECREF(t);
            }
        }
        total += n;
        if (n < want) break;
        if (max_keys > 0 && sink.fold && sink.fold->n >= max_keys) break;
    }
    if (group_flush(&g, groups, seqs) < 0) goto fail;
    return Py_BuildValue("(iNNN)", total, groups, bad, counters);
fail:
    Py_XDECREF(groups);
    Py_XDECREF(bad);
    Py_XDECREF(counters);
    return NULL;
}

static PyMethodDef methods[] = {
    {"recv_scan", py_recv_scan, METH_VARARGS,
     "recv_scan(fd, agg, max_datagrams, seqs, ts_ns=0, max_keys=0) -> (received, groups, bad, counters):\n"
     "recvmmsg + scan + aggregate, up to max_datagrams, until the socket is empty (see _fastsflow.c)."},
    {"scan", py_scan, METH_VARARGS,
     "scan(data, agg=None, ts_ns=0) -> (reason|None, flow_samples, counter_samples, agent_bytes)\n"
     "Validate an sFlow v5 datagram; when valid and agg is a dict or a SampleFold, aggregate its flow samples."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastsflow", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastsflow(void) {
    if (getrandom(&hash_seed, sizeof(hash_seed), GRND_NONBLOCK) != sizeof(hash_seed))
        hash_seed = (uint64_t)(uintptr_t)&hash_seed ^ 0x9e3779b97f4a7c15ULL;
    if (PyType_Ready(&FoldType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&FoldType);
    if (PyModule_AddObject(m, "SampleFold", (PyObject *)&FoldType) < 0) {
        Py_DECREF(&FoldType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

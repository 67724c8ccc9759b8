/*
 * netsonde.flow._fastpath: fold a batch of Ethernet frames into per-header aggregates.
 *
 * The flow table's hot path. A TPACKET_V3 ring block (or a list of frames) is walked in C; every frame
 * whose headers are plain (Ethernet, IPv4/IPv6 without extension headers or fragmentation, TCP/UDP/ICMP
 * or a non-IP ethertype, no tunnel) gets a "fastkey": the header fields the flow table looks at
 * (MACs, ethertype, protocol, TTL, TCP SYN/FIN/RST/ACK, ICMP type/code/id, addresses, ports). Frames with
 * the same fastkey are folded into one aggregate (packets, bytes, first/last timestamp, one sample frame).
 * Everything else (tunnels, fragments, VLAN tags, IPv6 extension headers, truncated frames) is returned
 * as-is for the full Python decoder. Python then does per-aggregate work only.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define KEYLEN 56
#define TABSIZE 8192 /* power of two; per call */
#define MAXFILL (TABSIZE * 3 / 4)

typedef struct {
    uint8_t key[KEYLEN];
    uint64_t hash;
    uint64_t packets;
    uint64_t bytes;
    uint64_t t_first;
    uint64_t t_last;
    const uint8_t *sample;
    uint32_t sample_len;
    int used;
} entry_t;

typedef struct {
    entry_t *tab;
    int fill;
    int order[MAXFILL];
    PyObject *slow;
    uint64_t packets;
} ctx_t;

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }

static inline uint64_t hash_key(const uint8_t *k)
{
    uint64_t h = 0x9E3779B97F4A7C15ULL;
    const uint64_t *w = (const uint64_t *)k;
    for (int i = 0; i < KEYLEN / 8; i++) {
        h ^= w[i];
        h *= 0xff51afd7ed558ccdULL;
        h ^= h >> 33;
    }
    return h;
}

/* The transport part of a fastkey, the same after IPv4 and IPv6: ports and TCP SYN/FIN/RST/ACK, or ICMP
 * type/code/id (`icmp` = 1 for ICMPv4, 58 for ICMPv6). 1 when filled, 0 when the frame needs the full
 * decoder (truncated, a tunnel's UDP port), -1 for any other protocol (the caller decides). */
static inline int l4_key(uint8_t proto, uint8_t icmp, const uint8_t *l4, uint32_t avail, uint8_t *key)
{
    if (proto == 6) {
        if (avail < 20)
            return 0;
        memcpy(key + 52, l4, 4);
        key[16] = l4[13] & 0x17;
        return 1;
    }
    if (proto == 17) {
        if (avail < 8)
            return 0;
        uint16_t dp = rd16(l4 + 2);
        if (dp == 4789 || dp == 6081 || dp == 6635)
            return 0; /* tunnel */
        memcpy(key + 52, l4, 4);
        return 1;
    }
    if (proto == icmp) {
        if (avail < 8)
            return 0;
        key[17] = l4[0];
        key[18] = l4[1];
        memcpy(key + 52, l4 + 4, 2);
        return 1;
    }
    return -1;
}

/* Returns 1 and fills key when the frame is plain enough for folding, else 0. */
static int make_key(const uint8_t *d, uint32_t caplen, uint8_t *key)
{
    memset(key, 0, KEYLEN);
    if (caplen < 14)
        return 0;
    uint16_t et = rd16(d + 12);
    memcpy(key, d, 14); /* MACs + ethertype */
    if (et == 0x0800) {
        const uint8_t *ip = d + 14;
        if (caplen < 34)
            return 0;
        unsigned ihl = (ip[0] & 0x0F) * 4;
        if ((ip[0] >> 4) != 4 || ihl < 20 || caplen < 14 + ihl)
            return 0;
        uint16_t frag = rd16(ip + 6);
        if (frag & 0x3FFF)
            return 0; /* fragment */
        uint16_t tot = rd16(ip + 2);
        if (tot < ihl)
            return 0;
        uint8_t proto = ip[9];
        key[14] = proto;
        key[15] = ip[8]; /* TTL */
        memcpy(key + 20, ip + 12, 8);
        uint32_t avail = caplen - 14 - ihl;
        if (tot - ihl < avail)
            avail = tot - ihl;
        int r = l4_key(proto, 1, ip + ihl, avail, key);
        if (r >= 0)
            return r;
        /* GRE, IP in IP, SCTP: full decoder; other protocols: the flow is the address pair */
        return !(proto == 47 || proto == 4 || proto == 41 || proto == 132);
    } else if (et == 0x86DD) {
        const uint8_t *ip = d + 14;
        if (caplen < 54 || (ip[0] >> 4) != 6)
            return 0;
        uint8_t nh = ip[6];
        uint16_t plen = rd16(ip + 4);
        key[14] = nh;
        key[15] = ip[7];
        memcpy(key + 20, ip + 8, 32);
        uint32_t avail = caplen - 54;
        if (plen && plen < avail)
            avail = plen;
        return l4_key(nh, 58, ip + 40, avail, key) == 1; /* extension headers and the rest: full decoder */
    } else if (et == 0x8100 || et == 0x88A8 || et == 0x9100 || et == 0x8847 || et == 0x8848) {
        return 0;
    }
    return 1; /* other ethertypes: the flow is the MAC pair and ethertype */
}

/* Appends (frame, ts_ns, wire_len, vlan or -1) to `slow`, the frames left to the full Python decoder. */
static int add_slow(PyObject *slow, const uint8_t *d, uint32_t caplen, uint64_t ts, uint32_t wire, long vlan)
{
    PyObject *t = Py_BuildValue("(y#KIl)", (const char *)d, (Py_ssize_t)caplen, (unsigned long long)ts,
                                (unsigned int)wire, vlan);
    if (!t)
        return -1;
    int r = PyList_Append(slow, t);
    Py_DECREF(t);
    return r;
}

/* What a fold does with one packet: fold_one (the stateless fold) or acc_one (the Accumulator). */
typedef int (*fold_fn)(void *state, const uint8_t *d, uint32_t caplen, uint32_t wire, uint64_t ts, long vlan);

static int fold_one(void *state, const uint8_t *d, uint32_t caplen, uint32_t wire, uint64_t ts, long vlan)
{
    ctx_t *c = state;
    uint8_t key[KEYLEN] __attribute__((aligned(8)));
    c->packets++;
    if (vlan >= 0 || c->fill >= MAXFILL || !make_key(d, caplen, key))
        return add_slow(c->slow, d, caplen, ts, wire, vlan);
    uint64_t h = hash_key(key);
    uint32_t i = (uint32_t)h & (TABSIZE - 1);
    for (;;) {
        entry_t *e = &c->tab[i];
        if (!e->used) {
            memcpy(e->key, key, KEYLEN);
            e->used = 1;
            e->hash = h;
            e->packets = 1;
            e->bytes = wire;
            e->t_first = e->t_last = ts;
            e->sample = d;
            e->sample_len = caplen;
            c->order[c->fill++] = (int)i;
            return 0;
        }
        if (e->hash == h && memcmp(e->key, key, KEYLEN) == 0) {
            e->packets++;
            e->bytes += wire;
            e->t_last = ts;
            return 0;
        }
        i = (i + 1) & (TABSIZE - 1);
    }
}

static PyObject *finish(ctx_t *c)
{
    PyObject *aggs = PyList_New(c->fill);
    if (!aggs)
        return NULL;
    for (int n = 0; n < c->fill; n++) {
        entry_t *e = &c->tab[c->order[n]];
        PyObject *t = Py_BuildValue("(y#y#KKKK)", (const char *)e->key, (Py_ssize_t)KEYLEN,
                                    (const char *)e->sample, (Py_ssize_t)e->sample_len,
                                    (unsigned long long)e->packets, (unsigned long long)e->bytes,
                                    (unsigned long long)e->t_first, (unsigned long long)e->t_last);
        if (!t) {
            Py_DECREF(aggs);
            return NULL;
        }
        PyList_SET_ITEM(aggs, n, t);
        e->used = 0;
    }
    PyObject *r = Py_BuildValue("(OOK)", aggs, c->slow, (unsigned long long)c->packets);
    Py_DECREF(aggs);
    return r;
}

static entry_t *g_tab; /* one table, reused (the GIL serialises callers) */

static int ctx_init(ctx_t *c)
{
    if (!g_tab) {
        g_tab = PyMem_Calloc(TABSIZE, sizeof(entry_t));
        if (!g_tab) {
            PyErr_NoMemory();
            return -1;
        }
    }
    c->tab = g_tab;
    c->fill = 0;
    c->packets = 0;
    c->slow = PyList_New(0);
    return c->slow ? 0 : -1;
}

static void ctx_abort(ctx_t *c)
{
    for (int n = 0; n < c->fill; n++)
        c->tab[c->order[n]].used = 0;
    Py_XDECREF(c->slow);
}

/* ------------------------------------------------------------------------------------------------------
 * The TPACKET_V3 block walk, shared by fold_block and Accumulator.fold_block (the readable reference is
 * `walk_block` in fastfold.py; tests/unit/test_flow_fastpath.py holds the two against each other).
 * A block is a struct tpacket_block_desc (packet count at +12, first packet offset at +16), then packets,
 * each a struct tpacket3_hdr chained by tp_next_offset. Every offset is checked against the block length.
 * ---------------------------------------------------------------------------------------------------- */
#define TP_STATUS_VLAN_VALID (1 << 4)

typedef struct {
    const uint8_t *b;
    uint64_t blen;
    uint32_t left; /* packets the block descriptor still announces (0 once a bad offset ended the walk) */
    uint32_t off;  /* offset of the next packet header */
} tp3_walk_t;

typedef struct {
    const uint8_t *frame;
    uint32_t snap; /* bytes captured */
    uint32_t wire; /* length on the wire */
    uint64_t ts;   /* ns */
    long vlan;     /* the tag the kernel stripped into metadata (TPID << 16 | TCI), or -1 */
} tp3_pkt_t;

/* 0, or -1 with ValueError when the buffer cannot even hold a block descriptor. */
static int tp3_begin(tp3_walk_t *w, const uint8_t *b, Py_ssize_t blen)
{
    if (blen < 48) {
        PyErr_SetString(PyExc_ValueError, "block too short");
        return -1;
    }
    w->b = b;
    w->blen = (uint64_t)blen;
    w->left = *(const uint32_t *)(b + 12);
    w->off = *(const uint32_t *)(b + 16);
    return 0;
}

/* 1 and the next packet in *p, or 0 at the end of the block (or at the first offset out of it). */
static inline int tp3_next(tp3_walk_t *w, tp3_pkt_t *p)
{
    if (!w->left || (uint64_t)w->off + 48 > w->blen)
        return 0;
    const uint8_t *h = w->b + w->off;
    uint32_t next = *(const uint32_t *)(h + 0);
    uint32_t sec = *(const uint32_t *)(h + 4);
    uint32_t nsec = *(const uint32_t *)(h + 8);
    uint32_t snap = *(const uint32_t *)(h + 12);
    uint32_t status = *(const uint32_t *)(h + 20);
    uint16_t mac = *(const uint16_t *)(h + 24);
    if ((uint64_t)w->off + mac + snap > w->blen)
        return 0;
    p->frame = h + mac;
    p->snap = snap;
    p->wire = *(const uint32_t *)(h + 16);
    p->ts = (uint64_t)sec * 1000000000ULL + nsec;
    p->vlan = -1;
    if (status & TP_STATUS_VLAN_VALID) {
        uint32_t tci = *(const uint32_t *)(h + 32);
        uint16_t tpid = *(const uint16_t *)(h + 36);
        p->vlan = (long)(tci & 0xFFFF) | ((long)(tpid ? tpid : 0x8100) << 16);
    }
    w->left--;
    if (!next || (uint64_t)w->off + next > w->blen)
        w->left = 0; /* the next header must lie further inside the block (a bad one cannot loop or wrap) */
    else
        w->off += next;
    return 1;
}

/* One (frame, ts_ns, wire_len) item of a frame list: 0, or -1 with TypeError/OverflowError. */
static inline int frame_item(PyObject *item, const uint8_t **d, uint32_t *caplen, uint64_t *ts, uint32_t *wire)
{
    const char *data;
    Py_ssize_t dl;
    unsigned long long t;
    unsigned int w;
    if (!PyArg_ParseTuple(item, "y#KI", &data, &dl, &t, &w))
        return -1;
    *d = (const uint8_t *)data;
    *caplen = (uint32_t)dl;
    *ts = t;
    *wire = w;
    return 0;
}

#define FRAMES_EXPECTED "fold_frames expects a sequence of (frame, ts_ns, wire_len)"

/* Folds every packet of a TPACKET_V3 block: the packet count, or -1 with an exception set. */
static inline long long feed_block(const Py_buffer *view, fold_fn one, void *state)
{
    tp3_walk_t w;
    tp3_pkt_t p;
    long long n = 0;
    if (tp3_begin(&w, view->buf, view->len) < 0)
        return -1;
    while (tp3_next(&w, &p)) {
        n++;
        if (one(state, p.frame, p.snap, p.wire, p.ts, p.vlan) < 0)
            return -1;
    }
    return n;
}

/* Folds every (frame, ts_ns, wire_len) of `seq` (a PySequence_Fast): the count, or -1 with an exception set. */
static inline long long feed_frames(PyObject *seq, fold_fn one, void *state)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint8_t *d;
        uint32_t caplen, wire;
        uint64_t ts;
        if (frame_item(items[i], &d, &caplen, &ts, &wire) < 0 || one(state, d, caplen, wire, ts, -1) < 0)
            return -1;
    }
    return n;
}

PyDoc_STRVAR(fold_block_doc,
             "fold_block(block) -> (aggregates, slow, packets)\n\n"
             "Walk one TPACKET_V3 block (a buffer holding struct tpacket_block_desc and its packets).\n"
             "aggregates: [(fastkey, sample_frame, packets, bytes, first_ts_ns, last_ts_ns)]\n"
             "slow: [(frame, ts_ns, wire_len, vlan_tci or -1)] for the full decoder.");

static PyObject *fold_block(PyObject *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    ctx_t c;
    PyObject *res = NULL;
    if (ctx_init(&c) == 0) {
        if (feed_block(&view, fold_one, &c) < 0) {
            ctx_abort(&c);
        } else { /* samples point into the block: build the result while it is held */
            res = finish(&c);
            Py_DECREF(c.slow);
        }
    }
    PyBuffer_Release(&view);
    return res;
}

PyDoc_STRVAR(fold_frames_doc,
             "fold_frames(frames) -> (aggregates, slow, packets)\n\n"
             "The same folding over a list of (frame, ts_ns, wire_len) tuples.");

static PyObject *fold_frames(PyObject *self, PyObject *arg)
{
    PyObject *seq = PySequence_Fast(arg, FRAMES_EXPECTED);
    if (!seq)
        return NULL;
    ctx_t c;
    PyObject *res = NULL;
    if (ctx_init(&c) == 0) {
        if (feed_frames(seq, fold_one, &c) < 0) {
            ctx_abort(&c);
        } else { /* samples point into the frames: build the result while `seq` still holds them */
            res = finish(&c);
            Py_DECREF(c.slow);
        }
    }
    Py_DECREF(seq);
    return res;
}


/* ------------------------------------------------------------------------------------------------------
 * Accumulator: a persistent fastkey -> counters table. Packets of known fastkeys are counted in C only;
 * Python sees each fastkey once (its first packet, to build the flow) and then harvests the counters of
 * the keys touched since the previous harvest (`drain`), every update interval.
 * ---------------------------------------------------------------------------------------------------- */
typedef struct {
    uint8_t key[KEYLEN];
    uint64_t hash;
    uint64_t packets;
    uint64_t bytes;
    uint64_t t_last;
    uint8_t used; /* 0 empty, 1 used, 2 deleted */
    uint8_t dirty;
} aentry_t;

typedef struct {
    PyObject_HEAD
    aentry_t *tab;
    size_t cap;
    size_t count;
    size_t tombs;
    size_t *dirty;
    size_t ndirty;
    size_t dirty_cap;
    unsigned long long packets;
    unsigned long long slow;
} Acc;

static int acc_alloc(Acc *a, size_t cap)
{
    a->tab = PyMem_Calloc(cap, sizeof(aentry_t));
    if (!a->tab) {
        PyErr_NoMemory();
        return -1;
    }
    a->cap = cap;
    a->count = a->tombs = 0;
    return 0;
}

static int acc_push_dirty(Acc *a, size_t i)
{
    if (a->ndirty == a->dirty_cap) {
        size_t nc = a->dirty_cap ? a->dirty_cap * 2 : 1024;
        size_t *nd = PyMem_Realloc(a->dirty, nc * sizeof(size_t));
        if (!nd) {
            PyErr_NoMemory();
            return -1;
        }
        a->dirty = nd;
        a->dirty_cap = nc;
    }
    a->dirty[a->ndirty++] = i;
    return 0;
}

static int acc_rehash(Acc *a, size_t ncap)
{
    aentry_t *old = a->tab;
    size_t ocap = a->cap;
    if (acc_alloc(a, ncap) < 0) {
        a->tab = old;
        a->cap = ocap;
        return -1;
    }
    a->ndirty = 0;
    for (size_t j = 0; j < ocap; j++) {
        if (old[j].used != 1)
            continue;
        size_t i = (size_t)old[j].hash & (ncap - 1);
        while (a->tab[i].used)
            i = (i + 1) & (ncap - 1);
        a->tab[i] = old[j];
        a->count++;
        if (a->tab[i].dirty && acc_push_dirty(a, i) < 0) {
            PyMem_Free(old);
            return -1;
        }
    }
    PyMem_Free(old);
    return 0;
}

/* 1: known key (counted), 0: new key (counted, caller reports it), -1: error */
static int acc_count(Acc *a, const uint8_t *key, uint32_t wire, uint64_t ts)
{
    if ((a->count + a->tombs + 1) * 10 > a->cap * 6) {
        size_t ncap = a->cap;
        while ((a->count + 1) * 10 > ncap * 5)
            ncap *= 2;
        if (acc_rehash(a, ncap) < 0)
            return -1;
    }
    uint64_t h = hash_key(key);
    size_t i = (size_t)h & (a->cap - 1);
    size_t tomb = (size_t)-1;
    for (;;) {
        aentry_t *e = &a->tab[i];
        if (e->used == 0)
            break;
        if (e->used == 2) {
            if (tomb == (size_t)-1)
                tomb = i;
        } else if (e->hash == h && memcmp(e->key, key, KEYLEN) == 0) {
            e->packets++;
            e->bytes += wire;
            e->t_last = ts;
            if (!e->dirty) {
                e->dirty = 1;
                if (acc_push_dirty(a, i) < 0)
                    return -1;
            }
            return 1;
        }
        i = (i + 1) & (a->cap - 1);
    }
    if (tomb != (size_t)-1) {
        i = tomb;
        a->tombs--;
    }
    aentry_t *e = &a->tab[i];
    memcpy(e->key, key, KEYLEN);
    e->hash = h;
    e->packets = 1;
    e->bytes = wire;
    e->t_last = ts;
    e->used = 1;
    e->dirty = 1;
    a->count++;
    if (acc_push_dirty(a, i) < 0)
        return -1;
    return 0;
}

typedef struct {
    Acc *acc;
    PyObject *fresh;
    PyObject *slow;
} acc_out_t;

static int acc_one(void *state, const uint8_t *d, uint32_t caplen, uint32_t wire, uint64_t ts, long vlan)
{
    acc_out_t *o = state;
    Acc *a = o->acc;
    uint8_t key[KEYLEN] __attribute__((aligned(8)));
    a->packets++;
    if (vlan >= 0 || !make_key(d, caplen, key)) {
        a->slow++;
        return add_slow(o->slow, d, caplen, ts, wire, vlan);
    }
    int r = acc_count(a, key, wire, ts);
    if (r < 0)
        return -1;
    if (r == 0) {
        PyObject *t = Py_BuildValue("(y#y#KI)", (const char *)key, (Py_ssize_t)KEYLEN, (const char *)d,
                                    (Py_ssize_t)caplen, (unsigned long long)ts, (unsigned int)wire);
        if (!t)
            return -1;
        r = PyList_Append(o->fresh, t);
        Py_DECREF(t);
        return r;
    }
    return 0;
}

/* (fresh, slow, n) when n >= 0; NULL (the exception already set) when n < 0. Releases the lists. */
static PyObject *acc_result(acc_out_t *o, long long n)
{
    PyObject *r = n < 0 ? NULL : Py_BuildValue("(OOK)", o->fresh, o->slow, (unsigned long long)n);
    Py_DECREF(o->fresh);
    Py_DECREF(o->slow);
    return r;
}

static int acc_out_init(acc_out_t *o, Acc *a)
{
    o->acc = a;
    o->fresh = PyList_New(0);
    o->slow = PyList_New(0);
    if (!o->fresh || !o->slow) {
        Py_XDECREF(o->fresh);
        Py_XDECREF(o->slow);
        return -1;
    }
    return 0;
}

static PyObject *Acc_fold_block(Acc *a, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    acc_out_t o;
    PyObject *res = NULL;
    if (acc_out_init(&o, a) == 0)
        res = acc_result(&o, feed_block(&view, acc_one, &o));
    PyBuffer_Release(&view);
    return res;
}

static PyObject *Acc_fold_frames(Acc *a, PyObject *arg)
{
    PyObject *seq = PySequence_Fast(arg, FRAMES_EXPECTED);
    if (!seq)
        return NULL;
    acc_out_t o;
    PyObject *res = NULL;
    if (acc_out_init(&o, a) == 0)
        res = acc_result(&o, feed_frames(seq, acc_one, &o));
    Py_DECREF(seq);
    return res;
}

static PyObject *Acc_drain(Acc *a, PyObject *noarg)
{
    PyObject *out = PyList_New(0);
    if (!out)
        return NULL;
    for (size_t j = 0; j < a->ndirty; j++) {
        aentry_t *e = &a->tab[a->dirty[j]];
        if (e->used != 1 || !e->dirty)
            continue;
        e->dirty = 0;
        if (!e->packets)
            continue;
        PyObject *t = Py_BuildValue("(y#KKK)", (const char *)e->key, (Py_ssize_t)KEYLEN,
                                    (unsigned long long)e->packets, (unsigned long long)e->bytes,
                                    (unsigned long long)e->t_last);
        if (!t || PyList_Append(out, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(t);
        e->packets = e->bytes = 0;
    }
    a->ndirty = 0;
    return out;
}

static PyObject *Acc_forget(Acc *a, PyObject *arg)
{
    PyObject *seq = PySequence_Fast(arg, "forget expects a sequence of fastkeys");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t k = 0; k < n; k++) {
        char *key;
        Py_ssize_t kl;
        if (PyBytes_AsStringAndSize(items[k], &key, &kl) < 0 || kl != KEYLEN) {
            PyErr_Clear();
            continue;
        }
        uint64_t h = hash_key((const uint8_t *)key);
        size_t i = (size_t)h & (a->cap - 1);
        while (a->tab[i].used) {
            aentry_t *e = &a->tab[i];
            if (e->used == 1 && e->hash == h && memcmp(e->key, key, KEYLEN) == 0) {
                e->used = 2;
                e->dirty = 0;
                e->packets = e->bytes = 0;
                a->count--;
                a->tombs++;
                break;
            }
            i = (i + 1) & (a->cap - 1);
        }
    }
    Py_DECREF(seq);
    Py_RETURN_NONE;
}

static PyObject *Acc_clear(Acc *a, PyObject *noarg)
{
    memset(a->tab, 0, a->cap * sizeof(aentry_t));
    a->count = a->tombs = a->ndirty = 0;
    Py_RETURN_NONE;
}

static PyObject *Acc_len(Acc *a, void *closure) { return PyLong_FromSize_t(a->count); }
static PyObject *Acc_packets(Acc *a, void *closure) { return PyLong_FromUnsignedLongLong(a->packets); }
static PyObject *Acc_memory(Acc *a, void *closure)
{
    return PyLong_FromSize_t(a->cap * sizeof(aentry_t) + a->dirty_cap * sizeof(size_t));
}

static int Acc_init(Acc *a, PyObject *args, PyObject *kw)
{
    if (!PyArg_ParseTuple(args, ""))
        return -1;
    if (a->tab)
        return 0;
    return acc_alloc(a, 4096);
}

static void Acc_dealloc(Acc *a)
{
    PyMem_Free(a->tab);
    PyMem_Free(a->dirty);
    Py_TYPE(a)->tp_free((PyObject *)a);
}

static PyMethodDef Acc_methods[] = {
    {"fold_block", (PyCFunction)Acc_fold_block, METH_O,
     "fold_block(block) -> (new, slow, packets): count a TPACKET_V3 block. new = [(fastkey, frame, ts_ns, wire)]"
     " for fastkeys seen for the first time; slow = [(frame, ts_ns, wire, vlan or -1)] for the full decoder."},
    {"fold_frames", (PyCFunction)Acc_fold_frames, METH_O,
     "fold_frames([(frame, ts_ns, wire)]) -> (new, slow, packets): the same over a list of frames."},
    {"drain", (PyCFunction)Acc_drain, METH_NOARGS,
     "drain() -> [(fastkey, packets, bytes, last_ts_ns)] counted since the previous drain (then reset)."},
    {"forget", (PyCFunction)Acc_forget, METH_O, "forget(fastkeys): drop these keys (their flow expired)."},
    {"clear", (PyCFunction)Acc_clear, METH_NOARGS, "Drop every key."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Acc_getset[] = {
    {"keys", (getter)Acc_len, NULL, "number of fastkeys held", NULL},
    {"packets", (getter)Acc_packets, NULL, "packets folded since creation", NULL},
    {"memory", (getter)Acc_memory, NULL, "bytes allocated by the key table", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject AccType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "netsonde.flow._fastpath.Accumulator",
    .tp_basicsize = sizeof(Acc),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Persistent fastkey -> counters table (see the module docstring).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Acc_init,
    .tp_dealloc = (destructor)Acc_dealloc,
    .tp_methods = Acc_methods,
    .tp_getset = Acc_getset,
};

static PyMethodDef methods[] = {
    {"fold_block", fold_block, METH_O, fold_block_doc},
    {"fold_frames", fold_frames, METH_O, fold_frames_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_fastpath",
                                 "Batch folding of Ethernet frames into per-header aggregates.", -1, methods};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    if (PyType_Ready(&AccType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&mod);
    if (m) {
        Py_INCREF(&AccType);
        PyModule_AddObject(m, "Accumulator", (PyObject *)&AccType);
        PyModule_AddIntConstant(m, "KEYLEN", KEYLEN);
        PyModule_AddIntConstant(m, "MAX_AGGREGATES", MAXFILL);
    }
    return m;
}

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
        const uint8_t *l4 = ip + ihl;
        uint32_t avail = caplen - 14 - ihl;
        if (tot - ihl < avail)
            avail = tot - ihl;
        if (proto == 6) {
            if (avail < 20)
                return 0;
            memcpy(key + 52, l4, 4);
            key[16] = l4[13] & 0x17;
        } else if (proto == 17) {
            if (avail < 8)
                return 0;
            uint16_t dp = rd16(l4 + 2);
            if (dp == 4789 || dp == 6081 || dp == 6635)
                return 0; /* tunnel */
            memcpy(key + 52, l4, 4);
        } else if (proto == 1) {
            if (avail < 8)
                return 0;
            key[17] = l4[0];
            key[18] = l4[1];
            memcpy(key + 52, l4 + 4, 2);
        } else if (proto == 47 || proto == 4 || proto == 41 || proto == 132) {
            return 0;
        }
        return 1;
    } else if (et == 0x86DD) {
        const uint8_t *ip = d + 14;
        if (caplen < 54 || (ip[0] >> 4) != 6)
            return 0;
        uint8_t nh = ip[6];
        uint16_t plen = rd16(ip + 4);
        key[14] = nh;
        key[15] = ip[7];
        memcpy(key + 20, ip + 8, 32);
        const uint8_t *l4 = ip + 40;
        uint32_t avail = caplen - 54;
        if (plen && plen < avail)
            avail = plen;
        if (nh == 6) {
            if (avail < 20)
                return 0;
            memcpy(key + 52, l4, 4);
            key[16] = l4[13] & 0x17;
        } else if (nh == 17) {
            if (avail < 8)
                return 0;
            uint16_t dp = rd16(l4 + 2);
            if (dp == 4789 || dp == 6081 || dp == 6635)
                return 0;
            memcpy(key + 52, l4, 4);
        } else if (nh == 58) {
            if (avail < 8)
                return 0;
            key[17] = l4[0];
            key[18] = l4[1];
            memcpy(key + 52, l4 + 4, 2);
        } else {
            return 0; /* extension headers and the rest: full decoder */
        }
        return 1;
    } else if (et == 0x8100 || et == 0x88A8 || et == 0x9100 || et == 0x8847 || et == 0x8848) {
        return 0;
    }
    return 1; /* other ethertypes: the flow is the MAC pair and ethertype */
}

static int add_slow(ctx_t *c, const uint8_t *d, uint32_t caplen, uint64_t ts, uint32_t wire, long vlan)
{
    PyObject *t = Py_BuildValue("(y#KIl)", (const char *)d, (Py_ssize_t)caplen, (unsigned long long)ts,
                                (unsigned int)wire, vlan);
    if (!t)
        return -1;
    int r = PyList_Append(c->slow, t);
    Py_DECREF(t);
    return r;
}

static int fold_one(ctx_t *c, const uint8_t *d, uint32_t caplen, uint32_t wire, uint64_t ts, long vlan)
{
    uint8_t key[KEYLEN] __attribute__((aligned(8)));
    c->packets++;
    if (vlan >= 0 || c->fill >= MAXFILL || !make_key(d, caplen, key))
        return add_slow(c, d, caplen, ts, wire, vlan);
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

#define TP_STATUS_VLAN_VALID (1 << 4)

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
    const uint8_t *b = view.buf;
    Py_ssize_t blen = view.len;
    ctx_t c;
    PyObject *res = NULL;
    if (blen < 48) {
        PyErr_SetString(PyExc_ValueError, "block too short");
        goto out;
    }
    if (ctx_init(&c) < 0)
        goto out;
    uint32_t num = *(const uint32_t *)(b + 12);
    uint32_t off = *(const uint32_t *)(b + 16);
    for (uint32_t k = 0; k < num; k++) {
        if (off + 48 > (uint64_t)blen)
            break;
        const uint8_t *h = b + off;
        uint32_t next = *(const uint32_t *)(h + 0);
        uint32_t sec = *(const uint32_t *)(h + 4);
        uint32_t nsec = *(const uint32_t *)(h + 8);
        uint32_t snap = *(const uint32_t *)(h + 12);
        uint32_t len = *(const uint32_t *)(h + 16);
        uint32_t status = *(const uint32_t *)(h + 20);
        uint16_t mac = *(const uint16_t *)(h + 24);
        uint32_t tci = *(const uint32_t *)(h + 32);
        uint16_t tpid = *(const uint16_t *)(h + 36);
        long vlan = -1;
        if (status & TP_STATUS_VLAN_VALID)
            vlan = (long)(tci & 0xFFFF) | ((long)(tpid ? tpid : 0x8100) << 16);
        if ((uint64_t)off + mac + snap > (uint64_t)blen)
            break;
        if (fold_one(&c, h + mac, snap, len, (uint64_t)sec * 1000000000ULL + nsec, vlan) < 0) {
            ctx_abort(&c);
            goto out;
        }
        if (!next)
            break;
        off += next;
    }
    res = finish(&c);
    Py_DECREF(c.slow);
out:
    PyBuffer_Release(&view);
    return res;
}

PyDoc_STRVAR(fold_frames_doc,
             "fold_frames(frames) -> (aggregates, slow, packets)\n\n"
             "The same folding over a list of (frame, ts_ns, wire_len) tuples.");

static PyObject *fold_frames(PyObject *self, PyObject *arg)
{
    PyObject *seq = PySequence_Fast(arg, "fold_frames expects a sequence of (frame, ts_ns, wire_len)");
    if (!seq)
        return NULL;
    ctx_t c;
    if (ctx_init(&c) < 0) {
        Py_DECREF(seq);
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *d;
        Py_ssize_t dl;
        unsigned long long ts;
        unsigned int wire;
        if (!PyArg_ParseTuple(items[i], "y#KI", &d, &dl, &ts, &wire) ||
            fold_one(&c, (const uint8_t *)d, (uint32_t)dl, wire, ts, -1) < 0) {
            ctx_abort(&c);
            Py_DECREF(seq);
            return NULL;
        }
    }
    /* samples point into the frames: build the result while `seq` still holds them */
    PyObject *res = finish(&c);
    Py_DECREF(c.slow);
    Py_DECREF(seq);
    return res;
}

static PyMethodDef methods[] = {
    {"fold_block", fold_block, METH_O, fold_block_doc},
    {"fold_frames", fold_frames, METH_O, fold_frames_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_fastpath",
                                 "Batch folding of Ethernet frames into per-header aggregates.", -1, methods};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    PyObject *m = PyModule_Create(&mod);
    if (m) {
        PyModule_AddIntConstant(m, "KEYLEN", KEYLEN);
        PyModule_AddIntConstant(m, "MAX_AGGREGATES", MAXFILL);
    }
    return m;
}

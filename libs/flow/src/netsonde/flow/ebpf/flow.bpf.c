// SPDX-License-Identifier: GPL-2.0
/* Netsonde eBPF flow capture: a TC (clsact) program on ingress and egress of one interface that folds packets
 * into a bounded hash map keyed by the header fields the user-space flow table looks at (MACs, VLANs,
 * EtherType, IPs, protocol, ports, ICMP type/code/id, TCP flags). Each entry keeps packets, bytes, first/last
 * time (bpf_ktime_get_ns, CLOCK_MONOTONIC) and the first SAMPLE_LEN bytes of its first packet, from which user
 * space derives the flow exactly as from a captured packet. Plain packets go to `flows` (64-byte key),
 * tunnelled ones to `tunnel_flows` (the key plus the inner headers). When the map is full the packet goes to a ring
 * buffer instead (one record per packet); when that is full too, it is only counted (stats[STAT_LOST]).
 * The program never drops or changes a packet: it returns TC_ACT_UNSPEC (TCX_NEXT), so whatever else is
 * attached after it (other TCX programs, clsact filters) still runs.
 * Attached through TCX links (kernel 6.6+), else as cls_bpf filters on a clsact qdisc.
 * Built by `make install` (clang -target bpf); loaded by netsonde.flow.ebpf.loader. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define SAMPLE_LEN 128
#define MAX_FLOWS 65536

#define STAT_RINGBUF 0 /* packets sent through the ring buffer (map full) */
#define STAT_LOST 1    /* packets neither in the map nor in the ring buffer */
#define STAT_TUNNEL_NEW 2 /* entries created in tunnel_flows (user space reads that map only when it has some) */

/* 64 bytes (a multiple of 4: the kernel hashes it with jhash2 and compares it in words) */
struct flow_key {
	__u8 mac_src[6];
	__u8 mac_dst[6];
	__u16 eth_proto;     /* after VLAN tags, network order */
	__u16 vlan[2];       /* VLAN TCIs, network order */
	__u8 ip_src[16];     /* IPv4 in the first 4 bytes */
	__u8 ip_dst[16];
	__u16 sport;         /* network order */
	__u16 dport;
	__u16 icmp_id;
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 ttl;            /* only for SYN packets (ExtraTCPMetric) */
	__u8 frag;           /* 1: a fragment */
	__u8 ext_hdrs;       /* IPv6 extension headers skipped, in order (base-3 code) */
	__u8 tunnel;         /* 1: the inner fields below are set (the entry lives in tunnel_flows) */
};

/* the key of a tunnelled packet (IPIP, 6in4, GRE, VXLAN, Geneve): the table derives inner flows from the
 * sample, so the inner headers are part of the key too. Plain packets (nearly all) use only `outer` in the
 * `flows` map: half the bytes to hash and compare per packet. */
struct tunnel_key {
	struct flow_key outer;
	__u8 in_mac[12];
	__u8 in_addr[32];
	__u8 in_l4[4];       /* ports, or ICMP type, code, id */
	__u8 in_proto;
	__u8 in_tcp_flags;
	__u8 pad[2];
};

struct flow_val {
	__u64 packets;
	__u64 bytes;
	__u64 first_ns;
	__u64 last_ns;
	__u32 wire_len;      /* length of the sampled packet */
	__u32 sample_len;
	__u8 sample[SAMPLE_LEN];
};

struct ring_rec {
	struct tunnel_key key;
	__u64 ts_ns;
	__u32 wire_len;
	__u32 sample_len;
	__u8 sample[SAMPLE_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_FLOWS);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_FLOWS);
	__type(key, struct tunnel_key);
	__type(value, struct flow_val);
} tunnel_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} overflow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* a scratch value per CPU: too large for the 512-byte stack together with the key */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flow_val);
} scratch SEC(".maps");

static __always_inline void count_stat(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);
	if (v)
		*v += 1;
}

#define ETH_P_TEB 0x6558 /* transparent Ethernet bridging: an Ethernet frame inside */

static __always_inline void parse_inner(void *data, void *end, __u32 off, __u16 proto, struct tunnel_key *k)
{
	if (off > 512)
		return;
	if (proto == bpf_htons(ETH_P_TEB)) {
		struct ethhdr *e = data + off;
		if ((void *)(e + 1) > end)
			return;
		__builtin_memcpy(k->in_mac, e->h_source, 6);
		__builtin_memcpy(k->in_mac + 6, e->h_dest, 6);
		k->outer.tunnel = 1;
		proto = e->h_proto;
		off += sizeof(*e);
	}
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + off;
		if ((void *)(ip + 1) > end)
			return;
		__builtin_memcpy(k->in_addr, &ip->saddr, 8);
		k->in_proto = ip->protocol;
		k->outer.tunnel = 1;
		off += (ip->ihl & 0xf) * 4;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + off;
		if ((void *)(ip6 + 1) > end)
			return;
		__builtin_memcpy(k->in_addr, &ip6->saddr, 32);
		k->in_proto = ip6->nexthdr;
		k->outer.tunnel = 1;
		off += sizeof(*ip6);
	} else {
		return;
	}
	__u8 *l4 = data + off;
	if ((void *)(l4 + 8) > end)
		return;
	if (k->in_proto == IPPROTO_ICMP || k->in_proto == IPPROTO_ICMPV6) {
		k->in_l4[0] = l4[0];
		k->in_l4[1] = l4[1];
		k->in_l4[2] = l4[4];
		k->in_l4[3] = l4[5];
		return;
	}
	__builtin_memcpy(k->in_l4, l4, 4);
	if (k->in_proto == IPPROTO_TCP && (void *)(l4 + 14) <= end)
		k->in_tcp_flags = l4[13];
}

/* the tunnel a packet's L4 payload carries: where its inner header starts and what it is (0: none) */
static __always_inline void parse_tunnel(void *data, void *end, __u32 off, __u8 l4proto, struct tunnel_key *k)
{
	__u8 *h = data + off;
	if (off > 256)
		return;
	if (l4proto == IPPROTO_IPIP) {
		parse_inner(data, end, off, bpf_htons(ETH_P_IP), k);
	} else if (l4proto == IPPROTO_IPV6) {
		parse_inner(data, end, off, bpf_htons(ETH_P_IPV6), k);
	} else if (l4proto == IPPROTO_GRE) {
		if ((void *)(h + 4) > end)
			return;
		__u8 flags = h[0];
		__u32 hl = 4 + (flags & 0x80 ? 4 : 0) + (flags & 0x20 ? 4 : 0) + (flags & 0x10 ? 4 : 0);
		parse_inner(data, end, off + hl, (__u16)(h[3] << 8 | h[2]), k);
	} else if (l4proto == IPPROTO_UDP) {
		if ((void *)(h + 16) > end)
			return;
		__u16 dport = h[2] << 8 | h[3];
		if (dport == 4789 || dport == 8472) /* VXLAN (IANA, Linux's old default) */
			parse_inner(data, end, off + 16, bpf_htons(ETH_P_TEB), k);
		else if (dport == 6081) /* Geneve: variable options */
			parse_inner(data, end, off + 16 + (h[8] & 0x3f) * 4, (__u16)(h[11] << 8 | h[10]), k);
	}
}

static __always_inline int parse(struct __sk_buff *skb, struct tunnel_key *t)
{
	struct flow_key *k = &t->outer;
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u32 off = sizeof(*eth);
	__u16 proto;

	if ((void *)(eth + 1) > end)
		return -1;
	__builtin_memcpy(k->mac_src, eth->h_source, 6);
	__builtin_memcpy(k->mac_dst, eth->h_dest, 6);
	proto = eth->h_proto;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		__u16 *tag = data + off;
		if ((void *)(tag + 2) > end)
			return 0;
		k->vlan[i] = tag[0];
		proto = tag[1];
		off += 4;
	}
	k->eth_proto = proto;

	__u8 l4proto;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + off;
		if ((void *)(ip + 1) > end)
			return 0;
		__builtin_memcpy(k->ip_src, &ip->saddr, 4);
		__builtin_memcpy(k->ip_dst, &ip->daddr, 4);
		l4proto = ip->protocol;
		k->proto = l4proto;
		if (ip->frag_off & bpf_htons(0x3fff)) {
			k->frag = 1;
			if (ip->frag_off & bpf_htons(0x1fff))
				return 0; /* a later fragment: no L4 header */
		}
		if (l4proto == IPPROTO_TCP || l4proto == IPPROTO_UDP || l4proto == IPPROTO_SCTP)
			k->ttl = ip->ttl; /* kept for SYN only, below */
		off += (ip->ihl & 0xf) * 4;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + off;
		if ((void *)(ip6 + 1) > end)
			return 0;
		__builtin_memcpy(k->ip_src, &ip6->saddr, 16);
		__builtin_memcpy(k->ip_dst, &ip6->daddr, 16);
		l4proto = ip6->nexthdr;
		k->ttl = ip6->hop_limit;
		off += sizeof(*ip6);
		/* hop-by-hop, routing, destination options: skipped (the table keys on what follows them) */
#pragma unroll
		for (int i = 0; i < 3; i++) {
			if (l4proto != 0 && l4proto != 43 && l4proto != 60)
				break;
			__u8 *ext = data + off;
			if ((void *)(ext + 2) > end)
				return 0;
			k->ext_hdrs = k->ext_hdrs * 3 + (l4proto == 0 ? 1 : l4proto == 43 ? 2 : 3);
			l4proto = ext[0];
			off += (ext[1] + 1) * 8;
		}
		if (l4proto == 44) { /* fragment header: later fragments carry no L4 header */
			__u8 *fh = data + off;
			if ((void *)(fh + 8) > end)
				return 0;
			k->frag = 1;
			l4proto = fh[0];
			k->proto = l4proto;
			if ((fh[2] << 8 | fh[3]) & 0xfff8)
				return 0;
			off += 8;
		}
		k->proto = l4proto;
	} else {
		return 0;
	}

	parse_tunnel(data, end, off, l4proto, t);
	if (l4proto == IPPROTO_TCP) {
		__u8 *t = data + off;
		if ((void *)(t + 14) > end)
			goto no_l4;
		__builtin_memcpy(&k->sport, t, 2);
		__builtin_memcpy(&k->dport, t + 2, 2);
		k->tcp_flags = t[13];
		if (!(t[13] & 0x02))
			k->ttl = 0;
		return 0;
	}
	k->ttl = 0;
	if (l4proto == IPPROTO_UDP || l4proto == IPPROTO_SCTP) {
		__u8 *u = data + off;
		if ((void *)(u + 4) > end)
			return 0;
		__builtin_memcpy(&k->sport, u, 2);
		__builtin_memcpy(&k->dport, u + 2, 2);
	} else if (l4proto == IPPROTO_ICMP || l4proto == IPPROTO_ICMPV6) {
		__u8 *c = data + off;
		if ((void *)(c + 8) > end)
			return 0;
		k->icmp_type = c[0];
		k->icmp_code = c[1];
		__builtin_memcpy(&k->icmp_id, c + 4, 2);
	}
	return 0;
no_l4:
	k->ttl = 0;
	return 0;
}

static __always_inline __u32 sample_into(struct __sk_buff *skb, __u8 *buf)
{
	__u32 n = skb->len;
	if (n > SAMPLE_LEN)
		n = SAMPLE_LEN;
	if (n < 14)
		return 0;
	/* n in [14, SAMPLE_LEN]: the verifier needs the bound on the register */
	if (bpf_skb_load_bytes(skb, 0, buf, n & 0xff) < 0)
		return 0;
	return n;
}

/* count the packet in `map` under `key` (a flow_key in flows, a tunnel_key in tunnel_flows); a new entry
 * keeps the packet's first bytes; a full map sends the packet (its full key `t`) to the ring buffer. */
static __always_inline int count_in(void *map, void *key, struct tunnel_key *t, struct __sk_buff *skb)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 zero = 0;
	/* an existing entry (nearly every packet): one lookup, no update call, no lock */
	struct flow_val *v = bpf_map_lookup_elem(map, key);
	if (v) {
		__sync_fetch_and_add(&v->packets, 1);
		__sync_fetch_and_add(&v->bytes, skb->len);
		v->last_ns = now;
		return TC_ACT_UNSPEC;
	}
	struct flow_val *nv = bpf_map_lookup_elem(&scratch, &zero);
	if (!nv)
		return TC_ACT_UNSPEC;
	nv->packets = 1;
	nv->bytes = skb->len;
	nv->first_ns = now;
	nv->last_ns = now;
	nv->wire_len = skb->len;
	nv->sample_len = sample_into(skb, nv->sample);
	if (bpf_map_update_elem(map, key, nv, BPF_NOEXIST) == 0) {
		if (map == (void *)&tunnel_flows)
			count_stat(STAT_TUNNEL_NEW);
		return TC_ACT_UNSPEC;
	}
	/* another CPU created it meanwhile, or the map is full */
	v = bpf_map_lookup_elem(map, key);
	if (v) {
		__sync_fetch_and_add(&v->packets, 1);
		__sync_fetch_and_add(&v->bytes, skb->len);
		v->last_ns = now;
		return TC_ACT_UNSPEC;
	}
	struct ring_rec *r = bpf_ringbuf_reserve(&overflow, sizeof(*r), 0);
	if (!r) {
		count_stat(STAT_LOST);
		return TC_ACT_UNSPEC;
	}
	__builtin_memcpy(&r->key, t, sizeof(*t));
	r->ts_ns = now;
	r->wire_len = skb->len;
	r->sample_len = nv->sample_len;
	__builtin_memcpy(r->sample, nv->sample, SAMPLE_LEN);
	bpf_ringbuf_submit(r, 0);
	count_stat(STAT_RINGBUF);
	return TC_ACT_UNSPEC;
}

static __always_inline int account(struct __sk_buff *skb)
{
	struct tunnel_key k;

	__builtin_memset(&k, 0, sizeof(k));
	/* headers outside the linear part (rare at TC): pull them in, only then (the pull costs) */
	__u32 linear = skb->data_end - skb->data;
	if (linear < skb->len && linear < SAMPLE_LEN)
		bpf_skb_pull_data(skb, skb->len < SAMPLE_LEN ? skb->len : SAMPLE_LEN);
	if (parse(skb, &k) < 0)
		return TC_ACT_UNSPEC;
	if (k.outer.tunnel)
		return count_in(&tunnel_flows, &k, &k, skb);
	return count_in(&flows, &k.outer, &k, skb);
}

SEC("tc")
int netsonde_ingress(struct __sk_buff *skb)
{
	return account(skb);
}

SEC("tc")
int netsonde_egress(struct __sk_buff *skb)
{
	return account(skb);
}

char LICENSE[] SEC("license") = "GPL";

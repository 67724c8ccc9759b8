// SPDX-License-Identifier: GPL-2.0
/* Netsonde kernel drop reasons: a BTF tracepoint program on skb:kfree_skb (tp_btf: attached through the BPF
 * syscall, no tracefs needed) that counts the packets the kernel drops, per flow key and drop reason.
 *
 * Only skbs whose device is one a capture watches count: the `watch` map holds (ifindex, netns inode) pairs,
 * filled by user space for the capture's interface. The device is skb->dev, or, for a packet dropped on the
 * local output path before it got a device (netfilter OUTPUT), the device of its route (skb_dst(skb)->dev).
 * SKB_CONSUMED (a normal free, which kernels send to consume_skb anyway) and SKB_DROP_REASON_NOT_SPECIFIED
 * (a kfree_skb() without a reason: also used on non-drop paths) are not counted as drops; NOT_SPECIFIED on a
 * watched device only increments stats[STAT_UNSPECIFIED].
 *
 * The key is the dropped packet's L3/L4 header read from skb->head + network_header (valid from the moment
 * the stack handles the packet as IP, wherever skb->data points by then). The map is bounded (MAX_DROP_KEYS);
 * user space reads and deletes its entries every poll; what does not fit is counted in stats[STAT_FULL].
 *
 * Built by `make install` (clang -target bpf, CO-RE against the vmlinux.h bpftool dumps from this kernel's
 * BTF); loaded by netsonde.flow.ebpf.drops. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#define MAX_DROP_KEYS 4096
#define MAX_WATCHED 64

#define STAT_COUNTED 0     /* drops counted in the map */
#define STAT_FULL 1        /* drops on a watched device lost: the map was full */
#define STAT_NOT_IP 2      /* drops on a watched device with no IPv4/IPv6 header to key on */
#define STAT_UNSPECIFIED 3 /* frees on a watched device with reason NOT_SPECIFIED (not counted as drops) */

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define PROTO_ICMP 1
#define PROTO_TCP 6
#define PROTO_UDP 17
#define PROTO_ICMPV6 58
#define PROTO_SCTP 132

struct drop_key {
	__u8 ip_src[16];   /* IPv4 in the first 4 bytes */
	__u8 ip_dst[16];
	__u16 sport;       /* network order; ICMP: 0 */
	__u16 dport;
	__u16 icmp_id;     /* network order */
	__u8 family;       /* 4 or 6 */
	__u8 proto;
	__u8 icmp_type;
	__u8 icmp_code;
	__u16 pad;
	__u32 reason;      /* enum skb_drop_reason (with its subsystem bits) */
};

struct watch_key {
	__u32 ifindex;
	__u32 netns;       /* inode of the device's network namespace (as stat(/proc/<pid>/ns/net)) */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_WATCHED);
	__type(key, struct watch_key);
	__type(value, __u8);
} watch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_DROP_KEYS);
	__type(key, struct drop_key);
	__type(value, __u64);
} drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} drop_stats SEC(".maps");

static __always_inline void count_stat(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&drop_stats, &idx);
	if (v)
		*v += 1;
}

static __always_inline struct net_device *drop_device(struct sk_buff *skb)
{
	struct net_device *dev = BPF_CORE_READ(skb, dev);
	if (dev)
		return dev;
	unsigned long refdst = BPF_CORE_READ(skb, _skb_refdst);
	struct dst_entry *dst = (struct dst_entry *)(refdst & ~1UL);
	if (!dst)
		return 0;
	return BPF_CORE_READ(dst, dev);
}

/* the L4 ports / ICMP fields at head + off */
static __always_inline void read_l4(unsigned char *head, __u32 off, struct drop_key *k)
{
	__u8 l4[8];
	if (bpf_probe_read_kernel(l4, sizeof(l4), head + off) < 0)
		return;
	if (k->proto == PROTO_TCP || k->proto == PROTO_UDP || k->proto == PROTO_SCTP) {
		__builtin_memcpy(&k->sport, l4, 2);
		__builtin_memcpy(&k->dport, l4 + 2, 2);
	} else if (k->proto == PROTO_ICMP || k->proto == PROTO_ICMPV6) {
		k->icmp_type = l4[0];
		k->icmp_code = l4[1];
		__builtin_memcpy(&k->icmp_id, l4 + 4, 2);
	}
}

static __always_inline int parse(struct sk_buff *skb, struct drop_key *k)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u16 proto = bpf_ntohs(BPF_CORE_READ(skb, protocol));

	if (nh == (__u16)~0U || !head)
		return -1;
	if (proto == ETH_P_IP) {
		struct iphdr ip;
		if (bpf_probe_read_kernel(&ip, sizeof(ip), head + nh) < 0 || ip.version != 4)
			return -1;
		k->family = 4;
		k->proto = ip.protocol;
		__builtin_memcpy(k->ip_src, &ip.saddr, 4);
		__builtin_memcpy(k->ip_dst, &ip.daddr, 4);
		if (ip.frag_off & bpf_htons(0x1fff))
			return 0; /* a later fragment: no L4 header */
		read_l4(head, nh + ip.ihl * 4, k);
		return 0;
	}
	if (proto == ETH_P_IPV6) {
		struct ipv6hdr ip6;
		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh) < 0 || ip6.version != 6)
			return -1;
		k->family = 6;
		k->proto = ip6.nexthdr;
		__builtin_memcpy(k->ip_src, &ip6.saddr, 16);
		__builtin_memcpy(k->ip_dst, &ip6.daddr, 16);
		read_l4(head, nh + sizeof(ip6), k); /* extension headers: the key keeps their protocol, no ports */
		return 0;
	}
	return -1;
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(netsonde_kfree_skb, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	struct watch_key w = {};
	struct drop_key k = {};
	__u64 one = 1;

	if (reason == bpf_core_enum_value(enum skb_drop_reason, SKB_CONSUMED) ||
	    reason == bpf_core_enum_value(enum skb_drop_reason, SKB_NOT_DROPPED_YET))
		return 0;
	struct net_device *dev = drop_device(skb);
	if (!dev)
		return 0;
	w.ifindex = BPF_CORE_READ(dev, ifindex);
	w.netns = BPF_CORE_READ(dev, nd_net.net, ns.inum);
	if (!bpf_map_lookup_elem(&watch, &w))
		return 0;
	if (reason == bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_NOT_SPECIFIED)) {
		count_stat(STAT_UNSPECIFIED);
		return 0;
	}
	if (parse(skb, &k) < 0) {
		count_stat(STAT_NOT_IP);
		return 0;
	}
	k.reason = reason;
	__u64 *n = bpf_map_lookup_elem(&drops, &k);
	if (n) {
		__sync_fetch_and_add(n, 1);
	} else if (bpf_map_update_elem(&drops, &k, &one, BPF_NOEXIST) != 0) {
		n = bpf_map_lookup_elem(&drops, &k); /* another CPU created it meanwhile, or the map is full */
		if (!n) {
			count_stat(STAT_FULL);
			return 0;
		}
		__sync_fetch_and_add(n, 1);
	}
	count_stat(STAT_COUNTED);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

// SPDX-License-Identifier: GPL-2.0
/* Capture bench: the kernel time of the receive path for packets arriving in one network namespace, from
 * the net:netif_receive_skb tracepoint (start of __netif_receive_skb_core) to the packet's free
 * (skb:kfree_skb: the bench's frames are addressed to another MAC, so the IP layer drops each one): the
 * AF_PACKET taps copying into their rings and waking their readers, the TC ingress programs, the IP layer.
 * Summed per CPU; a capture's added kernel time is this per packet with the capture running minus the same
 * without it. BTF tracepoints (fentry is refused on this kernel). Compiled and loaded by bench/rxtime.py. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

struct total {
	__u64 ns;
	__u64 packets;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} watch SEC(".maps"); /* the inode number of the watched network namespace */

struct start {
	__u64 skb;
	__u64 ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct start);
} start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct total);
} totals SEC(".maps");

SEC("tp_btf/netif_receive_skb")
int BPF_PROG(rx_enter, struct sk_buff *skb)
{
	__u32 zero = 0;
	__u32 *ino = bpf_map_lookup_elem(&watch, &zero);
	struct start *s = bpf_map_lookup_elem(&start, &zero);
	if (!ino || !s)
		return 0;
	if (BPF_CORE_READ(skb, dev, nd_net.net, ns.inum) != *ino)
		return 0;
	s->skb = (__u64)skb;
	s->ns = bpf_ktime_get_ns();
	return 0;
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(rx_free, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	__u32 zero = 0;
	struct start *s = bpf_map_lookup_elem(&start, &zero);
	if (!s || s->skb != (__u64)skb)
		return 0;
	struct total *t = bpf_map_lookup_elem(&totals, &zero);
	if (t) {
		t->ns += bpf_ktime_get_ns() - s->ns;
		t->packets += 1;
	}
	s->skb = 0;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

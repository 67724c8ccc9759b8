"""The eBPF flow capture: a TC program (flow.bpf.c, compiled by `make install`) and its libbpf loader."""

"""Flow capture: Netsonde's probe (AF_PACKET TPACKET_V3 + C fast path + flow table) next to tcpdump,
softflowd, pmacctd and nfstream, all capturing the same traffic on one veth.

Method (as in the project's peer baselines): two namespaces joined by a veth pair; 60-byte UDP frames over 1000
flows whose destination MAC is not the receiver's (its kernel drops them right after the capture taps).
tcpreplay (and, for the top rate, trafgen on one CPU) sends from the first namespace pinned to CPU0; each
tool runs alone in the receiving namespace pinned to CPU1. Tool CPU = se.sum_exec_runtime of every thread of
the tool's process tree over the traffic window (start-up excluded); loss = 1 - seen/sent with sent =
rx_packets of the receiving veth (the warm-up included) and seen = the tool's own packet count; RSS = VmHWM
summed over the tree.

Kernel time a capture adds (the same method for every tool): bench/rxtime.bpf.c (BTF tracepoints) sums
the time each packet arriving in the receiving namespace spends in the kernel's receive path, from
net:netif_receive_skb to its free by the IP layer (the frames are for another MAC): AF_PACKET taps copying
into their rings and waking their readers, TC ingress programs, the IP layer. Measured by the kernel in
ns, so the sender's pacing and other processes on the machine do not blur it. Added kernel time = that
figure per packet with the tool minus the same with no tool (reference runs before and after the tools).
Every run starts after one packet of each flow went through (warm-up): the figures are per packet for
known flows; creating the 1000 flows is a one-time cost outside the window.

    python -m bench capture                     # via the runner
    python -m bench.scenario_capture tool IF    # (internal) the Netsonde capture process
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

from bench.procstat import cpu_ns, peak_rss_kib, tree
from bench.result import Result
from bench.rxtime import RxTime

FLOWS = 1000
PY = sys.executable


# --- the Netsonde tool process ------------------------------------------------------------------------
def _tool_main(ifname: str, kind: str = "afpacket") -> None:
    """Capture on `ifname` (current namespace) until a line arrives on stdin; print counters as JSON.
    `kind` ebpf: the ebpf capture (TC program + map reads) instead of AF_PACKET. `updates_s`: CPU seconds of
    building flow updates every 2 s (what the probe does before publishing), the fixed part of the cost."""
    import threading

    from netsonde.flow.capture import AfPacketCapture, BaseCapture
    from netsonde.flow.table import FlowTable

    table = FlowTable("bench", "bench")
    cap: BaseCapture
    if kind == "ebpf":
        from netsonde.probe_flow.ebpfcapture import EbpfCapture
        cap = EbpfCapture(ifname, table)
    else:
        cap = AfPacketCapture(ifname, table, snaplen=256)
    cap.start()
    stop = threading.Event()
    updates = [0]
    updates_cpu = [0.0]

    def updater() -> None:  # what the probe does every update interval (publishing excluded)
        while not stop.wait(2.0):
            t0 = time.thread_time()
            with cap.lock:
                updates[0] += len(table.updates(int(time.time() * 1000)))
            updates_cpu[0] += time.thread_time() - t0

    t = threading.Thread(target=updater, daemon=True)
    t.start()
    print("ready", flush=True)
    marks = []  # the bench marks its window's start and end: the updates' CPU inside it
    while sys.stdin.readline().strip() == "mark":
        marks.append(updates_cpu[0])
    stop.set()
    cap.stop()
    with cap.lock:
        updates[0] += len(table.updates(int(time.time() * 1000)))
    print(json.dumps({"packets": table.stats.packets, "drops": cap.packets_dropped, "flows": len(table),
                      "updates": updates[0], "updates_s": marks[1] - marks[0] if len(marks) == 2 else 0.0}),
          flush=True)


def _nfstream_main(ifname: str) -> None:
    """nfstream meter on `ifname` without nDPI dissection; prints the packets of the flows it exported.

    nfstream exports a flow when its idle timeout passes on the packet clock: the bench sends a short tick of
    traffic a few seconds after the measured traffic, so every measured flow gets exported."""
    import threading

    from nfstream import NFStreamer

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    total = [0, 0]
    streamer = NFStreamer(source=ifname, n_dissections=0, statistical_analysis=False, idle_timeout=1,
                          active_timeout=3600, n_meters=1, promiscuous_mode=True, snapshot_length=256)

    def run() -> None:
        for flow in streamer:
            total[0] += flow.bidirectional_packets
            total[1] += 1

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(3)  # the meter process starts its capture
    print("ready", flush=True)
    sys.stdin.readline()
    print(json.dumps({"packets": total[0], "flows": total[1]}), flush=True)
    for child in tree(os.getpid())[1:]:
        try:
            os.kill(child, signal.SIGKILL)
        except OSError:
            pass
    os._exit(0)


TRAFGEN = "trafgen"
"""Plan rate meaning: as fast as trafgen sends from one CPU."""


# --- the bench ----------------------------------------------------------------------------------------
class Bed:
    def __init__(self) -> None:
        u = uuid.uuid4().hex[:6]
        self.gen, self.rcv = f"bcg{u}", f"bcr{u}"
        self.gif, self.rif = f"bg{u}", f"br{u}"
        self.dir = Path(tempfile.mkdtemp(prefix="bench-capture-"))
        self.pcap = self.dir / "traffic.pcap"

    def __enter__(self) -> "Bed":
        sh = _sh
        sh(f"ip netns add {self.gen}")
        sh(f"ip netns add {self.rcv}")
        sh(f"ip link add {self.gif} netns {self.gen} type veth peer name {self.rif} netns {self.rcv}")
        for ns, dev, ip in ((self.gen, self.gif, "198.18.0.1"), (self.rcv, self.rif, "198.18.0.2")):
            sh(f"ip -n {ns} addr add {ip}/24 dev {dev}")
            sh(f"ip -n {ns} link set {dev} up")
            sh(f"ip -n {ns} link set lo up")
        self._write_pcap()
        self.rx = RxTime(f"/run/netns/{self.rcv}").__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if hasattr(self, "rx"):
            self.rx.__exit__()
        for ns in (self.gen, self.rcv):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _write_pcap(self) -> None:
        import struct
        with open(self.pcap, "wb") as f:
            f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
            for i in range(FLOWS):
                payload = bytes(18)
                udp = struct.pack("!HHHH", 10000 + i, 9, 8 + len(payload), 0) + payload
                ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0,
                                 bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]))
                s = sum(struct.unpack("!10H", ip))
                s = (s & 0xFFFF) + (s >> 16)
                ip = ip[:10] + struct.pack("!H", ~s & 0xFFFF) + ip[12:]
                frame = bytes.fromhex("020000000099020000000001") + b"\x08\x00" + ip + udp
                f.write(struct.pack("<IIII", 0, i, len(frame), len(frame)) + frame)

    def rx_packets(self) -> int:
        out = subprocess.run(["ip", "netns", "exec", self.rcv, "cat", f"/sys/class/net/{self.rif}/statistics/rx_packets"],
                             capture_output=True, text=True, check=True).stdout
        return int(out)

    def send(self, packets: int, pps: int | str | None) -> float:
        """Send `packets` at `pps` from the sender namespace on CPU0; the elapsed seconds."""
        if pps == TRAFGEN:  # netsniff-ng's trafgen on one CPU (mmap TX ring): the fastest single-core sender here
            cfg = self.dir / "traffic.trafgen"
            cfg.write_text("{ eth(da=02:00:00:00:00:99, sa=02:00:00:00:00:01), ipv4(sa=198.18.0.1, da=198.18.0.2, "
                           f"ttl=64), udp(sp=dinc(10000, {10000 + FLOWS - 1}), dp=9), fill(0x00, 18) }}\n")
            cmd = ["trafgen", "--cpus", "1", "-i", str(cfg), "-o", self.gif, "-n", str(packets), "-q", "-b", "0"]
        else:
            rate = ["--topspeed"] if not pps else ["--pps", str(pps)]
            cmd = ["tcpreplay", "-q", "-i", self.gif, *rate, "--loop", str(max(1, packets // FLOWS)),
                   "--preload-pcap", str(self.pcap)]
        t0 = time.monotonic()
        subprocess.run(["ip", "netns", "exec", self.gen, "taskset", "-c", "0", *cmd], check=True,
                       capture_output=True)
        return time.monotonic() - t0

    def run_tool(self, name: str, packets: int, pps: int | None) -> dict[str, Any]:
        """Start one tool on CPU1 in the receiving namespace, push traffic, collect its figures."""
        rcv = ["ip", "netns", "exec", self.rcv, "taskset", "-c", "1"]
        d = self.dir
        seen: int | None = None
        extra: dict[str, Any] = {}
        if name in ("netsonde", "netsonde-ebpf"):
            kind = "ebpf" if name == "netsonde-ebpf" else "afpacket"
            proc = subprocess.Popen([*rcv, PY, "-m", "bench.scenario_capture", "tool", self.rif, kind],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                    cwd=Path(__file__).parent.parent)
            _wait_ready(proc)
        elif name == "nfstream":
            proc = subprocess.Popen([*rcv, PY, "-m", "bench.scenario_capture", "nfstream", self.rif],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                    cwd=Path(__file__).parent.parent)
            _wait_ready(proc)
        elif name == "softflowd":
            proc = subprocess.Popen([*rcv, "softflowd", "-d", "-i", self.rif, "-n", "127.0.0.1:9995", "-c",
                                     str(d / "sfd.ctl")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elif name == "pmacctd":
            # the buffers pmacct's CONFIG-KEYS / QUICKSTART give for heavy traffic (as sfacctd gets in the sflow
            # bench): a 32 MiB capture buffer (pmacctd_pipe_size), a 100 MiB core-to-plugin queue
            # (plugin_pipe_size) in 100 KiB chunks (plugin_buffer_size, the 1:1000 ratio the docs advise)
            (d / "pmacctd.conf").write_text(
                f"daemonize: false\npcap_interface: {self.rif}\nplugins: memory\n"
                "aggregate: src_host,dst_host,src_port,dst_port,proto\n"
                f"imt_path: {d / 'pm.pipe'}\npmacctd_pipe_size: 33554432\nplugin_pipe_size: 104857600\n"
                "plugin_buffer_size: 102400\n")
            proc = subprocess.Popen([*rcv, "pmacctd", "-f", str(d / "pmacctd.conf")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elif name == "tcpdump":
            proc = subprocess.Popen([*rcv, "tcpdump", "-n", "-i", self.rif, "-B", "32768", "-w", "/dev/null"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        elif name == "none":  # the traffic alone: the kernel-time reference of the others
            self.send(FLOWS, 10_000)  # the warm-up every tool gets
            rx0, k0 = self.rx_packets(), self.rx.read()
            elapsed = self.send(packets, pps)
            sent, k1 = self.rx_packets() - rx0, self.rx.read()
            return {"tool": name, "sent": sent, "pps": sent / elapsed if elapsed else 0,
                    "kernel_ns_pkt": _per_packet(k0, k1)}
        else:
            raise ValueError(name)
        time.sleep(1.5)  # let the tool finish starting (its start-up CPU is not counted)
        self.send(FLOWS, 10_000)  # warm-up: one packet per flow, so the window measures known flows
        netsonde = name in ("netsonde", "netsonde-ebpf")
        time.sleep(2.5 if netsonde else 0.5)  # (the ebpf capture folds them at its next read)
        if netsonde:
            _mark(proc)
        rx0, k0 = self.rx_packets(), self.rx.read()
        cpu0 = cpu_ns(proc.pid)
        elapsed = self.send(packets, pps)
        k1 = self.rx.read()
        # let the tool drain its buffers. Both Netsonde probes get the same window: the traffic plus one update
        # period (2 s), in which the ebpf capture's next map read folds the last packets (it reads every 2 s)
        time.sleep(3.0 if name in ("pmacctd", "nfstream") else 2.0 if netsonde else 1.0)
        cpu1 = cpu_ns(proc.pid)
        if netsonde:
            _mark(proc)
        rss = peak_rss_kib(proc.pid)
        sent = self.rx_packets() - rx0
        if name == "nfstream":
            time.sleep(2.0)
            self.send(FLOWS, 10_000)  # the tick that makes nfstream export the measured flows
            time.sleep(2.0)
        if name in ("netsonde", "netsonde-ebpf", "nfstream"):
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("stop\n")
            proc.stdin.flush()
            res = _last_json(proc.stdout)
            seen = res["packets"]
            extra = {k: res[k] for k in ("poll_s", "updates_s") if k in res}
            proc.wait(10)
        elif name == "softflowd":
            out = subprocess.run(["softflowctl", "-c", str(d / "sfd.ctl"), "statistics"], capture_output=True,
                                 text=True).stdout
            seen = next((int(line.split()[-1]) for line in out.splitlines() if "Packets processed" in line), 0)
            subprocess.run(["softflowctl", "-c", str(d / "sfd.ctl"), "shutdown"], capture_output=True)
            proc.wait(10)
        elif name == "pmacctd":
            out = subprocess.run(["pmacct", "-p", str(d / "pm.pipe"), "-s", "-e"], capture_output=True,
                                 text=True).stdout
            seen = _pmacct_packets(out)
            proc.send_signal(signal.SIGINT)
            proc.wait(10)
        elif name == "tcpdump":
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=10)
            seen = next((int(line.split()[0]) for line in err.splitlines() if "packets captured" in line), 0)
        cpu_s = (cpu1 - cpu0) / 1e9
        return {"tool": name, "sent": sent, "seen": seen, "pps": sent / elapsed if elapsed else 0,
                "cpu_s_per_m": cpu_s / (sent / 1e6) if sent else 0.0,
                "loss": max(0.0, 1 - (seen or 0) / (sent + FLOWS)) if sent else 0.0,  # seen counts the warm-up
                "rss_mib": rss / 1024,
                "kernel_ns_pkt": _per_packet(k0, k1), **extra}


def _mark(proc: subprocess.Popen) -> None:
    assert proc.stdin is not None
    proc.stdin.write("mark\n")
    proc.stdin.flush()


def _wait_ready(proc: subprocess.Popen) -> None:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"tool exited before it was ready (rc={proc.wait()})")
        if line.strip() == "ready":
            return


def _last_json(stream: Any) -> dict[str, Any]:
    for line in stream:
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError("tool printed no result")


def _pmacct_packets(out: str) -> int:
    lines = out.splitlines()
    header = next((line.split() for line in lines if "PACKETS" in line), None)
    if not header:
        return 0
    idx = header.index("PACKETS")
    total = 0
    for line in lines:
        cols = line.split()
        if len(cols) == len(header) and cols[idx].isdigit():
            total += int(cols[idx])
    return total


def _per_packet(before: tuple[int, int], after: tuple[int, int]) -> float:
    """ns of receive path per packet between two RxTime readings."""
    packets = after[1] - before[1]
    return (after[0] - before[0]) / packets if packets else 0.0


def _sh(cmd: str) -> None:
    subprocess.run(cmd, shell=True, check=True, capture_output=True)


def table_memory_per_flow(n: int) -> tuple[float, float]:
    """(bytes per flow held, hot-path ns per packet in-process).

    Memory: `n` distinct UDP flows through `process_frames`, measured with tracemalloc (the C key table is
    allocated with PyMem and so included). Speed: the benchmark's traffic (1000 flows, 8192 frames per
    batch, every flow known) through `process_frames`, no socket or ring involved."""
    import struct

    from netsonde.flow.table import FlowTable

    def frame(i: int) -> bytes:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 46, 0, 0, 64, 17, 0, struct.pack("!I", 0x0A000000 + i),
                         bytes([198, 18, 0, 2]))
        return (bytes.fromhex("020000000099020000000001") + b"\x08\x00" + ip
                + struct.pack("!HHHH", 10000 + i % 50000, 9, 26, 0) + bytes(18))

    frames = [(frame(i), 1_700_000_000_000_000_000 + i, 60) for i in range(n)]
    t = FlowTable("mem")
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(0, n, 8192):
        t.process_frames(frames[i:i + 8192])
    t.harvest()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    per_flow = (after - before) / len(t)
    batch = [(frame(i % FLOWS), 1_700_000_000_000_000_000 + i, 60) for i in range(8192)]
    t2 = FlowTable("speed")
    t2.process_frames(batch)
    t0 = time.process_time()
    reps = 0
    while time.process_time() - t0 < 1.0:
        t2.process_frames(batch)
        reps += 1
    t2.updates(1)
    ns = (time.process_time() - t0) / (reps * len(batch)) * 1e9
    return per_flow, ns


def run(small: bool) -> Result:
    res = Result("Flow capture: CPU per million packets (tool + kernel time it adds), loss, RSS "
                 "(60-byte UDP, 1000 flows, one veth)",
                 ["tool", "target pkt/s", "sent pkt/s", "packets", "tool CPU-s per M pkts",
                  "kernel added CPU-s per M", "total CPU-s per M", "loss", "RSS MiB"])
    n_mem = 20_000 if small else 200_000
    per_flow, ns_pkt = table_memory_per_flow(n_mem)
    missing = [t for t in ("tcpreplay", "taskset") if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"capture bench needs {', '.join(missing)} (make bench installs them)")
    if small:
        plan = [(100_000, 200_000, ["netsonde", "netsonde-ebpf"])]
    else:
        tools = ["netsonde", "netsonde-ebpf", "softflowd", "pmacctd", "tcpdump"]
        try:
            import nfstream  # noqa: F401
            tools.append("nfstream")
        except ImportError:
            res.notes.append("nfstream is not installed (pip install nfstream): not measured")
        plan = [(300_000, 1_000_000, tools), (600_000, 1_000_000, tools), (None, 2_000_000, tools)]
        if shutil.which("trafgen"):
            plan.append((TRAFGEN, 5_000_000, [t for t in tools if t != "nfstream"]))
        else:
            res.notes.append("trafgen (Debian netsniff-ng) is not installed: no run above tcpreplay's rate")
    totals: dict[tuple[str, str], tuple[float, float]] = {}
    with Bed() as bed:
        for pps, packets, tools in plan:
            label = "max (trafgen, 1 CPU)" if pps == TRAFGEN else f"{pps:,}" if pps else "max (tcpreplay --topspeed)"
            try:
                ref = bed.run_tool("none", packets, pps)
            except Exception as e:
                res.notes.append(f"the reference run (no tool) at {label} pkt/s failed: {e!r}")
                continue
            if isinstance(pps, int) and ref["pps"] < 0.95 * pps:
                res.notes.append(f"Target {label} pkt/s: the sender (tcpreplay, one CPU) reached only "
                                 f"{ref['pps']:,.0f} pkt/s with no tool attached: that is its ceiling here, "
                                 "not a tool's limit.")
            res.rows.append(["(no tool: reference)", label, round(ref["pps"]), ref["sent"], 0.0, 0.0, 0.0, "-", "-"])
            results = []
            for tool in tools:
                if tool not in ("netsonde", "netsonde-ebpf", "nfstream") and shutil.which(tool) is None:
                    res.notes.append(f"{tool} is not installed: not measured")
                    continue
                try:
                    r = bed.run_tool(tool, packets, pps)
                except Exception as e:  # one tool failing does not lose the others' figures
                    res.notes.append(f"{tool} at {label} pkt/s failed: {e!r}")
                    continue
                results.append(r)
            try:  # the reference again after the tools: the machine's drift over the tools' runs averages out
                ref2 = bed.run_tool("none", packets, pps)
                ref_ns = (ref["kernel_ns_pkt"] + ref2["kernel_ns_pkt"]) / 2
                res.notes.append(f"Reference at {label} pkt/s: {ref['kernel_ns_pkt']:.0f} and "
                                 f"{ref2['kernel_ns_pkt']:.0f} ns of receive path per packet with no tool, "
                                 "before and after the tools.")
            except Exception as e:
                ref_ns = ref["kernel_ns_pkt"]
                res.notes.append(f"the second reference run at {label} pkt/s failed: {e!r}")
            for r in results:
                tool = r["tool"]
                kernel = (r["kernel_ns_pkt"] - ref_ns) / 1e3  # ns per packet -> CPU-s per M packets
                total = r["cpu_s_per_m"] + kernel
                per_m = r["sent"] / 1e6 if r["sent"] else 1.0
                totals[(tool, label)] = (r["cpu_s_per_m"], total, r["cpu_s_per_m"] - r.get("updates_s", 0.0) / per_m)
                res.rows.append([tool, label, round(r["pps"]), r["sent"], round(r["cpu_s_per_m"], 3),
                                 round(kernel, 3), round(total, 3), f"{r['loss'] * 100:.2f}%",
                                 round(r["rss_mib"], 1)])
                if "updates_s" in r and r["sent"]:
                    res.notes.append(f"{tool} at {label} pkt/s: {r['updates_s'] / (r['sent'] / 1e6):.3f} of its "
                                     "CPU-s per M packets is building flow updates every 2 s (a fixed cost per "
                                     "flow and interval, not per packet).")
    for (tool, label), (user, total, capture) in totals.items():
        af = totals.get(("netsonde", label))
        if tool == "netsonde-ebpf" and af and user > 0 and total > 0:
            res.notes.append(f"At {label} pkt/s, same run: ebpf probe CPU {af[0] / user:.1f}x below the AF_PACKET "
                             f"probe's ({user:.4f} vs {af[0]:.4f}); without building flow updates, which both do, "
                             f"{af[2] / capture:.1f}x ({capture:.4f} vs {af[2]:.4f}); total with the kernel time "
                             f"added {af[1] / total:.2f}x below ({total:.3f} vs {af[1]:.3f} CPU-s per M packets).")
    res.notes.append("Kernel added = the receive path's time per packet (net:netif_receive_skb to the packet's "
                     "free, summed by bench/rxtime.bpf.c: AF_PACKET copies and wake-ups, TC programs) with the "
                     "tool minus the same with no tool (mean of the reference runs before and after the tools), "
                     "in CPU-s per M packets (= µs per packet). The same method for every tool. Tool CPU = the "
                     "tool's process tree (user + its system calls). Every window starts with the 1000 flows "
                     "known (one warm-up packet each): creating flows is a one-time cost, not a per-packet one.")
    res.notes.append(f"Flow-table memory: {per_flow:.0f} bytes per flow (tracemalloc over {n_mem:,} UDP flows, the "
                     f"C key table included). In-process hot path (process_frames, 1000 known flows, no socket): "
                     f"{ns_pkt:.0f} ns per packet.")
    res.notes.append("The Netsonde probes' figures include building flow updates every 2 s (not publishing them).")
    res.notes.append(f"1-min load average at the end of the run: {os.getloadavg()[0]:.2f}.")
    return res


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "tool":
        _tool_main(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "afpacket")
    elif len(sys.argv) >= 3 and sys.argv[1] == "nfstream":
        _nfstream_main(sys.argv[2])
    else:
        print(run("--small" in sys.argv).to_markdown())

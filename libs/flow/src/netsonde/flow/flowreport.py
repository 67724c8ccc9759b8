"""The output side of a FlowTable: Skydive-shaped Flow updates, expiry, flush and live snapshots.

`updates()` reports the flows touched since the previous call with `LastUpdateMetric` = the delta over the
window, then the expired ones; `_to_flow` builds one `Flow` from a `FlowState`.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import msgspec

from netsonde.common.bus.flows import Flow, FlowLayer, FlowMetric, ICMPLayer, IPMetric, TCPMetric

from .flowstate import AggLevel, FlowState, TableStats

if TYPE_CHECKING:
    from .options import PacketOptions


_replace = msgspec.structs.replace
_EMPTY = FlowMetric()
"""Placeholder Metric of the per-flow templates (every update replaces it)."""


class FlowReport:
    """Mixin of FlowTable (which sets these attributes in its __init__)."""

    node_tid: str
    capture_id: str
    extra_tcp_metric: bool
    finished_hold_ms: int
    expire_ms: int
    app_timeouts_ms: dict[str, int]
    flows: dict[tuple[int, str], FlowState]
    stats: TableStats
    _acc: Any
    _dpi: Any
    _opts: PacketOptions | None
    _fast: dict[bytes, tuple[FlowState, bool]]
    _agg: dict[bytes, list[AggLevel]]
    _frag_owner: dict[tuple[bytes, bytes, int], FlowState]
    _last_update_ms: int

    if TYPE_CHECKING:
        def harvest(self) -> None: ...

    def updates(self, now_ms: int) -> list[Flow]:
        """Flows touched since the previous call (LastUpdateMetric = delta over the window), then the
        flows that expire at `now_ms` (FinishType TIMEOUT unless already finished)."""
        self.harvest()
        if self._opts is not None:
            self._opts.expire(now_ms * 1_000_000)
        start = self._last_update_ms
        out = []
        # expire() scans the table only if some flow is idle for at least the shortest timeout (the scan of
        # every flow at every update is otherwise the same cost again as building the updates)
        cut = now_ms - min(self.finished_hold_ms, self.expire_ms, *self.app_timeouts_ms.values())
        idle = False
        to_flow, append = self._to_flow, out.append
        for fs in self.flows.values():
            if fs.touched:
                append(to_flow(fs, start, now_ms))
            if fs.last <= cut:
                idle = True
        self._last_update_ms = now_ms
        if idle:
            out.extend(self.expire(now_ms))
        return out

    def expire(self, now_ms: int) -> list[Flow]:
        """Remove flows idle longer than their timeout (or finished and held long enough); return them."""
        self.harvest()
        out = []
        dead = []
        start = self._last_update_ms
        for key, fs in self.flows.items():
            idle = now_ms - fs.last
            if fs.finish != "NOT_FINISHED":
                if idle >= self.finished_hold_ms:
                    dead.append(key)
                    if fs.touched:
                        out.append(self._to_flow(fs, start, now_ms))
                continue
            limit = self.app_timeouts_ms.get(fs.application, self.expire_ms)
            if idle >= limit:
                fs.finish = "TIMEOUT"
                dead.append(key)
                out.append(self._to_flow(fs, start, now_ms))
        for key in dead:
            self._remove(key)
        self.stats.flows_expired += len(dead)
        return out

    def flush(self) -> list[Flow]:
        """Every flow with what it has not reported yet; the table is emptied (capture stop)."""
        self.harvest()
        if self._opts is not None:
            self._opts.flush()  # fragments of incomplete datagrams are counted as fragments
        now = max((fs.last for fs in self.flows.values()), default=0)
        start = self._last_update_ms
        out = [self._to_flow(fs, start, max(now, start)) for fs in self.flows.values()]
        if self._dpi is not None:
            for key in self.flows:
                self._dpi.forget(key)
        if self._opts is not None:
            for key in self.flows:
                self._opts.forget(key)
        self.flows.clear()
        self._fast.clear()
        self._agg.clear()
        if self._acc is not None:
            self._acc.clear()
        self._frag_owner.clear()
        return out

    def _remove(self, key: tuple[int, str]) -> None:
        fs = self.flows.pop(key)
        if self._dpi is not None:
            self._dpi.forget(key)
        if self._opts is not None:
            self._opts.forget(key)
        if fs.fastkeys:
            for fk in fs.fastkeys:
                self._fast.pop(fk, None)
                self._agg.pop(fk, None)
            if self._acc is not None:
                self._acc.forget(fs.fastkeys)
        if fs.frags and self._frag_owner:
            for k in [k for k, v in self._frag_owner.items() if v is fs]:
                del self._frag_owner[k]

    def snapshot(self) -> list[Flow]:
        """Every flow's current state without touching update bookkeeping (live table queries)."""
        self.harvest()
        now = self._last_update_ms
        return [self._to_flow(fs, now, now, consume=False) for fs in self.flows.values()]

    def _to_flow(self, fs: FlowState, win_start: int, win_end: int, consume: bool = True) -> Flow:
        sab_p, sab_b, sba_p, sba_b = fs.sent
        start = fs.start
        # positional: ABPackets, ABBytes, BAPackets, BABytes, Start, Last, RTT (FlowMetric's field order)
        metric = FlowMetric(fs.ab_p, fs.ab_b, fs.ba_p, fs.ba_b, start, fs.last, fs.rtt)
        lum = FlowMetric(fs.ab_p - sab_p, fs.ab_b - sab_b, fs.ba_p - sba_p, fs.ba_b - sba_b,
                         win_start if win_start > start else start, win_end, fs.rtt)
        tcpm = None
        if fs.tcp is not None:
            t = fs.tcp
            tcpm = TCPMetric(ABSynStart=t[0], BASynStart=t[1], ABSynTTL=t[2], BASynTTL=t[3], ABFinStart=t[4],
                             BAFinStart=t[5], ABRstStart=t[6], BARstStart=t[7])
        elif self.extra_tcp_metric and fs.tr_proto == "TCP":
            tcpm = TCPMetric()
        ipm = IPMetric(Fragments=fs.frags, FragmentErrors=fs.frag_err) if fs.frags else None
        extra: dict | None = {"NDPI": {"Protocol": fs.dpi[0], "Category": fs.dpi[1]}} if fs.dpi else None
        if self._opts is not None:
            layers, reasm = self._opts.flow_fields(fs)
            if layers:
                extra = {**extra, **layers} if extra else dict(layers)
            if reasm:
                tcpm = msgspec.structs.replace(tcpm or TCPMetric(), **reasm)
        raw = fs.raw
        reasons: dict[str, int] | None = None
        if fs.drops is not None:  # kernel drop reasons (kerneldrops.py)
            d = fs.drops
            metric.ABDrops, metric.BADrops = d.ab, d.ba
            lum.ABDrops, lum.BADrops = d.ab - d.sent_ab, d.ba - d.sent_ba
            reasons = dict(d.reasons)
            if consume:
                d.sent_ab, d.sent_ba = d.ab, d.ba
        tmpl = fs.template
        if tmpl is None:
            tmpl = fs.template = self._template(fs)
        if extra or raw or reasons:
            flow = _replace(tmpl, Application=fs.application, Last=fs.last, Metric=metric, LastUpdateMetric=lum,
                            TCPMetric=tcpm, IPMetric=ipm, FinishType=fs.finish, RawPacketsCaptured=fs.raw_count,
                            LastRawPackets=raw or [], SamplingRate=fs.sampling, Extra=extra or {},
                            DropReasons=reasons or {})
        else:  # the common case: the template's empty Extra, DropReasons, LastRawPackets (never modified) are
            # shared, so the update holds no new container (fewer objects for the garbage collector to track)
            flow = _replace(tmpl, Application=fs.application, Last=fs.last, Metric=metric, LastUpdateMetric=lum,
                            TCPMetric=tcpm, IPMetric=ipm, FinishType=fs.finish, RawPacketsCaptured=fs.raw_count,
                            SamplingRate=fs.sampling)
        if consume:
            fs.sent = (fs.ab_p, fs.ab_b, fs.ba_p, fs.ba_b)
            fs.touched = False
            fs.raw = None
        return flow

    def _template(self, fs: FlowState) -> Flow:
        """The fields of a flow's updates fixed once the flow exists (IDs, Start, header layers): built once,
        each update copies it (msgspec.structs.replace, ~4x cheaper than building a Flow) with its counters.
        The layer structs are shared by the flow's updates and never modified."""
        link = FlowLayer(Protocol="ETHERNET", A=_mac(fs.mac_a), B=_mac(fs.mac_b), ID=fs.vlan) if fs.mac_a else None
        net = None
        if fs.net_proto:
            fam = socket.AF_INET if fs.net_proto == "IPV4" else socket.AF_INET6
            net = FlowLayer(Protocol=fs.net_proto, A=socket.inet_ntop(fam, fs.ip_a),
                            B=socket.inet_ntop(fam, fs.ip_b), ID=fs.net_id)
        elif fs.net_id:
            net = FlowLayer(Protocol="MPLS", A="", B="", ID=fs.net_id)
        tr = FlowLayer(Protocol=fs.tr_proto, A=fs.port_a, B=fs.port_b, ID=fs.tr_id) if fs.tr_proto else None
        icmp = ICMPLayer(Type=fs.icmp_type, Code=fs.icmp_code, ID=fs.icmp_id) if fs.icmp_type else None
        return Flow(UUID=fs.uuid, LayersPath=fs.layers_path, Application=fs.application,
                    TrackingID=fs.tracking_id, L3TrackingID=fs.l3_tracking_id, NodeTID=self.node_tid,
                    Start=fs.start, Last=fs.last, Metric=_EMPTY, Link=link, Network=net, Transport=tr,
                    ICMP=icmp, ParentUUID=fs.parent_uuid, CaptureID=self.capture_id)


def _mac(b: bytes) -> str:
    return b.hex(":")

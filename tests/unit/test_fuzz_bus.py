"""Fuzzing the msgpack decoders of every bus subject: one generic test over the subject -> schema registry.

The registry is docs/bus.md's subject table (the contract third parties read), each message name resolved to
its struct in `netsonde.common.bus` (test_bus_contract checks that every name there is a bus struct). For each
schema, hypothesis sends random bytes, random msgpack structures (shaped like the schema's fields or not) and
valid messages with bytes overwritten or cut through `InboundDecoder`, the one decoder every receiver uses:
a message either decodes to the schema's type or is dropped and counted in `bad_messages_total` under a
reason (msgpack, schema, version); no exception escapes, and memory stays bounded.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
import re
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import netsonde.common.bus as bus
from netsonde.common.bus import encode
from netsonde.common.bus.inbound import InboundDecoder
from netsonde.common.metrics import Metrics

BUS_DOC = (Path(__file__).resolve().parents[2] / "docs" / "bus.md").read_text()
FUZZ = settings(max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck))
CASES: dict[str, int] = {}


def bus_structs() -> dict[str, type]:
    out: dict[str, type] = {}
    for mod in pkgutil.iter_modules(bus.__path__):
        module = importlib.import_module(f"netsonde.common.bus.{mod.name}")
        out |= {n: o for n, o in vars(module).items() if inspect.isclass(o) and hasattr(o, "__struct_fields__")}
    return out


def registry() -> dict[str, type]:
    """Message name -> struct, for every message of docs/bus.md's subject table."""
    table = re.findall(r"^\| (?:KV bucket )?`[^`]+` \| [^|]+ \| [^|]+ \| (.+) \|$", BUS_DOC, re.M)
    names = sorted({n for cell in table for n in re.findall(r"`(\w+)`", cell)})
    structs = bus_structs()
    return {n: structs[n] for n in names if n in structs}


SCHEMAS = registry()


def _minimal(t: Any) -> Any:
    """The smallest valid value of a msgspec type (required fields filled)."""
    ti = msgspec.inspect
    if isinstance(t, ti.StructType):
        return {f.encode_name: _minimal(f.type) for f in t.fields if f.required}
    if isinstance(t, ti.UnionType):
        return _minimal(next((x for x in t.types if not isinstance(x, ti.NoneType)), t.types[0]))
    if isinstance(t, ti.LiteralType):
        return t.values[0]
    simple = {ti.StrType: "x", ti.IntType: 1, ti.FloatType: 1.0, ti.BoolType: True, ti.BytesType: b"",
              ti.ListType: [], ti.DictType: {}, ti.AnyType: None, ti.NoneType: None, ti.TupleType: []}
    for kind, value in simple.items():
        if isinstance(t, kind):
            return value
    return None


def valid_message(cls: type) -> bytes:
    data = _minimal(msgspec.inspect.type_info(cls))
    return encode(msgspec.convert(data, cls))


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=25,
)


@st.composite
def inputs(draw: st.DrawFn, cls: type) -> bytes:
    """Random bytes, a random msgpack structure, one shaped like the schema, or a damaged valid message."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=300))
    if kind == 1:
        return msgpack.packb(draw(msgpack_values))
    if kind == 2:
        fields = [f.encode_name for f in msgspec.inspect.type_info(cls).fields] + ["v"]
        shaped = draw(st.dictionaries(st.sampled_from(fields), msgpack_values, max_size=len(fields)))
        return msgpack.packb(shaped)
    buf = bytearray(valid_message(cls))
    for pos, val in draw(st.lists(st.tuples(st.integers(0, 500), st.integers(0, 255)), min_size=1, max_size=4)):
        buf[pos % len(buf)] = val
    return bytes(buf[: len(buf) - draw(st.integers(0, 3))])


@pytest.fixture(scope="module", autouse=True)
def _print_cases() -> Iterator[None]:
    yield
    print(f"\nfuzz cases (bus, {len(CASES)} schemas): {sum(CASES.values())} "
          + ", ".join(f"{k}={v}" for k, v in sorted(CASES.items())))


def test_the_registry_covers_every_documented_message() -> None:
    assert {"TopologyMessage", "GraphEventBatch", "SnapshotRequest", "SnapshotChunk", "FlowUpdateBatch",
            "Capture", "StaticRequest", "StaticReply", "PacketInjectRequest", "PacketInjectReply"} <= set(SCHEMAS)
    for cls in SCHEMAS.values():  # the valid seeds really are valid
        assert isinstance(msgspec.msgpack.decode(valid_message(cls), type=cls), cls)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_decoder_rejects_bad_input_with_a_counted_reason(name: str) -> None:
    cls = SCHEMAS[name]
    metrics = Metrics("fuzz")
    decoder = InboundDecoder(metrics.bad_messages, logging.getLogger("fuzz.bus"))
    seen = {"ok": 0, "bad": 0}

    @FUZZ
    @given(inputs(cls))
    def run(data: bytes) -> None:
        msg = decoder(data, cls, name, "fuzz")  # any exception escaping fails the test
        if msg is None:
            seen["bad"] += 1
        else:
            assert isinstance(msg, cls)
            seen["ok"] += 1

    run()
    reasons = {r: metrics.registry.get_sample_value("netsonde_fuzz_bad_messages_total",
                                                    {"subject_kind": name, "reason": r}) or 0
               for r in ("msgpack", "schema", "version")}
    assert sum(reasons.values()) == decoder.dropped == seen["bad"] > 0
    CASES[name] = seen["ok"] + seen["bad"]


def test_hostile_lengths_and_nesting_are_rejected_without_allocating() -> None:
    """Declared lengths of 4 G elements, 4 GiB strings and 100 000-deep nesting: counted, small memory."""
    hostile = [b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xffab", b"\xc6\xff\xff\xff\xff",
               b"\x91" * 100_000 + b"\xc0", b"\x81\xa1a" * 50_000 + b"\xc0", b"\xc1", b""]
    metrics = Metrics("fuzz")
    decoder = InboundDecoder(metrics.bad_messages, logging.getLogger("fuzz.bus"))
    tracemalloc.start()
    try:
        for name, cls in SCHEMAS.items():
            for data in hostile:
                assert decoder(data, cls, name) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoder.dropped == len(hostile) * len(SCHEMAS)
    print(f"\nbus hostile inputs: {decoder.dropped} rejected, peak {peak / 1e6:.1f} MB")
    assert peak < 20e6, peak


def test_decoding_memory_stays_bounded() -> None:
    """Thousands of random messages through one decoder: nothing accumulates (peak of new allocations)."""
    import random

    rnd = random.Random(3)
    metrics = Metrics("fuzz")
    decoder = InboundDecoder(metrics.bad_messages, logging.getLogger("fuzz.bus"))
    seeds = [(name, cls, valid_message(cls)) for name, cls in SCHEMAS.items()]
    tracemalloc.start()
    try:
        for _ in range(20_000):
            name, cls, seed = rnd.choice(seeds)
            buf = bytearray(seed)
            buf[rnd.randrange(len(buf))] = rnd.randrange(256)
            decoder(bytes(buf), cls, name)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    CASES["memory_messages"] = 20_000
    print(f"\nbus fuzz memory: peak {peak / 1e6:.1f} MB for 20 000 messages, {decoder.dropped} dropped")
    assert peak < 10e6, peak

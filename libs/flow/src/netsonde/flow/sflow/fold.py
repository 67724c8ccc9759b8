"""Flow samples folded per key between two runs of the flow tables: the readable reference of the C
`_fastsflow.SampleFold` (the collector's hot path), and the fold the collector uses without the C extension.

Samples with one key are the same packet for the flow logic (same agent, source, ports, rate, frame length
and header fields), so they are counted, not kept: `drain()` gives one row per key, in the order the keys were
first seen (the first sample of a flow decides its A side), and empties the fold:

    (key, samples, header, rate, frame_length, input, output, agent, source_index, stripped, header_protocol,
     first_ts_ns, last_ts_ns)

`header` is the first sample's header; the timestamps are those given with the first and the last sample of
the key (0 when the caller gave none: the collector then uses the time it runs the flow tables).
"""

from __future__ import annotations

Row = tuple[bytes, int, bytes, int, int, int, int, bytes, int, int, int, int, int]


class SampleFold:
    """See the module docstring. The C type has the same `drain()` and `len()`; `add` is Python's way in."""

    def __init__(self) -> None:
        self._rows: dict[bytes, list] = {}  # type: ignore[type-arg]

    def __len__(self) -> int:
        return len(self._rows)

    def add(
        self,
        key: bytes,
        header: bytes,
        rate: int,
        frame_length: int,
        input_if: int,
        output_if: int,
        agent: bytes,
        source_index: int,
        stripped: int,
        header_protocol: int,
        ts_ns: int,
    ) -> None:
        """Count one sample."""
        row = self._rows.get(key)
        if row is None:
            self._rows[key] = [
                key,
                1,
                header,
                rate,
                frame_length,
                input_if,
                output_if,
                agent,
                source_index,
                stripped,
                header_protocol,
                ts_ns,
                ts_ns,
            ]
            return
        row[1] += 1
        if ts_ns > row[12]:
            row[12] = ts_ns

    def drain(self) -> list[Row]:
        rows, self._rows = self._rows, {}
        return [tuple(r) for r in rows.values()]

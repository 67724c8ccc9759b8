"""msgpack encode/decode for bus messages, with schema-version checks.

Encoding goes through msgspec (typed structs, fast); the bytes are plain msgpack maps that any msgpack
library reads. Decoding validates the shape and the `v` field and raises BusDecodeError with a short
`reason` used as a metric label.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

_encoder = msgspec.msgpack.Encoder()
_decoders: dict[type, msgspec.msgpack.Decoder[Any]] = {}


class BusDecodeError(ValueError):
    """A bus message could not be decoded. `reason` is one of: msgpack, schema, version."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def encode(message: Any) -> bytes:
    return _encoder.encode(message)


def decode(data: bytes, cls: type[T]) -> T:
    decoder = _decoders.get(cls)
    if decoder is None:
        decoder = _decoders[cls] = msgspec.msgpack.Decoder(cls)
    try:
        msg: T = decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise BusDecodeError("schema", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise BusDecodeError("msgpack", str(exc)) from None
    except RecursionError:  # arrays/maps nested thousands deep (msgspec stops at the interpreter's limit)
        raise BusDecodeError("msgpack", "nested too deeply") from None
    expected = getattr(cls, "VERSION", None)
    if expected is not None and getattr(msg, "v", expected) != expected:
        raise BusDecodeError(
            "version", f"{cls.__name__} v{getattr(msg, 'v', '?')} (this build reads v{expected})"
        )
    return msg

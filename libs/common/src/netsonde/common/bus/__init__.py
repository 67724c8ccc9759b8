"""The bus contract: every subject and every message schema Netsonde publishes, in one package.

Messages are msgpack maps (field names as keys) with a `v` schema-version field. `docs/bus.md`
documents each schema for third-party consumers, who need nothing but a msgpack library.

- `subjects`: subject names built from the configurable prefix.
- `codec`: encode/decode with version checks and typed errors.
- `topology`: probe -> graph-builder messages.
- `graph`: graph-builder -> replicas (events, snapshots) in Skydive's element shape.
- `injection`: query-api -> probe-flow packet injection (request/reply).
- `inbound`: the decode helper every receiver uses (bad messages counted, logged once, dropped).
"""

from .codec import BusDecodeError, decode, encode
from .subjects import Subjects

__all__ = ["BusDecodeError", "Subjects", "decode", "encode"]

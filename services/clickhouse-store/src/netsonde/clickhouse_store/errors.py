"""ClickHouse exceptions as the HTTP interface reports them: code, name, message, HTTP status.

Engine errors arrive as text (`Code: 60. DB::Exception: ... (UNKNOWN_TABLE)`, sometimes nested by chdb);
`from_engine` turns them into one `StoreError` whose `body()` is what a ClickHouse server would send.
"""

from __future__ import annotations

import re

# Codes of the errors the store raises itself (the engine's own errors carry their code in the text).
CODES = {
    "UNKNOWN_FORMAT": 73,
    "UNKNOWN_COMPRESSION_METHOD": 89,
    "CANNOT_DECOMPRESS": 271,
    "SYNTAX_ERROR": 62,
    "BAD_ARGUMENTS": 36,
    "UNKNOWN_SETTING": 115,
    "READONLY": 164,
    "NOT_IMPLEMENTED": 48,
    "SESSION_NOT_FOUND": 372,
    "SESSION_IS_LOCKED": 373,
    "INVALID_SESSION_TIMEOUT": 374,
    "REQUIRED_PASSWORD": 194,
    "AUTHENTICATION_FAILED": 516,
    "UNKNOWN_USER": 192,
    "QUERY_IS_TOO_LARGE": 76,
    "BAD_REQUEST_PARAMETER": 447,
    "TIMEOUT_EXCEEDED": 159,
    "ABORTED": 236,
    "TOO_MANY_SIMULTANEOUS_QUERIES": 202,
    "LOGICAL_ERROR": 49,
    "CANNOT_PARSE_INPUT_ASSERTION_FAILED": 27,
    "HTTP_LENGTH_REQUIRED": 381,
    "ZLIB_INFLATE_FAILED": 354,
    "BROTLI_READ_FAILED": 448,
    "ZSTD_DECODER_FAILED": 561,
    "LZ4_DECODER_FAILED": 618,
}

# HTTP status per exception name, as ClickHouse's exceptionCodeToHTTPStatus maps them (anything else: 500).
_BAD_REQUEST = frozenset(
    {
        "CANNOT_PARSE_TEXT",
        "CANNOT_PARSE_ESCAPE_SEQUENCE",
        "CANNOT_PARSE_QUOTED_STRING",
        "CANNOT_PARSE_DATE",
        "CANNOT_PARSE_DATETIME",
        "CANNOT_PARSE_NUMBER",
        "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
        "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING",
        "CANNOT_PARSE_IPV4",
        "CANNOT_PARSE_IPV6",
        "CANNOT_PARSE_UUID",
        "CANNOT_PARSE_BOOL",
        "UNKNOWN_ELEMENT_IN_AST",
        "UNKNOWN_TYPE_OF_AST_NODE",
        "TOO_DEEP_AST",
        "TOO_BIG_AST",
        "UNEXPECTED_AST_STRUCTURE",
        "SYNTAX_ERROR",
        "INCORRECT_DATA",
        "TYPE_MISMATCH",
        "BAD_ARGUMENTS",
        "CANNOT_COMPILE_REGEXP",
        "DUPLICATE_COLUMN",
        "ILLEGAL_COLUMN",
        "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
        "BAD_REQUEST_PARAMETER",
        "INVALID_SESSION_TIMEOUT",
    }
)
_NOT_FOUND = frozenset(
    {
        "UNKNOWN_TABLE",
        "UNKNOWN_FUNCTION",
        "UNKNOWN_IDENTIFIER",
        "UNKNOWN_TYPE",
        "UNKNOWN_STORAGE",
        "UNKNOWN_DATABASE",
        "UNKNOWN_SETTING",
        "UNKNOWN_DIRECTION_OF_SORTING",
        "UNKNOWN_AGGREGATE_FUNCTION",
        "UNKNOWN_FORMAT",
        "UNKNOWN_DATABASE_ENGINE",
        "UNKNOWN_TYPE_OF_QUERY",
        "UNKNOWN_ROLE",
        "SESSION_NOT_FOUND",
    }
)
_STATUS = {
    "REQUIRED_PASSWORD": 401,
    "UNKNOWN_USER": 403,
    "WRONG_PASSWORD": 403,
    "AUTHENTICATION_FAILED": 403,
    "READONLY": 403,
    "QUERY_IS_TOO_LARGE": 413,
    "NOT_IMPLEMENTED": 501,
    "SOCKET_TIMEOUT": 503,
    "CANNOT_OPEN_FILE": 503,
    "HTTP_LENGTH_REQUIRED": 411,
    "TIMEOUT_EXCEEDED": 408,
    "TOO_MANY_SIMULTANEOUS_QUERIES": 503,
}

# Filled by the engine at start-up from errorCodeToName(), for engine messages that lack the name.
NAMES_BY_CODE: dict[int, str] = {}

_PREFIX = re.compile(r"^(?:\s*Code:\s*(\d+)\.\s*DB::Exception:\s*)+")
_SUFFIX = re.compile(
    r"(?:[.:]?\s*\(([A-Z][A-Z0-9_]+)\)(?:\s*\(version [^()]*(?:\([^()]*\))?[^()]*\))?\s*\.?\s*)+$"
)
_CODE = re.compile(r"Code:\s*(\d+)")
_NAME = re.compile(r"\(([A-Z][A-Z0-9_]{2,})\)")


def http_status(name: str) -> int:
    """The HTTP status a ClickHouse server answers for an exception name."""
    if name in _STATUS:
        return _STATUS[name]
    if name in _BAD_REQUEST or name.startswith("CANNOT_PARSE_"):
        return 400
    if name in _NOT_FOUND:
        return 404
    return 500


class StoreError(Exception):
    """A ClickHouse exception to send to the client."""

    version = ""

    def __init__(self, name: str, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.name = name
        self.message = message
        self.code = code if code is not None else CODES.get(name, 1000)

    @property
    def status(self) -> int:
        return http_status(self.name)

    def body(self) -> str:
        version = f" (version {StoreError.version} (official build))" if StoreError.version else ""
        return f"Code: {self.code}. DB::Exception: {self.message}. ({self.name}){version}\n"

    @classmethod
    def from_engine(cls, text: str) -> StoreError:
        """Normalise an engine error text (possibly nested `Code: N. DB::Exception: Code: N. ...`)."""
        text = text.strip()
        for prefix in ("Streaming query failed: ", "Streaming insert finish failed: "):
            text = text.removeprefix(prefix)
        m = _CODE.search(text)
        code = int(m.group(1)) if m else 1000
        names = _NAME.findall(text)
        name = names[-1] if names else NAMES_BY_CODE.get(code, "UNKNOWN_EXCEPTION")
        core = _PREFIX.sub("", text)
        prev = None
        while prev != core:
            prev = core
            core = _SUFFIX.sub("", core).rstrip()
            core = _PREFIX.sub("", core)
        core = core.rstrip(". ") or name
        return cls(name, core, code)

"""API authentication and roles.

Who may call the API is listed in a TOML file (`users_file`): users with a password hash and API tokens with
the SHA-256 of the token, each with a role. Nothing secret is stored in clear, and nothing secret is logged.

    [users.alice]                     # password: hash it with `python -m netsonde.query_api.auth hash-password`
    password = "scrypt$16384$8$1$<salt>$<hash>"
    role = "admin"
    [tokens.grafana]                  # token: make one with `python -m netsonde.query_api.auth new-token`
    sha256 = "<hex SHA-256 of the token>"
    role = "reader"

A request proves who it is with `Authorization: Bearer <token>` (an API token, or a session token), a session
cookie set by Skydive's `POST /login` (form fields `username`, `password`; cookie `authtok`, and `authtoken`
which skydive-client reads), or HTTP Basic (browsers). Roles: `reader` queries (GET, `POST /api/topology`, the
WebSockets); `admin` may also change things (every other POST, PUT, PATCH, DELETE: captures, static nodes and
edges, rules, alerts, pcap import, packet injection). No credentials: 401; a reader changing things: 403.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import secrets
import ssl
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import Counter

log = logging.getLogger(__name__)

ROLES = ("reader", "admin")
SESSION_COOKIES = ("authtok", "authtoken")
"""Skydive's analyzer sets `authtok`; skydive-client looks for `authtoken`: both carry the same session."""
SESSION_TTL_S = 12 * 3600
OPEN_PATHS = ("/healthz", "/metrics", "/login")
"""Reachable without credentials: health and metrics (scrapers), and the login itself."""
READER_POSTS = ("/api/topology",)
"""POST routes a reader may call: they read (a Gremlin query), they change nothing."""
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


class AuthConfigError(ValueError):
    """The users file is missing, unreadable or malformed."""


def hash_password(password: str) -> str:
    """`scrypt$N$r$p$salt$hash` (salt and hash base64): what the users file stores."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(want), maxmem=256 * 1024 * 1024)
    except ValueError:
        return False
    return hmac.compare_digest(got, want)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Identity:
    name: str
    role: str


class Authenticator:
    """Users, API tokens and login sessions of one query-api process."""

    def __init__(self, users_file: str, failures: Counter) -> None:
        self.failures = failures
        self.users: dict[str, tuple[str, str]] = {}
        """user -> (password hash, role)."""
        self.tokens: dict[str, Identity] = {}
        """SHA-256 of an API token -> who it is."""
        self.sessions: dict[str, tuple[Identity, float]] = {}
        """SHA-256 of a session token -> (who, expiry)."""
        self._basic_ok: dict[str, Identity] = {}
        """SHA-256 of verified Basic credentials: scrypt is deliberately slow, run it once per credential."""
        self._load(users_file)

    def _load(self, users_file: str) -> None:
        if not users_file:
            raise AuthConfigError("API authentication is on but no users_file is set (NETSONDE_USERS_FILE): "
                                  "list users and tokens there (docs/reliability.md), or set auth=off")
        try:
            data = tomllib.loads(Path(users_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise AuthConfigError(f"users_file {users_file}: {exc}") from None
        unknown = set(data) - {"users", "tokens"}
        if unknown:
            raise AuthConfigError(f"users_file {users_file}: unknown table(s) {', '.join(sorted(unknown))}")
        for name, entry in data.get("users", {}).items():
            role, stored = entry.get("role"), entry.get("password", "")
            if role not in ROLES or not str(stored).startswith("scrypt$"):
                raise AuthConfigError(f"users_file: user {name!r} needs role reader|admin and a scrypt password "
                                      "hash (python -m netsonde.query_api.auth hash-password)")
            self.users[name] = (stored, role)
        for name, entry in data.get("tokens", {}).items():
            role, digest = entry.get("role"), str(entry.get("sha256", ""))
            if role not in ROLES or len(digest) != 64:
                raise AuthConfigError(f"users_file: token {name!r} needs role reader|admin and sha256 (64 hex)")
            self.tokens[digest.lower()] = Identity(name, role)
        if not self.users and not self.tokens:
            raise AuthConfigError(f"users_file {users_file} lists no users and no tokens")

    # --- proving who one is --------------------------------------------------------------------------------
    def login(self, user: str, password: str) -> str | None:
        """A new session token for valid credentials, else None."""
        entry = self.users.get(user)
        if entry is None or not verify_password(password, entry[0]):
            self.failures.labels("bad_login").inc()
            log.warning("API login refused", extra={"user": user[:64]})
            return None
        token = secrets.token_urlsafe(32)
        now = time.time()
        self.sessions = {k: v for k, v in self.sessions.items() if v[1] > now}
        self.sessions[_sha256(token)] = (Identity(user, entry[1]), now + SESSION_TTL_S)
        log.info("API login", extra={"user": user, "role": entry[1]})
        return token

    def _bearer(self, token: str) -> Identity | None:
        digest = _sha256(token)
        if digest in self.tokens:
            return self.tokens[digest]
        session = self.sessions.get(digest)
        if session is not None and session[1] > time.time():
            return session[0]
        return None

    def _basic(self, encoded: str) -> Identity | None:
        digest = _sha256(encoded)
        if digest in self._basic_ok:
            return self._basic_ok[digest]
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        entry = self.users.get(user)
        if entry is None or not verify_password(password, entry[0]):
            return None
        self._basic_ok[digest] = Identity(user, entry[1])
        return self._basic_ok[digest]

    def identify(self, request: web.Request) -> tuple[Identity | None, bool]:
        """(who, whether a browser sends these credentials by itself: Basic and the session cookie)."""
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value:
            return self._bearer(value.strip()), False
        if scheme.lower() == "basic" and value:
            return self._basic(value.strip()), True
        for cookie in SESSION_COOKIES:
            if request.cookies.get(cookie):
                return self._bearer(request.cookies[cookie]), True
        return None, False


def needs_admin(request: web.Request) -> bool:
    """Reading is for readers; changing anything is for admins."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return False
    return not (request.method == "POST" and request.path in READER_POSTS)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def auth_middleware(auth: Authenticator) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        who, ambient = auth.identify(request)
        if who is None:
            auth.failures.labels("unauthenticated").inc()
            resp = web.Response(status=401, text="authentication required: a Bearer token, the session cookie "
                                "of POST /login, or Basic credentials", content_type="text/plain")
            resp.headers["WWW-Authenticate"] = 'Basic realm="netsonde", charset="UTF-8"'
            if request.content_length:
                resp.force_close()  # the body of an unauthenticated request is never read
            return resp
        origin = request.headers.get("Origin")
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if ambient and origin and (needs_admin(request) or upgrade) and urlsplit(origin).netloc != request.host:
            # a browser sends its Basic credentials or cookie along with another site's form or WebSocket
            auth.failures.labels("cross_site").inc()
            return web.Response(status=403, content_type="text/plain",
                                text=f"cross-site {request.method} refused (Origin {origin} is not {request.host})")
        if who.role != "admin" and needs_admin(request):
            auth.failures.labels("forbidden").inc()
            return web.Response(status=403, content_type="text/plain",
                                text=f"{request.method} {request.path} needs the admin role; "
                                     f"{who.name!r} is a {who.role}")
        return await handler(request)

    return authenticate


def login_handler(auth: Authenticator) -> Handler:
    """Skydive's `POST /login`: form (or JSON) `username`, `password`; sets the session cookies."""

    async def login(request: web.Request) -> web.StreamResponse:
        if request.content_type == "application/json":
            try:
                body = await request.json()
            except ValueError:
                return web.Response(status=400, text="login body must be a form or JSON with username, password")
            form = body if isinstance(body, dict) else {}
        else:
            form = dict(await request.post())
        user, password = form.get("username"), form.get("password")
        if not isinstance(user, str) or not isinstance(password, str) or not user:
            return web.Response(status=400, text="username and password are required (form fields)")
        token = auth.login(user, password)
        if token is None:
            return web.Response(status=401, text="bad username or password")
        resp = web.json_response({"Token": token, "Role": auth.users[user][1]})
        for name in SESSION_COOKIES:
            resp.set_cookie(name, token, httponly=True, samesite="Strict", secure=request.secure,
                            max_age=SESSION_TTL_S, path="/")
        return resp

    return login


def auth_required(setting: str, http_host: str) -> bool:
    """`auth` on/off as set; auto: on unless the API listens on loopback only."""
    return setting == "on" or (setting == "auto" and not is_loopback(http_host))


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext | None:
    """The API's TLS context (TLS 1.2 or newer), or None without a certificate."""
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise AuthConfigError(f"tls_cert/tls_key ({cert}, {key}): {exc}") from None
    return ctx


async def login_without_auth(request: web.Request) -> web.Response:
    """`POST /login` when authentication is off: nothing to log in to, every caller is admin (said, not hidden)."""
    return web.json_response({"Token": "", "Auth": "off"})


def main(argv: list[str]) -> int:
    """`hash-password` (reads the password on stdin) or `new-token` (prints the token and its users_file line)."""
    if argv[:1] == ["hash-password"]:
        password = sys.stdin.readline().rstrip("\n")
        if not password:
            print("give the password on stdin", file=sys.stderr)
            return 2
        print(hash_password(password))
        return 0
    if argv[:1] == ["new-token"]:
        token = secrets.token_urlsafe(32)
        print(f"token:  {token}\nsha256 = \"{_sha256(token)}\"")
        return 0
    print("usage: python -m netsonde.query_api.auth hash-password|new-token", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""NATS connection helper: reconnects forever, logs state changes, drains on stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any

import nats
from nats.aio.client import Client as NATS

from .config import BaseConfig

log = logging.getLogger(__name__)


def auth_options(config: BaseConfig | None) -> dict[str, Any]:
    """nats-py's connect() arguments for the credentials and TLS settings of `config` (none set: {})."""
    if config is None:
        return {}
    opts: dict[str, Any] = {}
    if config.nats_user:
        opts["user"], opts["password"] = config.nats_user, config.nats_password
    if config.nats_token:
        opts["token"] = config.nats_token
    if config.nats_creds_file:
        opts["user_credentials"] = config.nats_creds_file
    if config.nats_tls_ca or config.nats_tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=config.nats_tls_ca or None)
        if config.nats_tls_cert:
            ctx.load_cert_chain(config.nats_tls_cert, config.nats_tls_key)
        opts["tls"] = ctx
    return opts


async def connect(
    url: str, name: str, connect_timeout: float = 5.0, config: BaseConfig | None = None
) -> NATS:
    """Connect to NATS (comma-separated URLs allowed). Raises if no server answers at start-up: a service
    that cannot reach its bus should fail loudly, then rely on reconnects once it has started.
    `config`: the service's settings, for NATS credentials and TLS (`auth_options`)."""

    refused = asyncio.Event()
    reasons: list[str] = []

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %r", exc)
        reason = _refusal(exc)
        if reason:
            reasons.append(reason)
            refused.set()

    async def on_disconnect() -> None:
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    connecting = asyncio.ensure_future(
        nats.connect(
            servers=[u.strip() for u in url.split(",") if u.strip()],
            name=name,
            connect_timeout=connect_timeout,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            allow_reconnect=True,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            pending_size=64 * 1024 * 1024,
            **auth_options(config),
        )
    )
    # nats-py retries refused credentials forever at start-up: a service with wrong ones must fail loudly
    refusal = asyncio.ensure_future(refused.wait())
    await asyncio.wait({connecting, refusal}, return_when=asyncio.FIRST_COMPLETED)
    refusal.cancel()
    if connecting.done():
        return connecting.result()
    connecting.cancel()
    with contextlib.suppress(BaseException):
        await connecting
    raise PermissionError(f"NATS at {_without_credentials(url)}: {reasons[0]}")


def _refusal(exc: Exception) -> str:
    """Why the server and this client will never agree (wrong credentials, untrusted certificate), or "" for
    errors a retry can cure. nats-py retries all of them forever at start-up."""
    text = str(exc).lower()
    if "authorization violation" in text or "authentication" in text:
        return (
            "the server refused the credentials (Authorization Violation): check nats_user/nats_password, "
            "nats_token or nats_creds_file"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"the server's TLS certificate is not trusted ({exc.verify_message}): check nats_tls_ca (the CA "
            "that signed the server's certificate) and that the URL's host is in the certificate"
        )
    if isinstance(exc, ssl.SSLError) and "certificate" in text:
        return (
            f"the server refused this client's TLS certificate ({exc.reason or exc}): check nats_tls_cert "
            "and nats_tls_key (a certificate signed by a CA the server trusts, required when it verifies "
            "clients)"
        )
    return ""


def _without_credentials(url: str) -> str:
    """The servers of `url` with any user:password@ removed (for messages)."""
    return ",".join(u.strip().rsplit("@", 1)[-1] for u in url.split(","))


async def close(nc: NATS | None, timeout: float = 5.0) -> None:
    """Drain (deliver what is in flight, flush what we published) then close; close anyway on timeout."""
    if nc is None or nc.is_closed:
        return
    try:
        await asyncio.wait_for(nc.drain(), timeout)
    except Exception as exc:  # drain can time out with dead JetStream subscriptions; closing is enough then
        log.debug("nats drain failed (%r), closing", exc)
        try:
            await nc.close()
        except Exception:
            pass

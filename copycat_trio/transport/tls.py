"""TLS settings and the SSL contexts built from them: mutual TLS between members, certificates
for clients unless client auth is off, TLS 1.2 or newer, reloadable without a restart."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import attrs

from ..protocol.errors import ConfigurationError

log = logging.getLogger(__name__)

CLIENT_AUTH_MODES = ("required", "none")
HANDSHAKE_TIMEOUT = 5.0
"""Seconds a TLS handshake may take before the connection is closed (a stalled handshake)."""


@attrs.frozen(kw_only=True)
class TlsSettings:
    """Where a member's certificate, key and CA are, and whether clients need a certificate.

    `server_name`: the name every member's certificate is checked against (None: the host of
    the address the member is reached at, an IP address or a DNS name)."""

    cert: str
    key: str
    ca: str
    client_auth: str = "required"
    server_name: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.client_auth not in CLIENT_AUTH_MODES:
            raise ConfigurationError(
                f"client auth must be one of {', '.join(CLIENT_AUTH_MODES)}, not "
                f"{self.client_auth!r}"
            )


@contextmanager
def _reading(what: str, path: str) -> Iterator[None]:
    """Turns a missing or unreadable certificate file into a sentence naming it."""
    try:
        yield
    except FileNotFoundError:
        raise ConfigurationError(f"TLS {what} {path}: no such file") from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigurationError(f"TLS {what} {path}: cannot be loaded ({exc})") from None


def _base(purpose: ssl.Purpose, ca: str) -> ssl.SSLContext:
    # Only our CA is trusted (no system store): a certificate any public CA signed is no
    # member's and no client's.
    protocol = (
        ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    )
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with _reading("CA", ca):
        context.load_verify_locations(cafile=ca)
    return context


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    """The listener's context: our certificate; the peer's checked against the CA, required
    unless client auth is "none" (then optional, and a connection without one is a client's)."""
    context = _base(ssl.Purpose.CLIENT_AUTH, settings.ca)
    with _reading("certificate/key", f"{settings.cert} / {settings.key}"):
        context.load_cert_chain(settings.cert, settings.key)
    context.verify_mode = (
        ssl.CERT_REQUIRED if settings.client_auth == "required" else ssl.CERT_OPTIONAL
    )
    return context


def peer_context(settings: TlsSettings) -> ssl.SSLContext:
    """A member connecting to another member: presents its certificate, checks the other's
    against the CA and its name."""
    context = _base(ssl.Purpose.SERVER_AUTH, settings.ca)
    with _reading("certificate/key", f"{settings.cert} / {settings.key}"):
        context.load_cert_chain(settings.cert, settings.key)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca: str, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """What a client passes to open_client: trusts `ca`, presents `cert` (with `key`, or the
    key in the same file) if given."""
    context = _base(ssl.Purpose.SERVER_AUTH, ca)
    if cert is not None:
        with _reading("certificate/key", f"{cert} / {key or cert}"):
            context.load_cert_chain(cert, key)
    elif key is not None:
        raise ConfigurationError("a TLS key needs its certificate (--tls-cert)")
    return context


class TlsContexts:
    """The contexts a transport uses now; `reload` builds new ones from the same files, used
    by connections made or accepted from then on (open ones keep theirs)."""

    def __init__(
        self,
        *,
        server: ssl.SSLContext | None,
        client: ssl.SSLContext,
        settings: TlsSettings | None = None,
        server_name: str | None = None,
        token: str = "",
    ) -> None:
        self.server = server
        self.client = client
        self.settings = settings
        self.server_name = server_name
        self.token = token
        """A client's bearer token, carried in the Hello of its TLS connections only (never
        in plaintext): its identity for members with a tokens file (docs/security.md)."""

    @classmethod
    def for_member(cls, settings: TlsSettings) -> TlsContexts:
        """Both contexts of a member, from its settings."""
        return cls(
            server=server_context(settings),
            client=peer_context(settings),
            settings=settings,
            server_name=settings.server_name,
        )

    @classmethod
    def for_client(
        cls, context: ssl.SSLContext, server_name: str | None = None, token: str = ""
    ) -> TlsContexts:
        """A client's: it only connects, presenting `token` if given."""
        return cls(server=None, client=context, server_name=server_name, token=token)

    def hostname_for(self, host: str) -> str:
        """The name the certificate of the member at `host` must carry."""
        return self.server_name or host

    def reload(self) -> None:
        """Reads the certificate, key and CA files again; on an error the old contexts stay
        and the error says why (a half-written file must not stop the member)."""
        if self.settings is None:
            raise ConfigurationError("these TLS contexts were not made from files")
        server, client = server_context(self.settings), peer_context(self.settings)
        self.server, self.client = server, client
        log.info("TLS certificates reloaded from %s", self.settings.cert)


default_client_tls: ContextVar[TlsContexts | None] = ContextVar("default_client_tls", default=None)
"""The TLS client tools use when given none (open_client without a transport or ssl_context,
fetch_status, admin_request): the `copycat-trio` client commands set it from --tls-* and
COPYCAT_TLS_*. None: plaintext."""


def describe_tls_error(exc: BaseException) -> str:
    """A short reason for a failed handshake, for one log line or a client's error."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError | OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"certificate rejected: {cause.verify_message or cause.reason}"
    if isinstance(cause, ssl.SSLError):
        reason = cause.reason or str(cause)
        hints = {
            "WRONG_VERSION_NUMBER": "not TLS (plaintext or another protocol)",
            "HTTP_REQUEST": "not TLS (an HTTP request)",
            "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no client certificate presented",
            "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server requires a client certificate",
            "SSLV3_ALERT_BAD_CERTIFICATE": "the other side rejected our certificate",
            "TLSV1_ALERT_UNKNOWN_CA": "the other side does not trust our certificate's CA",
            "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the other side says our certificate expired",
            "UNEXPECTED_EOF_WHILE_READING": (
                "the other side closed the connection during the handshake (it did not accept"
                " our certificate, or needs one and we sent none)"
            ),
        }
        return hints.get(reason, reason.lower().replace("_", " "))
    if cause is not None:
        return str(cause) or type(cause).__name__
    return str(exc) or type(exc).__name__

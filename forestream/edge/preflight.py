"""Before any Kafka work on a secured cluster: does TLS hold, and does the broker accept us?

The Kafka client treats a failed TLS handshake as a connection error and retries it forever
(logging each attempt), so an untrusted CA or a plaintext listener would look like a broker
that is away. One handshake of our own, built the way the client builds its context, tells
the cases apart in a second and names the setting to change. Credentials and ACLs are then
checked by one metadata round trip through a topic admin the caller builds (the client factory,
which calls this module: handing the admin in keeps the two out of an import circle).
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from forestream.errors import AuthenticationFailed, KafkaFatalError, TlsFailed, UserError

if TYPE_CHECKING:
    from forestream.edge.connection import KafkaConnection
    from forestream.edge.interface import TopicAdmin

OpenAdmin = Callable[["KafkaConnection", float], "TopicAdmin"]
"""Builds a topic admin on a connection, its calls bounded by the timeout given (seconds):
:func:`forestream.edge.factory.topic_admin`."""

_API_VERSIONS_V0 = struct.pack(">hhih", 18, 0, 1, 10) + b"forestream"
"""ApiVersions v0: any Kafka listener answers it before authentication; a refused client
certificate (TLS 1.3 reports it only after the handshake) shows on this first exchange."""


def tls_context(conn: KafkaConnection) -> ssl.SSLContext:
    """The context kafka-python builds from the same settings (see its KafkaSSLTransport);
    librdkafka is given the same files, so what this trusts, it trusts."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = conn.ssl_check_hostname
    try:
        if conn.ssl_cafile is not None:
            ctx.load_verify_locations(str(conn.ssl_cafile))
        else:
            ctx.load_default_certs()
    except (ssl.SSLError, OSError) as exc:
        raise UserError(
            f"FORESTREAM_SSL_CAFILE={conn.ssl_cafile} holds no usable CA certificate: {exc}"
        ) from None
    if conn.ssl_certfile is not None:
        password = conn.ssl_key_password.get_secret_value() if conn.ssl_key_password else None
        try:
            ctx.load_cert_chain(str(conn.ssl_certfile), str(conn.ssl_keyfile), password)
        except (ssl.SSLError, OSError) as exc:
            raise UserError(
                f"cannot use the client certificate FORESTREAM_SSL_CERTFILE={conn.ssl_certfile} "
                f"with FORESTREAM_SSL_KEYFILE={conn.ssl_keyfile} (wrong key, or a key password "
                f"missing or wrong: FORESTREAM_SSL_KEY_PASSWORD): {exc.__class__.__name__}"
            ) from None
    return ctx


def check_tls(conn: KafkaConnection, host: str, port: int, timeout_s: float) -> None:
    """One TLS handshake and one ApiVersions exchange with ``host:port``, or a TlsFailed."""
    ctx = tls_context(conn)
    where = f"{host}:{port}"
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(struct.pack(">i", len(_API_VERSIONS_V0)) + _API_VERSIONS_V0)
            if len(tls.recv(4)) < 4:
                raise TlsFailed(
                    f"Kafka at {where} closed the connection after the TLS handshake: "
                    "it may require a client certificate (FORESTREAM_SSL_CERTFILE/KEYFILE)"
                )
    except ssl.SSLCertVerificationError as exc:
        hint = (
            "the address is not in its certificate: connect by a name it lists, or set "
            "FORESTREAM_SSL_CHECK_HOSTNAME=false only if you must)"
            if "match" in str(exc.verify_message or "") or "IP address" in str(exc)
            else "set FORESTREAM_SSL_CAFILE to the CA that signed the broker's certificate)"
        )
        raise TlsFailed(
            f"the certificate of Kafka at {where} is not trusted: {exc.verify_message} ({hint}"
        ) from None
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if reason in (
            "WRONG_VERSION_NUMBER",
            "RECORD_LAYER_FAILURE",
            "UNEXPECTED_EOF_WHILE_READING",
        ):
            raise TlsFailed(
                f"Kafka at {where} does not speak TLS ({reason}): is it a PLAINTEXT or "
                "SASL_PLAINTEXT listener? check FORESTREAM_SECURITY_PROTOCOL"
            ) from None
        if "CERTIFICATE" in reason.upper() or "UNKNOWN_CA" in reason.upper():
            raise TlsFailed(
                f"Kafka at {where} refused our client certificate ({reason}): check "
                "FORESTREAM_SSL_CERTFILE/KEYFILE (signed by a CA the broker trusts?)"
            ) from None
        raise TlsFailed(f"TLS with Kafka at {where} failed: {reason}") from None
    except (ConnectionResetError, BrokenPipeError) as exc:
        raise TlsFailed(
            f"Kafka at {where} dropped the connection during TLS ({exc.__class__.__name__}): "
            "it may require a client certificate (FORESTREAM_SSL_CERTFILE/KEYFILE)"
        ) from None
    except TimeoutError:
        raise TlsFailed(
            f"no TLS answer from Kafka at {where} within {timeout_s:.0f}s: is it a TLS "
            "listener? check FORESTREAM_SECURITY_PROTOCOL"
        ) from None


def check_login(conn: KafkaConnection, timeout_s: float, open_admin: OpenAdmin) -> None:
    """One metadata round trip as our principal: a refused login ends here, in one line."""
    from forestream.errors import TransientKafkaError

    refused_login = AuthenticationFailed(
        f"Kafka at {conn.bootstrap} accepted the connection but not our login as "
        f"{conn.sasl_username!r} with {conn.sasl_mechanism}: check "
        "FORESTREAM_SASL_USERNAME, FORESTREAM_SASL_PASSWORD(_FILE) and "
        "FORESTREAM_SASL_MECHANISM"
    )
    try:
        admin = open_admin(conn, timeout_s)  # kafka-python connects here
    except UserError as exc:
        if conn.uses_sasl and not isinstance(exc, KafkaFatalError):
            # the client hides a refused login behind "no broker answered": TLS and TCP are
            # fine (checked before), so the login is what failed
            raise refused_login from None
        raise
    try:
        admin.brokers()  # librdkafka connects here; a refused login is its fatal error
    except TransientKafkaError:
        pass  # no answer in time: the command's own clients retry from here
    finally:
        admin.close()


def check_security(
    conn: KafkaConnection, host: str, port: int, timeout_s: float, open_admin: OpenAdmin
) -> None:
    """TLS first (a failed handshake would hide behind the login), then the login itself."""
    if conn.uses_tls:
        check_tls(conn, host, port, timeout_s)
    check_login(conn, timeout_s, open_admin)

"""TLS for the listeners of ``kvsim serve`` (``--tls-cert`` and ``--tls-key``) and for its clients.

With both files set, every listener (meta, admin and debug; gRPC and HTTP) serves TLS only: gRPC through
``grpc.ssl_server_credentials`` and HTTP through an :class:`ssl.SSLContext` (TLS 1.2 or newer). There is
no plaintext port next to a TLS one, so a misconfigured client fails loudly instead of sending the admin
token in clear text. The files are read once, at start: a missing file, a key that does not match the
certificate or a file that is not PEM stops the start with a :class:`~kvsim.core.ConfigError`.

Clients trust the server's certificate (or the CA that signed it) through ``root_certificates``:
:func:`client_ssl_context` for HTTP, :func:`grpc_channel_credentials` for gRPC.

:func:`make_self_signed_cert` writes a throw-away certificate for 127.0.0.1 and localhost (tests, the load
benchmark, trying TLS out); it uses the ``cryptography`` package when installed, else the ``openssl``
command, and raises :class:`TlsUnavailable` when neither exists.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

from kvsim.core import ConfigError

#: Host names and addresses the self-signed certificate is valid for.
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


class TlsUnavailable(RuntimeError):
    """Neither the ``cryptography`` package nor the ``openssl`` command can make a certificate."""


@dataclasses.dataclass(frozen=True, slots=True)
class ServerTls:
    """A server's certificate chain and private key (PEM bytes), checked to belong together."""

    cert_pem: bytes
    key_pem: bytes
    cert_path: Path
    key_path: Path

    def grpc_credentials(self) -> Any:
        """``grpc.ServerCredentials`` for ``add_secure_port`` (no client certificates are asked for)."""
        import grpc

        return grpc.ssl_server_credentials([(self.key_pem, self.cert_pem)])

    def ssl_context(self) -> ssl.SSLContext:
        """An ``ssl.SSLContext`` for aiohttp's listeners (TLS 1.2 or newer)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_path, self.key_path)
        return context


def load_server_tls(cert: str, key: str) -> ServerTls | None:
    """The TLS material of ``--tls-cert`` and ``--tls-key``, or None when both are empty.

    Raises:
        ConfigError: only one is given, a file cannot be read, or the pair is not a PEM certificate
            chain with its matching private key.
    """
    if not cert and not key:
        return None
    if not cert or not key:
        raise ConfigError("--tls-cert and --tls-key go together: give both files or neither")
    cert_path, key_path = Path(cert).expanduser(), Path(key).expanduser()
    try:
        cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"TLS: cannot read {exc.filename}: {exc.strerror or exc}") from None
    # Loading the pair into a context checks the PEM syntax and that the key matches the certificate,
    # so a bad pair fails here with a clear message rather than at the first handshake.
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_path, key_path)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            f"TLS: {cert_path} and {key_path} are not a certificate and its key: {exc}"
        ) from None
    return ServerTls(cert_pem, key_pem, cert_path, key_path)


def client_ssl_context(root_certificates: bytes | str | Path | None = None) -> ssl.SSLContext:
    """A client context that verifies the server against ``root_certificates`` (PEM bytes or a file),
    or against the system's trust store when None."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if root_certificates is not None:
        pem = _pem(root_certificates)
        context.load_verify_locations(cadata=pem.decode("ascii"))
    return context


def grpc_channel_credentials(root_certificates: bytes | str | Path | None = None) -> Any:
    """``grpc.ChannelCredentials`` that verify the server against ``root_certificates`` (PEM bytes or a
    file), or against gRPC's default roots when None."""
    import grpc

    return grpc.ssl_channel_credentials(None if root_certificates is None else _pem(root_certificates))


def _pem(value: bytes | str | Path) -> bytes:
    return value if isinstance(value, bytes) else Path(value).expanduser().read_bytes()


# ---------------------------------------------------------------------------------------------- self-signed


def make_self_signed_cert(directory: Path, days: int = 2) -> tuple[Path, Path]:
    """Write ``cert.pem`` and ``key.pem`` (an EC P-256 self-signed certificate for :data:`LOCAL_NAMES`)
    into ``directory`` and return their paths. The key file is readable by its owner only.

    Raises:
        TlsUnavailable: neither the ``cryptography`` package nor the ``openssl`` command is available.
    """
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    try:
        cert_pem, key_pem = _with_cryptography(days)
    except ImportError:
        _with_openssl(cert_path, key_path, days)
    else:
        key_path.touch(mode=0o600)
        key_path.write_bytes(key_pem)
        cert_path.write_bytes(cert_pem)
    return cert_path, key_path


def _with_cryptography(days: int) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in LOCAL_NAMES if a != "localhost"]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _with_openssl(cert_path: Path, key_path: Path, days: int) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TlsUnavailable("making a certificate needs the cryptography package or the openssl command")
    alt = ",".join(f"IP:{a}" if a != "localhost" else f"DNS:{a}" for a in LOCAL_NAMES)
    command = [
        openssl,
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(key_path),
        "-out",
        str(cert_path),
        "-days",
        str(days),
        "-subj",
        "/CN=localhost",
        "-addext",
        f"subjectAltName={alt}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise TlsUnavailable(f"openssl req failed ({result.returncode}): {result.stderr.strip()[-300:]}")

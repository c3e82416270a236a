"""HTTPS for the mock: a server context from a certificate file, or from a certificate made for
one run by a CA made for that run (with `trustme`, from the `mock` extra)."""

from __future__ import annotations

import ssl
from pathlib import Path

import attrs

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")
MISSING_TRUSTME = (
    "--tls makes its certificate with the trustme package, which is not installed: "
    "pip install 'llmstreams[mock]', or give your own --certfile/--keyfile"
)


class CertificateError(Exception):
    """The certificate could not be made or loaded; the message says why, in one line."""


@attrs.frozen(slots=True)
class CertificateFiles:
    """A server certificate chain with its key (`keyfile` None: in `certfile`), and the file
    of the CA a client must trust, when the CA was made here."""

    certfile: Path
    keyfile: Path | None = None
    ca_file: Path | None = None


def server_context(files: CertificateFiles) -> ssl.SSLContext:
    """A server-side TLS context serving `files`' certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(files.certfile, files.keyfile)
    except (OSError, ssl.SSLError) as error:
        raise CertificateError(
            f"cannot serve the certificate {files.certfile}"
            + ("" if files.keyfile is None else f" with the key {files.keyfile}")
            + f": {error}"
        ) from None
    return context


def make_certificate(directory: Path, host: str) -> CertificateFiles:
    """A CA made for this run, and a certificate it signed for `host` and the loopback names,
    written to `directory` (ca.pem, and server.pem holding the key and the chain)."""
    try:
        import trustme
    except ImportError:
        raise CertificateError(MISSING_TRUSTME) from None
    names = list(dict.fromkeys([*([] if host in _WILDCARD_HOSTS else [host]), *LOOPBACK_NAMES]))
    ca = trustme.CA(organization_name="llmstreams mock")
    issued = ca.issue_cert(*names)
    ca_file = directory / "ca.pem"
    certfile = directory / "server.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    certfile.touch(mode=0o600)
    issued.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    return CertificateFiles(certfile=certfile, ca_file=ca_file)

"""When and how the resident side channel is encrypted: TLS, pinned, as secure as the cluster.

The resident transport's tasks connect back to a socket on the driver, outside Spark's own
channels: requests (pickled task functions and centroids) go out on it and results come back. On a
cluster that authenticates or encrypts its traffic (``spark.authenticate``,
``spark.network.crypto.enabled``, ``spark.ssl.enabled``) that socket must not be the weak spot, so
there it is TLS, authenticated both ways:

- the driver makes a fresh key and self-signed certificate for each transport (``ServerTLS``,
  the ``cryptography`` package, on the driver only) and serves TLS with it;
- the SHA-256 fingerprint of that certificate travels in the task's closure, which Spark ships
  over its own secured channel; a task (``client_wrap``, standard library ``ssl`` only) checks the
  certificate it is shown against it before it sends or reads anything, so a man in the middle
  cannot send it code to run (no certificate authority is involved: the pin is the check);
- only then does the task prove itself with the run's token, inside TLS, so the token is never
  seen on the wire and a peer without it never gets past the driver's first read.

Where Spark's security is off the channel stays clear text, as Spark's own traffic is then: the
token still keeps strangers out, and results are never unpickled whatever the channel
(``kmeans_dist.codec``).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import secrets
import socket
import ssl
import tempfile

#: Spark settings under which Spark authenticates or encrypts its own traffic
SECURITY_SETTINGS = ("spark.authenticate", "spark.network.crypto.enabled", "spark.ssl.enabled")
#: how long the certificate says it is valid (nobody checks: the pinned fingerprint is the check)
CERT_DAYS = 365


class PeerNotTrusted(ConnectionError):
    """The server's certificate is not the one pinned in the task."""


def spark_security_on(conf) -> bool:
    """Whether Spark authenticates or encrypts its own traffic under ``conf`` (a SparkConf, or
    anything with ``get(key, default)``)."""
    return any(str(conf.get(key, "false")).strip().lower() == "true"
               for key in SECURITY_SETTINGS)


def fingerprint(der: bytes) -> str:
    """The SHA-256 of a DER certificate, in hex."""
    return hashlib.sha256(der).hexdigest()


class ServerTLS:
    """The driver's side: a server context on a fresh key and self-signed certificate, and the
    certificate's ``fingerprint`` for the tasks to pin."""

    def __init__(self) -> None:
        der, self.context = _server_context()
        self.fingerprint = fingerprint(der)

    def wrap(self, conn: socket.socket) -> ssl.SSLSocket:
        """TLS on an accepted connection (the handshake runs within ``conn``'s timeout)."""
        return self.context.wrap_socket(conn, server_side=True)


def client_wrap(sock: socket.socket, host: str, pinned: str) -> ssl.SSLSocket:
    """The task's side: TLS on ``sock``, connected to the driver at ``host``; PeerNotTrusted
    (and the socket closed) unless the server's certificate has the ``pinned`` fingerprint."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # no CA signs a per-fit certificate: the pin is the check
    tls = context.wrap_socket(sock, server_hostname=host)
    der = tls.getpeercert(binary_form=True)
    if der is None or not hmac.compare_digest(fingerprint(der), pinned):
        tls.close()
        raise PeerNotTrusted(f"the server at {host} showed a certificate other than the "
                             "driver's: not sending anything")
    return tls


def _server_context() -> tuple[bytes, ssl.SSLContext]:
    """A fresh P-256 key and a self-signed certificate for it; (the certificate's DER, a TLS
    server context holding both). The stdlib loads keys only from files: they are written to a
    private temporary directory, the key encrypted with a one-time password, and removed once
    loaded."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kmeans_dist resident transport")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .sign(key, hashes.SHA256()))
    password = secrets.token_bytes(32)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.num_tickets = 0  # tasks never resume a session
    with tempfile.TemporaryDirectory(prefix="kmeans_dist-tls-") as tmp:  # mode 0700
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        with open(cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(key_path, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(password)))
        context.load_cert_chain(cert_path, key_path, password=password)
    return cert.public_bytes(serialization.Encoding.DER), context

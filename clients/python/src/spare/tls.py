"""TLS to a peer off this machine, as the Rust SDK and the CLI speak it (sdk/src/tls.rs,
sdk/src/known_peers.rs): there is no certificate authority. A peer's certificate is self-signed
and its key *is* the peer's ed25519 identity key, so the PeerId is read from the certificate and
the handshake proves the other side holds that key. The client checks the PeerId given with the
address (``ADDR@PEERID``), else the one pinned for the address in ``known_peers`` in the client's
config directory (the file `spare` uses: one ``ADDR PEERID`` a line; the first PeerId met at an
address is pinned, and another one there later is refused).

grpcio's TLS (BoringSSL) neither takes a custom certificate check nor offers ed25519 signatures,
so it cannot complete a handshake with a peer at all. The client therefore speaks plaintext gRPC
to a `Tunnel` of its own on this machine's loopback, which carries each connection to the peer
over TLS 1.3 (Python's `ssl`, OpenSSL) and checks on every connection that the certificate
carries the expected PeerId.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import threading
from pathlib import Path
from typing import Optional, Tuple

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .errors import AddressError, ConnectError, SpareError
from .identity import config_dir

#: The file's name in the client's config directory.
KNOWN_PEERS_FILE = "known_peers"
#: Most lines of ``known_peers`` read (a file grown past it keeps its first ones).
MAX_LINES = 100_000
#: The name a peer's certificate carries (peers are checked by PeerId, never by name).
SERVER_NAME = "spare"
#: How long fetching a peer's certificate (connect and handshake) may take, in seconds.
CONNECT_TIMEOUT = 10.0
#: Length of a PeerId in hex.
PEER_ID_HEX_LEN = 64
#: Bytes a tunnel reads at once from either side.
TUNNEL_CHUNK_BYTES = 64 * 1024

_log = logging.getLogger(__name__)


class PeerIdentityError(SpareError):
    """The peer at the address is not the one expected: its TLS certificate carries another
    PeerId than the one given (``ADDR@PEERID``) or pinned in ``known_peers``."""

    def __init__(self, message: str, *, presented: bytes, expected: bytes):
        super().__init__(message)
        self.presented = presented
        self.expected = expected


def parse_target(addr: str) -> Tuple[str, Optional[bytes], bool]:
    """An address as given (``[http[s]://]host:port[@PEERID]``): its ``host:port``, the PeerId
    pinned by it, and whether ``https://`` asked for TLS."""
    trimmed = addr.strip()
    scheme, sep, rest = trimmed.partition("://")
    https = False
    if sep:
        if scheme.lower() not in ("http", "https"):
            raise AddressError(addr, f"unknown scheme {scheme}://; give host:port")
        https = scheme.lower() == "https"
    else:
        rest = trimmed
    rest = rest.rstrip("/")
    target, at, given = rest.rpartition("@")
    if not at:
        return rest, None, https
    try:
        if len(given) != PEER_ID_HEX_LEN:
            raise ValueError
        pinned = bytes.fromhex(given)
    except ValueError:
        raise AddressError(
            addr, f"{given!r} after '@' is not a PeerId (64 hex characters, as `spare peer` prints it)"
        ) from None
    return target, pinned, https


def split_host_port(target: str) -> Tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as (host without brackets, port)."""
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise AddressError(target, "give host:port")
    return host.strip("[]"), int(port)


def is_loopback_host(host: str) -> bool:
    """Whether `host` names this machine: the only place a peer takes plaintext."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def known_peers_path() -> Optional[Path]:
    """Where the known peers are kept (``None``: no config directory)."""
    d = config_dir()
    return None if d is None else d / KNOWN_PEERS_FILE


def lookup(target: str) -> Optional[bytes]:
    """The PeerId pinned for `target` (``host:port``), if any."""
    path = known_peers_path()
    if path is None:
        return None
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines()[:MAX_LINES]:
        a, sep, hexid = line.strip().partition(" ")
        if not sep or a != target:
            continue
        try:
            pinned = bytes.fromhex(hexid.strip())
        except ValueError:
            continue
        if len(pinned) == 32:
            return pinned
    return None


def remember(target: str, peer_id: bytes) -> None:
    """Pins `peer_id` for `target` (appends a line; the directory is made, mode 0700, if needed)."""
    path = known_peers_path()
    if path is None:
        raise SpareError("no config directory for known_peers: set XDG_CONFIG_HOME or HOME")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(f"{target} {peer_id.hex()}\n")
    except OSError as e:
        raise SpareError(f"{path}: {e}") from e


def peer_id_of(der: bytes) -> Optional[bytes]:
    """The PeerId a certificate carries: its ed25519 public key (``None``: not a peer's)."""
    try:
        key = x509.load_der_x509_certificate(der).public_key()
    except ValueError:
        return None
    if not isinstance(key, Ed25519PublicKey):
        return None
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # No authority vouches for a peer: its PeerId is checked instead.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["h2"])
    return ctx


def fetch_certificate(target: str, timeout: float = CONNECT_TIMEOUT) -> bytes:
    """The DER certificate the peer at `target` presents in a TLS 1.3 handshake (which also
    proves it holds the certificate's key)."""
    host, port = split_host_port(target)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with _context().wrap_socket(sock, server_hostname=SERVER_NAME) as tls:
                der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as e:
        raise ConnectError(target, f"TLS handshake failed: {e}") from e
    if not der:
        raise ConnectError(target, "TLS connected without a peer certificate")
    return der


def check_peer(target: str, pinned: Optional[bytes]) -> bytes:
    """The PeerId of the peer at `target`, checked against the one `pinned` (given as
    ``ADDR@PEERID``), else the one in ``known_peers``; when neither, the one met now is pinned
    there. Raises `PeerIdentityError` when the peer there presents another PeerId."""
    expected = pinned if pinned is not None else lookup(target)
    met = peer_id_of(fetch_certificate(target))
    if met is None:
        raise ConnectError(target, "the certificate's key is not an ed25519 PeerId (not a Spare peer)")
    if expected is not None and met != expected:
        path = known_peers_path()
        if pinned is not None or path is None:
            pinned_by = "the address given (ADDR@PEERID)"
        else:
            pinned_by = f"{path} (pinned when first met; if its identity really changed, remove that line)"
        raise PeerIdentityError(
            f"the peer at {target} presented PeerId {met.hex()}, but {pinned_by} expects {expected.hex()}",
            presented=met,
            expected=expected,
        )
    if expected is None:
        remember(target, met)
    return met


class Tunnel:
    """A loopback port whose every connection is carried to the peer at `target` over TLS 1.3,
    once its certificate is found to carry `peer_id` (otherwise the connection is closed, and
    gRPC reports the peer unavailable). Runs an asyncio loop on a daemon thread until `close`."""

    def __init__(self, target: str, peer_id: bytes) -> None:
        self.target = target
        self.peer_id = peer_id
        self._host, self._port = split_host_port(target)
        self._ctx = _context()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"spare-tls {target}", daemon=True)
        self._thread.start()
        self._server: Optional[asyncio.AbstractServer] = None
        started = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        #: The loopback ``host:port`` to give gRPC.
        self.local = f"127.0.0.1:{started.result(CONNECT_TIMEOUT)}"

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._carry, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def _carry(self, local_r: asyncio.StreamReader, local_w: asyncio.StreamWriter) -> None:
        try:
            peer_r, peer_w = await asyncio.wait_for(
                asyncio.open_connection(self._host, self._port, ssl=self._ctx, server_hostname=SERVER_NAME),
                CONNECT_TIMEOUT,
            )
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as e:
            _log.warning("cannot connect to the peer at %s over TLS: %s", self.target, e)
            local_w.close()
            return
        tls = peer_w.get_extra_info("ssl_object")
        met = peer_id_of(tls.getpeercert(binary_form=True) or b"") if tls is not None else None
        if met != self.peer_id:
            _log.error(
                "the peer at %s presented PeerId %s, not the expected %s: connection refused",
                self.target, met.hex() if met else "none", self.peer_id.hex(),
            )
            peer_w.close()
            local_w.close()
            return
        await asyncio.gather(_pipe(local_r, peer_w), _pipe(peer_r, local_w), return_exceptions=True)

    def close(self) -> None:
        """Stops listening and ends every connection carried."""
        if not self._thread.is_alive():
            return

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            carried = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in carried:
                t.cancel()
            await asyncio.gather(*carried, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(CONNECT_TIMEOUT)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CONNECT_TIMEOUT)
            if not self._thread.is_alive():
                self._loop.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copies `reader` to `writer` until either side ends, then closes `writer` (which ends the
    other direction too: a carried connection lives and dies as one)."""
    try:
        while True:
            data = await reader.read(TUNNEL_CHUNK_BYTES)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (OSError, ssl.SSLError, asyncio.CancelledError):
        pass
    finally:
        writer.close()

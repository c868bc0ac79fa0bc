"""The client's key, and how Submit and Cancel are signed with it (the layout documented on
`ClientSignature` in proto/spare/v1/common.proto, the same as the Rust SDK's): a job records the
key that signed its Submit as its owner, and only that key may cancel it."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional, Union

import blake3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PrivateFormat, PublicFormat, NoEncryption

from .errors import SpareError
from .v1 import common_pb2

#: The key file's name in the client's config directory.
CLIENT_KEY_FILE = "client.key"
#: Names another key file.
IDENTITY_ENV = "SPARE_IDENTITY"
#: Random bytes of every signature's nonce.
NONCE_BYTES = 16

_TAG = b"spare.v1.client\0"


class IdentityError(SpareError):
    """The client key could not be read or made."""


def config_dir() -> Optional[Path]:
    """``$XDG_CONFIG_HOME/spare``, else ``$HOME/.config/spare`` (as `spare` itself uses)."""
    base = os.environ.get("XDG_CONFIG_HOME") or None
    if base is None:
        home = os.environ.get("HOME") or None
        if home is None:
            return None
        return Path(home) / ".config" / "spare"
    return Path(base) / "spare"


def default_path() -> Path:
    """``$SPARE_IDENTITY``, else ``client.key`` in `config_dir`."""
    given = os.environ.get(IDENTITY_ENV)
    if given:
        return Path(given)
    d = config_dir()
    if d is None:
        raise IdentityError(f"no place for the client key: set {IDENTITY_ENV}, XDG_CONFIG_HOME or HOME")
    return d / CLIENT_KEY_FILE


class ClientIdentity:
    """An ed25519 key kept as its 32 raw secret bytes (the file `spare whoami` reads)."""

    def __init__(self, key: Ed25519PrivateKey, path: Optional[Path] = None) -> None:
        self._key = key
        self.path = path

    @classmethod
    def generate(cls) -> "ClientIdentity":
        """A fresh key kept nowhere."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_default(cls) -> "ClientIdentity":
        """The key at `default_path`, made there on first use."""
        return cls.load_or_create(default_path())

    @classmethod
    def load_or_create(cls, path: Union[str, "os.PathLike[str]"]) -> "ClientIdentity":
        """The key in `path`, made there (mode 0600, directories 0700) when it does not exist."""
        path = Path(path)
        try:
            secret = path.read_bytes()
        except FileNotFoundError:
            fresh = Ed25519PrivateKey.generate()
            raw = fresh.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            try:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return cls.load_or_create(path)  # another process made it first
            except OSError as e:
                raise IdentityError(f"creating the client key {path}: {e}") from None
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            return cls(fresh, path)
        except OSError as e:
            raise IdentityError(f"reading the client key {path}: {e}") from None
        if len(secret) != 32:
            raise IdentityError(f"the client key {path} holds {len(secret)} bytes, expected 32")
        return cls(Ed25519PrivateKey.from_private_bytes(secret), path)

    @property
    def public_key(self) -> bytes:
        """The 32-byte public key: a job's owner, as statuses show it in hex."""
        return self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def public_hex(self) -> str:
        return self.public_key.hex()

    def sign(self, method: str, body: bytes, receiver: bytes) -> "common_pb2.ClientSignature":
        """A signature of `method` ("Submit" or "Cancel") with body digest `body`, for the peer
        whose id is `receiver` (32 bytes), now."""
        nonce = os.urandom(NONCE_BYTES)
        timestamp_ms = int(time.time() * 1000)
        signed = signing_bytes(method, body, timestamp_ms, nonce, receiver)
        return common_pb2.ClientSignature(
            key=self.public_key, timestamp_ms=timestamp_ms, nonce=nonce, signature=self._key.sign(signed)
        )

    def sign_submit(self, request, receiver: bytes) -> None:
        """Fills a SubmitRequest's `auth` for the peer `receiver`."""
        request.ClearField("auth")
        request.auth.CopyFrom(self.sign("Submit", submit_body(request), receiver))

    def sign_cancel(self, request, receiver: bytes) -> None:
        """Fills a CancelRequest's `auth` for the peer `receiver`."""
        request.ClearField("auth")
        request.auth.CopyFrom(self.sign("Cancel", cancel_body(request), receiver))


def signing_bytes(method: str, body: bytes, timestamp_ms: int, nonce: bytes, receiver: bytes) -> bytes:
    """The bytes a client's signature covers."""
    return _TAG + method.encode("ascii") + b"\0" + body + timestamp_ms.to_bytes(8, "little") + nonce + receiver


def submit_body(request) -> bytes:
    """BLAKE3 of the SubmitRequest without its `auth`."""
    unsigned = type(request)()
    unsigned.CopyFrom(request)
    unsigned.ClearField("auth")
    return blake3.blake3(unsigned.SerializeToString(deterministic=True)).digest()


def cancel_body(request) -> bytes:
    """BLAKE3 of the CancelRequest without its `auth` and `forwarded`."""
    unsigned = type(request)(job_id=request.job_id)
    return blake3.blake3(unsigned.SerializeToString(deterministic=True)).digest()

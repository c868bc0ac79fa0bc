"""The client over TLS to a peer off this machine, for real: a `spare peer` in a network namespace
of this test's own, listening on a non-loopback address (10.89.N.2, reached through a veth pair
whose other end, 10.89.N.1, is this namespace's), so the peer takes no plaintext from the client.
The client pins the peer on first use in `known_peers` (the file `spare` uses), checks a PeerId
given as ``ADDR@PEERID``, and refuses another peer at a pinned address with a message naming both
PeerIds and the file. Needs root (as scripts/test runs); installs iproute2 with apt when missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator, List

import grpc
import pytest

import spare
from spare.v1 import peer_pb2, peer_pb2_grpc

from conftest import Peer

#: The port the namespaced peers listen on.
PORT = 7070


def must(*cmd: str) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, f"`{' '.join(cmd)}` failed: {out.stderr.strip()}"


def ensure_ip() -> None:
    if shutil.which("ip"):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(["apt-get", "install", "-y", "-q", "iproute2"], capture_output=True, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        must("apt-get", "install", "-y", "-q", "iproute2")


class Namespace:
    """A network namespace joined to this one by a veth pair; deleted (with the pair) on close."""

    def __init__(self) -> None:
        assert os.geteuid() == 0, "this test makes a network namespace: run it as root (scripts/test does)"
        ensure_ip()
        tag = os.getpid()
        self.name = f"sppy{tag}"
        net = f"10.89.{tag % 250}"
        self.host_addr, self.addr = f"{net}.1", f"{net}.2"
        must("ip", "netns", "add", self.name)
        try:
            must("ip", "-n", self.name, "link", "set", "lo", "up")
            must("ip", "link", "add", f"{self.name}h", "type", "veth", "peer", "name", "eth0", "netns", self.name)
            must("ip", "addr", "add", f"{self.host_addr}/30", "dev", f"{self.name}h")
            must("ip", "link", "set", f"{self.name}h", "up")
            must("ip", "-n", self.name, "addr", "add", f"{self.addr}/30", "dev", "eth0")
            must("ip", "-n", self.name, "link", "set", "eth0", "up")
        except AssertionError:
            self.close()
            raise

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


@pytest.fixture(scope="module")
def remote(tmp_path_factory) -> Iterator[List[Peer]]:
    """Two peers in the namespace, one after the other at the same address: the second stands
    for a peer whose identity changed (or an impostor)."""
    ns = Namespace()
    base = tmp_path_factory.mktemp("remote")
    wrap = ["ip", "netns", "exec", ns.name]
    peers: List[Peer] = []
    try:
        peers.append(Peer(base / "first", listen=f"{ns.addr}:{PORT}", wrap=wrap))
        yield peers, lambda: peers.append(Peer(base / "second", listen=f"{ns.addr}:{PORT}", wrap=wrap))
    finally:
        for p in peers:
            p.stop()
        ns.close()


@pytest.fixture
def config(tmp_path, monkeypatch) -> Path:
    """A config directory of the test's own, for `known_peers`."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    return tmp_path / "spare"


def test_off_this_machine_the_client_speaks_tls_and_pins_the_peer(remote, config, primes):
    peers, restart = remote
    first = peers[0]
    # Plaintext from a non-loopback address is refused by the peer.
    with grpc.insecure_channel(first.addr) as ch:
        with pytest.raises(grpc.RpcError):
            peer_pb2_grpc.PeerServiceStub(ch).Info(peer_pb2.InfoRequest(), timeout=10)

    identity = spare.ClientIdentity.generate()
    with spare.Client(first.addr, identity=identity) as c:
        assert c.info().peer_id == first.peer_id
        # A signed call names the peer the handshake proved; the job runs there.
        job = c.submit(primes, ["0 100\n"], quorum=1, diversity="off")
        assert c.wait(job, timeout=60).state == spare.JobState.COMPLETED
        assert [r.is_verified for r in c.results(job)] == [True]
    known = (config / "known_peers").read_text()
    assert known == f"{first.addr} {first.peer_id}\n", "pinned on first use, in the file `spare` uses"
    with spare.Client(first.addr) as c:
        assert c.info().peer_id == first.peer_id, "the same peer again"

    # Another peer at the pinned address is refused, naming both PeerIds and the file.
    first.stop()
    restart()
    second = peers[1]
    assert second.peer_id != first.peer_id
    with pytest.raises(spare.PeerIdentityError) as e:
        spare.Client(second.addr)
    said = str(e.value)
    assert second.peer_id in said and first.peer_id in said and str(config / "known_peers") in said, said
    assert "presented PeerId" in said and "remove that line" in said, said
    # Given with its PeerId, it is taken (and a wrong one given is refused).
    with spare.Client(f"{second.addr}@{second.peer_id}") as c:
        assert c.info().peer_id == second.peer_id
    with pytest.raises(spare.PeerIdentityError, match="the address given"):
        spare.Client(f"{second.addr}@{first.peer_id}")
    assert (config / "known_peers").read_text() == known, "a refusal pins nothing"

"""Real `spare peer` processes for the client's tests: a mesh of three on loopback, started once
for the session. The binary is $SPARE_BIN (scripts/test sets it to the one it built), else
target/debug/spare of this checkout, built with cargo if it is missing."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, List, Sequence, TypeVar

import pytest

import spare

ROOT = Path(__file__).resolve().parents[3]
#: How long any one condition may take before a test fails.
DEADLINE = 60.0
T = TypeVar("T")


def eventually(what: str, check: Callable[[], T], deadline: float = DEADLINE) -> T:
    """Polls `check` until it returns something truthy, failing after `deadline` seconds."""
    end = time.monotonic() + deadline
    last = None
    while time.monotonic() < end:
        try:
            got = check()
            if got:
                return got
        except spare.SpareError as e:
            last = e
        time.sleep(0.1)
    pytest.fail(f"{what}: not true after {deadline:.0f} s (last error: {last})")


def spare_bin() -> str:
    given = os.environ.get("SPARE_BIN")
    if given:
        return given
    path = ROOT / "target" / "debug" / "spare"
    if not path.exists():
        subprocess.run(["cargo", "build", "--bin", "spare"], cwd=ROOT, check=True)
    return str(path)


class Peer:
    """A running `spare peer`, by default on a free loopback port; its log goes to a file beside
    its data."""

    def __init__(self, data: Path, bootstrap: str = "", listen: str = "127.0.0.1:0", wrap: Sequence[str] = ()):
        """`wrap`: a command the peer runs under (`ip netns exec NS`), which execs it."""
        self.log = data.with_suffix(".log")
        cmd = [*wrap, spare_bin(), "peer", "--listen", listen, "--cpus", "1", "--data-dir", str(data)]
        if bootstrap:
            cmd += ["--bootstrap", bootstrap]
        env = dict(os.environ, SPARE_LOG="warn,spare_peer=info", NO_COLOR="1")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env)
        # The first stdout line says `spare peer ID listening on ADDR (…)`; read it on a thread
        # so a peer that never prints fails the test instead of hanging it.
        first: List[bytes] = []

        def read() -> None:
            first.append(self.proc.stdout.readline())
            # Keep reading, so the peer never blocks on a full pipe.
            for _ in self.proc.stdout:
                pass

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        end = time.monotonic() + DEADLINE
        while not first and reader.is_alive() and time.monotonic() < end:
            time.sleep(0.05)
        line = first[0].decode() if first else ""
        words = line.split()
        if len(words) < 6 or words[:2] != ["spare", "peer"] or words[3:5] != ["listening", "on"]:
            self.stop()
            pytest.fail(f"spare peer did not say where it listens: {line!r}\n{self.log.read_text()[-2000:]}")
        self.peer_id, self.addr = words[2], words[5]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def mesh(tmp_path_factory) -> List[Peer]:
    """Three peers that know each other."""
    base = tmp_path_factory.mktemp("mesh")
    peers = [Peer(base / "peer-0")]
    try:
        for i in (1, 2):
            peers.append(Peer(base / f"peer-{i}", bootstrap=peers[0].addr))
        for p in peers:
            with spare.Client(p.addr) as c:
                eventually(
                    f"peer {p.addr} sees three alive peers",
                    lambda: sum(1 for q in c.peers() if q.state == "alive") >= 3,
                )
        yield peers
    finally:
        for p in peers:
            p.stop()


@pytest.fixture
def client(mesh) -> spare.Client:
    # A key of its own, so the tests touch no ~/.config.
    with spare.Client(mesh[0].addr, identity=spare.ClientIdentity.generate()) as c:
        yield c


@pytest.fixture(scope="session")
def primes() -> Path:
    return ROOT / "examples" / "wasm" / "primes.wasm"

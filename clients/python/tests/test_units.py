"""The client's pure parts, checked against what the Rust SDK says and computes."""

import blake3

import spare
from spare.ids import job_id
from spare.plan import BLOB, INLINE, plan_inputs
from spare.types import JobState, JobStatus, TaskCounts, TaskState, TaskStatus


def test_blob_ids_are_hex_blake3():
    # BLAKE3 of the empty input, from the BLAKE3 specification's test vectors.
    assert spare.blob_id(b"") == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    assert spare.blob_id(b"spare") == blake3.blake3(b"spare").hexdigest()


def test_job_ids_are_64_hex_characters():
    hex_id = "0123456789abcdef" * 4
    assert job_id(f"  {hex_id.upper()}\n") == hex_id
    for bad in ["", "abc", "a" * 63, "a" * 65, "g" * 64]:
        try:
            job_id(bad)
        except spare.InvalidId as e:
            assert "64 hex characters" in str(e)
        else:
            raise AssertionError(f"{bad!r} was taken as a job id")


def test_failures_read_as_the_rust_sdk_says_them():
    # sdk/src/failures.rs's doc test, word for word.
    f = spare.Failures()
    for i in (3, 8, 9):
        f.add(spare.Reason("exited 2", "bad input"), i)
    f.add(spare.Reason("trapped"), 5)
    assert f.lines(10) == ["3 tasks exited 2: `bad input` (tasks 3, 8, 9)", "1 task trapped (task 5)"]
    g = spare.Failures()
    for i in range(40):
        g.add(spare.Reason("exited 1", "a"), i)
    g.add(spare.Reason("exited 1", "b"), 99)
    g.add(spare.Reason("exited 1", "c"), 100)
    assert g.total() == 42
    assert g.lines(1) == ["40 tasks exited 1: `a` (tasks 0, 1, 2, 3, 4, …)", "2 more tasks failed for 2 other reasons"]


def test_a_reason_prefers_the_guests_words():
    tail = 'thread \'main\' panicked at src/main.rs:3:5:\nbad input: "x y"\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n'
    assert spare.stderr_line(tail) == 'bad input: "x y"'
    t = TaskStatus(index=0, state=TaskState.FAILED, outcome=spare.Outcome(spare.OutcomeKind.EXITED, 2), stderr_line="bad input", error="exit 2")
    assert str(t.reason()) == "exited 2: `bad input`"
    t = TaskStatus(index=0, state=TaskState.FAILED, outcome=spare.Outcome(spare.OutcomeKind.EXITED, 2), stderr_line="LO is not a number: `x`")
    assert str(t.reason()) == "exited 2: LO is not a number: `x`"
    t = TaskStatus(index=0, state=TaskState.INCONCLUSIVE, error="3 replicas gave no 2 agreeing results")
    assert str(t.reason()) == "ended inconclusive: `3 replicas gave no 2 agreeing results`"
    r = spare.TaskResult(index=1, state=TaskState.FAILED, outcome=spare.Outcome(spare.OutcomeKind.TRAPPED), message="wasm trap: unreachable")
    assert str(r.reason()) == "trapped: `wasm trap: unreachable`"
    assert spare.TaskResult(index=2, state=TaskState.VERIFIED).reason() is None


def test_a_task_in_the_snapshot_and_an_event_counts_once():
    # The snapshot counted tasks 0..26; events then come for 0..100. Adding events to the
    # snapshot's count (the old logic) says 126/100.
    status = JobStatus(job_id="", state=JobState.RUNNING, counts=TaskCounts(total=100, verified=26))
    c = spare.ProgressCounter()
    c.update(status)
    tasks = [TaskStatus(index=i, state=TaskState.VERIFIED if i < 26 else TaskState.PENDING) for i in range(100)]
    c.count_final(JobStatus(job_id="", state=JobState.RUNNING, counts=status.counts, tasks=tasks))
    for i in range(100):
        c.task_done(i)
        assert c.progress().done <= 100
    assert c.progress() == spare.Progress(100, 100)
    assert not c.task_done(42)


def test_large_inputs_go_as_blobs():
    kib = 1024
    assert plan_inputs([10, 64 * kib, 64 * kib + 1], 100) == [INLINE, INLINE, BLOB]
    # Over the budget, the largest inline inputs move to blobs first.
    assert plan_inputs([60 * kib, 10, 50 * kib], 0, budget=70 * kib) == [BLOB, INLINE, INLINE]
    try:
        plan_inputs([10] * 1000, 0, budget=100)
    except spare.JobTooLarge as e:
        assert "1000 tasks" in str(e)
    else:
        raise AssertionError("a job over the budget was planned")


def test_a_signature_covers_the_documented_layout():
    from spare.identity import signing_bytes
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    body, nonce, receiver = b"\x01" * 32, b"\x02" * 16, b"\x03" * 32
    signed = signing_bytes("Cancel", body, 0x0102030405060708, nonce, receiver)
    assert signed == b"spare.v1.client\0Cancel\0" + body + bytes([8, 7, 6, 5, 4, 3, 2, 1]) + nonce + receiver
    me = spare.ClientIdentity.generate()
    sig = me.sign("Cancel", body, receiver)
    assert (sig.key, len(sig.nonce), len(sig.signature)) == (me.public_key, 16, 64)
    Ed25519PublicKey.from_public_bytes(sig.key).verify(
        sig.signature, signing_bytes("Cancel", body, sig.timestamp_ms, sig.nonce, receiver)
    )


def test_a_client_key_is_made_once_and_kept_private(tmp_path):
    path = tmp_path / "dir" / "client.key"
    first = spare.ClientIdentity.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600 and len(path.read_bytes()) == 32
    assert spare.ClientIdentity.load_or_create(path).public_hex == first.public_hex


def test_addresses_parse_as_the_rust_sdk_parses_them():
    from spare.tls import is_loopback_host, parse_target

    pid = "ab" * 32
    assert parse_target("127.0.0.1:7070") == ("127.0.0.1:7070", None, False)
    assert parse_target(f" https://10.0.0.1:7070@{pid} ") == ("10.0.0.1:7070", bytes.fromhex(pid), True)
    assert parse_target(f"[2001:db8::1]:7070@{pid}") == ("[2001:db8::1]:7070", bytes.fromhex(pid), False)
    assert parse_target("http://example.org:7070/") == ("example.org:7070", None, False)
    for host in ["127.0.0.1", "localhost", "[::1]", "127.3.2.1"]:
        assert is_loopback_host(host), host
    for host in ["10.0.0.1", "example.org", "[2001:db8::1]"]:
        assert not is_loopback_host(host), host


def test_known_peers_keeps_the_first_peer_id_of_an_address(tmp_path, monkeypatch):
    from spare import tls

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    a, b = b"\x01" * 32, b"\x02" * 32
    assert tls.lookup("10.0.0.1:7070") is None
    tls.remember("10.0.0.1:7070", a)
    tls.remember("10.0.0.2:7070", b)
    assert tls.lookup("10.0.0.1:7070") == a and tls.lookup("10.0.0.2:7070") == b
    assert (tmp_path / "spare" / "known_peers").read_text() == f"10.0.0.1:7070 {a.hex()}\n10.0.0.2:7070 {b.hex()}\n"
    assert (tmp_path / "spare").stat().st_mode & 0o777 == 0o700

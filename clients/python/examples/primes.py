"""Counts the primes below ten million in 10 tasks on the peers at 127.0.0.1:7070 (run from the repository root)."""
from spare import Client

with Client("127.0.0.1:7070") as client:
    job = client.submit("examples/wasm/primes.wasm", [f"{i * 10**6} {(i + 1) * 10**6}\n" for i in range(10)], quorum=2)
    final = client.wait(job)
    print(f"job {job[:12]} {final.state.value}", *final.failures().lines(), sep="\n")
    results = list(client.results(job))
    print(sum(int(r.output_text) for r in results if r.is_verified), "primes,",
          sum(r.is_verified for r in results), "tasks verified by", {p[:8] for r in results for p in r.verified_by})

#!/usr/bin/env python3
"""Before/after: Reveal of two vault-server builds, interleaved in one run, with bare tonic as
the reference. For refactors that must not cost throughput.

    bench/ab.sh BASE_COMMIT   (builds both, then runs this)
    python3 bench/ab.py BASELINE_BIN_DIR

Both servers serve copies of one data dir (1,000 bindings), at 160 in flight (16x10),
3 repetitions; every run is validated as in run.py. Prints a small table; writes nothing.
"""
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("bench_run", os.path.join(HERE, "run.py"))
run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: ab.py BASELINE_BIN_DIR")
    baseline = sys.argv[1]
    with tempfile.TemporaryDirectory(prefix="vault-ab") as tmp:
        data, pf, client, _, _ = run.prepare_vault(tmp, 1000)
        copy = data + "-baseline"
        shutil.copytree(data, copy)
        after, port_a, mport_a, _ = run.start_vault(data, pf, os.path.join(tmp, "after.log"))
        current = run.BIN
        run.BIN = baseline
        before, port_b, mport_b, _ = run.start_vault(copy, pf, os.path.join(tmp, "before.log"))
        run.BIN = current
        bare_port = run.free_port()
        bare = subprocess.Popen([os.path.join(current, "bare"), f"127.0.0.1:{bare_port}"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        run.wait_port(bare_port, bare, "bare")
        body = run.reveal_body(tmp)
        headers = run.GRPC + [f"authorization: Bearer {client}"]
        reveal_ok = 'vault_rpc_requests_total{method="Reveal",code="OK"}'
        systems = [
            run.System("before", f"http://127.0.0.1:{port_b}/vault.v1.AuthCodeVault/Reveal", body, headers, False,
                       before, lambda: run.metric(mport_b, reveal_ok)),
            run.System("after", f"http://127.0.0.1:{port_a}/vault.v1.AuthCodeVault/Reveal", body, headers, False,
                       after, lambda: run.metric(mport_a, reveal_ok)),
            run.System("bare", f"http://127.0.0.1:{bare_port}/vault.v1.AuthCodeVault/Reveal", body, headers, False,
                       bare, None),
        ]
        for s in systems:
            s.calibrate()
        results = {s.name: [] for s in systems}
        for rep in range(3):
            for s in systems:
                results[s.name].append(s.run(16, 10, tmp))
                print(f"rep {rep + 1} {s.name:<7} {results[s.name][-1]['rate']:>10,.0f} req/s", flush=True)
        for p in (before, after, bare):
            run.stop(p)
    med = {k: statistics.median(r["rate"] for r in v) for k, v in results.items()}
    cpu = {k: statistics.median(r["cpu_us"] for r in v) for k, v in results.items()}
    p99 = {k: statistics.median(r["p99_ms"] for r in v) for k, v in results.items()}
    print("\n| build | req/s | vs bare | p99 ms | server CPU µs/req |\n|---|---|---|---|---|")
    for k in ("before", "after", "bare"):
        print(f"| {k} | {med[k]:,.0f} | {med[k] / med['bare']:.2f}x | {p99[k]:.2f} | {cpu[k]:.1f} |")
    print(f"\nafter/before: {med['after'] / med['before']:.2f}x")


if __name__ == "__main__":
    main()

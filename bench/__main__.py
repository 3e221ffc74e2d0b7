"""Every bench in turn, each in its own process, each appending its row to bench/RESULTS.md.

Each bench runs as `python -m bench --run <name> <args>`: the bench module run
as __main__, with bench.common.bench_config wrapped to remember the configs it
made, so that the host queue, event queues and exchange of each are deleted at
the end even when a bench fails before its own clean-up.
Run: .venv/bin/python -m bench            (modest sizes; about five minutes here)
     .venv/bin/python -m bench --quick    (a smoke run of each, nothing recorded)
     .venv/bin/python -m bench --only parallel,fleet
"""

from __future__ import annotations

import argparse
import runpy
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: bench module -> arguments of the full run (sized so all of them take under ~10 minutes).
FULL: dict[str, list[str]] = {
    "throughput": ["--casts", "2000", "--rounds", "3"],
    "latency": [],
    "parallel": [],
    "build": [],
    "cache": [],
    "snapshot": [],
    "volumes": [],
    "footprint": [],
    "fleet": [],
    "journal": [],
    "migration": [],
}
#: bench module -> arguments of the --quick smoke run.
QUICK: dict[str, list[str]] = {
    "throughput": ["--casts", "300", "--rounds", "1", "--instances", "10"],
    "latency": ["--casts", "200", "--rate", "100", "--calls", "50"],
    "parallel": ["--instances", "2", "--rounds", "1", "--order-casts", "4"],
    "build": ["--rounds", "1"],
    "cache": ["--rounds", "1", "--image-mib", "64", "--data-mib", "32"],
    "snapshot": ["--rounds", "1", "--base-mib", "32", "--overlay-mib", "8"],
    "volumes": ["--rounds", "1", "--kinds", "file"],
    "footprint": ["--domains", "100", "--idle-seconds", "2"],
    "fleet": ["--sizes", "1,5", "--casts", "300", "--latency-casts", "100", "--fanouts", "2",
              "--idle-seconds", "1"],
    "journal": ["--entries", "5000"],
    "migration": ["--rounds", "1"],
}


def run_one(name: str, args: list[str]) -> int:
    """Run bench.<name> as __main__ with args, then delete the broker names its configs used."""
    from bench import common
    from worker.config import Config

    made: list[Config] = []
    original = common.bench_config

    def recording(tmp: str, **overrides: Any) -> Config:
        cfg = original(tmp, **overrides)
        made.append(cfg)
        return cfg

    common.bench_config = recording
    sys.argv = [f"bench.{name}", *args]
    code: Any = 0
    try:
        runpy.run_module(f"bench.{name}", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
    finally:
        common.bench_config = original
        from tests.brokers import delete_names, notification_names, service_names

        if made:
            queues = {q for cfg in made for q in service_names(cfg, []) + notification_names(cfg)}
            exchanges = {cfg.control_exchange for cfg in made}
            failed = delete_names(made[0].transport_url, sorted(queues), sorted(exchanges))
            print(f"   (cleanup: {len(queues) - failed} queues, {len(exchanges)} exchanges of "
                  f"{len(made)} configs deleted{f', {failed} failed' if failed else ''})",
                  flush=True)
    return code if isinstance(code, int) else (0 if code is None else 1)


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--run":
        return run_one(sys.argv[2], sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, nothing appended to RESULTS.md")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--only", default="", help="comma-separated subset, e.g. parallel,fleet")
    ns = parser.parse_args()
    plan = QUICK if ns.quick else FULL
    names = [n.strip() for n in ns.only.split(",") if n.strip()] or list(plan)
    unknown = [n for n in names if n not in plan]
    if unknown:
        parser.error(f"unknown bench(es): {', '.join(unknown)}; known: {', '.join(plan)}")
    outcomes: list[tuple[str, int, float]] = []
    began = time.perf_counter()
    for name in names:
        argv = [sys.executable, "-m", "bench", "--run", name, *plan[name]]
        if ns.quick or ns.no_record:
            argv.append("--no-record")
        print(f"\n== bench.{name} {' '.join(argv[5:])}", flush=True)
        started = time.perf_counter()
        try:
            code = subprocess.run(argv, cwd=ROOT, check=False).returncode
        except KeyboardInterrupt:
            print(f"-- bench.{name} interrupted", flush=True)
            return 130
        outcomes.append((name, code, time.perf_counter() - started))
        print(f"-- bench.{name}: {'ok' if code == 0 else f'FAILED (exit {code})'} in "
              f"{outcomes[-1][2]:.0f}s", flush=True)
    print(f"\n== {len(outcomes)} benches in {time.perf_counter() - began:.0f}s"
          f"{' (quick, not recorded)' if ns.quick else ''}")
    for name, code, seconds in outcomes:
        print(f"   {name:<11} {'ok' if code == 0 else f'FAILED (exit {code})':<16} {seconds:5.0f}s")
    return 0 if all(code == 0 for _, code, _ in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Schedules per second of the simulator on one core, per workload and fault mix.

Run it as a script (it is a benchmark, not a test)::

    .venv/bin/python tests/abe_redis_testing/simulation/speed.py [--seeds 40] [--repeat 3] \
        [--server fakeredis]

It runs the seeds one after another in this process and prints, per mix, schedules/s by CPU
time (what one core manages, whatever else the machine runs) and by wall time, with the
commands and event-loop iterations a schedule costs.
"""

from __future__ import annotations

import argparse
import time

from abe_redis_testing.simulation import FAULT_KINDS, run_seed
from abe_redis_testing.simulation._runner import SERVERS

MIXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("default", FAULT_KINDS),
    ("default", ()),
    ("fast", FAULT_KINDS),
    ("fast", ()),
)


def measure(
    workload: str, faults: tuple[str, ...], seeds: int, messages: int, repeat: int, server: str
) -> str:
    run_seed(
        10_000, workload=workload, faults=faults, messages=messages, server=server
    )  # imports, first-run setup
    best_cpu = best_wall = float("inf")
    for _ in range(repeat):
        cpu, wall = time.process_time(), time.perf_counter()
        commands = iterations = 0
        for seed in range(seeds):
            result = run_seed(seed, workload=workload, faults=faults, messages=messages, server=server)
            commands += result.stats["commands"]
            iterations += result.stats["loop_iterations"]
        # The best of the repeats: on a shared machine the others measure the neighbours too.
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    cpu, wall = best_cpu, best_wall
    spec = "all" if faults else "none"
    return (
        f"{workload:>8} --faults {spec:<4}  {seeds / cpu:6.1f} schedules/s (CPU)  {seeds / wall:6.1f} (wall)"
        f"  {commands // seeds:5d} commands  {iterations // seeds:6d} loop iterations per schedule"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=1, help="run the seeds this many times, keep the best")
    parser.add_argument("--server", choices=SERVERS, default="model")
    args = parser.parse_args()
    for workload, faults in MIXES:
        print(measure(workload, faults, args.seeds, args.messages, args.repeat, args.server), flush=True)


if __name__ == "__main__":
    main()

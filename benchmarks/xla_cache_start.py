"""What a full XLA cache costs every process at its start: linking its programs in, against copying them.

Every run, fold process and sweep job fills a folder of its own from the shared cache
(``models/xla_cache.fill``) before its first compile, and removes that folder at exit. This script
builds a shared cache of ``--mib`` MiB (random programs of ``--kib`` KiB each, named as the cache
names them) in a temporary folder on the same file system as the real cache would be, then times,
alternating the arms round by round, the fill and the removal of a process folder:

- ``link``: as shipped, each program hard-linked in after its checksum is read;
- ``copy``: the same code with hard links unavailable (the fallback, and what every start did
  before: the programs' bytes written into the process folder).

usage: python benchmarks/xla_cache_start.py [--mib 256] [--kib 128] [--rounds 5]
writes benchmarks/xla_cache_start.md (``--out`` changes the path).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

from bilstm_exp.analysis.bench_report import machine_sentence, write_report
from bilstm_exp.models import xla_cache

HERE = Path(__file__).resolve().parent


def build_cache(shared: Path, mib: int, kib: int) -> int:
    count = mib * 1024 // kib
    compiled = shared.parent / "compiled.pb"
    for i in range(count):
        compiled.unlink(missing_ok=True)  # a new file each time, as TensorFlow writes (the last is linked)
        compiled.write_bytes(os.urandom(kib * 1024))
        xla_cache.write_entry(shared, f"xla_compile_cache__{i}__{i * 7919}__XLA_CPU_JIT", compiled)
    compiled.unlink()
    return count


def start_once(shared: Path, arm: str) -> tuple[float, float, int]:
    """Wall and CPU seconds (user and system) of one process's fill and removal of its folder."""
    local = Path(tempfile.mkdtemp(prefix="process-bench-", dir=shared))
    cpu, wall = time.process_time(), time.perf_counter()
    if arm == "copy":
        with mock.patch.object(os, "link", side_effect=OSError("no hard links")):
            linked = xla_cache.fill(local, shared)
    else:
        linked = xla_cache.fill(local, shared)
    shutil.rmtree(local)
    return time.perf_counter() - wall, time.process_time() - cpu, linked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=xla_cache.MAX_BYTES >> 20)
    parser.add_argument("--kib", type=int, default=128, help="a program's size (the median measured: 116 KiB)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "xla_cache_start.md")
    args = parser.parse_args()

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bilstm-exp"
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="xla-cache-bench-", dir=base) as folder:
        shared = Path(folder) / "shared"
        shared.mkdir()
        programs = build_cache(shared, args.mib, args.kib)
        load = os.getloadavg()
        times: dict[str, list[tuple[float, float]]] = {"link": [], "copy": []}
        for round_ in range(args.rounds):
            for arm in ("link", "copy") if round_ % 2 == 0 else ("copy", "link"):
                wall, cpu, linked = start_once(shared, arm)
                assert linked == programs, (arm, linked, programs)
                times[arm].append((wall, cpu))
                print(f"round {round_ + 1} {arm}: wall {wall:.3f} s, cpu {cpu:.3f} s", flush=True)
        load_after = os.getloadavg()

    def median(arm: str, i: int) -> float:
        return statistics.median(t[i] for t in times[arm])

    lines = [
        "# A full XLA cache at a process's start: link against copy",
        "",
        f"`python benchmarks/xla_cache_start.py --mib {args.mib} --kib {args.kib} --rounds {args.rounds}`: "
        f"{programs} programs of {args.kib} KiB ({args.mib} MiB) in a shared cache under "
        "`~/.cache/bilstm-exp`; per arm, the median of the rounds (arms alternating) of one process's "
        "fill of its folder and the folder's removal.",
        "",
        machine_sentence(load, load_after),
        "",
        "| arm | wall (s) | CPU, user + system (s) |",
        "|---|---|---|",
        *(f"| {arm} | {median(arm, 0):.3f} | {median(arm, 1):.3f} |" for arm in ("link", "copy")),
        "",
        f"copy / link: wall {median('copy', 0) / median('link', 0):.1f}x, "
        f"CPU {median('copy', 1) / median('link', 1):.1f}x.",
        "",
    ]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()

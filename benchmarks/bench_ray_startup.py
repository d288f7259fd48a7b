"""Does Ray import and start here, how long does it take, how much memory; prints one JSON object.

    PYTHONPATH=$PWD python benchmarks/bench_ray_startup.py

``import ray`` time, ``ray.init(num_cpus=2)`` time (a local cluster: GCS, raylet, agents),
four trivial tasks (worker start-up), ``ray.shutdown`` time, and the summed RSS of the
cluster's processes (children of this process, found through /proc) while it runs.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path


def _descendants_rss_mb(root: int) -> tuple[float, int]:
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    todo, seen = [root], []
    while todo:
        pid = todo.pop()
        for c in children.get(pid, []):
            seen.append(c)
            todo.append(c)
    rss = 0
    for pid in seen:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
        except OSError:
            pass
    return rss / 1024, len(seen)


def main() -> dict:
    t0 = time.perf_counter()
    import ray

    t1 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    t2 = time.perf_counter()

    @ray.remote
    def double(x):
        return 2 * x

    assert ray.get([double.remote(i) for i in range(4)]) == [0, 2, 4, 6]
    t3 = time.perf_counter()
    rss, n = _descendants_rss_mb(os.getpid())
    ray.shutdown()
    t4 = time.perf_counter()
    out = {"ray": ray.__version__, "import_s": round(t1 - t0, 2), "init_s": round(t2 - t1, 2),
           "first_4_tasks_s": round(t3 - t2, 2), "shutdown_s": round(t4 - t3, 2),
           "cluster_processes": n, "cluster_rss_mb": round(rss), "load_average": [round(v, 1) for v in os.getloadavg()]}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()

"""How fast ``build-attributes --from-json`` imports a large class list (issue 21: 200,000 classes
from a 7.6 MB JSON had not finished after 600 s). Prints one JSON object.

    PYTHONPATH=$PWD python benchmarks/bench_import_classes.py [N_CLASSES] [DESCRIPTORS_PER_CLASS]

Times the import itself, encoding aside: reading and checking the JSON
(``read_attribute_json``) and storing classes and attributes (``add_attributes``), into a new
store; then the same for a second file with the same classes and one more descriptor each (the
re-import path: every class and attribute already stored is matched, only new ones are added).
The rate is classes per wall second; the 2-core machine is shared, so the load average and this
process's CPU seconds are given with it.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def write_classes(path: Path, n: int, per_class: int, extra: bool = False) -> int:
    data = {f"species {i:06d}": [f"feature {j} of species {i}" for j in range(per_class + extra)] for i in range(n)}
    path.write_text(json.dumps(data))
    return path.stat().st_size


def main() -> None:
    from pipeline.stages.attributes import add_attributes, read_attribute_json
    from stores.catalog import Catalog

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    per_class = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    out = dict(classes=n, descriptors_per_class=per_class, load_average=os.getloadavg()[0])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with Catalog(tmp / "store") as cat:
            for phase, extra in (("first", False), ("again", True)):
                f = tmp / f"{phase}.json"
                out[f"{phase}_json_bytes"] = write_classes(f, n, per_class, extra)
                c0, t0 = time.process_time(), time.perf_counter()
                mapping, _ = read_attribute_json(f)
                t1 = time.perf_counter()
                added = add_attributes(cat, mapping, source="file:bench", style="descriptors", prompt_version="file")
                t2, c2 = time.perf_counter(), time.process_time()
                out[f"{phase}_cpu_s"] = round(c2 - c0, 2)  # this process's CPU time (DuckDB threads included)
                out[f"{phase}_read_s"] = round(t1 - t0, 2)
                out[f"{phase}_store_s"] = round(t2 - t1, 2)
                out[f"{phase}_added"] = added
                out[f"{phase}_classes_per_s"] = round(n / (t2 - t0), 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""Scale, simulated: N tiny trials (default 200) on a ``ray.cluster_utils.Cluster`` of 8 nodes
that declare one fake GPU each; the trials run on CPU (``--set device=cpu``) but are scheduled
as GPU fractions (``--gpus-per-trial 0.25``). Nodes are removed (ungracefully) and added while
the study runs. Checks that every planned key has exactly one record (nothing lost or
duplicated) and prints the scheduling overhead per trial and the driver's peak memory.

    PYTHONPATH=. nice -n 5 python benchmarks/cluster_sim.py [--trials 200] [--nodes 8]

Not a test: it takes minutes. The study's driver runs as a child process, so that its peak
RSS (``resource.getrusage(RUSAGE_CHILDREN)``) is its own.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = r'''
import sys
sys.path.insert(0, {root!r})
from lsdc.study import Study, Variant, main
STUDY = Study(name="sim", title="cluster simulation", variants=(Variant("knn", {{"labeler": "knn"}}),))
raise SystemExit(main(STUDY, sys.argv[1:]))
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--cpus-per-node", type=float, default=1)
    ap.add_argument("--churn-every", type=float, default=45.0, help="seconds between node removals")
    ap.add_argument("--storage", default=None, help="default: a temporary folder")
    a = ap.parse_args()
    from ray.cluster_utils import Cluster

    storage = a.storage or tempfile.mkdtemp(prefix="lsdc-sim-")
    os.makedirs(storage, exist_ok=True)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=a.cpus_per_node, num_gpus=1) for _ in range(a.nodes)]
    cluster.wait_for_nodes()
    driver = os.path.join(storage, "sim_driver.py")
    with open(driver, "w") as f:
        f.write(DRIVER.format(root=ROOT))
    argv = [sys.executable, driver, "--dataset", "digits", "--storage", storage, "--address", cluster.address,
            "--seeds", f"0-{a.trials - 1}", "--epochs", "1", "--set", "width=0.125", "--set", "pretrain=none",
            "--set", "batch_size=64", "--set", "device=cpu", "--set", "precision=fp32",
            "--gpus-per-trial", "0.25", "--cpus-per-trial", str(a.cpus_per_node), "--max-failures", "5", "--quiet"]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    churn: list[str] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.extend(proc.stdout), daemon=True)
    reader.start()
    last = time.perf_counter()
    while proc.poll() is None:          # nodes are removed and added from the main thread (Ray's rule)
        time.sleep(1)
        if time.perf_counter() - last >= a.churn_every and proc.poll() is None:
            victim = nodes.pop(0)
            cluster.remove_node(victim, allow_graceful=False)
            nodes.append(cluster.add_node(num_cpus=a.cpus_per_node, num_gpus=1))
            churn.append(f"{time.strftime('%H:%M:%S')} removed {victim.node_id[:8]}, added {nodes[-1].node_id[:8]}")
            last = time.perf_counter()
    reader.join(timeout=30)
    out = "".join(chunks)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    cluster.shutdown()

    sys.path.insert(0, ROOT)
    from lsdc.records import finished_keys, read_records
    from lsdc.storage import Storage
    s = Storage(storage)
    plan = json.load(open(os.path.join(storage, "sim", "plans", "digits.json")))
    planned = [t["key"] for t in plan["trials"]]
    recs, bad = read_records(s, ["sim"])
    keys = [r["key"] for r in recs]
    lost = sorted(set(planned) - set(keys))
    dup = len(keys) - len(set(keys))
    extra = sorted(finished_keys(s, "sim") - set(planned))
    m = re.search(r"trials ([0-9.]+) s\)", out)
    trials_s = float(m.group(1)) if m else float("nan")
    slots = a.nodes                                   # one trial per node (its CPUs), four per fake GPU
    busy = sum(r.get("wall_s") or 0.0 for r in recs)
    overhead = (trials_s * slots - busy) / max(1, len(recs))
    print(out[-3000:])
    print("\n".join(churn))
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"trials planned {len(planned)}, records {len(recs)}, bad {len(bad)}, lost {len(lost)}, "
          f"duplicated {dup}, unplanned {len(extra)}; restarts {sum(r.get('restarts', 0) for r in recs)}; "
          f"node removals {len(churn)}")
    print(f"driver exit {proc.returncode}; wall {wall:.0f} s; trials phase {trials_s:.0f} s on {slots} slots; "
          f"mean trial wall {busy / max(1, len(recs)):.2f} s; scheduling overhead {overhead:.2f} s/trial; "
          f"driver peak RSS {peak_mb:.0f} MB")
    return 0 if not lost and not dup and not bad and proc.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

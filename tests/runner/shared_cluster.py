"""Keeps a ray.cluster_utils.Cluster (a head node with N CPUs, no dashboard) running in its own
process, for the Ray tests of a session (conftest.py): prints its address, then shuts it
down when its standard input closes. In its own process because a cluster whose nodes were
started by the test process is broken by a later ``ray.init(address="local")`` / ``ray.shutdown()``
there (the tests that need lsdc to start its own Ray do exactly that)."""
import sys

from ray.cluster_utils import Cluster

if __name__ == "__main__":
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": int(sys.argv[1]), "include_dashboard": False})
    cluster.wait_for_nodes()
    print(cluster.address, flush=True)
    sys.stdin.read()
    cluster.shutdown()

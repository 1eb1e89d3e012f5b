"""Keeps a ray.cluster_utils.Cluster (a head node with N CPUs, no dashboard) running in its own
process, for the Ray tests of a session (conftest.py): prints its address, then shuts it
down when its standard input closes. In its own process, so that its nodes are not tied to the
test process's Ray state. That alone does not make a later join safe: once the test process has
started and stopped a local Ray, Ray 2.60 cancels its actors on this cluster too, which is why the
tests that join run first (``tests/conftest.py``)."""
import sys

from ray.cluster_utils import Cluster

if __name__ == "__main__":
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": int(sys.argv[1]), "include_dashboard": False})
    cluster.wait_for_nodes()
    print(cluster.address, flush=True)
    sys.stdin.read()
    cluster.shutdown()

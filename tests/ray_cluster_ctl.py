"""A real multi-node Ray cluster on loopback, in a process of its own, driven over stdin.

Tests start it with `python -m tests.ray_cluster_ctl` and send one command per line; each
answer is one JSON line on stdout:

    add            -> {"node": "<node id>"}      a 1-CPU worker node joins
    remove <id>    -> {"removed": "<node id>"}   that node dies at once (its processes killed)
    quit           -> {"quit": true}             every node shut down

It starts with a head that runs no cells (num_cpus=0) and WORKERS 1-CPU worker nodes, and
answers {"address": ..., "head": ..., "workers": [...]} first. Its own process keeps Ray's
in-process state (authentication mode and token) apart from the test process's. If stdin
closes (the test process died), it shuts the cluster down too.
"""

from __future__ import annotations

import json
import os
import sys

OBJECT_STORE = 100 * 2**20  # bytes per node: rows are tiny; keep /dev/shm use small


def _say(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every node on 127.0.0.1
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "object_store_memory": OBJECT_STORE},
        connect=False,
    )
    nodes = {}
    try:
        for _ in range(int(os.environ.get("WORKERS", "2"))):
            node = cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE)
            nodes[node.node_id] = node
        cluster.wait_for_nodes()
        _say(
            {
                "address": cluster.address,
                "head": cluster.head_node.node_id,
                "workers": list(nodes),
            }
        )
        for line in sys.stdin:
            command, *args = line.split()
            if command == "add":
                node = cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE)
                nodes[node.node_id] = node
                cluster.wait_for_nodes()
                _say({"node": node.node_id})
            elif command == "remove":
                cluster.remove_node(nodes.pop(args[0]), allow_graceful=False)
                _say({"removed": args[0]})
            elif command == "quit":
                break
            else:
                _say({"error": f"unknown command {command!r}"})
    finally:
        cluster.shutdown()
        _say({"quit": True})


if __name__ == "__main__":
    main()

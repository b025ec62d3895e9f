"""A local multi-node Ray cluster for the Ray backend's tests and benchmark, kept on loopback.

Outside a network namespace of its own, Ray advertises and connects to this machine's external address whatever it
is told (/work/shared/reference/scale.md). So the calling thread first moves into a new network namespace with only
loopback (`loopback_namespace`), and everything it starts from then on (Ray's nodes, the server, their workers)
is born there; `start_cluster` refuses to start anywhere else. Needs root (CAP_SYS_ADMIN) and `ip`.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.settings import PROJECT_ROOT

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceUnavailable(RuntimeError):
    """This process may not make a network namespace (not root, or a sandbox that forbids it)."""


def interfaces() -> list[str]:
    """The network interfaces the calling thread sees."""
    lines = Path("/proc/thread-self/net/dev").read_text().splitlines()[2:]
    return sorted(line.split(":", 1)[0].strip() for line in lines)


def only_loopback() -> bool:
    return interfaces() == ["lo"]


@contextmanager
def loopback_namespace() -> Iterator[None]:
    """Run the calling thread, and every process and thread it starts meanwhile, in a new network namespace whose only
    interface is loopback (up); the thread goes back to its own namespace at the end."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            raise NamespaceUnavailable(f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())}")
        try:
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
            if not only_loopback():
                raise NamespaceUnavailable(f"the new namespace has {interfaces()}, not loopback alone")
            yield
        finally:
            if _libc.setns(original, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the original network namespace failed")
    finally:
        os.close(original)


def node_args(**resources: Any) -> dict[str, Any]:
    """Arguments for one light node: one CPU, the smallest object store, no dashboard, and `resources` (num_gpus
    here declares GPUs that need not exist)."""
    return {"num_cpus": 1, "object_store_memory": 80 * 1024 * 1024, "include_dashboard": False, **resources}


@contextmanager
def start_cluster(**head: Any) -> Iterator[Any]:
    """A `ray.cluster_utils.Cluster` with its head node (`head`: extra node arguments); add nodes with
    `cluster.add_node(**node_args(...))`. Its workers can import this project (the tests' engines included)."""
    if not only_loopback():
        raise NamespaceUnavailable("a Ray test cluster starts only inside loopback_namespace()")
    from ray.cluster_utils import Cluster

    previous = os.environ.get("PYTHONPATH")
    # the nodes, and so their workers, inherit it: node B is started later than the head
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), previous]))
    try:
        cluster = Cluster(initialize_head=True, head_node_args=node_args(**head))
        try:
            yield cluster
        finally:
            cluster.shutdown()  # type: ignore[no-untyped-call]  # unannotated in Ray
    finally:
        if previous is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = previous

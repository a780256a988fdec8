"""Reaching a Ray cluster for ``slimbench run --executor ray``: the optional import, the
``--address`` forms, connecting (or starting a cluster on this machine) and what its alive
nodes offer.

Ray is an optional extra (``slimbench[ray]``): nothing here imports it at module level, and
its absence is one ``UsageError`` naming the extra.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys

from slimbench.errors import UsageError

EXTRA = "pip install 'slimbench[ray]'"
# a custom resource that every node offers once: a latency cell takes all of it (the node is
# its own), a quality-only cell a sliver (many pack, none beside a latency cell)
SLOT = "slimbench_latency_slot"
_HOST = r"[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]"  # a name, an IPv4 address, or [an IPv6 one]
_ADDRESS = re.compile(rf"^(?:auto|ray://(?:{_HOST})(?::(?P<cport>\d+))?|(?:{_HOST}):(?P<port>\d+))$")

log = logging.getLogger(__name__)


def import_ray():
    """The ``ray`` module, or one UsageError saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise UsageError(f"--executor ray needs Ray, which is not installed here ({e}); "
                         f"install the extra: {EXTRA}") from None
    return ray


def check_address(address: str | None) -> None:
    """``auto``, ``HOST:PORT`` (the head node's GCS) or ``ray://HOST[:PORT]`` (Ray Client);
    None starts a cluster on this machine."""
    if address is None:
        return
    m = _ADDRESS.match(address)
    port = m and (m.group("port") or m.group("cport"))
    if not m or (port is not None and not 0 < int(port) < 65536):
        raise UsageError(f"--address {address!r}: give auto (the cluster this machine is part "
                         "of), HOST:PORT (the head node's address, as `ray start --head` "
                         "prints it) or ray://HOST[:PORT] (Ray Client)")


def prepare_local_cluster() -> None:
    """Before Ray is imported (its constants are read then): a cluster started here listens on
    loopback only (Ray's own switch for that, named after the platforms where it is the
    default) and sends no usage statistics anywhere. A user's own setting wins."""
    if "ray" in sys.modules:
        log.info("ray was imported before slimbench could keep its local cluster on loopback")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def connect(ray, address: str | None, verbosity: int) -> bool:
    """Connect to the cluster at ``address``, or start one on this machine (with the latency
    slot on its one node). Quiet unless ``verbosity`` > 0: Ray's own log lines and the
    workers' output then come through.

    Returns:
        True when this call connected (the caller disconnects); False when this process was
        connected already (a notebook, a test): that connection is the caller's to keep.
    """
    if ray.is_initialized():
        return False
    quiet = verbosity <= 0
    options = dict(log_to_driver=not quiet, include_dashboard=False,
                   logging_level=logging.ERROR if quiet else logging.INFO)
    try:
        if address is None:
            ray.init(resources={SLOT: 1}, **options)
        else:
            ray.init(address=address, **options)
    except Exception as e:  # noqa: BLE001 - Ray raises several kinds; the user needs the text
        where = f"at {address}" if address else "on this machine"
        raise UsageError(f"cannot connect to the Ray cluster {where}: "
                         f"{type(e).__name__}: {str(e).strip().splitlines()[0]}") from None
    return True


@dataclasses.dataclass(frozen=True)
class Cluster:
    """What the alive nodes offer, as the scheduler sees it when the run starts.

    Attributes:
        nodes: one ``{"id", "ip", "resources"}`` per alive node.
        driver_ip: this machine's address as the cluster knows it (None for Ray Client,
            whose driver is not a node).
    """

    nodes: tuple[dict, ...]
    driver_ip: str | None

    def has(self, resource: str, amount: float = 1.0) -> bool:
        return any(n["resources"].get(resource, 0) >= amount for n in self.nodes)

    def most_cpus(self, slot: bool) -> float:
        """The most CPUs one node offers (among those with the latency slot if ``slot``)."""
        return max((n["resources"].get("CPU", 0) for n in self.nodes
                    if not slot or n["resources"].get(SLOT, 0) >= 1), default=0)

    def other_nodes(self) -> list[dict]:
        """Nodes that are not this machine: they see its files only on a shared mount."""
        return [n for n in self.nodes if n["ip"] != self.driver_ip]

    def describe(self) -> str:
        total = {k: sum(n["resources"].get(k, 0) for n in self.nodes) for k in ("CPU", "GPU")}
        slots = sum(n["resources"].get(SLOT, 0) >= 1 for n in self.nodes)
        return (f"{len(self.nodes)} node(s), {total['CPU']:g} CPUs, {total['GPU']:g} GPUs, "
                f"{slots} with {SLOT}")


def cluster(ray) -> Cluster:
    """The connected cluster's alive nodes."""
    nodes = tuple({"id": n["NodeID"], "ip": n["NodeManagerAddress"],
                   "resources": dict(n.get("Resources") or {})}
                  for n in ray.nodes() if n.get("Alive"))
    client = ray.util.client.ray.is_connected()
    return Cluster(nodes, None if client else ray.util.get_node_ip_address())

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
import signal
import socket
import sys
import threading
import time

from slimbench.errors import UsageError

EXTRA = "pip install 'slimbench[ray]'"
# a custom resource that every node offers once: a latency cell takes all of it (the node is
# its own), a quality-only cell a sliver (many pack, none beside a latency cell)
SLOT = "slimbench_latency_slot"
_HOST = r"[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]"  # a name, an IPv4 address, or [an IPv6 one]
_ADDRESS = re.compile(rf"^(?:auto|ray://(?P<chost>{_HOST})(?::(?P<cport>\d+))?"
                      rf"|(?P<host>{_HOST}):(?P<port>\d+))$")
CLIENT_PORT = 10001  # Ray Client's port where ray://HOST names none
# how long a given --address may take to answer (--connect-timeout): Ray itself retries an
# address that never answers for many minutes, which looks like a hang
CONNECT_TIMEOUT_S = 30.0
MAX_CONNECT_TIMEOUT_S = 3600.0

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


def check_timeout(seconds: float, address: str | None) -> None:
    """``--connect-timeout``: positive, bounded, and only where there is an address to wait
    for (a cluster started here is not a network peer)."""
    if address is None:
        raise UsageError("--connect-timeout applies with --address (the cluster to wait for)")
    if not 0 < seconds <= MAX_CONNECT_TIMEOUT_S:
        raise UsageError(f"--connect-timeout must be in (0, {MAX_CONNECT_TIMEOUT_S:g}] "
                         f"seconds, got {seconds:g}")


def _host_port(address: str) -> tuple[str, int] | None:
    """The TCP endpoint an address names (None for ``auto``: Ray looks it up itself)."""
    m = _ADDRESS.match(address)
    if m is None or m.group("host") is None and m.group("chost") is None:
        return None
    host = (m.group("host") or m.group("chost")).strip("[]")
    return host, int(m.group("port") or m.group("cport") or CLIENT_PORT)


def probe(address: str, timeout: float) -> None:
    """Refuse an address whose port does not accept a TCP connection within ``timeout``
    seconds: a refusal is known at once here, while Ray would retry it for minutes."""
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except socket.gaierror as e:
        raise UsageError(f"cannot connect to the Ray cluster at {address}: unknown host "
                         f"{target[0]!r} ({e.strerror})") from None
    except TimeoutError:
        raise UsageError(_no_answer(address, timeout)) from None
    except OSError as e:
        raise UsageError(f"cannot connect to the Ray cluster at {address}: nothing accepts "
                         f"connections on port {target[1]} there ({e.strerror or e}); is Ray "
                         "running on that node, and is this the address `ray start --head` "
                         "printed?") from None


def _no_answer(address: str, timeout: float) -> str:
    return (f"cannot connect to the Ray cluster at {address}: no answer within {timeout:g} s "
            "(--connect-timeout S waits longer)")


def _init_within(ray, timeout: float, **kwargs) -> None:
    """``ray.init(**kwargs)``, given up after ``timeout`` seconds. Ray's wait for a peer that
    accepts TCP but never answers as a Ray cluster cannot be cut short from outside, so it
    runs in a daemon thread that the process leaves behind when it exits with the error."""
    outcome: dict = {}
    main = threading.current_thread() is threading.main_thread()
    if main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        # what ray.init sets itself, in the main thread only: SIGTERM ends the driver through
        # SystemExit, so the executor still cancels its outstanding tasks
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))

    def init() -> None:
        try:
            ray.init(**kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = e

    thread = threading.Thread(target=init, name="slimbench-ray-connect", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError
    if "error" in outcome:
        raise outcome["error"]


def prepare_local_cluster() -> None:
    """Before Ray is imported (its constants are read then): a cluster started here listens on
    loopback only (Ray's own switch for that, named after the platforms where it is the
    default) and sends no usage statistics anywhere. A user's own setting wins."""
    if "ray" in sys.modules:
        log.info("ray was imported before slimbench could keep its local cluster on loopback")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def connect(ray, address: str | None, verbosity: int,
            timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Connect to the cluster at ``address``, or start one on this machine (with the latency
    slot on its one node). Quiet unless ``verbosity`` > 0: Ray's own log lines and the
    workers' output then come through. An address that does not answer within ``timeout``
    seconds is one UsageError, never a hang (starting a cluster here has no such limit).

    Returns:
        True when this call connected (the caller disconnects); False when this process was
        connected already (a notebook, a test): that connection is the caller's to keep.
    """
    if ray.is_initialized():
        return False
    quiet = verbosity <= 0
    options = dict(log_to_driver=not quiet, include_dashboard=False,
                   logging_level=logging.ERROR if quiet else logging.INFO)
    deadline = time.monotonic() + timeout
    try:
        if address is None:
            ray.init(resources={SLOT: 1}, **options)
        else:
            probe(address, timeout)
            _init_within(ray, max(deadline - time.monotonic(), 0.1), address=address,
                         **options)
    except TimeoutError:
        raise UsageError(_no_answer(address, timeout)) from None
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - Ray raises several kinds; the user needs the text
        where = f"at {address}" if address else "on this machine"
        raise UsageError(f"cannot connect to the Ray cluster {where}: "
                         f"{type(e).__name__}: {str(e).strip().splitlines()[0]}") from None
    return True


@dataclasses.dataclass(frozen=True)
class Node:
    """One alive node of the cluster.

    Attributes:
        id: Ray's node id.
        ip: its address (NodeManagerAddress).
        resources: what it offers, by Ray's resource names (CPU, GPU, the latency slot).
    """

    id: str
    ip: str
    resources: dict[str, float]


@dataclasses.dataclass(frozen=True)
class Cluster:
    """What the alive nodes offer, as the scheduler sees it when the run starts.

    Attributes:
        nodes: the alive nodes.
        driver_ip: this machine's address as the cluster knows it (None for Ray Client,
            whose driver is not a node).
    """

    nodes: tuple[Node, ...]
    driver_ip: str | None

    def has(self, resource: str, amount: float = 1.0) -> bool:
        return any(n.resources.get(resource, 0) >= amount for n in self.nodes)

    def most_cpus(self, slot: bool) -> float:
        """The most CPUs one node offers (among those with the latency slot if ``slot``)."""
        return max((n.resources.get("CPU", 0) for n in self.nodes
                    if not slot or n.resources.get(SLOT, 0) >= 1), default=0)

    def other_nodes(self) -> list[Node]:
        """Nodes that are not this machine: they see its files only on a shared mount."""
        return [n for n in self.nodes if n.ip != self.driver_ip]

    def describe(self) -> str:
        total = {k: sum(n.resources.get(k, 0) for n in self.nodes) for k in ("CPU", "GPU")}
        slots = sum(n.resources.get(SLOT, 0) >= 1 for n in self.nodes)
        return (f"{len(self.nodes)} node(s), {total['CPU']:g} CPUs, {total['GPU']:g} GPUs, "
                f"{slots} with {SLOT}")


def cluster(ray) -> Cluster:
    """The connected cluster's alive nodes."""
    nodes = tuple(Node(id=n["NodeID"], ip=n["NodeManagerAddress"],
                       resources=dict(n.get("Resources") or {}))
                  for n in ray.nodes() if n.get("Alive"))
    client = ray.util.client.ray.is_connected()
    return Cluster(nodes, None if client else ray.util.get_node_ip_address())

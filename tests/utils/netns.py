"""Worker "hosts" on one machine: Linux network namespaces joined to the host by veth pairs.

Each node is a namespace (``ip netns add``) with one end of a veth pair; the other end
stays on the host. Both ends get an address from a private /30 of 10.231.0.0/16 chosen
here (nothing else on the machine uses them; no bridge, no route beyond the pair), so a
server the test binds to a host end is reachable from that node only through its link,
and taking the host end down cuts that node off (its packets go nowhere) until it is
brought up again. The namespaces share the file system: the ingest root is "shared
storage" for free. Needs root and ``ip`` (iproute2).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass


@dataclass(frozen=True)
class Node:
    name: str
    netns: str
    host_if: str
    node_if: str
    #: The host end's address: servers the node uses listen here.
    host_ip: str
    node_ip: str

    @property
    def exec_prefix(self) -> tuple[str, ...]:
        """Run a command on this node: ``ip netns exec`` execs it in place (same pid)."""
        return ("ip", "netns", "exec", self.netns)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def unavailable() -> str | None:
    """Why network namespaces cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    probe = f"cxrprobe{os.getpid() % 100000}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        detail = (
            exc.stderr.decode(errors="replace").strip()
            if isinstance(exc, subprocess.CalledProcessError)
            else str(exc)
        )
        return f"ip netns add failed: {detail}"
    with suppress(subprocess.CalledProcessError):
        _ip("netns", "del", probe)
    return None


@contextmanager
def namespaces(names: Sequence[str]) -> Iterator[list[Node]]:
    """One namespace per name, each linked to the host; all removed afterwards, also on
    failure (deleting a namespace deletes its veth end, and with it the pair)."""
    tag = os.getpid() % 10000
    subnet = os.getpid() % 250  # third octet: two runs at once rarely collide
    nodes = [
        Node(
            name=n,
            netns=f"cxr{tag}{n}",
            host_if=f"vc{tag}{i}h",
            node_if=f"vc{tag}{i}n",
            host_ip=f"10.231.{subnet}.{4 * i + 1}",
            node_ip=f"10.231.{subnet}.{4 * i + 2}",
        )
        for i, n in enumerate(names)
    ]
    made: list[Node] = []
    try:
        for node in nodes:
            _ip("netns", "add", node.netns)
            made.append(node)
            _ip("link", "add", node.host_if, "type", "veth", "peer", "name", node.node_if)
            _ip("link", "set", node.node_if, "netns", node.netns)
            _ip("addr", "add", f"{node.host_ip}/30", "dev", node.host_if)
            _ip("link", "set", node.host_if, "up")
            ns = ("netns", "exec", node.netns, "ip")
            _ip(*ns, "addr", "add", f"{node.node_ip}/30", "dev", node.node_if)
            _ip(*ns, "link", "set", node.node_if, "up")
            _ip(*ns, "link", "set", "lo", "up")
        yield nodes
    finally:
        for node in made:
            with suppress(subprocess.CalledProcessError):
                _ip("link", "del", node.host_if)
            with suppress(subprocess.CalledProcessError):
                _ip("netns", "del", node.netns)


def cut(node: Node) -> None:
    """Take the node's link down (host end): it reaches nothing, nothing reaches it."""
    _ip("link", "set", node.host_if, "down")


def heal(node: Node) -> None:
    _ip("link", "set", node.host_if, "up")

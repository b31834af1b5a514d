"""Network namespaces as hosts: a bridge in the test's namespace and one veth per host.

Each host is a namespace with one address on a private /24; the test process reaches every
host through the bridge. ``link_down(host)`` takes the host's bridge port down, which cuts it off
from everyone (gateway included) without touching its processes. A host can carry its own
/etc/hosts, which `ip netns exec` mounts over the real one for the processes it starts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


def run(*args: str) -> None:
    """Run an `ip` command, raising with its stderr when it fails."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CAP_NET_ADMIN)"
    name = f"lgprobe{os.getpid() % 100000}"
    try:
        run("netns", "add", name)
        run("netns", "del", name)
    except RuntimeError as error:
        return f"cannot create a network namespace: {error}"
    return None


@dataclass
class Host:
    """One namespace: its name, address and the bridge-side end of its link."""

    name: str
    address: str
    port_link: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.name, *argv]


class Network:
    """A bridge and its hosts; everything is removed on close()."""

    def __init__(self, tag: str, subnet: int) -> None:
        self.tag = tag
        self.prefix = f"10.{subnet}.0"
        self.bridge = f"lg{tag}br"
        self.hosts: list[Host] = []
        run("link", "add", "name", self.bridge, "type", "bridge")
        run("addr", "add", f"{self.prefix}.1/24", "dev", self.bridge)
        run("link", "set", self.bridge, "up")

    def add_host(self, label: str, etc_hosts: str | None = None) -> Host:
        """A new namespace on the bridge (address .10, .11, ...), with an optional /etc/hosts."""
        index = len(self.hosts)
        host = Host(f"lg{self.tag}{label}", f"{self.prefix}.{10 + index}", f"lg{self.tag}{index}b")
        inside = f"lg{self.tag}{index}n"
        run("netns", "add", host.name)
        self.hosts.append(host)
        run("link", "add", host.port_link, "type", "veth", "peer", "name", inside)
        run("link", "set", inside, "netns", host.name)
        run("link", "set", host.port_link, "master", self.bridge, "up")
        for args in (
            ("addr", "add", f"{host.address}/24", "dev", inside),
            ("link", "set", inside, "up"),
            ("link", "set", "lo", "up"),
        ):
            run("-n", host.name, *args)
        if etc_hosts is not None:
            config = Path("/etc/netns") / host.name
            config.mkdir(parents=True, exist_ok=True)
            (config / "hosts").write_text(etc_hosts)
        return host

    def link_down(self, host: Host) -> None:
        """Cut the host off the network."""
        run("link", "set", host.port_link, "down")

    def link_up(self, host: Host) -> None:
        """Reconnect the host."""
        run("link", "set", host.port_link, "up")

    def close(self) -> None:
        """Delete every link and namespace this network created."""
        for host in self.hosts:
            with contextlib.suppress(RuntimeError):
                run("link", "del", host.port_link)
            with contextlib.suppress(RuntimeError):
                run("netns", "del", host.name)
            shutil.rmtree(Path("/etc/netns") / host.name, ignore_errors=True)
        with contextlib.suppress(RuntimeError):
            run("link", "del", self.bridge)


@contextlib.contextmanager
def network(tag: str, subnet: int) -> Iterator[Network]:
    """A bridge network that is torn down on exit, whatever happens."""
    net = Network(tag, subnet)
    try:
        yield net
    finally:
        net.close()

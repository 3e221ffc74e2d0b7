"""A network namespace joined to the root one by a veth pair with link-local addresses.

Each link takes a free /30 in 169.254.X.0 (X from FIRST_X to LAST_X): the root
end is 169.254.X.1, the namespace end 169.254.X.2. Link-local, so traffic
stays between this machine and the namespace it made. ``ip netns add`` fails
on an existing name, which is what makes a claim of X safe against links
made side by side, by this process or another.
"""

from __future__ import annotations

import random
import subprocess
from dataclasses import dataclass

#: The range of third octets links take (169.254.X.0/30).
FIRST_X, LAST_X = 100, 249
NETNS_PREFIX = "cw-host-"


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, its output captured; CalledProcessError (with stderr) when check fails."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if check and done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, argv, done.stdout, done.stderr)
    return done


def candidates() -> list[int]:
    """Third octets not in use by any address of the root namespace, in random order."""
    taken = run("ip", "-4", "-o", "addr", "show").stdout
    free = [x for x in range(FIRST_X, LAST_X + 1) if f" 169.254.{x}." not in taken]
    random.shuffle(free)
    return free


def netns_names() -> set[str]:
    """Names of the network namespaces `ip netns` knows."""
    return {line.split()[0] for line in run("ip", "netns", "list").stdout.splitlines() if line}


@dataclass(frozen=True)
class HostLink:
    """One namespace and its veth pair, by the third octet X of its addresses."""

    x: int

    @property
    def netns(self) -> str:
        """The network namespace's name."""
        return f"{NETNS_PREFIX}{self.x}"

    @property
    def root_veth(self) -> str:
        """The veth end in the root namespace (interface names stop at 15 characters)."""
        return f"cwh{self.x}r"

    @property
    def inner_veth(self) -> str:
        """The veth end inside the namespace."""
        return f"cwh{self.x}i"

    @property
    def root_addr(self) -> str:
        """The root end's address, which the namespace reaches the root namespace at."""
        return f"169.254.{self.x}.1"

    @property
    def addr(self) -> str:
        """The namespace end's address."""
        return f"169.254.{self.x}.2"

    @classmethod
    def create(cls, x: int) -> HostLink | None:
        """A new namespace for X with its veth pair up, and lo up inside it; None when the
        namespace exists already (``ip netns add`` fails: that claims it against others)."""
        link = cls(x)
        if run("ip", "netns", "add", link.netns, check=False).returncode != 0:
            return None
        try:
            link._wire()
        except BaseException:
            link.remove()
            raise
        return link

    def _wire(self) -> None:
        run("ip", "link", "add", self.root_veth, "type", "veth", "peer", "name", self.inner_veth)
        run("ip", "link", "set", self.inner_veth, "netns", self.netns)
        run("ip", "addr", "add", f"{self.root_addr}/30", "dev", self.root_veth)
        run("ip", "link", "set", self.root_veth, "up")
        run("ip", "-n", self.netns, "addr", "add", f"{self.addr}/30", "dev", self.inner_veth)
        run("ip", "-n", self.netns, "link", "set", self.inner_veth, "up")
        # Guests' VNC servers and anything else on 127.0.0.1 there need lo.
        run("ip", "-n", self.netns, "link", "set", "lo", "up")

    def limit(self, kbit: int | None) -> None:
        """Shape both directions of the pair to kbit (1000 bit/s units); None lifts the limit."""
        for prefix, dev in ((), self.root_veth), (("-n", self.netns), self.inner_veth):
            if kbit is None:
                run("tc", *prefix, "qdisc", "del", "dev", dev, "root", check=False)
                continue
            # A bucket of at least 16 kB (several MTUs) and 50 ms of queue: smaller
            # buckets stall TCP on a veth, whose GSO packets tbf must split first.
            burst = max(16_000, kbit * 1000 // 8 // 20)
            run("tc", *prefix, "qdisc", "replace", "dev", dev, "root", "tbf",
                "rate", f"{kbit}kbit", "burst", str(burst), "latency", "50ms")

    def pids(self) -> list[int]:
        """Processes in the namespace."""
        done = run("ip", "netns", "pids", self.netns, check=False)
        return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []

    def remove(self) -> None:
        """Delete the veth pair (both ends go together) and the namespace; idempotent."""
        if run("ip", "link", "show", self.root_veth, check=False).returncode == 0:
            run("ip", "link", "del", self.root_veth)
        if self.netns in netns_names():
            run("ip", "netns", "del", self.netns)

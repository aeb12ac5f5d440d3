"""A private network namespace reached over a veth pair, whose path can go silent.

A userspace TCP proxy cannot make a path silent: the proxy's kernel keeps
acknowledging what the client sends, so the client's TCP never sees a loss.
Here the far side (a server started inside with :meth:`NetNamespace.command`)
lives in a network namespace of its own, reached over a veth pair with
addresses in 10.231.0.0/16. :meth:`NetNamespace.cut` sets both ends of the pair
down: nothing is delivered, answered, reset or refused, as when a NAT or a
firewall forgets a connection, a failover moves the address, or a cable is
pulled. :meth:`NetNamespace.restore` brings the path back. Typical use::

    with NetNamespace.create() as ns:
        server = subprocess.Popen(ns.command(["postgres", ...]))
        conn = psycopg2.connect(host=ns.address, ...)
        ns.cut()
        ns.restore()

Needs root, iproute2's ``ip`` and ``ss``, and util-linux's ``nsenter``;
:class:`NetnsUnavailable` says which is missing (tests skip on it). Every
namespace and link is named after the PID of the process that made it, so
:func:`remove_leftovers` (run by :meth:`NetNamespace.create`) removes those of
a run that was killed, never those of a run still going.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["NetNamespace", "NetnsError", "NetnsUnavailable", "remove_leftovers", "unavailable_reason"]

#: Test subnets are /30 blocks of this range, picked per namespace.
SUBNETS = ipaddress.IPv4Network("10.231.0.0/16")
_NETNS_DIR = Path("/run/netns")
_NAMESPACE = re.compile(r"^pgpool-(\d+)-(\d+)$")
# Interface names have at most 15 characters: "pgn" + PID in hex + "i" + number + role.
_LINK = re.compile(r"^pgn([0-9a-f]+)i(\d+)([hpst])$")
_COMMAND_TIMEOUT = 10.0

_counter_lock = threading.Lock()
_counter = 0


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here; the message says why."""


class NetnsError(RuntimeError):
    """An ``ip`` command failed; the message has its output."""


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made on this machine, or None when they can (probably)."""
    if os.geteuid() != 0:
        return "network namespaces and veth pairs need root"
    for tool, package in (("ip", "iproute2"), ("ss", "iproute2"), ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (package {package})"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=_COMMAND_TIMEOUT, stdin=subprocess.DEVNULL
    )
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_processes_in(namespace: str) -> None:
    """SIGKILL whatever still runs in ``namespace`` (a server of a test that failed)."""
    proc = _ip("netns", "pids", namespace, check=False)
    for pid in proc.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def remove_leftovers() -> list[str]:
    """Remove the namespaces and links of runs whose process is gone; return their names."""
    removed: list[str] = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _NAMESPACE.match(name)
        if match and not _alive(int(match.group(1))):
            _kill_processes_in(name)
            _ip("netns", "del", name, check=False)
            removed.append(name)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        # "12: pgn1a2bi0h@if11: <...>"
        fields = line.split(":", 2)
        name = fields[1].strip().split("@", 1)[0] if len(fields) > 2 else ""
        match = _LINK.match(name)
        if match and not _alive(int(match.group(1), 16)):
            _ip("link", "del", name, check=False)
            removed.append(name)
    return removed


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    shown = _ip("-o", "-4", "addr", "show", check=False).stdout + _ip("-4", "route", "show", check=False).stdout
    found = []
    for token in re.findall(r"\b(\d+\.\d+\.\d+\.\d+(?:/\d+)?)", shown):
        with contextlib.suppress(ValueError):
            found.append(ipaddress.IPv4Network(token, strict=False))
    return found


def _pick_subnet(pid: int, number: int) -> ipaddress.IPv4Network:
    blocks = list(SUBNETS.subnets(new_prefix=30))
    used = [net for net in _networks_in_use() if net.prefixlen > 0]  # not the default route
    # Runs going at the same time start from different blocks; a block in use is skipped.
    start = (pid * 64 + number) % len(blocks)
    for i in range(len(blocks)):
        subnet = blocks[(start + i) % len(blocks)]
        if not any(subnet.overlaps(net) for net in used):
            return subnet
    raise NetnsError(f"no free /30 left in {SUBNETS}")


class NetNamespace:
    """A namespace joined to this one by a veth pair; see the module docstring.

    ``address`` is the namespace's end of the pair (where a server inside
    listens), ``local_address`` this side's end.
    """

    def __init__(self, pid: int, number: int, subnet: ipaddress.IPv4Network) -> None:
        self.name = f"pgpool-{pid}-{number}"
        base = f"pgn{pid:x}i{number}"
        self.host_link = base + "h"  # this side of the path
        self.peer_link = base + "p"  # the namespace's side
        # A second pair whose far end stays down swallows, silently, what the
        # kernel sends to the subnet while the path is cut: with the path's
        # link down it would otherwise follow the default route off the machine.
        self.sink_link = base + "s"
        self.sink_peer_link = base + "t"
        self.subnet = subnet
        hosts = list(subnet.hosts())
        self.local_address = str(hosts[0])
        self.address = str(hosts[1])
        self._destroyed = False
        self.is_cut = False

    @classmethod
    def create(cls) -> NetNamespace:
        """Make a namespace with the path up; raise :class:`NetnsUnavailable` if this machine cannot."""
        reason = unavailable_reason()
        if reason is not None:
            raise NetnsUnavailable(reason)
        remove_leftovers()
        global _counter
        with _counter_lock:
            number, _counter = _counter, _counter + 1
        pid = os.getpid()
        ns = cls(pid, number, _pick_subnet(pid, number))
        atexit.register(ns.destroy)
        try:
            ns._build()
        except BaseException:
            ns.destroy()
            raise
        return ns

    def _build(self) -> None:
        made = _ip("netns", "add", self.name, check=False)
        if made.returncode != 0:
            raise NetnsUnavailable(f"cannot create a network namespace: {made.stderr.strip()}")
        veth = ("type", "veth", "peer", "name", self.peer_link, "netns", self.name)
        paired = _ip("link", "add", self.host_link, *veth, check=False)
        if paired.returncode != 0:
            raise NetnsUnavailable(f"cannot create a veth pair: {paired.stderr.strip()}")
        prefix = f"/{self.subnet.prefixlen}"
        _ip("addr", "add", self.local_address + prefix, "dev", self.host_link)
        _ip("-n", self.name, "addr", "add", self.address + prefix, "dev", self.peer_link)
        _ip("-n", self.name, "link", "set", "lo", "up")
        _ip("link", "add", self.sink_link, "type", "veth", "peer", "name", self.sink_peer_link, "netns", self.name)
        # No ARP on the sink: a failed neighbour lookup would answer "no route to host".
        _ip("link", "set", self.sink_link, "arp", "off", "up")
        _ip("route", "add", str(self.subnet), "dev", self.sink_link, "metric", "4000")
        self.restore()

    @property
    def path(self) -> Path:
        """The namespace's file, for ``nsenter --net=``."""
        return _NETNS_DIR / self.name

    def command(self, argv: Sequence[str], user: tuple[int, int] | None = None) -> list[str]:
        """``argv`` wrapped to run inside the namespace, as ``(uid, gid)`` when given.

        The wrapper enters the namespace as root and then drops to the user (and
        drops supplementary groups), so run it as root, not with ``user=``.
        """
        wrapper = ["nsenter", f"--net={self.path}"]
        if user is not None:
            wrapper += ["--setuid", str(user[0]), "--setgid", str(user[1])]
        return [*wrapper, "--", *argv]

    def cut(self) -> None:
        """Stop carrying packets, both ways, without a word to either side."""
        self.is_cut = True
        _ip("link", "set", self.host_link, "down")
        _ip("-n", self.name, "link", "set", self.peer_link, "down")

    def restore(self, timeout: float = 5.0) -> None:
        """Carry packets again; return once both ends are up."""
        _ip("link", "set", self.host_link, "up")
        _ip("-n", self.name, "link", "set", self.peer_link, "up")
        deadline = time.monotonic() + timeout
        while not (self._is_up(self.host_link) and self._is_up(self.peer_link, self.name)):
            if time.monotonic() > deadline:
                raise NetnsError(f"the veth pair {self.host_link}/{self.peer_link} did not come up in {timeout} s")
            time.sleep(0.02)
        self.is_cut = False

    @staticmethod
    def _is_up(link: str, namespace: str | None = None) -> bool:
        where = ["-n", namespace] if namespace else []
        shown = _ip(*where, "-o", "link", "show", link, check=False).stdout
        return "state UP" in shown and "LOWER_UP" in shown

    def connections(self) -> int:
        """TCP connections from this side to the namespace that the kernel still holds open.

        One that TCP gave up on (keepalive or ``tcp_user_timeout``) is no longer counted,
        even while its socket is still open.
        """
        proc = subprocess.run(
            ["ss", "-Htn", "state", "established", "dst", self.address],
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT,
            check=True,
        )
        return len(proc.stdout.splitlines())

    def destroy(self) -> None:
        """Kill what still runs inside, delete the namespace and its links. Idempotent."""
        if self._destroyed:
            return
        self._destroyed = True
        atexit.unregister(self.destroy)
        _kill_processes_in(self.name)
        _ip("netns", "del", self.name, check=False)
        # Deleting the namespace deletes the ends inside it, and a veth end
        # takes its peer along; these are for a pair made only halfway.
        for link in (self.host_link, self.sink_link):
            _ip("link", "del", link, check=False)

    def __enter__(self) -> NetNamespace:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    def __repr__(self) -> str:
        state = "destroyed" if self._destroyed else "cut" if self.is_cut else "up"
        return f"<NetNamespace {self.name} {self.local_address} -> {self.address} {state}>"

"""Machines on one box: a Linux network namespace per machine, joined to the host by a bridge, so each has
its own loopback and reaches the shared services (S3, Postgres, Prefect) only at the host's bridge address,
as a second machine on a LAN would. Where the kernel or the user may not make namespaces, the machines
fall back to plain processes on 127.0.0.1 and `isolated` says so.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import suppress


class Machines:
    """`with Machines(["a", "b"]) as m:` gives m.host (the services' address) and m.run_prefix(name)."""

    def __init__(self, names: list[str]):
        self.names = names
        tag = f"{os.getpid() % 100000}"  # interface names are capped at 15 characters
        self._bridge = f"fwbr{tag}"
        self._ns = {n: f"fw{tag}{n}" for n in names}
        self._veth = {n: f"fwv{tag}{n}" for n in names}
        # A /24 of its own per test process, so that two test runs on one box do not share a bridge.
        self._net = f"10.213.{os.getpid() % 250 + 1}"
        self.host = "127.0.0.1"
        self.network = "127.0.0.1/32"
        self.isolated = False
        self.why_not = ""

    def __enter__(self) -> Machines:
        try:
            self._ip("link", "add", self._bridge, "type", "bridge")
            self._ip("addr", "add", f"{self._net}.1/24", "dev", self._bridge)
            self._ip("link", "set", self._bridge, "up")
            for i, name in enumerate(self.names, start=2):
                ns, veth = self._ns[name], self._veth[name]
                self._ip("netns", "add", ns)
                self._ip("link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
                self._ip("link", "set", veth, "master", self._bridge, "up")
                self._ip("link", "set", f"{veth}p", "netns", ns)
                self._ip("-n", ns, "addr", "add", f"{self._net}.{i}/24", "dev", f"{veth}p")
                self._ip("-n", ns, "link", "set", f"{veth}p", "up")
                self._ip("-n", ns, "link", "set", "lo", "up")
        except (OSError, subprocess.CalledProcessError) as e:
            self.why_not = getattr(e, "stderr", "") or str(e)
            self._remove()
            return self
        self.host, self.network, self.isolated = f"{self._net}.1", f"{self._net}.0/24", True
        return self

    def __exit__(self, *exc: object) -> None:
        self._remove()

    def run_prefix(self, name: str) -> list[str]:
        """What to put before a command to run it on machine `name`."""
        return ["ip", "netns", "exec", self._ns[name]] if self.isolated else []

    def _remove(self) -> None:
        for name in self.names:
            with suppress(OSError, subprocess.CalledProcessError):
                self._ip("link", "del", self._veth[name])
            with suppress(OSError, subprocess.CalledProcessError):
                self._ip("netns", "del", self._ns[name])
        with suppress(OSError, subprocess.CalledProcessError):
            self._ip("link", "del", self._bridge)

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)

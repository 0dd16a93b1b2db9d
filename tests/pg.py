"""A throwaway Postgres server for tests: Debian's postgresql, in a directory of its own on a free port,
password-protected, reachable on 127.0.0.1 and optionally on one more address (another machine's side).
"""

from __future__ import annotations

import glob
import ipaddress
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

PASSWORD = "s3cret-pg"
USER = "fw"


def pg_bin(name: str) -> str:
    """Debian keeps the server programs in /usr/lib/postgresql/<version>/bin, off PATH."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"{name} not found: install Debian's postgresql (make postgresql)")
    return found


def _as_postgres(args: list[str]) -> list[str]:
    # initdb and the server refuse to run as root; CI and this machine run the tests as root.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@contextmanager
def postgres_server(listen: str | None = None, network: str | None = None) -> Iterator[Callable[[str], str]]:
    """A running Postgres; yields `database(name)`, which creates a database and returns its DuckLake
    metadata string (libpq keywords, no password: that is PGPASSWORD's). With `listen` the server also
    listens there and takes password logins from `network` (CIDR), and the strings name that address."""
    # Not under pytest's tmp_path: its root is private to root, and the server runs as user postgres.
    root = Path(tempfile.mkdtemp(prefix="flywheel-pg-"))
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(pwfile, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    run = dict(check=True, capture_output=True, text=True, timeout=120)
    subprocess.run(
        _as_postgres([pg_bin("initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}", "-A", "md5"]), **run
    )
    addresses = "127.0.0.1"
    if listen is not None:
        ipaddress.ip_network(network or f"{listen}/32")  # a typo fails here, not as a login refused later
        addresses += f",{listen}"
        with open(data / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {network or listen + '/32'} md5\n")
    opts = f"-k {root} -p {port} -c listen_addresses={addresses}"
    start = [pg_bin("pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start"]
    subprocess.run(_as_postgres(start), **run)
    env = {**os.environ, "PGPASSWORD": PASSWORD}
    psql = [pg_bin("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, "-d", "postgres", "-c"]
    host = listen or "127.0.0.1"

    def database(name: str) -> str:
        subprocess.run([*psql, f"CREATE DATABASE {name}"], env=env, **run)
        return f"postgres:host={host} port={port} dbname={name} user={USER}"

    try:
        yield database
    finally:
        subprocess.run(_as_postgres([pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "stop"]), **run)
        shutil.rmtree(root, ignore_errors=True)

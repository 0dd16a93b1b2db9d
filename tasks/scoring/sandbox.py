"""Run a Python code answer against its tests in a throwaway, resource-limited subprocess.

    result = run_python_tests(extract_code(completion), "assert add(1, 2) == 3")
    result.passed, result.status   # True, "passed"

The child is a fresh `python -I -B` (no user site, no PYTHON* variables, no .pyc writes) started in its
own session inside a new temporary directory that is deleted afterwards, with an almost empty
environment (no credentials leak into untrusted code). Before any untrusted code runs, the child's
bootstrap (`_child_main`, this same file run as a script):
  - lowers its own rlimits: address space (memory_mb), CPU seconds, file size, no core dumps;
  - tries to move into fresh user+network namespaces (no interfaces at all), where the kernel allows it;
  - installs an audit hook that refuses sockets, subprocesses/fork/exec, ctypes, and writes outside its
    directory; any such attempt marks the run "blocked", even if the code catches the exception.
The parent enforces a wall-clock timeout by killing the whole process group.

The rlimits are set in the child rather than in `preexec_fn`, which is unsafe when the parent has
threads (Prefect runs tasks in thread pools). The child reports its verdict on a private pipe, tagged
with a random nonce it was given on stdin, so untrusted code cannot print "passed" or exit(0) its way
to a pass. This stops accidents and casual escapes; it is not a security boundary against determined
code (run the scorer in a container for that).

Run the tests:  python -m pytest tests/test_sandbox.py
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Literal

Status = Literal["passed", "failed", "timeout", "memory", "error", "blocked", "unavailable"]
_STATUSES = ("passed", "failed", "timeout", "memory", "error", "blocked")  # what the child may report

_MAX_DETAIL_CHARS = 4000  # tracebacks end with the useful line, so the tail is kept
_MAX_FILE_BYTES = 32 * 1024 * 1024  # per file written, stdout/stderr included (RLIMIT_FSIZE)
_KILL_SIGNALS = {
    -signal.SIGXCPU: ("timeout", "CPU time limit exceeded"),
    -signal.SIGKILL: ("memory", "killed (SIGKILL), most likely out of memory"),
    -signal.SIGXFSZ: ("error", "file size limit exceeded (too much output?)"),
}


@dataclass(frozen=True)
class SandboxResult:
    """passed is True only for status "passed"; detail holds the verdict and the output's tail."""

    passed: bool
    status: Status
    detail: str
    duration_s: float


def extract_code(completion: str) -> str:
    """The code in a completion: the last ```python fence, else the last plain ``` fence, else all of it.

    An unclosed fence (a generation cut off by max_tokens) runs to the end of the text.

    >>> extract_code("Here:\\n```python\\ndef f():\\n    return 1\\n```\\nDone.")
    'def f():\\n    return 1'
    >>> extract_code("x = 1")
    'x = 1'
    """
    completion = completion or ""
    fences = re.findall(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", completion, flags=re.DOTALL)
    python = [body for lang, body in fences if lang.lower() in ("python", "py", "python3")]
    plain = [body for lang, body in fences if not lang]
    chosen = python or plain
    return (chosen[-1] if chosen else completion).strip("\n")


def run_python_tests(code: str, tests: str, *, timeout_s: float = 5.0, memory_mb: int = 512) -> SandboxResult:
    """Run `code`, then `tests` (asserts or a check() call) in the same namespace, in a sandboxed child.

    Args:
        code: the solution's source.
        tests: test source run after it; any exception it raises means "failed".
        timeout_s: wall-clock limit for the whole child, interpreter start included.
        memory_mb: address-space limit of the child.

    Returns:
        SandboxResult with status "passed", "failed" (a test raised), "error" (the code itself did not
        run, or the child died without a verdict), "timeout", "memory" or "blocked" (network, process
        spawning or writes outside the sandbox were attempted), or "unavailable" (the sandbox itself could
        not start: no judgement of the code).
    """
    start = time.monotonic()
    nonce = secrets.token_hex(16)
    read_fd, write_fd = os.pipe()
    payload = json.dumps(
        {
            "nonce": nonce,
            "result_fd": write_fd,
            "code": code,
            "tests": tests,
            "timeout_s": timeout_s,
            "memory_mb": memory_mb,
        }
    ).encode()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="flywheel-sandbox-") as workdir,
            tempfile.TemporaryFile() as out,
            tempfile.TemporaryFile() as err,
        ):
            workdir = os.path.realpath(workdir)
            env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", os.path.abspath(__file__)],
                cwd=workdir,
                env=env,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                pass_fds=(write_fd,),
                start_new_session=True,
            )
            os.close(write_fd)
            write_fd = -1
            timed_out = _wait(proc, payload, timeout_s)
            verdicts = _read_verdicts(read_fd, nonce)
            status, summary = _decide(timed_out, verdicts, proc.returncode, timeout_s)
            detail = _detail(summary, _tail(err), _tail(out))
    except OSError as e:  # could not even start the child (fork failed, disk full...)
        status, detail = "unavailable", f"sandbox failed to start: {e}"
    finally:
        os.close(read_fd)
        if write_fd != -1:
            os.close(write_fd)
    return SandboxResult(status == "passed", status, detail, round(time.monotonic() - start, 3))


def _wait(proc: subprocess.Popen, payload: bytes, timeout_s: float) -> bool:
    """Feed the payload and wait; on timeout kill the whole process group. Returns whether it timed out."""
    try:
        proc.communicate(payload, timeout=timeout_s)
        return False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group: anything the child managed to start dies too
        except ProcessLookupError:
            pass
        proc.wait()
        return True


def _read_verdicts(read_fd: int, nonce: str) -> list[tuple[str, str]]:
    """(status, summary) lines the bootstrap wrote to its pipe; lines without the nonce are ignored."""
    os.set_blocking(read_fd, False)
    data = b""
    try:
        while len(data) < 1 << 20:
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            data += chunk
    except BlockingIOError:
        pass
    verdicts = []
    for line in data.decode("utf-8", "replace").splitlines():
        tag, _, rest = line.partition(" ")
        status, _, summary = rest.partition(" ")
        if secrets.compare_digest(tag, nonce) and status in _STATUSES:
            verdicts.append((status, summary))
    return verdicts


def _decide(timed_out: bool, verdicts: list[tuple[str, str]], returncode: int, timeout_s: float) -> tuple[str, str]:
    """Final (status, summary): a blocked attempt beats everything, then the wall clock, then the verdict."""
    blocked = [s for status, s in verdicts if status == "blocked"]
    if blocked:
        return "blocked", blocked[0]
    if timed_out:
        return "timeout", f"killed after {timeout_s}s wall-clock limit"
    if verdicts:
        return verdicts[-1]
    if returncode in _KILL_SIGNALS:
        return _KILL_SIGNALS[returncode]
    return "error", f"child exited with code {returncode} before reporting a result"


def _tail(f, limit: int = _MAX_DETAIL_CHARS // 2) -> str:
    """The last `limit` bytes of a captured stream (decoded leniently), marked when cut."""
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - limit))
    text = f.read().decode("utf-8", "replace").strip()
    return ("..." + text) if size > limit else text


def _detail(summary: str, stderr: str, stdout: str) -> str:
    """The verdict first, then each stream's tail: bounded by _MAX_DETAIL_CHARS plus the two headers."""
    streams = [f"--- {name} ---\n{text}" for name, text in (("stderr", stderr), ("stdout", stdout)) if text]
    return "\n".join([summary, *streams])


# --- the child side: runs as `python -I -B sandbox.py`, before and around the untrusted code ------------

# audit event -> indices of its path arguments (checked for writes outside the sandbox), or None: always refused
_REFUSED_EVENTS: dict[str, tuple[int, ...] | None] = {
    "socket.__new__": None,
    "socket.connect": None,
    "socket.bind": None,
    "socket.getaddrinfo": None,
    "socket.sendto": None,
    "subprocess.Popen": None,
    "os.system": None,
    "os.exec": None,
    "os.posix_spawn": None,
    "os.spawn": None,
    "os.fork": None,
    "os.forkpty": None,
    "pty.spawn": None,
    "ctypes.dlopen": None,
    "os.remove": (0,),
    "os.rmdir": (0,),
    "os.mkdir": (0,),
    "os.rename": (0, 1),
    "os.link": (0, 1),
    "os.symlink": (1,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.truncate": (0,),
    "os.utime": (0,),
    "shutil.rmtree": (0,),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


class SandboxViolation(PermissionError):
    """Raised inside the child when the code tries something the sandbox refuses."""


def _child_main() -> None:
    """Bootstrap: read the job from stdin, lock the process down, run code then tests, report on the pipe."""
    import builtins
    import linecache
    import resource
    import traceback

    job = json.loads(sys.stdin.buffer.read())
    nonce, fd = job.pop("nonce"), job.pop("result_fd")

    def report(status: str, summary: str) -> None:
        line = f"{nonce} {status} {' '.join(summary.split())[:500]}\n".encode()
        try:
            os.write(fd, line)
        except OSError:
            pass

    for limit, value in (
        (resource.RLIMIT_AS, job["memory_mb"] * 1024 * 1024),
        (resource.RLIMIT_CPU, math.ceil(job["timeout_s"]) + 1),
        (resource.RLIMIT_FSIZE, _MAX_FILE_BYTES),
        (resource.RLIMIT_CORE, 0),
    ):
        _, hard = resource.getrlimit(limit)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        # hard too, so the code cannot raise it back; the CPU hard limit is one second later because at
        # the hard limit Linux sends SIGKILL (which reads as "memory") instead of SIGXCPU ("timeout")
        resource.setrlimit(limit, (value, value + (limit == resource.RLIMIT_CPU)))
    _isolate_network()
    root = os.getcwd() + os.sep
    blocked: list[str] = []

    def outside(path) -> bool:
        if isinstance(path, int):
            return False  # an fd already open: it was checked when opened
        real = os.path.realpath(os.fsdecode(path))
        return not (real + os.sep).startswith(root) and real != os.devnull

    def audit(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = any(c in (mode or "") for c in "wax+") or (mode is None and flags & _WRITE_FLAGS)
            violation = path is not None and writing and outside(path)
        elif event in ("os.kill", "os.killpg"):  # signals only to itself: never to the parent
            violation = args[0] not in (0, os.getpid())
        elif event in _REFUSED_EVENTS:
            paths = _REFUSED_EVENTS[event]
            violation = paths is None or any(i < len(args) and outside(args[i]) for i in paths)
        else:
            return
        if violation:
            message = f"{event} refused by the sandbox: {args!r}"[:300]
            if not blocked:
                blocked.append(message)
                report("blocked", message)  # at once: the code may catch the error, or os._exit()
            raise SandboxViolation(message)

    sources = {"solution.py": job["code"], "tests.py": job["tests"]}
    for name, source in sources.items():  # lets tracebacks quote the failing line
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    sys.stdin = open(os.devnull)  # input() sees EOF rather than the job
    sys.addaudithook(audit)  # cannot be removed again
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    stage = "compile"
    try:
        compiled = {name: compile(source, name, "exec") for name, source in sources.items()}
        stage = "solution.py"
        exec(compiled["solution.py"], namespace)
        stage = "tests.py"
        exec(compiled["tests.py"], namespace)
        status, summary = "passed", "all tests passed"
    except MemoryError:
        status, summary = "memory", f"MemoryError in {stage} (limit {job['memory_mb']} MB)"
    except SystemExit as e:  # tests that never ran did not pass
        status, summary = "failed", f"{stage} called exit({e.code!r}) before the tests finished"
    except BaseException as e:  # noqa: BLE001 - reporting every failure is the point
        # skip the bootstrap's own frame: the traceback starts in solution.py / tests.py
        traceback.print_exception(type(e), e, e.__traceback__.tb_next if stage != "compile" else None)
        status = "error" if stage != "tests.py" else "failed"
        summary = f"{type(e).__name__} in {stage}: {e}"
    if blocked:
        status, summary = "blocked", blocked[0]
    sys.stdout.flush()
    sys.stderr.flush()
    report(status, summary)


def _isolate_network() -> None:
    """Best effort: enter new user+network namespaces, which have no usable interface at all.

    Defence in depth behind the audit hook (which raw syscalls could bypass). Unprivileged user
    namespaces are disabled on some hosts and inside most containers; then this silently does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        clone_newuser, clone_newnet = 0x10000000, 0x40000000
        uid, gid = os.getuid(), os.getgid()
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(clone_newuser | clone_newnet) != 0:
            return
        # map our own ids, or creating files would fail with EOVERFLOW inside the new user namespace
        for path, text in (
            ("/proc/self/setgroups", "deny"),
            ("/proc/self/uid_map", f"{uid} {uid} 1"),
            ("/proc/self/gid_map", f"{gid} {gid} 1"),
        ):
            with open(path, "w") as f:
                f.write(text)
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    _child_main()

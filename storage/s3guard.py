"""Watchdog of the embedded S3 server:  python s3guard.py OWNER_PID SERVER_COMMAND...

Started by storage/s3server.py. The server is started with PR_SET_PDEATHSIG, so it gets SIGKILL if
this watchdog dies. The watchdog stops the server when its owner is gone, however it died: it is then
re-parented, which it checks every POLL_S (a pipe would stay open in any child the owner forked). It
passes SIGTERM on and exits with the server. Standard library only: it runs by path, outside the package.
"""

import ctypes
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1
POLL_S = 0.5


def main() -> int:
    owner, cmd = int(sys.argv[1]), sys.argv[2:]
    libc = ctypes.CDLL(None, use_errno=True)
    server = subprocess.Popen(cmd, preexec_fn=lambda: libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL))
    signal.signal(signal.SIGTERM, lambda *_: server.terminate())
    while server.poll() is None:
        if os.getppid() != owner:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
            break
        try:
            server.wait(POLL_S)
        except subprocess.TimeoutExpired:
            pass
    return server.wait()


if __name__ == "__main__":
    sys.exit(main())

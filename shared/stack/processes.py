"""What the launcher and the Kafka broker runner both do to the processes and files of a stack's
home: read a process's command line, signal its process group, ask whether a port accepts, lock a
file across processes and replace a file whole. Unix only: process groups, `fcntl`, `/proc` or `ps`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

__all__ = ["command_line", "file_lock", "port_accepts", "signal_group", "write_atomically"]


def command_line(pid: int) -> str | None:
    """The command line of `pid`: '' for a zombie or a process that is gone; None when this
    machine cannot tell (no /proc and no `ps`)."""
    if Path("/proc/self").is_dir():
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""
    ps = shutil.which("ps")
    if ps is None:
        return None
    listed = [ps, "-o", "command=", "-p", str(pid)]
    result = subprocess.run(listed, capture_output=True, text=True, check=False)
    return result.stdout.strip()


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send `sig` to the process group `pid` leads: every process of a stack is started in a
    session of its own (start_new_session), so its group id is its pid and the signal also reaches
    anything it forked. A group already gone is no error."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def port_accepts(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def port_bindable(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now. Unlike `port_accepts` this also sees a port
    held without a listener, e.g. as the local end of an outgoing connection: ports from 32768 are
    the kernel's ephemeral range, which any process's connections draw from."""
    with socket.socket() as probe:
        # As servers bind (the JVM's ServerSocket does too): a port left in TIME_WAIT counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing), across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_atomically(path: Path, text: str, *, private: bool = False) -> None:
    """Replace `path` whole, so a reader sees the old text or the new; `private`: readable by this
    user only, from the first byte."""
    staging = path.with_name(path.name + ".tmp")
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o666)
    with os.fdopen(descriptor, "w") as out:
        if private:  # a staging file left by an interrupted write keeps its old mode otherwise
            os.fchmod(out.fileno(), 0o600)
        out.write(text)
    staging.replace(path)

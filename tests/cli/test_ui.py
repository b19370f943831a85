"""`cascade ui` serves the console and is the server itself: a SIGTERM to the command stops it,
leaving nothing listening (a service manager's stop must not orphan the Streamlit server)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from cascade.stack.launcher import console_answers

PORT = 29598


def test_ui_serves_the_console_until_terminated(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "cascade.cli", "--home", str(tmp_path), "ui", "--port", str(PORT)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not console_answers(PORT):
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            assert time.monotonic() < deadline, "the console did not answer within 60 s"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) is not None
        output = process.stdout.read().decode() if process.stdout else ""
        assert f"Cascade console: http://127.0.0.1:{PORT}/" in output
        assert not console_answers(PORT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

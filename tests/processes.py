"""Run a multi-process command in its own process group under a hard timeout that kills every rank."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest


def run_group(
    cmd: Sequence[str],
    *,
    cwd: Path,
    timeout: float,
    what: str,
    env: Mapping[str, str] | None = None,
    kill_when: Path | None = None,
) -> subprocess.CompletedProcess:
    """``cmd`` with stdout and stderr merged; fails the test (after killing the group) if it outlives ``timeout``.

    The child never inherits ``LOCAL_RANK`` (Lightning's launcher sets it for rank 1, and an inherited one would
    make the child think it is a worker) and runs unbuffered, so a hang shows its last output. With ``kill_when``,
    the whole group is SIGKILLed (kill -9: every rank and worker) as soon as that file exists.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.Popen(
        list(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group: rank 1 and any workers die with it
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:  # communicate() may be retried after a timeout without losing output
                stdout, _ = proc.communicate(timeout=0.2 if kill_when is not None else timeout)
                break
            except subprocess.TimeoutExpired:
                if kill_when is not None and kill_when.exists():
                    os.killpg(proc.pid, signal.SIGKILL)
                    stdout, _ = proc.communicate()
                    break
                if time.monotonic() > deadline:
                    raise
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()
        pytest.fail(f"{what} did not finish in {timeout} s (deadlock?); output:\n{stdout[-4000:]}")
    finally:
        # Whatever happened, leave no rank or worker behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout)

"""Run a multi-process command in its own process group under a hard timeout that kills every rank."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest


def run_group(
    cmd: Sequence[str], *, cwd: Path, timeout: float, what: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``cmd`` with stdout and stderr merged; fails the test (after killing the group) if it outlives ``timeout``.

    The child never inherits ``LOCAL_RANK`` (Lightning's launcher sets it for rank 1, and an inherited one would
    make the child think it is a worker) and runs unbuffered, so a hang shows its last output.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.Popen(
        list(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group: rank 1 and any workers die with it
    )  # fmt: skip
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()
        pytest.fail(f"{what} did not finish in {timeout} s (deadlock?); output:\n{stdout[-4000:]}")
    finally:
        # Whatever happened, leave no rank or worker behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout)

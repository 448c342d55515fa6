"""Start ``python -m rewarddance serve`` as a child process, wait until it answers, and stop it with its workers.

For a reward server beside an RL run on one machine, for the tests and for benchmarks/serving.py. LitServe
starts worker processes; the server runs in its own process group so :meth:`ServerProcess.stop` ends all of them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from rewarddance.errors import RewardDanceError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it; another process could still take it before us)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``python -m rewarddance serve --model MODEL --port PORT *args`` in its own process group.

    Args:
        model: The export folder.
        port: The port (default: a free one).
        args: More ``serve`` flags, e.g. ``["--max_batch_size", "8"]``.
        api_key: Passed through the ``REWARDDANCE_API_KEY`` environment variable (not the command line).
        log: File that gets the server's output (default: discarded).
        env: Extra environment variables.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        port: int | None = None,
        args: Sequence[str] = (),
        api_key: str | None = None,
        log: str | os.PathLike | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.model, self.port, self.args = str(model), port or free_port(), list(args)
        self.api_key, self.log, self.env = api_key, Path(log) if log else None, env or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        """Start the server (returns at once; see :meth:`wait_ready`)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        if self.api_key:
            env["REWARDDANCE_API_KEY"] = self.api_key
        command = [sys.executable, "-m", "rewarddance", "serve", "--model", self.model, "--port", str(self.port)]
        output = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [*command, *self.args], env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        if output is not subprocess.DEVNULL:
            output.close()  # the child has its own descriptor
        return self

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Poll ``GET /health`` until it answers 200; returns the seconds waited.

        Raises:
            RewardDanceError: The server exited, or was not ready within ``timeout`` (it is stopped then).
        """
        started = time.monotonic()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        while time.monotonic() - started < timeout:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise RewardDanceError(f"the reward server on port {self.port} exited ({code}); see {self.log}")
            with contextlib.suppress(urllib.error.URLError, OSError):
                request = urllib.request.Request(self.url + "/health", headers=headers)
                with urllib.request.urlopen(request, timeout=2) as answer:
                    if answer.status == 200:
                        return time.monotonic() - started
            time.sleep(0.2)
        self.stop()
        raise RewardDanceError(f"the reward server on port {self.port} was not ready in {timeout} s; see {self.log}")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group (the server shuts its workers down), SIGKILL what is left after ``grace``."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace)
        # Workers that outlived the server (or a server that ignored SIGTERM): the whole group goes.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace)
        self.process = None

    def kill(self) -> None:
        """SIGKILL the whole group at once: a crash, for fault tests."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
            self.process = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

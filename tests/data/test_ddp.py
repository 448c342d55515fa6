"""Two real DDP processes (gloo on CPU), 2 workers each, on an uneven data set (7 + 5 + 9 samples).

Unequal batch counts across ranks deadlock DDP, and a deadlocked Lightning run ignores SIGTERM (its
handler waits on a collective the hung rank never joins: docs/notes.md), so the run happens in its own
process group and is SIGKILLed on a hard timeout.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

try:  # tests/ is a package here; the fallback keeps the file runnable if it stops being one
    from .streamkit import write_dataset
except ImportError:
    from streamkit import write_dataset  # type: ignore[no-redef]

from tests.processes import run_group

SCRIPT = Path(__file__).with_name("streamkit.py")
# A hang detector, not a speed check: ~13 s per run here beside two training jobs, but the first run of a
# fresh CI venv (cold imports in 2 processes) beside two others once took over 90 s.
TIMEOUT_S = 180


def run_ddp(data: Path, out: Path, even_out: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), "ddp", str(data), str(out), even_out]
    return run_group(cmd, cwd=out, timeout=TIMEOUT_S, what="DDP run")


@pytest.mark.timeout(TIMEOUT_S + 30)
@pytest.mark.parametrize("even_out", ["pad", "drop"])
def test_ddp_ranks_get_equal_batches_and_all_samples(tmp_path, even_out):
    keys = write_dataset(tmp_path / "data", [7, 5, 9])
    out = tmp_path / "out"
    out.mkdir()
    result = run_ddp(tmp_path / "data", out, even_out)
    assert result.returncode == 0, result.stdout[-4000:]

    per_rank = 11 if even_out == "pad" else 10  # ceil or floor of 21 / 2
    orders = []
    for epoch in range(2):
        ranks = [json.loads((out / f"epoch{epoch}-rank{r}.json").read_text()) for r in range(2)]
        counts = [len(r["batches"]) for r in ranks]
        assert counts[0] == counts[1] == ranks[0]["len"] == -(-per_rank // 2)  # batch size 2
        seen = Counter(key for r in ranks for batch in r["batches"] for key, _ in batch)
        padded = [sum(pad for batch in r["batches"] for _, pad in batch) for r in ranks]
        if even_out == "pad":
            assert set(seen) == set(keys)  # union over ranks = every sample
            assert sum(seen.values()) - len(keys) == sum(padded) == 1  # 2 * 11 - 21 repeats, all marked
        else:
            assert set(seen.values()) == {1} and len(set(keys) - set(seen)) == 1 and sum(padded) == 0
        assert all(p <= 2 for p in padded)  # at most one batch (of 2) per rank
        for r, rank in enumerate(ranks):  # each rank's own report agrees with what it trained on
            report = rank["report"]
            assert report["rank"] == r and report["batches"] == counts[r] and report["samples"] == per_rank
            assert report["padded"] == padded[r]
            assert (report["padded_all_ranks"], report["dropped_all_ranks"]) == (
                (1, 0) if even_out == "pad" else (0, 1)
            )
        orders.append([key for r in ranks for batch in r["batches"] for key, _ in batch])
    assert orders[0] != orders[1]

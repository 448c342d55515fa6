"""Shard builders for the streaming tests, and the entry point of the 2-process DDP run.

Run as a script (``python tests/data/streamkit.py ddp DATA OUT MODE``) it trains a trivial
LightningModule with ``Trainer(strategy="ddp", devices=2, accelerator="cpu")`` on a
:class:`ShardDataModule` and writes, per rank, the sample keys of every batch to ``OUT``.
Lightning starts the second rank by running the same command again.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from rewarddance.data.schema import SCHEMA_VERSION, Sample, encode_sample
from rewarddance.data.writer import MANIFEST, SampleWriter

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]


def tiny(color: str, size: int = 4) -> Image.Image:
    return Image.new("RGB", (size, size), color)


def make_sample(key: str, i: int = 0, kind: str = "pair", refs: int = 0) -> Sample:
    c1, c2 = COLORS[i % len(COLORS)], COLORS[(i + 3) % len(COLORS)]
    common: dict[str, Any] = {"key": key, "prompt": f"a {c1} square", "source": "test", "category": "colors"}
    if refs:
        common["references"] = [[tiny(COLORS[(i + r) % len(COLORS)])] for r in range(refs)]
    if kind == "pair":
        return Sample(
            kind="pair", first=[tiny(c1)], second=[tiny(c2)], label=("first", "second", "tie")[i % 3], **common
        )
    if kind == "point":
        return Sample(kind="point", image=[tiny(c1)], answer=("yes", "no")[i % 2], **common)
    return Sample(kind="caption", image=[tiny(c1)], caption=f"a {c1} square", **common)


def write_dataset(folder: str | os.PathLike, sizes: Sequence[int], prefix: str = "shard", refs: int = 0) -> list[str]:
    """Write shards of the given sizes with SampleWriter; returns all sample keys in write order."""
    keys: list[str] = []
    with SampleWriter(folder, prefix=prefix, max_count=max(sizes)) as writer:
        for s, size in enumerate(sizes):
            for j in range(size):
                key = f"{prefix}{s}x{j:03d}"
                writer.write(make_sample(key, len(keys), kind=("pair", "point", "caption")[len(keys) % 3], refs=refs))
                keys.append(key)
            writer.next_shard()
    return keys


def good_record(key: str, i: int = 0, refs: int = 0) -> dict[str, Any]:
    return encode_sample(make_sample(key, i, refs=refs))


def with_meta(record: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of a record with fields of its json member changed (bypassing the writer's validation)."""
    meta = json.loads(record["json"])
    meta.update(changes)
    return {**record, "json": json.dumps(meta).encode()}


def write_records(
    folder: str | os.PathLike, shards: Iterable[Sequence[dict[str, Any]]], prefix: str = "raw"
) -> list[Path]:
    """Write raw member dicts (possibly malformed) as tar shards plus a manifest, like SampleWriter."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries, paths = [], []
    for s, records in enumerate(shards):
        path = folder / f"{prefix}-{s:06d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for record in records:
                for member, payload in record.items():
                    if member.startswith("__"):
                        continue
                    info = tarfile.TarInfo(f"{record['__key__']}.{member}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        entries.append({"path": path.name, "samples": len(records)})
        paths.append(path)
    manifest = {"schema_version": SCHEMA_VERSION, "total": sum(e["samples"] for e in entries), "shards": entries}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return paths


def batch_keys(batch: Any) -> list[str]:
    return [s.key for s in batch]


# --------------------------------------------------------------------------------------------
# DDP entry point


def _ddp_main(data: str, out: str, even_out: str) -> None:
    import lightning as L
    import torch

    from rewarddance.data.datamodule import ShardDataModule

    torch.set_num_threads(1)

    class Recorder(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen: dict[int, list[list[tuple[str, bool]]]] = {}

        def training_step(self, batch: list[Sample], batch_idx: int) -> torch.Tensor:
            self.seen.setdefault(self.current_epoch, []).append([(s.key, s.padding) for s in batch])
            return (self.w**2).sum() + 0.0 * len(batch)

        def on_train_epoch_end(self) -> None:
            dm = self.trainer.datamodule
            report = dm.reports.get("train")
            record = {
                "batches": self.seen[self.current_epoch],
                "report": report,
                "len": len(self.trainer.train_dataloader),
            }
            path = Path(out) / f"epoch{self.current_epoch}-rank{self.global_rank}.json"
            path.write_text(json.dumps(record))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = ShardDataModule(train=data, batch_size=2, num_workers=2, shuffle_buffer=4, seed=3, even_out=even_out)  # type: ignore[arg-type]
    trainer = L.Trainer(
        strategy="ddp",
        devices=2,
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(Recorder(), datamodule=dm)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "ddp":
        _ddp_main(*sys.argv[2:])
    else:
        sys.exit(f"usage: {sys.argv[0]} ddp DATA OUT pad|drop")

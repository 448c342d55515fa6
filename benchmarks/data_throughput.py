"""Samples/s of the streaming shard loader against a folder of files, and what training consumes.

    python benchmarks/data_throughput.py [--samples 2000] [--epochs 3]

All loaders read the same 64 px shapes preference pairs with one reference image (three PNGs and
a JSON per sample), with 2 DataLoader workers, batch 32, and return the same decoded
``Sample`` objects, so the figures compare like with like:

- folder: one directory per sample (the PNG bytes copied out of the shards), a map-style
  dataset that reads and decodes every file: the baseline.
- stream: ``ShardStream`` with the training settings (per-epoch shard order, shuffle buffer).
- stream, no references: the same when the task does not use the reference image.
- webdataset decode("pil"): the raw WebDataset pipeline with its default PIL decoding, for scale.

Training consumption is measured on a pairwise reward-model step of the tiny Qwen2-VL backbone
(processor encode + forward + backward + AdamW, batch 32, one thread), the model the quickstart
fine-tunes. Each loader figure is the median of ``--epochs`` timed passes after one warm-up pass.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from rewarddance.data.schema import Sample, decode_sample
from rewarddance.data.stream import ShardStream, StreamLoader, iter_tar_samples, resolve_shards
from rewarddance.shapes import build_split

BATCH = 32
WORKERS = 2


class FolderDataset(Dataset):
    """The baseline: every sample a folder of files, decoded on access."""

    def __init__(self, root: Path) -> None:
        self.dirs = sorted(p for p in root.iterdir() if p.is_dir())

    def __len__(self) -> int:
        return len(self.dirs)

    def __getitem__(self, i: int) -> Sample:
        d = self.dirs[i]
        raw = {"__key__": d.name, "__url__": str(d), "json": (d / "json").read_bytes()}
        for f in d.iterdir():
            if f.name != "json":
                raw[f.name] = f.read_bytes()
        return decode_sample(raw)


def export_folder(shards: Path, root: Path) -> int:
    n = 0
    for info in resolve_shards(str(shards)):
        for raw in iter_tar_samples(info.url):
            d = root / raw["__key__"]
            d.mkdir(parents=True)
            for member, payload in raw.items():
                if not member.startswith("__"):
                    (d / member).write_bytes(payload)
            n += 1
    return n


def _list(batch: list) -> list:
    return batch


def time_loader(make_loader, epochs: int) -> tuple[float, int]:
    """Median samples/s over ``epochs`` passes after a warm-up pass."""
    rates, count = [], 0
    for epoch in range(epochs + 1):
        loader = make_loader()
        start, count = time.perf_counter(), 0
        for batch in loader:
            count += len(batch)
        if epoch > 0:
            rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates), count


def training_consumption(shards: Path, steps: int = 5) -> float:
    """Samples/s a tiny pairwise reward-model training step consumes (encode + fwd + bwd + AdamW)."""
    from rewarddance.models import load_backbone

    torch.set_num_threads(1)
    backbone = load_backbone("tiny-qwen2-vl")
    model = backbone.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    samples = []
    for info in resolve_shards(str(shards)):
        for raw in iter_tar_samples(info.url):
            samples.append(decode_sample(raw))
            if len(samples) == BATCH:
                break
        if len(samples) == BATCH:
            break
    prompt = "<image> <image> Prompt: {}. Is image 2 better than image 1? Answer yes or no."
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        inputs = backbone.encode(
            [prompt.format(s.prompt) for s in samples],
            [[s.first[0], s.second[0]] for s in samples],
            answers=["yes" if s.label == "second" else "no" for s in samples],
        )
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step > 0:
            times.append(time.perf_counter() - start)
    return BATCH / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        shards = tmp_path / "shards"
        build_split(
            shards, "train", args.samples, seed=0, kinds=("pair",), references=1, shard_size=250, progress=False
        )
        folder = tmp_path / "folder"
        export_folder(shards, folder)
        size = sum(p.stat().st_size for p in shards.glob("*.tar")) / 2**20
        print(
            f"{args.samples} pairs with 1 reference, 64 px PNG, {size:.1f} MiB of shards; batch {BATCH}, {WORKERS} workers"
        )

        def folder_loader():
            return DataLoader(
                FolderDataset(folder), batch_size=BATCH, shuffle=True, num_workers=WORKERS, collate_fn=_list
            )

        def stream_loader(load_references: bool = True):
            def make():
                stream = ShardStream(
                    str(shards), batch_size=BATCH, shuffle=True, shuffle_buffer=1000, load_references=load_references
                )
                return StreamLoader(stream, num_workers=WORKERS)

            return make

        urls = [info.url for info in resolve_shards(str(shards))]

        def webdataset_loader():
            # The default decoders are safe here only because these shards hold nothing but PNG and JSON.
            pipeline = wds.WebDataset(urls, shardshuffle=len(urls), empty_check=False).shuffle(1000).decode("pil")
            return wds.WebLoader(pipeline.batched(BATCH, collation_fn=_list), batch_size=None, num_workers=WORKERS)

        rows = [
            ("folder of files (baseline)", *time_loader(folder_loader, args.epochs)),
            ("stream (rewarddance)", *time_loader(stream_loader(), args.epochs)),
            ("stream, references not decoded", *time_loader(stream_loader(False), args.epochs)),
            ('webdataset .decode("pil")', *time_loader(webdataset_loader, args.epochs)),
        ]
        consumed = training_consumption(shards)

    base = rows[0][1]
    print(f"\n{'loader':<34} {'samples/s':>10} {'vs folder':>10} {'vs training':>12}")
    for name, rate, count in rows:
        print(f"{name:<34} {rate:>10.0f} {rate / base:>9.2f}x {rate / consumed:>11.1f}x   ({count} samples/epoch)")
    print(f"{'training consumes (tiny-qwen2-vl)':<34} {consumed:>10.0f}")
    print(json.dumps({name: round(rate, 1) for name, rate, _ in rows} | {"training": round(consumed, 1)}))


if __name__ == "__main__":
    Image.init()
    main()

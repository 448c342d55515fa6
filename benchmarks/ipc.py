"""What a reward batch costs the training process to receive from a DataLoader worker.

    python benchmarks/ipc.py [--batches 200] [--repeats 3]

Builds the quickstart's batches (its config's paradigm, backbone, template and sample settings,
16 samples of ``data/shapes/train`` each) and sends them from a forked worker process through a torch
multiprocessing queue, as a DataLoader worker does. Two arms, alternated in one run so that both see the
same machine load: ``tensors`` (every tensor crosses in its own shared-memory segment, torch's default)
and ``inline`` (``RewardBatch`` pickles tensors up to ``INLINE_TENSOR_BYTES`` inline, what the package
does). Prints the receiving process's CPU milliseconds per batch for each arm and repeat.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp
import yaml

import rewarddance.judge.batch as batch_module
from rewarddance.data.schema import decode_sample
from rewarddance.data.stream.tar_reader import iter_tar_samples
from rewarddance.tasks.reward import GenerativeRewardTask

ROOT = Path(__file__).resolve().parents[1]


def quickstart_batches(count: int) -> list[batch_module.RewardBatch]:
    recipe = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())["model"]["init_args"]
    rows = ("paradigm", "backbone", "template", "point_samples", "ties")  # what decides a batch's rows and tokens
    task = GenerativeRewardTask(**{name: recipe[name] for name in rows})
    task.configure_model()
    collate = task.collator
    shard = sorted((ROOT / "data" / "shapes" / "train").glob("*.tar*"))[0]
    samples = [decode_sample(raw) for raw in iter_tar_samples(str(shard))]
    return [collate(samples[(16 * i) % (len(samples) - 16) :][:16]) for i in range(count)]


def send(queue: mp.Queue, done: mp.Event, batches: list, inline_bytes: int) -> None:
    batch_module.INLINE_TENSOR_BYTES = inline_bytes
    for batch in batches:
        queue.put(batch)
    done.wait()  # the receiver must fetch the shared-memory segments before this process exits


def receive_ms(batches: list, inline_bytes: int) -> float:
    ctx = mp.get_context("fork")
    queue, done = ctx.Queue(maxsize=4), ctx.Event()
    worker = ctx.Process(target=send, args=(queue, done, batches, inline_bytes))
    worker.start()
    queue.get()  # the first one includes the worker's start
    start = time.process_time()
    for _ in range(len(batches) - 1):
        received = queue.get()
        del received
    spent = time.process_time() - start
    done.set()
    worker.join()
    return spent * 1000 / (len(batches) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    batches = quickstart_batches(args.batches)
    first = batches[0]
    sizes = [t.numel() * t.element_size() for t in first.inputs.values() if isinstance(t, torch.Tensor)]
    rows = first.inputs["input_ids"].shape[0]
    print(f"batch: {len(first.keys)} samples kept of 16, {rows} rows, largest tensor {max(sizes)} bytes")
    arms = {"tensors": 0, "inline": batch_module.INLINE_TENSOR_BYTES}
    results: dict[str, list[float]] = {name: [] for name in arms}
    for repeat in range(args.repeats):
        for name, inline_bytes in arms.items():
            results[name].append(receive_ms(batches, inline_bytes))
            print(f"repeat {repeat} {name:8s}: {results[name][-1]:.2f} ms CPU per batch in the receiving process")
    for name, values in results.items():
        print(f"{name:8s}: mean {statistics.mean(values):.2f} ms, min {min(values):.2f}, max {max(values):.2f}")


if __name__ == "__main__":
    main()

"""Tiny fixtures in the real on-disk formats of the public preference datasets (see shared DATASETS.md).

Each builder writes a handful of rows under a folder (usually pytest's ``tmp_path``), with ties,
rows the dataset's conventions exclude and broken rows, and returns the input path plus what the
importer should make of it. Images are small random PNGs, so tests can compare pixels exactly.
Columns are written in an unusual order on purpose: importers must read them by name.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

NOT_AN_IMAGE = b"\x89PNG\r\n\x1a\n-- truncated, not an image --"


def make_image(seed: int, size: tuple[int, int] = (8, 6)) -> Image.Image:
    """A random RGB image: distinct seeds give distinct pixels."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def save_png(img: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path


def image_writer(images: dict[str, Image.Image], folder: Path, ref_prefix: str = "") -> Callable[[str, int], str]:
    """``img(name, seed)`` for a fixture's records: saves a random image as ``folder/name``.

    It also keeps the image in ``images`` under ``name``, for comparing pixels after the import,
    and returns the path the dataset's records name it by: ``ref_prefix + name``.
    """

    def img(name: str, seed: int) -> str:
        images[name] = make_image(seed)
        save_png(images[name], folder / name)
        return ref_prefix + name

    return img


@dataclass
class Fixture:
    """A dataset on disk and what importing it should give.

    Attributes:
        input: What to pass as ``input``.
        images: Name (file name, or an id chosen by the builder) -> the image written.
        expect: Builder-specific expectations (labels by key, counts, ...).
    """

    input: Path
    images: dict[str, Image.Image] = field(default_factory=dict)
    expect: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Pick-a-Pic v2


def make_pickapic(root: Path, *, url_only: bool = False, name: str = "test-00000-of-00001.parquet") -> Fixture:
    """Pick-a-Pic v2 parquet (``url_only``: the variant without jpg_0/jpg_1).

    Rows: 0 image 0 wins, 1 image 1 wins, 2 tie, 3 no decision, 4 undecodable jpg_1,
    5 empty caption, 6 unknown label 0.3/0.7, 7 identical images (are_different false).
    """
    imgs = {f"{r}_{s}": make_image(100 + 2 * r + s) for r in range(8) for s in (0, 1)}
    jpg_0 = [png_bytes(imgs[f"{r}_0"]) for r in range(8)]
    jpg_1 = [png_bytes(imgs[f"{r}_1"]) for r in range(8)]
    jpg_1[4] = NOT_AN_IMAGE
    labels = [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5), (0.5, 0.5), (1.0, 0.0), (1.0, 0.0), (0.3, 0.7), (1.0, 0.0)]
    captions = ["a red cube", "a cat", "two dogs", "no decision", "broken", "   ", "odd label", "same image"]
    n = 8
    columns: dict[str, pa.Array] = {
        "label_1": pa.array([b for _, b in labels], pa.float64()),
        "are_different": pa.array([r != 7 for r in range(n)]),
        "best_image_uid": pa.array([f"uid{r}_best" for r in range(n)]),
        "model_1": pa.array([f"model-b{r}" for r in range(n)]),
        "caption": pa.array(captions),
        "image_0_uid": pa.array([f"uid{r}_0" for r in range(n)]),
        "image_1_uid": pa.array([f"uid{r}_1" for r in range(n)]),
        "image_0_url": pa.array([f"https://example.invalid/{r}_0.jpg" for r in range(n)]),
        "image_1_url": pa.array([f"https://example.invalid/{r}_1.jpg" for r in range(n)]),
        "model_0": pa.array([f"model-a{r}" for r in range(n)]),
        "created_at": pa.array([dt.datetime(2023, 5, 1, 12, r) for r in range(n)], pa.timestamp("us")),
        "has_label": pa.array([r != 3 for r in range(n)]),
        "ranking_id": pa.array([1000 + r for r in range(n)], pa.int64()),
        "user_id": pa.array([7 for _ in range(n)], pa.int64()),
        "num_example_per_prompt": pa.array([1 for _ in range(n)], pa.int64()),
        "__index_level_0__": pa.array(list(range(50, 50 + n)), pa.int64()),
        "label_0": pa.array([a for a, _ in labels], pa.float64()),
    }
    if not url_only:
        columns = {"jpg_1": pa.array(jpg_1, pa.binary()), **columns, "jpg_0": pa.array(jpg_0, pa.binary())}
    path = root / "data" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return Fixture(
        input=root,
        images=imgs,
        expect={
            "labels": {0: ("first", 1.0), 1: ("second", 0.0), 2: ("tie", 0.5)},
            "skipped": {
                "no_decision": 1,
                "bad_image": 1,
                "empty_prompt": 1,
                "unknown_label": 1,
                "not_different": 1,
            },
            "read": 8,
        },
    )


# ---------------------------------------------------------------------------------------------
# HPDv2


def make_hpdv2(root: Path, *, path_key: str = "image_path") -> Fixture:
    """HPDv2 ``train.json`` + ``test.json`` at ``root``, images under ``root/HPD/{train,test}/``.

    train rows: 0 ``[1, 0]``, 1 ``[0, 1]``, 2 missing image file, 3 unknown preference ``[1, 1]``.
    test rows: 0 three images ranked [1, 2, 2] (pairs first, first, tie), 1 two images ranked [2, 1].
    """
    images: dict[str, Image.Image] = {}
    train_img = image_writer(images, root / "HPD" / "train")
    test_img = image_writer(images, root / "HPD" / "test")

    train = [
        {
            "prompt": "a castle",
            "human_preference": [1, 0],
            path_key: [train_img("t0a.png", 1), train_img("t0b.png", 2)],
        },
        {
            "prompt": "a river",
            "human_preference": [0, 1],
            path_key: [train_img("t1a.png", 3), train_img("t1b.png", 4)],
        },
        {"prompt": "a bridge", "human_preference": [1, 0], path_key: [train_img("t2a.png", 5), "missing.png"]},
        {
            "prompt": "a tower",
            "human_preference": [1, 1],
            path_key: [train_img("t3a.png", 6), train_img("t3b.png", 7)],
        },
    ]
    test = [
        {
            "prompt": "a fox",
            "image_path": [test_img(f"s0_{i}.png", 10 + i) for i in range(3)],
            "rank": [1, 2, 2],
            "raw_annotations": [{"rank": [1, 2, 2], "user_hash": "u1"}, {"rank": [1, 3, 2], "user_hash": "u2"}],
        },
        {
            "prompt": "an owl",
            "image_path": [test_img(f"s1_{i}.png", 20 + i) for i in range(2)],
            "rank": [2, 1],
            "raw_annotations": [{"rank": [2, 1], "user_hash": "u3"}],
        },
    ]
    (root / "train.json").write_text(json.dumps(train))
    (root / "test.json").write_text(json.dumps(test))
    return Fixture(
        input=root,
        images=images,
        expect={
            "train": {
                "hpdv2-00000000": ("first", "t0a.png", "t0b.png"),
                "hpdv2-00000001": ("second", "t1a.png", "t1b.png"),
            },
            "test": {
                "hpdv2-00000000-0-1": ("first", "s0_0.png", "s0_1.png"),
                "hpdv2-00000000-0-2": ("first", "s0_0.png", "s0_2.png"),
                "hpdv2-00000000-1-2": ("tie", "s0_1.png", "s0_2.png"),
                "hpdv2-00000001-0-1": ("second", "s1_0.png", "s1_1.png"),
            },
        },
    )


# ---------------------------------------------------------------------------------------------
# ImageReward


def make_imagereward_test(root: Path) -> Fixture:
    """ImageReward ``test.json``: rankings with ties and gaps, and one row whose image is missing.

    Row 0 (id "p0"): 4 generations ranked [2, 1, 2, 4]; row 1 ("p1"): missing image;
    row 2 ("p2"): 2 generations ranked [1, 1] (one tied pair).
    """
    images: dict[str, Image.Image] = {}
    img = image_writer(images, root / "images", "images/")

    records = [
        {
            "id": "p0",
            "prompt": "a lighthouse",
            "generations": [img(f"p0_{i}.png", 30 + i) for i in range(4)],
            "ranking": [2, 1, 2, 4],
        },
        {"id": "p1", "prompt": "a desert", "generations": [img("p1_0.png", 40), "images/gone.png"], "ranking": [1, 2]},
        {
            "id": "p2",
            "prompt": "a forest",
            "generations": [img(f"p2_{i}.png", 50 + i) for i in range(2)],
            "ranking": [1, 1],
        },
    ]
    path = root / "test.json"
    path.write_text(json.dumps(records))
    return Fixture(
        input=path,
        images=images,
        expect={
            "labels": {
                "imagereward-00000000-0-1": "second",
                "imagereward-00000000-0-2": "tie",
                "imagereward-00000000-0-3": "first",
                "imagereward-00000000-1-2": "first",
                "imagereward-00000000-1-3": "first",
                "imagereward-00000000-2-3": "first",
                "imagereward-00000002-0-1": "tie",
            }
        },
    )


def make_imagerewarddb(root: Path) -> Fixture:
    """ImageRewardDB per-image records (json list), two prompt ids interleaved.

    prompt 17 ("art"): ranks [3, 1, 2]; prompt 18 ("people"): ranks [1, 1] (a tie).
    """
    images: dict[str, Image.Image] = {}
    img = image_writer(images, root / "images" / "train", "images/train/")

    def rec(pid: int, name: str, rank: int, seed: int, cls: str, prompt: str) -> dict[str, Any]:
        return {
            "image_path": img(name, seed),
            "prompt_id": pid,
            "prompt": prompt,
            "classification": cls,
            "image_amount_in_total": 3,
            "rank": rank,
            "overall_rating": 7 - rank,
            "image_text_alignment_rating": 5,
            "fidelity_rating": 4,
        }

    records = [
        rec(17, "a.png", 3, 60, "Arts", "a mural"),
        rec(18, "d.png", 1, 63, "People", "a crowd"),
        rec(17, "b.png", 1, 61, "Arts", "a mural"),
        rec(18, "e.png", 1, 64, "People", "a crowd"),
        rec(17, "c.png", 2, 62, "Arts", "a mural"),
    ]
    path = root / "metadata-train.json"
    path.write_text(json.dumps(records))
    return Fixture(
        input=path,
        images=images,
        expect={
            # group 0 = prompt 17 (images a, b, c), group 1 = prompt 18 (d, e)
            "pairs": {
                "imagereward-00000000-0-1": ("second", "a.png", "b.png", "Arts"),
                "imagereward-00000000-0-2": ("second", "a.png", "c.png", "Arts"),
                "imagereward-00000000-1-2": ("first", "b.png", "c.png", "Arts"),
                "imagereward-00000001-0-1": ("tie", "d.png", "e.png", "People"),
            }
        },
    )


# ---------------------------------------------------------------------------------------------
# VideoGen-RewardBench


def make_clip(folder: Path, seed: int, frames: int = 3) -> list[Image.Image]:
    clip = [make_image(seed * 10 + t) for t in range(frames)]
    for t, frame in enumerate(clip):
        save_png(frame, folder / f"frame_{t + 1}.png")  # 1-based, natural order
    return clip


def write_csv(path: Path, header: list[str], rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def make_videogen_rewardbench(root: Path) -> Fixture:
    """The benchmark csv with frame folders ``videos/<stem>/``.

    Rows: 0 Overall A, 1 Overall B, 2 Overall same, 3 Overall invalid (dropped),
    4 missing clip (only the mp4 exists), 5 unknown label "C" in MQ.
    Row 1's csv says 6 frames but its folder holds 3: its fps is halved.
    """
    clips = {f"v{k}": make_clip(root / "videos" / f"v{k}", k) for k in range(12)}
    (root / "videos" / "v_nomp4.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    overall = ["A", "B", "same", "invalid", "A", "A"]
    rows = []
    for r in range(6):
        a, b = f"videos/v{2 * r}.mp4", f"videos/v{2 * r + 1}.mp4"
        if r == 4:
            b = "videos/v_nomp4.mp4"
        rows.append(
            {
                "prompt": f"prompt {r}",
                "Overall": overall[r],
                "path_B": b,
                "TA": "B",
                "VQ": "same",
                "MQ": "C" if r == 5 else "A",
                "path_A": a,
                "A_model": "kling",
                "B_model": "gen3",
                "fps_A": 8,
                "num_frames_A": 6 if r == 1 else 3,
                "fps_B": 16,
                "num_frames_B": 3,
            }
        )
    header = [
        "prompt",
        "path_B",
        "B_model",
        "Overall",
        "TA",
        "path_A",
        "VQ",
        "MQ",
        "A_model",
        "fps_A",
        "num_frames_A",
        "fps_B",
        "num_frames_B",
    ]
    path = write_csv(root / "videogen-rewardbench.csv", header, rows)
    return Fixture(
        input=path,
        images={f"{k}.{t}": frame for k, clip in clips.items() for t, frame in enumerate(clip)},
        expect={
            "labels": {0: "first", 1: "second", 2: "tie"},
            "fps": {0: 8.0, 1: 4.0, 2: 8.0},
            "skipped": {"invalid": 1, "missing_clip": 1, "unknown_label": 1},
        },
    )


def make_videogen_train_csv(root: Path) -> Fixture:
    """The training csv: no model columns, no Overall; ``invalid`` appears in TA and VQ.

    Rows: 0 VQ A / MQ B / TA same, 1 VQ invalid / MQ A / TA B, 2 VQ B / MQ same / TA invalid.
    """
    for k in range(6):
        make_clip(root / "clips" / f"c{k}", 50 + k, frames=2)
    dims = [("A", "B", "same"), ("invalid", "A", "B"), ("B", "same", "invalid")]
    rows = [
        {
            "path_A": f"c{2 * r}.mp4",
            "path_B": f"c{2 * r + 1}.mp4",
            "prompt": f"train {r}",
            "VQ": vq,
            "MQ": mq,
            "TA": ta,
            "fps_A": 24,
            "fps_B": 24,
        }
        for r, (vq, mq, ta) in enumerate(dims)
    ]
    path = write_csv(root / "train.csv", ["prompt", "TA", "MQ", "VQ", "path_A", "path_B", "fps_A", "fps_B"], rows)
    return Fixture(input=path, expect={"frames_root": root / "clips"})


# ---------------------------------------------------------------------------------------------
# GenAI-Bench

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def make_genai_bench_images(root: Path, *, raw_bytes: bool = False) -> Fixture:
    """GenAI-Bench ``image_generation`` parquet; images as HF ``{bytes, path}`` structs or raw bytes.

    Rows: 0 leftvote, 1 rightvote, 2 tievote, 3 bothbad_vote, 4 unknown vote "maybe",
    5 leftvote with an undecodable right image. With structs, row 1's left image is given by
    path only (``files/r1_left.png`` next to the parquet).
    """
    images = {f"{r}_{s}": make_image(200 + 2 * r + (s == "right")) for r in range(6) for s in ("left", "right")}
    votes = ["leftvote", "rightvote", "tievote", "bothbad_vote", "maybe", "leftvote"]
    folder = root / "image_generation"
    save_png(images["1_left"], folder / "files" / "r1_left.png")

    def column(side: str) -> pa.Array:
        values = [png_bytes(images[f"{r}_{side}"]) for r in range(6)]
        if side == "right":
            values[5] = NOT_AN_IMAGE
        if raw_bytes:
            return pa.array(values, pa.binary())
        structs = [{"bytes": v, "path": f"{r}_{side}.png"} for r, v in enumerate(values)]
        if side == "left":
            structs[1] = {"bytes": None, "path": "files/r1_left.png"}
        return pa.array(structs, IMAGE_STRUCT)

    table = pa.table(
        {
            "vote_type": pa.array(votes),
            "right_image": column("right"),
            "prompt": pa.array([f"prompt {r}" for r in range(6)]),
            "left_model": pa.array(["sdxl"] * 6),
            "right_model": pa.array(["playground"] * 6),
            "left_image": column("left"),
            "tstamp": pa.array([1700000000.5 + r for r in range(6)]),
        }
    )
    path = folder / "test-00000-of-00001.parquet"
    pq.write_table(table, path)
    return Fixture(
        input=root,
        images=images,
        expect={
            "labels": {0: "first", 1: "second", 2: "tie", 3: "tie"},
            "both_bad": {0: False, 1: False, 2: False, 3: True},
            "skipped": {"unknown_label": 1, "bad_image": 1},
        },
    )


def make_genai_bench_videos(root: Path) -> Fixture:
    """GenAI-Bench ``video_generation`` parquet naming mp4 files, with frame folders beside it.

    Rows: 0 leftvote, 1 tievote.
    """
    folder = root / "video_generation"
    clips = {f"g{k}": make_clip(folder / "videos" / f"g{k}", 300 + k, frames=2) for k in range(4)}
    table = pa.table(
        {
            "prompt": ["a bird flying", "waves"],
            "left_model": ["lavie", "videocrafter2"],
            "right_model": ["opensora", "lavie"],
            "left_video": ["videos/g0.mp4", "videos/g2.mp4"],
            "right_video": ["videos/g1.mp4", "videos/g3.mp4"],
            "vote_type": ["leftvote", "tievote"],
        }
    )
    path = folder / "test-00000-of-00001.parquet"
    pq.write_table(table, path)
    return Fixture(input=root, images={f"{k}.{t}": f for k, c in clips.items() for t, f in enumerate(c)})


# ---------------------------------------------------------------------------------------------
# HPDv3


def make_hpdv3(root: Path, *, n: int = 12) -> Fixture:
    """HPDv3 ``train.json`` (with choice_dist and confidence) and ``test.json`` (without).

    path1 is always the preferred image. Train row 0 has choice_dist null, the others [k + 3, 1].
    """
    images: dict[str, Image.Image] = {}
    img = image_writer(images, root / "images", "images/")

    train = [
        {
            "prompt": f"scene {k}",
            "path1": img(f"tr{k}_good.png", 400 + 2 * k),
            "path2": img(f"tr{k}_bad.png", 401 + 2 * k),
            "model1": "flux",
            "model2": f"sd{k}",
            "choice_dist": None if k == 0 else [k + 3, 1],
            "confidence": None if k == 0 else 0.9,
        }
        for k in range(n)
    ]
    test = [
        {
            "prompt": f"test {k}",
            "path1": img(f"te{k}_good.png", 500 + 2 * k),
            "path2": img(f"te{k}_bad.png", 501 + 2 * k),
            "model1": "flux",
            "model2": "sd",
        }
        for k in range(4)
    ]
    (root / "train.json").write_text(json.dumps(train))
    (root / "test.json").write_text(json.dumps(test))
    return Fixture(input=root, images=images, expect={"train": train, "test": test})

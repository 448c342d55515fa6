"""`python -m rewarddance score`: one image, a folder with metadata.jsonl, and a shard set."""

import json

import pytest
import torch
from PIL import Image

from rewarddance.cli import main
from rewarddance.data.shapes import build_split
from rewarddance.reward_model import RewardModel
from rewarddance.tasks import GenerativeRewardTask


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for paradigm in ("pairwise", "pointwise"):
        task = GenerativeRewardTask(paradigm=paradigm)
        task.configure_model()
        out[paradigm] = task.export_to(root / paradigm)
    return out


def test_single_image_prints_the_reward_of_the_model(exports, tmp_path, capsys):
    Image.new("RGB", (64, 64), "red").save(tmp_path / "a.png")
    Image.new("RGB", (64, 64), "blue").save(tmp_path / "b.png")
    args = ["score", "--model", str(exports["pairwise"]), "--prompt", "a red square"]
    reward = main([*args, "--image", str(tmp_path / "a.png"), "--reference", str(tmp_path / "b.png")]).result
    expected = RewardModel.from_pretrained(exports["pairwise"]).score(
        ["a red square"],
        [Image.open(tmp_path / "a.png").convert("RGB")],
        [Image.open(tmp_path / "b.png").convert("RGB")],
    )
    assert reward == pytest.approx(expected.item(), abs=1e-6)
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"reward {reward:.6f}"
    with pytest.raises(ValueError, match="pairwise reward model: give --reference"):
        main([*args, "--image", str(tmp_path / "a.png")])


def test_folder_with_metadata_to_jsonl(exports, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rows = []
    for i, colour in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (64, 64), colour).save(folder / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "prompt": f"a {colour} circle"})
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "scores.jsonl"
    main(
        ["score", "--model", str(exports["pointwise"]), "--input", str(folder), "--out", str(out), "--batch_size", "2"]
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["key"] for r in records] == ["0.png", "1.png", "2.png"]
    model = RewardModel.from_pretrained(exports["pointwise"])
    images = [Image.open(folder / r["file_name"]).convert("RGB") for r in rows]
    expected = model.score([r["prompt"] for r in rows], images)
    torch.testing.assert_close(torch.tensor([r["reward"] for r in records]), expected, atol=1e-5, rtol=1e-4)


def test_shards_to_jsonl_for_both_paradigms(exports, tmp_path):
    shards = tmp_path / "shards"
    build_split(shards, "test-id", samples=6, seed=0, progress=False)
    for paradigm, export in exports.items():
        out = tmp_path / f"{paradigm}.jsonl"
        main(["score", "--model", str(export), "--input", str(shards), "--out", str(out)])
        records = [json.loads(line) for line in out.read_text().splitlines()]
        # 3 pairs and 3 point samples; a pairwise model skips the points (no reference to judge against)
        assert len(records) == (3 if paradigm == "pairwise" else 6)
        assert all(0.0 < r["reward"] < 1.0 for r in records)
        pairs = [r for r in records if r["label"] in ("first", "second", "tie")]
        assert pairs and all(("reward_first" in r) == (paradigm == "pointwise") for r in pairs)

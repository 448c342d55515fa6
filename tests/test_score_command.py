"""`python -m rewarddance score`: one image, a folder with metadata.jsonl, a shard set, an imported benchmark."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from rewarddance.cli import main
from rewarddance.data.importers import import_dataset
from rewarddance.judge.reward_model import RewardModel
from rewarddance.metrics import hpsv2_accuracy, imagereward_accuracy, pickscore_accuracy
from rewarddance.shapes import build_split
from rewarddance.tasks import GenerativeRewardTask

try:  # tests/ may or may not be a package
    from .data import importer_fixtures as fx
except ImportError:
    from data import importer_fixtures as fx  # type: ignore[no-redef]


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
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--image", str(tmp_path / "a.png")])
    assert exit_info.value.code == 1
    assert "pairwise reward model: give --reference" in capsys.readouterr().err


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


# ---------------------------------------------------------------------------------------------
# Imported public benchmarks: the accuracy in the benchmark's own convention


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory):
    """Tiny imports of ImageReward test, HPDv2 test and Pick-a-Pic (fixtures of tests/data/importer_fixtures.py)."""
    root = tmp_path_factory.mktemp("benchmarks")
    imports = {
        "imagereward": ("imagereward", fx.make_imagereward_test(root / "ir").input, {"on_error": "skip"}),
        "hpdv2": ("hpdv2", fx.make_hpdv2(root / "hpd").input, {"split": "test"}),
        "pickapic": ("pickapic", fx.make_pickapic(root / "pap").input, {"on_error": "skip"}),
    }
    out = {}
    for name, (fmt, source, kwargs) in imports.items():
        import_dataset(fmt, source, root / f"{name}-shards", progress=False, **kwargs)
        out[name] = root / f"{name}-shards"
    return out


def _score_benchmark(export, shards, out, capsys):
    capsys.readouterr()
    result = main(["score", "--model", str(export), "--input", str(shards), "--out", str(out), "--convention", "auto"])
    printed = capsys.readouterr().out.strip().splitlines()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return result.result, printed, records


def _side(record):
    """The model's pick: +1 second, -1 first, 0 tie (pairwise: reward vs 0.5; pointwise: vs reward_first)."""
    return float(np.sign(record["reward"] - record.get("reward_first", 0.5)))


def _per_image_scores(records):
    """Per ranking (group): each image's reward, from a pointwise model's pairs (image i first, j second)."""
    groups: dict[str, dict[int, float]] = {}
    ranks: dict[str, dict[int, float]] = {}
    for r in records:
        (i, j), g = r["pair"], r["group"]
        groups.setdefault(g, {}).update({i: r["reward_first"], j: r["reward"]})
        ranks.setdefault(g, {}).update({i: r["ranks"][0], j: r["ranks"][1]})
    keys = sorted(groups)
    return [[groups[g][i] for i in sorted(groups[g])] for g in keys], [
        [ranks[g][i] for i in sorted(ranks[g])] for g in keys
    ]


@pytest.mark.parametrize("paradigm", ["pairwise", "pointwise"])
def test_imagereward_benchmark_prints_and_returns_the_imagereward_accuracy(
    exports, benchmarks, tmp_path, capsys, paradigm
):
    result, printed, records = _score_benchmark(
        exports[paradigm], benchmarks["imagereward"], tmp_path / "s.jsonl", capsys
    )
    # row p0: 4 generations ranked [2, 1, 2, 4] (6 pairs, one tied); p1 skipped at import; p2: one tied pair
    assert len(records) == 7 and {r["source"] for r in records} == {"imagereward"}
    first = next(r for r in records if r["key"] == "imagereward-00000000-0-1")
    assert (first["group"], first["pair"], first["ranks"], first["label"]) == (
        "imagereward-00000000",
        [0, 1],
        [2, 1],
        "second",
    )
    assert all(
        set(r) <= {"key", "prompt", "label", "category", "source", "group", "pair", "ranks", "reward", "reward_first"}
        for r in records
    )

    ordered = [r for r in records if r["label"] != "tie"]
    right = sum(_side(r) == (1.0 if r["label"] == "second" else -1.0) for r in ordered)
    expected = right / len(ordered)  # 5 human-ordered pairs, ties skipped, a predicted tie is never right
    if paradigm == "pointwise":  # the same number from whole rankings of per-image rewards
        scores, ranks = _per_image_scores(records)
        assert imagereward_accuracy(scores, ranks) == pytest.approx(expected)
    (res,) = result["results"]
    assert (res["convention"], res["n"]) == ("imagereward", 5)
    assert res["accuracy"] == pytest.approx(expected)
    line = f"imagereward accuracy (pairs, GT ties skipped, predicted ties wrong): {expected:.4f} over 5 pairs"
    assert result["lines"] == [line] and printed[-1] == line


@pytest.mark.parametrize("paradigm", ["pairwise", "pointwise"])
def test_hpdv2_test_benchmark_prints_and_returns_the_hpsv2_accuracy(exports, benchmarks, tmp_path, capsys, paradigm):
    result, printed, records = _score_benchmark(exports[paradigm], benchmarks["hpdv2"], tmp_path / "s.jsonl", capsys)
    # prompt "a fox": 3 images ranked [1, 2, 2]; "an owl": 2 images ranked [2, 1]
    assert sorted({r["group"] for r in records}) == ["hpdv2-00000000", "hpdv2-00000001"]
    if paradigm == "pointwise":
        scores, ranks = _per_image_scores(records)
        assert ranks == [[1, 2, 2], [2, 1]]
        expected = hpsv2_accuracy(scores, ranks)
    else:  # per prompt 1 - (discordant + 0.5 model-tied) / pairs, human ties never discordant
        per_prompt = {}
        for r in records:
            human = float(np.sign(r["ranks"][0] - r["ranks"][1]))  # +1: the second is better
            credit = 1.0 if human == 0 else 0.5 if _side(r) == 0 else float(_side(r) == human)
            per_prompt.setdefault(r["group"], []).append(credit)
        expected = float(np.mean([np.mean(c) for c in per_prompt.values()]))
    (res,) = result["results"]
    assert (res["convention"], res["n"]) == ("hpsv2", 2)
    assert res["accuracy"] == pytest.approx(expected)
    line = (
        f"hpsv2 accuracy (per prompt 1 - discordant/total, mean over prompts): {expected:.4f} over 2 prompts (4 pairs)"
    )
    assert result["lines"] == [line] and printed[-1] == line


@pytest.mark.parametrize("paradigm", ["pairwise", "pointwise"])
def test_pickapic_benchmark_prints_pickscore_accuracy_and_ties_dropped(exports, benchmarks, tmp_path, capsys, paradigm):
    result, printed, records = _score_benchmark(exports[paradigm], benchmarks["pickapic"], tmp_path / "s.jsonl", capsys)
    assert [r["label"] for r in records] == ["first", "second", "tie"]
    target = [{"first": 0.0, "second": 1.0, "tie": 0.5}[r["label"]] for r in records]
    prob = [0.5 + 0.25 * _side(r) for r in records]  # at threshold 0 only the side of 0.5 counts
    half, dropped = pickscore_accuracy(prob, target), pickscore_accuracy(prob, target, ties="drop")
    (res,) = result["results"]
    assert res["convention"] == "pickscore"
    assert (res["accuracy"], res["accuracy_ties_dropped"]) == (pytest.approx(half), pytest.approx(dropped))
    lines = [
        f"pickscore accuracy (ties 0.5 credit): {half:.4f} over 3 pairs",
        f"pickscore accuracy (GT ties dropped): {dropped:.4f} over 2 pairs",
    ]
    assert result["lines"] == lines and printed[-2:] == lines


def test_a_named_convention_overrides_auto_and_sources_get_their_own_lines(exports, benchmarks, tmp_path, capsys):
    export, out = exports["pointwise"], tmp_path / "s.jsonl"
    args = ["score", "--model", str(export), "--input", str(benchmarks["hpdv2"]), "--out", str(out)]
    result = main([*args, "--convention", "imagereward"]).result
    assert result["lines"][0].startswith("imagereward accuracy (pairs, GT ties skipped, predicted ties wrong): ")
    assert result["lines"][0].endswith(" over 3 pairs")  # the fox's tied pair is skipped
    with pytest.raises(SystemExit):  # the parser knows the conventions
        main([*args, "--convention", "spearman"])

    from rewarddance.commands.score import accuracy_report

    records = [json.loads(line) for line in out.read_text().splitlines()]
    mixed = records + [{**r, "source": "pickapic_v2", "group": None} for r in records]
    results = accuracy_report(mixed, "auto")
    assert [r["convention"] for r in results] == ["hpsv2", "pickscore"]
    assert results[0]["lines"][0].startswith("[hpdv2] hpsv2 accuracy")
    assert results[1]["lines"][0].startswith("[pickapic_v2] pickscore accuracy")


def test_shard_pairs_are_judged_by_their_own_criteria(exports, tmp_path):
    from rewarddance.data.stream import ShardStream

    shards = tmp_path / "shards"
    build_split(shards, "test-id", samples=40, seed=1, kinds=("pair",), quality_fraction=0.5, progress=False)
    out = tmp_path / "scores.jsonl"
    main(["score", "--model", str(exports["pairwise"]), "--input", str(shards), "--out", str(out)])
    rewards = {json.loads(line)["key"]: json.loads(line)["reward"] for line in out.read_text().splitlines()}
    samples = [s for batch in ShardStream(str(shards), batch_size=64) for s in batch]
    assert {s.criteria for s in samples} == {"text-image alignment", "visual quality"}
    model = RewardModel.from_pretrained(exports["pairwise"])
    for s in samples[:6]:
        expected = model.score([s.prompt], [s.second[0]], [s.first[0]], criteria=s.criteria)
        assert rewards[s.key] == pytest.approx(expected.item(), abs=1e-5)

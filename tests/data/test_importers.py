"""Importers: tiny fixtures in each dataset's real format -> shards -> read back and checked."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from webdataset.tariterators import group_by_keys, tar_file_iterator

from rewarddance.data.importers import IMPORTERS, DatasetImportError, Format, get_importer, import_dataset
from rewarddance.data.schema import Sample, decode_sample

try:  # tests/ may or may not be a package
    from . import importer_fixtures as fx
except ImportError:
    import importer_fixtures as fx  # type: ignore[no-redef]


def read_samples(out: Path) -> dict[str, Sample]:
    """Every sample of the shards in ``out`` (as listed by its manifest), by key."""
    manifest = json.loads((out / "manifest.json").read_text())
    urls = [str(out / s["path"]) for s in manifest["shards"]]
    samples = {}
    for url in urls:
        with open(url, "rb") as f:  # webdataset's own tar reader, on a file we close
            for raw in group_by_keys({**member, "__url__": url} for member in tar_file_iterator(f)):
                sample = decode_sample(raw)
                samples[sample.key] = sample
    return samples


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


def run(fmt: str, input: Path, out: Path, **kwargs):  # type: ignore[no-untyped-def]
    kwargs.setdefault("progress", False)
    return import_dataset(fmt, input, out, **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Pick-a-Pic


def test_pickapic_labels_counts_provenance_and_pixels(tmp_path: Path) -> None:
    fix = fx.make_pickapic(tmp_path / "pickapic")
    report = run("pickapic", fix.input, tmp_path / "out", on_error="skip", split="test")

    assert report.read == fix.expect["read"]
    assert report.written == 3
    assert report.skipped == fix.expect["skipped"]
    assert report.labels == {"first": 1, "second": 1, "tie": 1}
    assert "row 4" in report.examples["bad_image"] and "jpg_1" in report.examples["bad_image"]

    samples = read_samples(tmp_path / "out")
    assert sorted(samples) == ["pickapic-00000000", "pickapic-00000001", "pickapic-00000002"]
    for row, (label, soft) in fix.expect["labels"].items():
        s = samples[f"pickapic-{row:08d}"]
        assert (s.kind, s.label, s.soft_label) == ("pair", label, soft)
        assert s.source == "pickapic_v2"
        assert s.models == [f"model-a{row}", f"model-b{row}"]
        assert s.meta["ranking_id"] == 1000 + row
        assert s.meta["image_0_uid"] == f"uid{row}_0" and s.meta["row"] == row
        assert s.meta["created_at"].startswith("2023-05-01T12:")
        assert same_pixels(s.first[0], fix.images[f"{row}_0"])
        assert same_pixels(s.second[0], fix.images[f"{row}_1"])
    assert samples["pickapic-00000000"].prompt == "a red cube"

    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["total"] == 3 and manifest["shards"][0]["path"] == "test-000000.tar"
    assert manifest["import"]["format"] == "pickapic"
    assert manifest["import"]["skipped"] == fix.expect["skipped"]


def test_pickapic_broken_row_raises_naming_file_row_and_field(tmp_path: Path) -> None:
    fix = fx.make_pickapic(tmp_path / "pickapic")
    out = tmp_path / "out"
    with pytest.raises(DatasetImportError) as err:
        run("pickapic", fix.input, out)
    message = str(err.value)
    assert "test-00000-of-00001.parquet" in message
    assert "row 4 (ranking_id=1004)" in message
    assert "field 'jpg_1'" in message and "cannot decode image" in message
    assert "on_error='skip'" in message
    assert (err.value.row, err.value.field, err.value.reason) == (4, "jpg_1", "bad_image")
    # A failed import leaves no half-written shards or manifest behind.
    assert not list(out.glob("*.tar")) and not (out / "manifest.json").exists()


def test_pickapic_url_only_variant_cannot_be_imported_offline(tmp_path: Path) -> None:
    fix = fx.make_pickapic(tmp_path / "pickapic", url_only=True)
    with pytest.raises(DatasetImportError, match=r"URL-only variant.*cannot be imported offline") as err:
        run("pickapic", fix.input, tmp_path / "out")
    assert "test-00000-of-00001.parquet" in str(err.value)


def test_missing_required_column_is_named_before_any_row(tmp_path: Path) -> None:
    fix = fx.make_pickapic(tmp_path / "pickapic")
    path = next((tmp_path / "pickapic").rglob("*.parquet"))
    pq.write_table(pq.read_table(path).drop_columns(["label_1"]), path)
    with pytest.raises(DatasetImportError, match=r"missing required column\(s\) 'label_1'") as err:
        run("pickapic", fix.input, tmp_path / "out")
    assert str(path) in str(err.value) and err.value.row is None


def test_ties_drop_and_max_samples(tmp_path: Path) -> None:
    fix = fx.make_pickapic(tmp_path / "pickapic")
    report = run("pickapic", fix.input, tmp_path / "a", on_error="skip", ties="drop")
    assert report.labels == {"first": 1, "second": 1} and report.skipped["tie"] == 1

    report = run("pickapic", fix.input, tmp_path / "b", on_error="skip", max_samples=2, shard_size=1)
    assert (report.read, report.written) == (2, 2)
    assert len(report.shards) == 2 and sorted(read_samples(tmp_path / "b")) == [
        "pickapic-00000000",
        "pickapic-00000001",
    ]


# ---------------------------------------------------------------------------------------------
# HPDv2


@pytest.mark.parametrize("path_key", ["image_path", "file_path"])
def test_hpdv2_train_pairs_accept_both_path_spellings(tmp_path: Path, path_key: str) -> None:
    fix = fx.make_hpdv2(tmp_path / "hpdv2", path_key=path_key)
    report = run("hpdv2", fix.input, tmp_path / "out", split="train", on_error="skip")
    assert (report.read, report.written) == (4, 2)
    assert report.skipped == {"missing_image": 1, "unknown_label": 1}
    samples = read_samples(tmp_path / "out")
    assert sorted(samples) == sorted(fix.expect["train"])
    for key, (label, a, b) in fix.expect["train"].items():
        s = samples[key]
        assert s.label == label and s.soft_label is None and s.source == "hpdv2"
        assert s.meta["paths"] == [a, b]
        assert same_pixels(s.first[0], fix.images[a]) and same_pixels(s.second[0], fix.images[b])


def test_hpdv2_test_rankings_become_all_pairs_with_ties(tmp_path: Path) -> None:
    fix = fx.make_hpdv2(tmp_path / "hpdv2")
    report = run("hpdv2", fix.input / "test.json", tmp_path / "out")
    assert (report.read, report.written, report.skipped) == (2, 4, {})
    samples = read_samples(tmp_path / "out")
    assert sorted(samples) == sorted(fix.expect["test"])
    for key, (label, a, b) in fix.expect["test"].items():
        s = samples[key]
        assert s.label == label
        assert s.soft_label == (0.5 if label == "tie" else None)
        assert same_pixels(s.first[0], fix.images[a]) and same_pixels(s.second[0], fix.images[b])
    assert samples["hpdv2-00000000-1-2"].meta["ranks"] == [2, 2]
    assert samples["hpdv2-00000000-0-1"].meta["num_annotations"] == 2


def test_hpdv2_folder_with_two_splits_needs_split(tmp_path: Path) -> None:
    fix = fx.make_hpdv2(tmp_path / "hpdv2")
    with pytest.raises(DatasetImportError, match=r"several splits \(test, train\).*split="):
        run("hpdv2", fix.input, tmp_path / "out")


def test_hpdv2_missing_image_raises_with_row_and_field(tmp_path: Path) -> None:
    fix = fx.make_hpdv2(tmp_path / "hpdv2")
    with pytest.raises(
        DatasetImportError, match=r"train\.json, row 2, field 'image_path\[1\]': file not found: 'missing.png'"
    ):
        run("hpdv2", fix.input, tmp_path / "out", split="train")


# ---------------------------------------------------------------------------------------------
# ImageReward


def test_imagereward_test_json_pairs_ties_and_gaps(tmp_path: Path) -> None:
    fix = fx.make_imagereward_test(tmp_path / "ir")
    report = run("imagereward", fix.input, tmp_path / "out", on_error="skip")
    assert (report.read, report.written, report.skipped) == (3, 7, {"missing_image": 1})
    samples = read_samples(tmp_path / "out")
    assert {k: s.label for k, s in samples.items()} == fix.expect["labels"]
    s = samples["imagereward-00000000-1-3"]
    assert s.meta["id"] == "p0" and s.meta["ranks"] == [1, 4] and s.meta["pair"] == [1, 3]
    assert same_pixels(s.first[0], fix.images["p0_1.png"]) and same_pixels(s.second[0], fix.images["p0_3.png"])
    assert samples["imagereward-00000002-0-1"].soft_label == 0.5

    with pytest.raises(DatasetImportError, match=r"test\.json, row 1 \(id=p1\), field 'generations\[1\]'"):
        run("imagereward", fix.input, tmp_path / "out2")


def test_imagerewarddb_records_grouped_by_prompt_id(tmp_path: Path) -> None:
    fix = fx.make_imagerewarddb(tmp_path / "irdb")
    report = run("imagereward", fix.input, tmp_path / "out")
    assert (report.read, report.written) == (2, 4)
    samples = read_samples(tmp_path / "out")
    assert sorted(samples) == sorted(fix.expect["pairs"])
    for key, (label, a, b, category) in fix.expect["pairs"].items():
        s = samples[key]
        assert (s.label, s.category, s.source) == (label, category, "imagerewarddb")
        assert same_pixels(s.first[0], fix.images[a]) and same_pixels(s.second[0], fix.images[b])
        assert s.meta["first"]["image_path"].endswith(a) and "overall_rating" in s.meta["second"]
    assert samples["imagereward-00000000-0-1"].meta["prompt_id"] == 17
    assert samples["imagereward-00000000-0-1"].prompt == "a mural"


# ---------------------------------------------------------------------------------------------
# VideoGen-RewardBench


def test_videogen_rewardbench_csv_with_frame_folders(tmp_path: Path) -> None:
    fix = fx.make_videogen_rewardbench(tmp_path / "vgrb")
    report = run("videogen-rewardbench", fix.input, tmp_path / "out", on_error="skip")
    assert (report.read, report.written) == (6, 3)
    assert report.skipped == fix.expect["skipped"]
    assert "cannot be decoded here" in report.examples["missing_clip"]
    assert "field 'MQ'" in report.examples["unknown_label"] and "csv line 7" in report.examples["unknown_label"]
    samples = read_samples(tmp_path / "out")
    for row, label in fix.expect["labels"].items():
        s = samples[f"videogen-rewardbench-{row:08d}"]
        assert s.label == label and s.soft_label == (0.5 if label == "tie" else None)
        assert s.is_video and s.fps == fix.expect["fps"][row]
        assert s.models == ["kling", "gen3"] and s.source == "videogen_rewardbench"
        assert s.meta["criterion"] == "Overall"
        assert s.meta["dimensions"] == {"Overall": label, "VQ": "tie", "MQ": "first", "TA": "second"}
        assert len(s.first) == len(s.second) == 3
        for t in range(3):
            assert same_pixels(s.first[t], fix.images[f"v{2 * row}.{t}"])
            assert same_pixels(s.second[t], fix.images[f"v{2 * row + 1}.{t}"])
    assert samples["videogen-rewardbench-00000001"].meta["clip_fps"] == [4.0, 16.0]

    with pytest.raises(DatasetImportError, match=r"row 4 \(csv line 6\), field 'path_B'.*ffmpeg"):
        run("videogen-rewardbench", fix.input, tmp_path / "out2")


def test_videogen_training_csv_criterion_choice(tmp_path: Path) -> None:
    fix = fx.make_videogen_train_csv(tmp_path / "vgtrain")
    root = fix.expect["frames_root"]
    report = run("videogen-rewardbench", fix.input, tmp_path / "ta", image_root=root)  # no Overall: TA
    assert report.skipped == {"invalid": 1}
    samples = read_samples(tmp_path / "ta")
    assert {k[-1]: s.label for k, s in samples.items()} == {"0": "tie", "1": "second"}
    s = samples["videogen-rewardbench-00000001"]
    assert s.meta["dimensions"] == {"VQ": "invalid", "MQ": "first", "TA": "second"}
    assert s.models == [] and s.fps == 24.0 and len(s.first) == 2

    report = run("videogen-rewardbench", fix.input, tmp_path / "vq", image_root=root, criterion="VQ")
    samples = read_samples(tmp_path / "vq")
    assert {k[-1]: s.label for k, s in samples.items()} == {"0": "first", "2": "second"}
    assert report.skipped == {"invalid": 1}

    with pytest.raises(DatasetImportError, match=r"train\.csv.*missing required column\(s\) 'Overall'"):
        run("videogen-rewardbench", fix.input, tmp_path / "ov", image_root=root, criterion="Overall")


# ---------------------------------------------------------------------------------------------
# GenAI-Bench


@pytest.mark.parametrize("raw_bytes", [False, True], ids=["image-structs", "raw-bytes"])
def test_genai_bench_image_votes(tmp_path: Path, raw_bytes: bool) -> None:
    fix = fx.make_genai_bench_images(tmp_path / "genai", raw_bytes=raw_bytes)
    report = run("genai-bench", fix.input, tmp_path / "out", on_error="skip")
    assert (report.read, report.written) == (6, 4)
    assert report.skipped == fix.expect["skipped"]
    samples = read_samples(tmp_path / "out")
    for row, label in fix.expect["labels"].items():
        s = samples[f"genai-bench-{row:08d}"]
        assert s.label == label and s.soft_label == (0.5 if label == "tie" else None)
        assert s.meta["both_bad"] is fix.expect["both_bad"][row]
        assert s.models == ["sdxl", "playground"] and s.source == "genai_bench" and not s.is_video
        assert s.meta["tstamp"] == 1700000000.5 + row
        assert same_pixels(s.first[0], fix.images[f"{row}_left"])
        assert same_pixels(s.second[0], fix.images[f"{row}_right"])
    assert samples["genai-bench-00000003"].meta["vote_type"] == "bothbad_vote"

    with pytest.raises(DatasetImportError, match=r"row 4, field 'vote_type': expected one of .*got 'maybe'"):
        run("genai-bench", fix.input, tmp_path / "out2")


def test_genai_bench_video_votes_from_frame_folders(tmp_path: Path) -> None:
    fix = fx.make_genai_bench_videos(tmp_path / "genai")
    report = run("genai-bench", fix.input, tmp_path / "out", video_fps=4.0)
    assert (report.read, report.written) == (2, 2)
    samples = read_samples(tmp_path / "out")
    s = samples["genai-bench-00000000"]
    assert s.label == "first" and s.fps == 4.0 and s.meta["fps_assumed"] is True
    assert s.models == ["lavie", "opensora"]
    assert all(same_pixels(s.first[t], fix.images[f"g0.{t}"]) for t in range(2))
    assert all(same_pixels(s.second[t], fix.images[f"g1.{t}"]) for t in range(2))
    assert samples["genai-bench-00000001"].label == "tie"


# ---------------------------------------------------------------------------------------------
# HPDv3


def test_hpdv3_balanced_deterministic_swap_and_soft_labels(tmp_path: Path) -> None:
    fix = fx.make_hpdv3(tmp_path / "hpdv3")
    run("hpdv3", fix.input, tmp_path / "out", split="train")
    samples = read_samples(tmp_path / "out")
    labels = [s.label for s in samples.values()]
    assert len(labels) == 12 and labels.count("first") >= 3 and labels.count("second") >= 3
    for k, rec in enumerate(fix.expect["train"]):
        s = samples[f"hpdv3-{k:08d}"]
        good = fix.images[Path(rec["path1"]).name]
        bad = fix.images[Path(rec["path2"]).name]
        swapped = s.meta["swapped"]
        assert s.label == ("second" if swapped else "first")
        assert same_pixels(s.second[0] if swapped else s.first[0], good)
        assert same_pixels(s.first[0] if swapped else s.second[0], bad)
        assert s.models == (["sd" + str(k), "flux"] if swapped else ["flux", "sd" + str(k)])
        assert s.meta["path1"] == rec["path1"] and s.meta["choice_dist"] == rec["choice_dist"]
        if rec["choice_dist"] is None:
            assert s.soft_label is None
        else:
            share = rec["choice_dist"][0] / sum(rec["choice_dist"])
            assert s.soft_label == pytest.approx(1 - share if swapped else share)
            assert (s.soft_label > 0.5) == (s.label == "first")

    # Deterministic: the same input gives byte-identical shards.
    run("hpdv3", fix.input, tmp_path / "again", split="train")
    assert (tmp_path / "out" / "train-000000.tar").read_bytes() == (
        tmp_path / "again" / "train-000000.tar"
    ).read_bytes()


def test_hpdv3_test_json_without_choice_dist(tmp_path: Path) -> None:
    fix = fx.make_hpdv3(tmp_path / "hpdv3")
    report = run("hpdv3", fix.input / "test.json", tmp_path / "out")
    assert report.written == 4
    assert all(s.soft_label is None and s.label in ("first", "second") for s in read_samples(tmp_path / "out").values())


# ---------------------------------------------------------------------------------------------
# Driver, registry, CLI signature


def test_existing_shards_are_not_overwritten_by_accident(tmp_path: Path) -> None:
    fix = fx.make_hpdv3(tmp_path / "hpdv3", n=2)
    run("hpdv3", fix.input, tmp_path / "out", split="train")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        run("hpdv3", fix.input, tmp_path / "out", split="train")
    report = run("hpdv3", fix.input, tmp_path / "out", split="train", overwrite=True)
    assert report.written == 2 and len(read_samples(tmp_path / "out")) == 2


def test_registry_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sorted(IMPORTERS) == sorted(
        ["pickapic", "hpdv2", "imagereward", "videogen-rewardbench", "genai-bench", "hpdv3"]
    )
    assert set(typing.get_args(Format)) == set(IMPORTERS)  # `data import --format` offers every bundled importer
    with pytest.raises(
        ValueError, match="unknown dataset format 'nope'; known: genai-bench, hpdv2, hpdv3, imagereward, pickapic"
    ):
        get_importer("nope")
    fix = fx.make_pickapic(tmp_path / "pickapic")
    report = import_dataset("pickapic", fix.input, tmp_path / "out", on_error="skip", progress=True)
    printed = capsys.readouterr().err
    assert report.summary() in printed
    assert "no_decision: 1" in printed and "bad_image: 1 (first:" in printed
    assert printed.strip().splitlines()[-1].startswith("pickapic: read 8 rows, wrote 3 samples, skipped ")


def test_import_dataset_signature_is_cli_friendly(tmp_path: Path) -> None:
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(import_dataset)
    cfg = parser.parse_args(
        ["--format", "hpdv3", "--input", "in", "--out", "o", "--on_error", "skip", "--ties", "drop"]
    )
    assert (cfg.format, str(cfg.input), cfg.on_error, cfg.ties, cfg.image_ext) == ("hpdv3", "in", "skip", "drop", "png")
    with pytest.raises(jsonargparse.ArgumentError):
        parser.parse_args(["--format", "nope", "--input", "in", "--out", "o"])

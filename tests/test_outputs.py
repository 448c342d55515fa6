"""rewarddance.outputs.atomic_output: a command's output appears complete or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from rewarddance.outputs import atomic_output, relocated


def test_file_appears_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "new" / "scores.jsonl"
    with atomic_output(target) as tmp:
        tmp.write_text("line 1\n")
        assert not target.exists() and tmp.parent == target.parent and tmp.name.startswith(".scores.jsonl.tmp-")
    assert target.read_text() == "line 1\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["scores.jsonl"]


def test_failed_file_leaves_nothing_not_even_the_folders_it_made(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "scores.jsonl"
    with pytest.raises(RuntimeError, match="half-way"), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("failed half-way")
    assert list(tmp_path.iterdir()) == []


def test_failed_file_keeps_the_previous_version(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_output(target) as tmp:
        tmp.write_text("new, unfinished")
        raise KeyboardInterrupt
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_folder_is_renamed_into_place_or_removed(tmp_path: Path) -> None:
    with atomic_output(tmp_path / "shards", folder=True) as tmp:
        (tmp / "a.tar").write_text("a")
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["a.tar"]
    with pytest.raises(ValueError, match="bad sample"), atomic_output(tmp_path / "other", folder=True) as tmp:
        (tmp / "a.tar").write_text("a")
        raise ValueError("bad sample")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def test_folder_into_an_existing_one_replaces_what_it_wrote_and_keeps_the_rest(tmp_path: Path) -> None:
    out = tmp_path / "export"
    (out / "lora").mkdir(parents=True)
    (out / "lora" / "old.bin").write_text("old adapter")
    (out / "config.json").write_text("old")
    (out / "notes.txt").write_text("the user's")
    with pytest.raises(OSError, match="disk full"), atomic_output(out, folder=True) as tmp:
        (tmp / "config.json").write_text("new")
        raise OSError("disk full")
    assert (out / "config.json").read_text() == "old"  # a failure leaves the old folder as it was
    with atomic_output(out, folder=True) as tmp:
        (tmp / "config.json").write_text("new")
        (tmp / "lora").mkdir()
        (tmp / "lora" / "adapter.bin").write_text("new adapter")
    assert (out / "config.json").read_text() == "new" and (out / "notes.txt").read_text() == "the user's"
    assert sorted(p.name for p in (out / "lora").iterdir()) == ["adapter.bin", "old.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_file_and_folder_kinds_are_not_mixed(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"), atomic_output(tmp_path / "f", folder=True):
        pass
    with pytest.raises(FileExistsError, match="is a folder"), atomic_output(tmp_path, folder=False):
        pass


def test_relocated_rewrites_paths_under_the_temporary_name_only(tmp_path: Path) -> None:
    tmp, out = tmp_path / ".out.tmp-1", tmp_path / "out"
    summary = {"out": str(tmp), "files": [str(tmp / "a.tar")], "manifest": tmp / "manifest.json", "n": 3}
    summary["other"] = str(tmp_path / ".out.tmp-12")  # a sibling whose name merely starts the same
    assert relocated(summary, tmp, out) == {
        "out": str(out),
        "files": [str(out / "a.tar")],
        "manifest": out / "manifest.json",
        "n": 3,
        "other": str(tmp_path / ".out.tmp-12"),
    }

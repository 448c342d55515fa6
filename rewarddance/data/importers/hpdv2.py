"""HPDv2 (Human Preference Dataset v2): ``train.json`` / ``test.json`` plus image folders.

Conventions:

- train records ``{prompt, human_preference, file_path | image_path}``: one pair; ``[1, 0]`` ->
  ``first``, ``[0, 1]`` -> ``second``. Both spellings of the path key are accepted (the paper
  documents ``file_path``, the released file uses ``image_path``).
- test records ``{prompt, image_path: [n], rank: [n]}`` (lower rank = better): every pair i < j,
  label from the ranks, equal ranks -> ``tie`` (soft label 0.5). The images of a record are
  decoded once and shared by its pairs.
- Images are looked up relative to ``image_root``, else next to the json file, in ``<split>/`` and
  ``HPD/<split>/`` beside it (split = the json file's stem).
- ``meta``: the file, row, image paths and ranks, number of raw annotations.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from rewarddance.data.importers.common import (
    BAD_VALUE,
    UNKNOWN_LABEL,
    DatasetImportError,
    Importer,
    ImportOptions,
    Record,
    RowError,
    first_record_keys,
    get_field,
    get_list,
    get_prompt,
    key_for,
    load_image_file,
    load_json_records,
    numbered_records,
    ranked_paths_pair_meta,
    ranking_pair_samples,
    ranking_pairs,
    require_columns,
)
from rewarddance.data.schema import Sample

PATH_KEYS = ("file_path", "image_path")


class HPDv2Importer(Importer):
    """HPDv2 train pairs and test rankings -> pair samples."""

    name = "hpdv2"
    source = "hpdv2"
    suffixes = (".json",)

    def __init__(self, input: str | Path, options: ImportOptions | None = None) -> None:
        super().__init__(input, options)
        self._records: dict[Path, list[dict]] = {}
        self._layout: dict[Path, tuple[str, str]] = {}
        for path in self.files:
            records = load_json_records(path)
            keys = first_record_keys(path, records)
            if "human_preference" in keys:
                cols = require_columns(path, keys, ("prompt", "human_preference", PATH_KEYS))
                self._layout[path] = ("pairs", cols["file_path"])
            elif "rank" in keys:
                require_columns(path, keys, ("prompt", "image_path", "rank"))
                self._layout[path] = ("ranking", "image_path")
            else:
                raise DatasetImportError(
                    path,
                    "neither HPDv2 train records (prompt, human_preference, image_path) nor test records "
                    f"(prompt, image_path, rank); keys are {', '.join(keys)}",
                    field="human_preference",
                )
            self._records[path] = records

    def total(self) -> int | None:
        return sum(len(r) for r in self._records.values())

    def media_bases(self, path: Path) -> list[Path]:
        if self.options.image_root is not None:
            return [Path(self.options.image_root)]
        here, split = path.parent, path.stem
        return [here, here / split, here / "HPD" / split, here / "HPD"]

    def records(self) -> Iterator[Record]:
        return numbered_records(self.files, lambda path: self._records[path])

    def convert(self, record: Record) -> list[Sample]:
        layout, path_key = self._layout[record.path]
        data = record.data
        prompt = get_prompt(data)
        bases = self.media_bases(record.path)
        base_meta = {"file": record.path.name, "row": record.row}
        if "raw_annotations" in data and isinstance(data["raw_annotations"], list):
            base_meta["num_annotations"] = len(data["raw_annotations"])

        if layout == "pairs":
            preference = get_field(data, "human_preference")
            if list(preference) == [1, 0]:
                label = "first"
            elif list(preference) == [0, 1]:
                label = "second"
            else:
                raise RowError(UNKNOWN_LABEL, "human_preference", f"expected [1, 0] or [0, 1], got {preference!r}")
            paths = get_list(data, path_key, 2)
            images = [load_image_file(p, bases, f"{path_key}[{i}]") for i, p in enumerate(paths)]
            return [
                Sample(
                    key=key_for(self.name, record.index),
                    kind="pair",
                    prompt=prompt,
                    first=[images[0]],
                    second=[images[1]],
                    label=label,
                    source=self.source,
                    meta={**base_meta, "paths": paths},
                )
            ]

        paths = get_list(data, "image_path")
        ranks = get_list(data, "rank")
        if len(paths) != len(ranks) or len(paths) < 2:
            raise RowError(BAD_VALUE, "rank", f"{len(paths)} images but {len(ranks)} ranks (need >= 2 of each, equal)")
        labels = ranking_pairs(ranks, "rank")
        images = [load_image_file(p, bases, f"image_path[{i}]") for i, p in enumerate(paths)]
        return ranking_pair_samples(
            self.name,
            record.index,
            prompt,
            images,
            labels,
            source=self.source,
            pair_meta=lambda i, j: ranked_paths_pair_meta(base_meta, paths, ranks, i, j),
        )

"""ImageReward: the benchmark ``test.json`` and the per-image records of ImageRewardDB.

Both are rankings (1 = best; gaps and ties allowed) turned into every pair i < j, labelled from
the ranks; tied pairs become ``tie`` with soft label 0.5 (the accuracy metric skips them; drop
them at import with ``ties="drop"``). The layout is detected from the keys:

- ``test.json``: ``{id, prompt, generations: [paths], ranking: [ints]}``, one record per prompt.
- ImageRewardDB (json, jsonl or parquet metadata): ``{image_path, prompt_id, prompt, rank,
  classification, overall_rating, ...}``, one record per image, grouped by ``prompt_id`` in order
  of first appearance; ``classification`` becomes the category. A group is one "row" for counting
  and skipping.

Image paths are relative to ``image_root``, else to the folder of the input file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rewarddance.data.importers.common import (
    BAD_VALUE,
    MISSING_FIELD,
    DatasetImportError,
    Importer,
    ImportOptions,
    Record,
    RowError,
    first_record_keys,
    get_field,
    get_list,
    get_prompt,
    load_image_file,
    load_json_records,
    passthrough,
    ranked_paths_pair_meta,
    ranking_pair_samples,
    ranking_pairs,
    require_columns,
)
from rewarddance.data.schema import Sample

TEST_KEYS = ("prompt", "generations", "ranking")
DB_KEYS = ("prompt_id", "prompt", "image_path", "rank")


class ImageRewardImporter(Importer):
    """ImageReward benchmark test set or ImageRewardDB records -> pair samples."""

    name = "imagereward"
    source = "imagereward"
    suffixes = (".json", ".jsonl", ".parquet")

    def __init__(self, input: str | Path, options: ImportOptions | None = None) -> None:
        super().__init__(input, options)
        self._records: dict[Path, list[dict[str, Any]]] = {}
        self._layout: dict[Path, str] = {}
        for path in self.files:
            records = load_json_records(path)
            keys = first_record_keys(path, records)
            if "generations" in keys or "ranking" in keys:
                require_columns(path, keys, TEST_KEYS)
                self._layout[path] = "test"
            elif "prompt_id" in keys:
                require_columns(path, keys, DB_KEYS)
                self._layout[path] = "db"
            else:
                raise DatasetImportError(
                    path,
                    f"neither ImageReward test records ({', '.join(TEST_KEYS)}) nor ImageRewardDB records "
                    f"({', '.join(DB_KEYS)}); keys are {', '.join(keys)}",
                    field="generations",
                )
            self._records[path] = records

    def total(self) -> int | None:
        total = 0
        for path, records in self._records.items():
            total += len(records) if self._layout[path] == "test" else len({r.get("prompt_id") for r in records})
        return total

    def records(self) -> Iterator[Record]:
        index = 0
        for path in self.files:
            records = self._records[path]
            if self._layout[path] == "test":
                for row, data in enumerate(records):
                    rid = data.get("id")
                    yield Record(path, row, index, data, row_id=f"id={rid}" if rid is not None else None)
                    index += 1
                continue
            groups: dict[Any, list[tuple[int, dict[str, Any]]]] = {}
            for row, data in enumerate(records):
                groups.setdefault(data.get("prompt_id"), []).append((row, data))
            for pid, items in groups.items():
                yield Record(path, items[0][0], index, {"prompt_id": pid, "items": items}, row_id=f"prompt_id={pid}")
                index += 1

    def convert(self, record: Record) -> list[Sample]:
        bases = self.media_bases(record.path)
        if self._layout[record.path] == "test":
            return self._convert_test(record, bases)
        return self._convert_db(record, bases)

    def _convert_test(self, record: Record, bases: list[Path]) -> list[Sample]:
        data = record.data
        prompt = get_prompt(data)
        paths = get_list(data, "generations")
        ranks = get_list(data, "ranking")
        if len(paths) != len(ranks) or len(paths) < 2:
            raise RowError(BAD_VALUE, "ranking", f"{len(paths)} generations but {len(ranks)} ranks (need >= 2, equal)")
        labels = ranking_pairs(ranks, "ranking")
        images = [load_image_file(p, bases, f"generations[{i}]") for i, p in enumerate(paths)]
        meta = {"file": record.path.name, "row": record.row, **passthrough(data, ("prompt", "generations", "ranking"))}
        return ranking_pair_samples(
            self.name,
            record.index,
            prompt,
            images,
            labels,
            source=self.source,
            pair_meta=lambda i, j: ranked_paths_pair_meta(meta, paths, ranks, i, j),
        )

    def _convert_db(self, record: Record, bases: list[Path]) -> list[Sample]:
        if record.data["prompt_id"] is None:
            raise RowError(MISSING_FIELD, "prompt_id", "missing or null")
        items = [data for _, data in record.data["items"]]
        if len(items) < 2:
            raise RowError(BAD_VALUE, "prompt_id", f"prompt_id {record.data['prompt_id']!r} has a single image")
        prompt = get_prompt(items[0])
        ranks = [get_field(d, "rank") for d in items]
        labels = ranking_pairs(ranks, "rank")
        images = [load_image_file(get_field(d, "image_path"), bases, "image_path") for d in items]
        category = items[0].get("classification")
        per_image = [
            {"row": row, **passthrough(d, ("prompt", "prompt_id", "classification"))} for row, d in record.data["items"]
        ]
        meta = {"file": record.path.name, "prompt_id": record.data["prompt_id"]}
        return ranking_pair_samples(
            self.name,
            record.index,
            prompt,
            images,
            labels,
            source="imagerewarddb",
            category=str(category) if category is not None else None,
            pair_meta=lambda i, j: {**meta, "pair": [i, j], "first": per_image[i], "second": per_image[j]},
        )

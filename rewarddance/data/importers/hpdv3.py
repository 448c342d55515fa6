"""HPDv3: json pairs ``{prompt, path1, path2, model1, model2, choice_dist, confidence}``.

``path1`` is always the preferred image. Writing it always as ``first`` would give a dataset whose
labels are all ``first``, which a reward model can learn from the position alone. So each pair is
swapped or not by a hash of (prompt, path1, path2): deterministic (the same pair gets the same
order on every run, whatever the file order or ``max_samples``) and balanced in expectation.
``meta["swapped"]`` records it; the label is ``first`` when not swapped, ``second`` when swapped.

``choice_dist = [votes1, votes2]`` gives the soft label (the vote share of whichever image is
``first``); it is null or absent in ``test.json``, whose soft label is then None.
Models from ``model1``/``model2`` (in written order); ``confidence`` and the original paths go to ``meta``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rewarddance.data.importers.common import (
    BAD_VALUE,
    Importer,
    ImportOptions,
    Record,
    RowError,
    first_record_keys,
    get_prompt,
    key_for,
    load_image_file,
    load_json_records,
    model_names,
    numbered_records,
    passthrough,
    require_columns,
    stable_bit,
)
from rewarddance.data.schema import Sample


def _vote_share(value: Any) -> float | None:
    """Share of votes for path1, from ``choice_dist``; None when the record has no distribution."""
    if value is None:
        return None
    try:
        v1, v2 = (float(v) for v in value)
    except (TypeError, ValueError):
        raise RowError(BAD_VALUE, "choice_dist", f"expected [votes1, votes2], got {value!r}") from None
    if not (v1 >= 0 and v2 >= 0 and v1 + v2 > 0):
        raise RowError(BAD_VALUE, "choice_dist", f"votes must be non-negative with a positive sum, got {value!r}")
    return v1 / (v1 + v2)


class HPDv3Importer(Importer):
    """HPDv3 train/test json -> pair samples, preferred image on a hashed side."""

    name = "hpdv3"
    source = "hpdv3"
    suffixes = (".json", ".jsonl")

    def __init__(self, input: str | Path, options: ImportOptions | None = None) -> None:
        super().__init__(input, options)
        self._records: dict[Path, list[dict[str, Any]]] = {}
        for path in self.files:
            records = load_json_records(path)
            require_columns(path, first_record_keys(path, records), ("prompt", "path1", "path2"))
            self._records[path] = records

    def total(self) -> int | None:
        return sum(len(r) for r in self._records.values())

    def records(self) -> Iterator[Record]:
        return numbered_records(self.files, lambda path: self._records[path])

    def convert(self, record: Record) -> list[Sample]:
        data = record.data
        prompt = get_prompt(data)
        share = _vote_share(data.get("choice_dist"))
        bases = self.media_bases(record.path)
        preferred = load_image_file(data.get("path1"), bases, "path1")
        other = load_image_file(data.get("path2"), bases, "path2")
        models = model_names(data.get("model1"), data.get("model2"))
        swapped = stable_bit(prompt, data["path1"], data["path2"])
        first, second = (other, preferred) if swapped else (preferred, other)
        if swapped:
            models = models[::-1]
            share = 1.0 - share if share is not None else None
        meta = {
            "file": record.path.name,
            "row": record.row,
            "swapped": swapped,
            **passthrough(data, ("prompt", "model1", "model2")),
        }
        return [
            Sample(
                key=key_for(self.name, record.index),
                kind="pair",
                prompt=prompt,
                first=[first],
                second=[second],
                label="second" if swapped else "first",
                soft_label=share,
                source=self.source,
                models=models,
                meta=meta,
            )
        ]

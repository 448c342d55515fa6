"""In-context examples: a pool of solved queries, and the k of them shown before each query.

The reward tasks can show k solved examples before every query (as earlier chat turns; RewardDance,
arXiv 2509.08826, "context scaling"). The examples come from a *pool*: the first labelled samples of
a shard source, yes and no answers alternating (:func:`select_examples`). How the k are chosen for
one query is the *retrieval* mode (:class:`ExampleRetriever`):

- ``first``: the first k of the pool, the same for every query (the pool is usually just k long);
- ``tag``: examples with the query's tag (its GenEval tag or category, :func:`sample_tag`) first,
  in a seeded order per prompt; other tags fill up when the tag has too few;
- ``similar``: the examples whose prompts are nearest the query's, by TF-IDF cosine over word
  tokens (:class:`PromptIndex`, no dependency), seeded ties.

Every mode keeps the yes/no balance (ceil(k/2) yes, floor(k/2) no, alternating, yes first) so the
context says nothing about the query's answer, and never shows the query's own sample (matched by
key): a training sample of the pool must not be solved in its own context. The choice depends only
on the pool, the query's prompt, tag and key, and the seed, so training, evaluation and scoring
with the export choose the same examples for the same query, whatever the batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from rewarddance.data.schema import Sample, decode_sample
from rewarddance.data.stream import iter_tar_samples, resolve_shards
from rewarddance.errors import UsageError
from rewarddance.judge.export import examples_from_json, examples_to_json
from rewarddance.judge.prompting import Query, QuestionKind, RationaleFormat

ExampleMaker = Callable[[Sample], "tuple[QuestionKind, Query, bool] | None"]
"""A sample -> (question kind, query with its answer, the answer is yes), or None when it makes no example."""

RetrievalMode = Literal["first", "tag", "similar"]
RETRIEVAL_MODES: tuple[str, ...] = ("first", "tag", "similar")

EXAMPLE_POOL_DIR = "example_pool"
"""The folder of an export that holds the pool of examples retrieved per query (images; records in the config)."""

DEFAULT_POOL = 256
"""Pool size per question kind when examples are retrieved (``tag``/``similar``) and no size is given."""


def sample_tag(sample: Sample) -> str | None:
    """A sample's tag for retrieval: its GenEval ``meta["tag"]``, else its category (shapes: the same)."""
    tag = (sample.meta or {}).get("tag") if isinstance(sample.meta, Mapping) else None
    return str(tag) if tag else sample.category


def iter_samples(source: str | list[str], limit: int) -> Iterator[Sample]:
    """Decoded samples from the start of a shard source (references not decoded), at most ``limit``."""
    seen = 0
    for info in resolve_shards(source):
        for raw in iter_tar_samples(info.url):
            yield decode_sample(raw, load_references=False)
            seen += 1
            if seen >= limit:
                return


def select_examples(
    source: str | list[str],
    make: ExampleMaker,
    kinds: Sequence[QuestionKind],
    k: int,
    scan: int = 5000,
    size: int | None = None,
) -> dict[str, list[Query]]:
    """Per question kind, a pool of ``size`` examples from the start of ``source``, yes and no alternating (yes first).

    Args:
        source: Shards to read (the first ``scan`` samples at most).
        make: Turns a sample into an example (see :data:`ExampleMaker`).
        kinds: The question kinds to collect.
        k: Examples shown per query: the pool must hold at least this many of each kind.
        scan: Samples read at most.
        size: Pool size per kind (null: ``k``, the fixed first-k set). A source with fewer gives a smaller pool.

    Raises:
        UsageError: Fewer than ``k`` examples of a kind were found.
    """
    size = max(size or k, k)
    found: dict[tuple[str, bool], list[Query]] = {(q, y): [] for q in kinds for y in (True, False)}
    need = {True: (size + 1) // 2, False: size // 2}
    for sample in iter_samples(source, scan):
        made = make(sample)
        if made is None or made[0] not in kinds:
            continue
        question, query, yes = made
        if len(found[question, yes]) < need[yes]:
            found[question, yes].append(query)
        if all(len(found[q, y]) >= need[y] for q in kinds for y in (True, False)):
            break
    pool: dict[str, list[Query]] = {}
    for question in kinds:
        yes, no = found[question, True], found[question, False]
        interleaved = [q for pair in zip(yes, no) for q in pair] + yes[len(no) :] + no[len(yes) :]
        if len(interleaved) < k:
            raise UsageError(
                f"Found only {len(interleaved)} of {k} {question} examples in {source!r} "
                "(model.init_args.examples / examples_from): lower examples or use a larger source."
            )
        pool[question] = interleaved[:size]
    return pool


# --------------------------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    """Lower-case word tokens of a text (runs of letters and digits, any script)."""
    return _WORD.findall(text.lower())


class PromptIndex:
    """TF-IDF vectors of a list of prompts, for cosine similarity to a new prompt.

    Term weight ``tf * idf`` with ``idf = log((1 + n) / (1 + df)) + 1`` (smoothed: a word in every
    prompt still counts a little, a word in none of them counts most); vectors are L2-normalised,
    so the dot product is the cosine. Words the pool never uses add to the query's norm only.
    """

    def __init__(self, prompts: Sequence[str]) -> None:
        counts = [Counter(words(p)) for p in prompts]
        df: Counter[str] = Counter(w for c in counts for w in c)
        n = len(prompts)
        self.idf = {w: math.log((1 + n) / (1 + d)) + 1 for w, d in df.items()}
        self.unseen_idf = math.log(1 + n) + 1
        self.vectors = [self.vector(c) for c in counts]

    def vector(self, counts: Mapping[str, int]) -> dict[str, float]:
        weights = {w: c * self.idf.get(w, self.unseen_idf) for w, c in counts.items()}
        norm = math.sqrt(sum(v * v for v in weights.values())) or 1.0
        return {w: v / norm for w, v in weights.items()}

    def similarities(self, prompt: str) -> list[float]:
        """Cosine similarity of ``prompt`` to each indexed prompt, in index order."""
        query = self.vector(Counter(words(prompt)))
        return [sum(weight * vector.get(w, 0.0) for w, weight in query.items()) for vector in self.vectors]


def _tiebreak(seed: int, prompt: str, key: str) -> int:
    # A stable hash (not Python's salted hash()): the same order in every process and run.
    digest = hashlib.blake2b(f"{seed}\x00{prompt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class ExampleRetriever:
    """Chooses the in-context examples of each query from a pool (see the module docstring).

    Args:
        pool: Solved queries (their ``answer`` set) per question kind, as :func:`select_examples` returns.
        k: Examples per query.
        mode: ``first``, ``tag`` or ``similar``.
        seed: Seed of the per-prompt order (``tag``) and of the tie-breaks (``similar``).
        yes_word: The answer word that counts as yes when balancing.
        rationale_format: The layout of the answers: the judgment is the first word, or (``reasons_first``) the last.
    """

    def __init__(
        self,
        pool: Mapping[str, Sequence[Query]],
        k: int,
        mode: RetrievalMode = "first",
        seed: int = 0,
        yes_word: str = "yes",
        rationale_format: RationaleFormat = "none",
    ) -> None:
        if mode not in RETRIEVAL_MODES:
            raise UsageError(f"example retrieval must be one of {list(RETRIEVAL_MODES)}, got {mode!r}")
        if k < 0:
            raise UsageError(f"examples must be >= 0, got {k}")
        self.pool = {kind: list(queries) for kind, queries in pool.items()}
        self.k, self.mode, self.seed, self.yes_word = k, mode, seed, yes_word
        self.rationale_format = rationale_format
        self._indexes: dict[str, PromptIndex] = {}

    def is_yes(self, example: Query) -> bool:
        """Whether the example's answer is yes: its judgment word (the first word, or the last after reasons)."""
        found = words(example.answer or "")
        if not found:
            return False
        return (found[-1] if self.rationale_format == "reasons_first" else found[0]) == self.yes_word.lower()

    def index(self, question: str) -> PromptIndex:
        if question not in self._indexes:
            self._indexes[question] = PromptIndex([q.prompt for q in self.pool.get(question, [])])
        return self._indexes[question]

    def choose(self, question: str, prompt: str, tag: str | None = None, key: str | None = None) -> list[Query]:
        """The ``k`` examples shown before a query (fewer only when the pool is smaller).

        Args:
            question: The query's question kind.
            prompt: Its generation prompt.
            tag: Its tag (``tag`` mode; None: no example shares it).
            key: Its sample key: the example of the same key is never chosen.
        """
        pool = self.pool.get(question, [])
        if self.k == 0 or not pool:
            return []
        candidates = [i for i, q in enumerate(pool) if key is None or q.key != key]
        if self.mode == "first":
            return [pool[i] for i in candidates[: self.k]]
        if self.mode == "tag":
            rank = {
                i: (pool[i].tag != tag or tag is None, _tiebreak(self.seed, prompt, pool[i].key)) for i in candidates
            }
        else:
            similarity = self.index(question).similarities(prompt)
            rank = {i: (-round(similarity[i], 9), _tiebreak(self.seed, prompt, pool[i].key)) for i in candidates}
        ordered = sorted(candidates, key=rank.__getitem__)
        yes = [i for i in ordered if self.is_yes(pool[i])]
        no = [i for i in ordered if not self.is_yes(pool[i])]
        want_yes = min(len(yes), max((self.k + 1) // 2, self.k - len(no)))
        want_no = min(len(no), self.k - want_yes)
        chosen_yes, chosen_no = yes[:want_yes], no[:want_no]
        interleaved = [i for pair in zip(chosen_yes, chosen_no) for i in pair]
        interleaved += chosen_yes[len(chosen_no) :] + chosen_no[len(chosen_yes) :]
        return [pool[i] for i in interleaved]


# --------------------------------------------------------------------------------------------
# The pool in an export
# --------------------------------------------------------------------------------------------


def pool_to_json(
    pool: Mapping[str, Sequence[Query]], folder: Path, *, k: int, mode: RetrievalMode, seed: int
) -> dict[str, Any]:
    """The ``example_pool`` record of an export: retrieval settings and the pool, its images saved under ``folder``.

    Args:
        pool: The pool per question kind.
        folder: The export folder (images go to its :data:`EXAMPLE_POOL_DIR`).
        k: Examples per query.
        mode: The retrieval mode.
        seed: The retrieval seed.
    """
    records = examples_to_json(pool, folder / EXAMPLE_POOL_DIR)
    for kind, queries in pool.items():
        for record, query in zip(records[kind], queries):
            record["tag"] = query.tag
    return {"dir": EXAMPLE_POOL_DIR, "retrieval": mode, "k": k, "seed": seed, "records": records}


def pool_from_json(record: Mapping[str, Any], folder: Path) -> dict[str, list[Query]]:
    """The pool :func:`pool_to_json` wrote (with tags), images loaded from ``folder``."""
    records = record["records"]
    pool = examples_from_json(records, folder / record.get("dir", EXAMPLE_POOL_DIR))
    return {
        kind: [dataclasses.replace(q, tag=r.get("tag")) for q, r in zip(queries, records[kind])]
        for kind, queries in pool.items()
    }

"""In-context examples: a fixed set of solved queries, read from the start of a shard source.

The reward tasks can show k solved examples before every query (as earlier chat turns). They are
the first labelled samples of a source, alternating yes and no answers, so training, evaluation
and the export all see the same context.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from rewarddance.data.schema import Sample, decode_sample
from rewarddance.data.stream import iter_tar_samples, resolve_shards
from rewarddance.errors import UsageError
from rewarddance.judge.prompting import Query, QuestionKind

ExampleMaker = Callable[[Sample], "tuple[QuestionKind, Query, bool] | None"]
"""A sample -> (question kind, query with its answer, the answer is yes), or None when it makes no example."""


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
    source: str | list[str], make: ExampleMaker, kinds: Sequence[QuestionKind], k: int, scan: int = 5000
) -> dict[str, list[Query]]:
    """Per question kind, ``k`` examples from the start of ``source``, yes and no alternating (yes first).

    Args:
        source: Shards to read (the first ``scan`` samples at most).
        make: Turns a sample into an example (see :data:`ExampleMaker`).
        kinds: The question kinds to collect.
        k: Examples per kind.
        scan: Samples read at most.

    Raises:
        UsageError: Fewer than ``k`` examples of a kind were found.
    """
    found: dict[tuple[str, bool], list[Query]] = {(q, y): [] for q in kinds for y in (True, False)}
    need = {True: (k + 1) // 2, False: k // 2}
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
        pool[question] = interleaved[:k]
    return pool

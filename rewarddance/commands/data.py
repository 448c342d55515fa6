"""``python -m rewarddance data ...``: inspect shards (``data import`` is the importers'; plug-ins add builders such
as the shapes world's ``data shapes``)."""

from __future__ import annotations


def inspect(source: str, /) -> object:
    """Print counts, label balance, ties, categories and one decoded sample of a shard set.

    Args:
        source: A shard folder (with or without manifest.json), a shard path or a brace pattern.
    """
    from rewarddance.data.inspect import summarize

    summary = summarize(source)
    print(summary.report())
    print(f"inspected {summary.total} samples in {len(summary.shards)} shards of {source}")
    return summary

"""In-context examples retrieved per query (first-k, by tag, by prompt similarity): the choice, no leakage of a
sample into its own context, determinism, and the same choice in training, evaluation and the export."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from rewarddance.data.schema import Sample
from rewarddance.errors import UsageError
from rewarddance.judge.examples import ExampleRetriever, PromptIndex, iter_samples, sample_tag
from rewarddance.judge.prompting import Query
from rewarddance.judge.reward_model import RewardModel
from rewarddance.shapes.build import build_split
from rewarddance.tasks import GenerativeRewardTask


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, str]:
    """Tiny shapes splits (pairs and points, six GenEval tags), built in a few seconds."""
    root = tmp_path_factory.mktemp("shapes")
    for split, n in {"train": 48, "val": 8}.items():
        build_split(root / split, split, samples=n, seed=0, progress=False, noise=0.0)  # type: ignore[arg-type]
    return {"train": str(root / "train"), "val": str(root / "val")}


def _example(key: str, prompt: str, answer: str, tag: str | None = None) -> Query:
    return Query("pairwise", prompt, [Image.new("RGB", (8, 8))] * 2, "", answer=answer, key=key, tag=tag)


POOL = [
    _example("a", "a red circle", "yes", "colors"),
    _example("b", "a red circle above a blue square", "no", "position"),
    _example("c", "three green triangles", "yes", "counting"),
    _example("d", "two green triangles", "no", "counting"),
    _example("e", "a blue square", "yes", "colors"),
    _example("f", "a yellow circle", "no", "colors"),
    _example("g", "four squares", "yes", "counting"),
    _example("h", "a square left of a circle", "no", "position"),
]


def _keys(examples: list[Query]) -> list[str]:
    return [e.key for e in examples]


def test_tfidf_cosine_ranks_prompts_by_shared_rare_words():
    index = PromptIndex([q.prompt for q in POOL])
    sims = index.similarities("two green triangles")
    assert sims[3] == pytest.approx(1.0)  # the same prompt
    assert sims[2] > sims[0] and sims[2] > 0  # "green triangles" shared
    assert index.similarities("a purple hexagon") == pytest.approx([0.0] * len(POOL), abs=0.2)
    assert index.similarities("")[0] == 0.0


def test_first_mode_is_the_fixed_first_k_minus_the_query_itself():
    retriever = ExampleRetriever({"pairwise": POOL}, k=2, mode="first")
    assert _keys(retriever.choose("pairwise", "anything")) == ["a", "b"]
    assert _keys(retriever.choose("pairwise", "anything", key="a")) == ["b", "c"]
    assert retriever.choose("pointwise", "anything") == []


def test_similar_mode_takes_the_nearest_prompts_yes_and_no_balanced():
    retriever = ExampleRetriever({"pairwise": POOL}, k=2, mode="similar")
    # The nearest "yes" (three green triangles) and the nearest "no" (two green triangles), yes first.
    assert _keys(retriever.choose("pairwise", "two green triangles")) == ["c", "d"]
    # Its own sample is never shown: the next nearest "no" takes its place.
    chosen = retriever.choose("pairwise", "two green triangles", key="d")
    assert "d" not in _keys(chosen) and chosen[0].key == "c" and retriever.is_yes(chosen[0])
    assert not retriever.is_yes(chosen[1])


def test_tag_mode_prefers_the_querys_tag_and_is_deterministic_per_seed():
    retriever = ExampleRetriever({"pairwise": POOL}, k=2, mode="tag", seed=0)
    for prompt in ["a red circle", "an orange cat", "x"]:
        chosen = retriever.choose("pairwise", prompt, tag="colors")
        assert [e.tag for e in chosen] == ["colors", "colors"] and [retriever.is_yes(e) for e in chosen] == [
            True,
            False,
        ]
        assert _keys(chosen) == _keys(retriever.choose("pairwise", prompt, tag="colors"))  # same call, same choice
    # The tag "position" has only "no" examples: the "yes" comes from another tag, balance kept.
    chosen = retriever.choose("pairwise", "a circle below a square", tag="position")
    assert [retriever.is_yes(e) for e in chosen] == [True, False] and chosen[1].tag == "position"
    # The seed changes the order within a tag, over many prompts at least once.
    other = ExampleRetriever({"pairwise": POOL}, k=1, mode="tag", seed=1)
    first = ExampleRetriever({"pairwise": POOL}, k=1, mode="tag", seed=0)
    picks = {
        (_keys(first.choose("pairwise", f"p{i}", "colors"))[0], _keys(other.choose("pairwise", f"p{i}", "colors"))[0])
        for i in range(20)
    }
    assert any(a != b for a, b in picks)


def test_reasons_first_answers_are_balanced_by_their_last_word():
    pool = [
        _example("y", "p", "Image 2 has no square.\nAnswer:\nyes"),
        _example("n", "p", "Image 2 is fine, yes.\nAnswer:\nno"),
    ]
    retriever = ExampleRetriever({"pairwise": pool}, k=2, mode="similar", rationale_format="reasons_first")
    assert [retriever.is_yes(e) for e in retriever.choose("pairwise", "p")] == [True, False]
    judgment_first = ExampleRetriever({"pairwise": pool}, k=2, rationale_format="judgment_first")
    assert judgment_first.is_yes(_example("z", "p", "yes. Image 1 has no square.")) is True
    assert judgment_first.is_yes(_example("z", "p", "no. Both say yes")) is False


def test_bad_settings_are_refused():
    with pytest.raises(UsageError, match="example retrieval"):
        ExampleRetriever({}, 2, mode="nearest")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="example_retrieval"):
        GenerativeRewardTask(examples=2, example_retrieval="nearest")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="example_pool"):
        GenerativeRewardTask(examples=4, example_pool=2)


@pytest.mark.parametrize("mode", ["tag", "similar"])
def test_no_training_sample_is_shown_in_its_own_context(shards, mode):
    task = GenerativeRewardTask(examples=2, examples_from=shards["train"], example_retrieval=mode, example_pool=12)
    task.setup("fit")
    pool = task.examples_pool["pairwise"]
    assert len(pool) == 12 and all(q.tag for q in pool)
    pool_keys = {q.key for q in pool}
    samples = [s for s in iter_samples(shards["train"], 48) if s.kind == "pair"]
    checked = 0
    for sample in samples:
        rows = task.sample_rows(sample)
        for query in rows.queries:
            assert len(query.examples) == 2 and sample.key not in _keys(query.examples)
            assert [task.example_retriever.is_yes(e) for e in query.examples] == [True, False]
        checked += sample.key in pool_keys
    assert checked >= 10  # most pool members were queried themselves
    if mode == "tag":
        sample = samples[0]
        shown = task.sample_rows(sample).queries[0].examples
        assert all(e.tag == sample_tag(sample) for e in shown)
    # The batch the collator builds (what training and validation run) carries those examples.
    batch = task.collate(samples[:2])
    assert (batch.inputs["input_ids"] == task.backbone.image_token_id).sum() == 2 * 2 * 6 * 16


def test_the_export_retrieves_like_the_task_and_scores_like_it(shards, tmp_path):
    task = GenerativeRewardTask(
        examples=2, examples_from=shards["train"], example_retrieval="similar", example_pool=10, example_seed=3
    )
    task.setup("fit")
    task.configure_model()
    model = RewardModel.from_pretrained(task.export_to(tmp_path / "export"))
    assert model.retriever.mode == "similar" and model.retriever.seed == 3 and model.retriever.k == 2
    assert [q.tag for q in model.retriever.pool["pairwise"]] == [q.tag for q in task.examples_pool["pairwise"]]
    assert "examples" not in model.config  # the portable query shows no fixed context
    samples = [s for s in iter_samples(shards["val"], 8) if s.kind == "pair"][:2]
    for sample in samples:
        expected = _keys(task.sample_rows(sample).queries[0].examples)
        (query,) = model.queries([sample.prompt], [sample.second[0]], [sample.first[0]], tags=[sample_tag(sample)])
        assert _keys(query.examples) == expected
    prompts = [s.prompt for s in samples]
    images, references = [s.second[0] for s in samples], [s.first[0] for s in samples]
    rewards = model.score(prompts, images, references)
    torch.testing.assert_close(rewards, task.score_queries(model.queries(prompts, images, references)))
    # A scored item that is itself in the pool is not shown its own sample.
    member = task.examples_pool["pairwise"][0]
    (query,) = model.queries([member.prompt], [member.visuals[1]], [member.visuals[0]], keys=[member.key])
    assert member.key not in _keys(query.examples)


def test_first_mode_keeps_the_old_fixed_examples_in_the_export(shards, tmp_path):
    task = GenerativeRewardTask(examples=2, examples_from=shards["train"])
    task.setup("fit")
    task.configure_model()
    model = RewardModel.from_pretrained(task.export_to(tmp_path / "export"))
    assert len(model.config["examples"]["pairwise"]) == 2 and "example_pool" not in model.config
    image = Image.new("RGB", (64, 64))
    (query,) = model.queries(["a red circle"], [image], [image])
    assert _keys(query.examples) == _keys(task.examples_pool["pairwise"])


def test_sample_tag_reads_the_geneval_tag_then_the_category():
    assert sample_tag(Sample(key="k", kind="point", prompt="p", meta={"tag": "colors"}, category="x")) == "colors"
    assert sample_tag(Sample(key="k", kind="point", prompt="p", category="counting")) == "counting"

"""The reward tasks: loss wiring, both orders, ties, CoT positions, regressive head, subclassing,
bad inputs, checkpoints, and a few fit steps through the real CLI with export and reload."""

from __future__ import annotations

import json
import math
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from rewarddance.cli import main
from rewarddance.data.schema import Sample
from rewarddance.errors import UsageError
from rewarddance.judge.evaluation import manifest_categories
from rewarddance.judge.losses import (
    answer_cross_entropy,
    bradley_terry_loss,
    judgment_positions,
    pointwise_generative_loss,
    rationale_token_loss,
    yes_no_cross_entropy,
)
from rewarddance.judge.prompting import BadInputError, TemplateError, load_template
from rewarddance.judge.reward_model import EXPORT_CONFIG, RewardModel
from rewarddance.shapes import build_split
from rewarddance.tasks import GenerativeRewardTask, RegressiveRewardTask

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, str]:
    """Tiny shapes splits (pairs and points), built in a few seconds."""
    root = tmp_path_factory.mktemp("shapes")
    sizes = {"train": 24, "val": 8, "test-id": 8, "test-ood": 8}
    for split, n in sizes.items():
        build_split(root / split, split, samples=n, seed=0, progress=False, noise=0.0)  # type: ignore[arg-type]
    return {split: str(root / split) for split in sizes}


def _image(colour: str) -> list[Image.Image]:
    return [Image.new("RGB", (64, 64), colour)]


def _pair(key: str = "p0", label: str = "first", **kwargs) -> Sample:
    defaults = {"criteria": "text-image alignment", "category": "colors", "prompt": "a red circle"}
    return Sample(
        key=key,
        kind="pair",
        first=_image("red"),
        second=_image("blue"),
        label=label,  # type: ignore[arg-type]
        **{**defaults, **kwargs},
    )


def _point(key: str = "q0", answer: str = "yes", **kwargs) -> Sample:
    return Sample(key=key, kind="point", prompt="a red circle", image=_image("red"), answer=answer, **kwargs)  # type: ignore[arg-type]


# -- plain functions ------------------------------------------------------------------------------


def test_answer_cross_entropy_matches_the_losses_module():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, 3.0]])
    target = torch.tensor([1.0, 0.25])
    two = torch.log_softmax(logits[:, :2], dim=-1)
    expected = yes_no_cross_entropy(logits[:, 0], logits[:, 1], target)
    torch.testing.assert_close(answer_cross_entropy(two, target, "yes_no"), expected)
    vocab = torch.log_softmax(logits, dim=-1)[:, :2]
    # Hard target 1: -log softmax_vocab(yes); soft: the mixture.
    torch.testing.assert_close(answer_cross_entropy(vocab, target, "vocab")[0], -vocab[0, 0])
    torch.testing.assert_close(
        answer_cross_entropy(vocab, target, "vocab")[1], -(0.25 * vocab[1, 0] + 0.75 * vocab[1, 1])
    )


def test_judgment_positions_hand_worked():
    # Slice of K=5 answer-predicting logits; answers of 5 and 3 tokens end at the last position.
    lengths = torch.tensor([5, 3])
    assert judgment_positions(lengths, torch.tensor([0, 0]), 5).tolist() == [0, 2]
    assert judgment_positions(lengths, torch.tensor([-2, -2]), 5).tolist() == [3, 3]


def test_rationale_token_loss_skips_judgment_and_padding():
    logits = torch.zeros(2, 3, 4)
    labels = torch.tensor([[1, 2, 3], [-100, 1, 2]])
    loss, count = rationale_token_loss(logits, labels, torch.tensor([0, 1]))
    assert count.tolist() == [2, 1]
    torch.testing.assert_close(loss, torch.full((2,), math.log(4)))


# -- rows and losses ------------------------------------------------------------------------------


def test_pairwise_trains_both_orders_with_swapped_rationales():
    task = GenerativeRewardTask(rationale_format="judgment_first")
    sample = _pair(label="second", rationale="Image 1 has no circle. Image 2 matches the prompt.")
    rows = task.sample_rows(sample)
    ab, ba = rows.queries
    assert ab.visuals == [sample.first[0], sample.second[0]] and ba.visuals == [sample.second[0], sample.first[0]]
    assert rows.targets == [1.0, 0.0] and rows.pair_target == 1.0
    assert ab.answer == "yes. Image 1 has no circle. Image 2 matches the prompt."
    assert ba.answer == "no. Image 2 has no circle. Image 1 matches the prompt."


def test_soft_labels_are_probability_of_first():
    task = GenerativeRewardTask()
    assert task.pair_target(_pair(soft_label=0.8)) == pytest.approx(0.2)
    assert task.pair_target(_pair(label="tie")) == 0.5


def test_pairwise_loss_is_yes_no_ce_over_both_orders():
    task = GenerativeRewardTask()
    batch = task.collate([_pair("a", "first"), _pair("b", "second"), _point("c")])
    assert batch.counts == {"points_skipped": 1}
    assert batch.pair_rows.tolist() == [[0, 1], [2, 3]]
    log_probs, _, _ = task.judgment_log_probs(batch)
    expected = yes_no_cross_entropy(log_probs[:, 0], log_probs[:, 1], torch.tensor([0.0, 1.0, 1.0, 0.0])).mean()
    torch.testing.assert_close(task.loss_terms(batch)["pair"], expected)


def test_a_batch_of_only_skipped_samples_is_a_counted_skip_without_a_warning(tmp_path):
    import lightning as L
    from torch.utils.data import DataLoader

    task = GenerativeRewardTask(optimizer=lambda params: torch.optim.SGD(params, lr=0.0))
    samples = [_point("p"), _point("q"), _pair("a", "first"), _pair("b", "second")]  # batch 1: points only
    loader = DataLoader(samples, batch_size=2, collate_fn=task.collate)
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        trainer.fit(task, train_dataloaders=loader)
    assert trainer.global_step == 2  # both batches were steps; the first trained nothing
    assert trainer.callback_metrics["train/points_skipped"].item() == 2
    assert not [w for w in shown if "returned `None`" in str(w.message)], [str(w.message) for w in shown]


def test_ties_soft_or_excluded_and_counted():
    samples = [_pair("a", "first"), _pair("t", "tie")]
    soft = GenerativeRewardTask(ties="soft").collate(samples)
    assert soft.pair_train.tolist() == [True, True] and soft.row_targets[2:].tolist() == [0.5, 0.5]
    task = GenerativeRewardTask(ties="exclude")
    excluded = task.collate(samples)
    assert excluded.counts == {"ties_excluded": 1} and excluded.pair_train.tolist() == [True, False]
    log_probs, _, _ = task.judgment_log_probs(excluded)
    expected = yes_no_cross_entropy(log_probs[:2, 0], log_probs[:2, 1], torch.tensor([0.0, 1.0])).mean()
    torch.testing.assert_close(task.loss_terms(excluded)["pair"], expected)


def test_pointwise_wiring():
    task = GenerativeRewardTask(paradigm="pointwise", ce_weight=0.3)
    batch = task.collate([_pair("a", "first"), _point("q", "no")])
    assert batch.pair_rows.tolist() == [[0, 1]] and batch.point_rows.tolist() == [2]
    lp, _, _ = task.judgment_log_probs(batch)
    terms = task.loss_terms(batch)
    expected = pointwise_generative_loss(lp[0, 0], lp[0, 1], lp[1, 0], lp[1, 1], ce_weight=0.3, target=torch.ones(()))
    torch.testing.assert_close(terms["pair"], expected.reshape(()))
    torch.testing.assert_close(terms["point"], -lp[2, 1])
    with torch.no_grad():
        scores = task.row_scores(batch)
    d = lp[:, 0] - lp[:, 1]
    torch.testing.assert_close(task.pair_probability(scores, batch), torch.sigmoid(d[1] - d[0]).reshape(1))


def test_regressive_head_and_bradley_terry():
    task = RegressiveRewardTask()
    batch = task.collate([_pair("a", "second", soft_label=0.3), _point("q")])
    assert batch.counts == {"points_skipped": 1}
    assert task.head is not None
    torch.nn.init.normal_(task.head.linear.weight)
    scores = task.row_scores(batch)
    assert scores.shape == (2,)
    expected = bradley_terry_loss(scores[0], scores[1], torch.tensor(0.3))
    torch.testing.assert_close(task.loss_terms(batch)["pair"], expected)
    torch.testing.assert_close(task.pair_probability(scores, batch), torch.sigmoid(scores[1] - scores[0]).reshape(1))


def test_judgment_first_reward_is_read_right_after_the_prompt():
    """Teacher-forced judgment position == the fast reward without any answer (causal attention)."""
    task = GenerativeRewardTask(rationale_format="judgment_first")
    samples = [
        _pair("a", "first", rationale="Image 2 is blue."),
        _pair("b", "second", rationale="Image 1 is red, a lot."),
    ]
    batch = task.collate(samples)
    assert "labels" in batch.inputs
    task.eval()
    with torch.no_grad():
        forced = task.row_scores(batch)[:, 0].exp()
        fast = task.score_queries([q for s in samples for q in task.sample_rows(s).queries])
    torch.testing.assert_close(forced, fast, atol=1e-5, rtol=1e-4)
    task.train()
    assert set(task.loss_terms(batch)) == {"pair", "rationale"}


def test_reasons_first_generates_then_scores():
    task = GenerativeRewardTask(rationale_format="reasons_first", max_new_tokens=4)
    batch = task.collate([_pair("a", "first", rationale="Image 2 is blue.")])
    task.train()
    terms = task.loss_terms(batch)
    assert terms["rationale"] > 0
    task.eval()
    with torch.no_grad():
        scores = task.row_scores(batch)  # generation, then P(yes) after the answer marker
    assert scores.shape == (2, 2) and (scores < 0).all()


def test_freeze_projector_leaves_only_the_language_model_trainable():
    task = GenerativeRewardTask(freeze_vision=True, freeze_projector=True)
    task.configure_model()
    trainable = {n for n, p in task.model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in task.model.named_parameters() if not p.requires_grad}
    assert any(".merger." in n for n in frozen) and any(".visual." in n for n in frozen)
    assert trainable and not any(".visual." in n for n in trainable)  # Qwen2-VL's merger sits inside .visual


def test_freeze_patterns_keep_the_lower_layers_and_embeddings_out_of_the_step():
    task = GenerativeRewardTask(freeze_vision=True, freeze_projector=True, freeze=["embed_tokens", r"layers\.0\."])
    task.configure_model()
    task.train()
    sum(task.loss_terms(task.collate([_pair("a", "first"), _pair("b", "second")])).values()).backward()
    grads = {n: p.grad for n, p in task.model.named_parameters()}
    lowest = [n for n in grads if "layers.0." in n or "embed_tokens" in n]
    assert lowest and all(grads[n] is None for n in lowest)
    above = [grads[n] for n in grads if "layers.1." in n]
    assert above and all(g is not None for g in above) and sum(g.abs().sum() for g in above) > 0


def test_a_freeze_pattern_that_matches_nothing_names_the_setting():
    with pytest.raises(UsageError, match=r"freeze settings: No parameter .* matches any of 'layers\\.99'"):
        GenerativeRewardTask(freeze=[r"layers\.99"]).configure_model()


def test_an_export_asked_unlike_its_training_warns(tmp_path):
    """A rationale-trained export tested without its rationale format reads another question: warned, naming it."""
    folder = GenerativeRewardTask(paradigm="pairwise", rationale_format="judgment_first").export_to(tmp_path / "rm")
    with pytest.warns(UserWarning, match=r"rationale_format 'judgment_first' \(this task: 'none'\)"):
        GenerativeRewardTask(paradigm="pairwise", backbone=str(folder)).configure_model()
    with pytest.warns(UserWarning, match=r"paradigm 'pairwise' \(this task: 'pointwise'\)"):
        GenerativeRewardTask(
            paradigm="pointwise", backbone=str(folder), rationale_format="judgment_first"
        ).configure_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asked as trained: silent
        GenerativeRewardTask(
            paradigm="pairwise", backbone=str(folder), rationale_format="judgment_first"
        ).configure_model()


def test_yes_word_must_be_one_token():
    with pytest.raises(ValueError, match="single token"):
        GenerativeRewardTask(yes_word="yes indeed").configure_model()


def test_missing_template_field_fails_at_construction():
    data = load_template("default").to_dict()
    del data["pointwise"]
    with pytest.raises(TemplateError, match="pointwise"):
        GenerativeRewardTask(template=data)


def test_unknown_criteria_is_used_verbatim_and_counted():
    batch = GenerativeRewardTask().collate([_pair(criteria="Judge the vibe.")])
    assert batch.counts == {"criteria_verbatim": 1}


def test_bad_image_raises_or_is_skipped_and_counted():
    bad = _pair("bad")
    bad.second = [Image.new("RGB", (1, 400))]
    with pytest.raises(BadInputError, match="'bad'"):
        GenerativeRewardTask().collate([_pair("ok"), bad])
    batch = GenerativeRewardTask(on_bad_input="skip").collate([_pair("ok"), bad])
    assert batch.keys == ["ok"] and batch.counts["bad_inputs"] == 1


def test_long_prompt_is_truncated_and_counted():
    task = GenerativeRewardTask(max_length=140)
    batch = task.collate([_pair(prompt="a red circle and a blue square " * 20)])
    assert batch.counts == {"truncated": 2}  # both orders of the pair
    assert batch.inputs["input_ids"].shape[1] <= 140


def test_in_context_examples(shards):
    task = GenerativeRewardTask(examples=2, examples_from=shards["train"])
    task.setup("fit")
    pool = task.examples_pool["pairwise"]
    assert len(pool) == 2 and [q.answer for q in pool] == ["yes", "no"]
    query = task.sample_rows(_pair())
    assert len(query.queries[0].examples) == 2
    batch = task.collate([_pair()])
    assert (batch.inputs["input_ids"] == task.backbone.image_token_id).sum() == 2 * 6 * 16


# -- subclassing ----------------------------------------------------------------------------------


class StrictColourTask(GenerativeRewardTask):
    def criteria_for(self, sample: Sample) -> str:
        return "Only the colours matter."

    def loss_weights(self) -> dict[str, float]:
        return {"pair": 2.0}


def test_subclass_changes_criteria_and_weights_by_one_method(shards):
    task = StrictColourTask()
    rows = task.sample_rows(_pair())
    assert rows.queries[0].criteria == "Only the colours matter."
    batch = task.collate([_pair()])
    terms = task.loss_terms(batch)
    torch.testing.assert_close(task.training_step(batch, 0), 2.0 * terms["pair"])


# -- the collator the DataLoader workers get --------------------------------------------------------


def test_collator_pickles_without_the_model_and_keeps_the_subclass_hooks():
    task = StrictColourTask()
    collator = task.collator
    blob = pickle.dumps(collator)  # what a worker started with ``spawn`` receives
    weights = sum(p.numel() * p.element_size() for p in task.parameters())
    assert len(blob) < weights / 4  # the processor and the template, not the model
    copy = pickle.loads(blob)
    samples = [_pair("a", "first"), _pair("b", "tie"), _point("c")]
    batch, expected = copy(samples), task.collate(samples)
    assert batch.keys == expected.keys and batch.counts == expected.counts
    torch.testing.assert_close(batch.inputs["input_ids"], expected.inputs["input_ids"])
    torch.testing.assert_close(batch.inputs["pixel_values"], expected.inputs["pixel_values"])
    # The rows come from a copy of the task without weights, with the subclass's criteria.
    rows = collator.rows(_pair())
    assert not isinstance(rows, str) and rows.queries[0].criteria == "Only the colours matter."
    assert not list(collator.rows.__self__.parameters())


def test_the_datamodule_hands_the_collator_to_its_workers(shards):
    import lightning as L

    from rewarddance.data.datamodule import ShardDataModule
    from rewarddance.judge.batch import RewardBatch, RewardCollator

    task = GenerativeRewardTask()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(task)
    datamodule = ShardDataModule(train=shards["train"], batch_size=4, num_workers=1, shuffle=False)
    datamodule.trainer = trainer
    loader = datamodule.train_dataloader()
    assert isinstance(loader.dataset.collate_fn, RewardCollator)
    batch = next(iter(loader))
    assert isinstance(batch, RewardBatch) and len(batch.keys) + batch.counts.get("points_skipped", 0) == 4


def test_a_batch_crosses_to_the_training_process_unchanged_with_small_tensors_inline(monkeypatch):
    import rewarddance.judge.batch as batch_module

    task = GenerativeRewardTask()
    batch = task.collate([_pair("a", "first"), _pair("b", "second"), _point("c")])
    monkeypatch.setattr(batch_module, "INLINE_TENSOR_BYTES", batch.inputs["input_ids"].nbytes)  # pixels stay shared
    state = batch.__getstate__()
    assert isinstance(state["row_targets"], batch_module._InlineTensor)
    assert isinstance(state["inputs"]["input_ids"], batch_module._InlineTensor)
    assert isinstance(state["inputs"]["pixel_values"], torch.Tensor)
    bfloat16 = torch.ones(2, dtype=torch.bfloat16)  # numpy has no bfloat16: it keeps shared memory
    assert batch_module._inline_if_small(bfloat16) is bfloat16
    copy = pickle.loads(pickle.dumps(batch))  # a DataLoader worker's pickle (the test above runs a real one)
    for name in ("row_targets", "row_train", "judgment", "pair_rows", "pair_targets", "point_rows"):
        original, received = getattr(batch, name), getattr(copy, name)
        assert isinstance(received, torch.Tensor) and received.dtype == original.dtype
        assert torch.equal(received, original)
    assert batch.inputs.keys() == copy.inputs.keys()
    for key, value in batch.inputs.items():
        assert copy.inputs[key].dtype == value.dtype and torch.equal(copy.inputs[key], value)
    assert copy.keys == batch.keys and copy.counts == batch.counts and len(copy.previews) == len(batch.previews)
    torch.testing.assert_close(task.loss_terms(copy)["pair"], task.loss_terms(batch)["pair"], rtol=0, atol=0)


def test_categories_come_from_the_argument_or_the_manifest(shards):
    declared = json.loads((Path(shards["val"]) / "manifest.json").read_text())["categories"]
    assert manifest_categories(shards["val"]) == list(declared) and declared
    assert manifest_categories([shards["val"], shards["val"]]) == list(declared)
    assert manifest_categories(str(Path(shards["val"]) / "shard-000000.tar.gz")) == []
    task = GenerativeRewardTask()
    assert task.categories_for("validate", "val") == []  # no trainer, no DataModule: every pair is "other"
    assert GenerativeRewardTask(categories=["x", "y"]).categories_for("test", "test-id") == ["x", "y"]


# -- checkpoints ----------------------------------------------------------------------------------


def test_the_trained_criteria_survive_a_resume_and_the_argument_overrides_them():
    trained = GenerativeRewardTask(paradigm="pointwise")
    alignment, quality = trained.template.criteria["text-image alignment"], trained.template.criteria["visual quality"]
    trained.trained_criteria.update({alignment: 3, quality: 1})
    assert trained.export_criteria() == "text-image alignment"  # its template name
    checkpoint: dict = {}
    trained.on_save_checkpoint(checkpoint)
    resumed = GenerativeRewardTask(paradigm="pointwise")
    resumed.on_load_checkpoint(checkpoint)  # no state_dict: the records only
    assert resumed.trained_criteria == trained.trained_criteria
    assert GenerativeRewardTask(paradigm="pointwise", criteria="visual quality").export_criteria() == "visual quality"
    assert GenerativeRewardTask(paradigm="pointwise").export_criteria() is None  # nothing trained: the template's


def test_checkpoint_of_another_backbone_is_refused(tmp_path):
    import lightning as L

    task = GenerativeRewardTask(backbone_kwargs={"hidden_size": 64, "num_heads": 2, "num_kv_heads": 1})
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(task)
    task.configure_model()
    path = tmp_path / "small.ckpt"
    trainer.save_checkpoint(path)
    with pytest.raises(ValueError, match=r"another model configuration.*backbone_kwargs"):
        GenerativeRewardTask.load_from_checkpoint(path, backbone_kwargs={})
    foreign = torch.load(path, weights_only=False)
    del foreign["rewarddance"]
    torch.save(foreign, path)
    with pytest.raises(ValueError, match="does not fit backbone"):
        GenerativeRewardTask.load_from_checkpoint(path, backbone_kwargs={})


def test_lora_checkpoint_reloads_with_plain_hyperparameters(tmp_path):
    import lightning as L

    from rewarddance.models import LoraSettings

    task = GenerativeRewardTask(lora=LoraSettings(r=4))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(task)
    task.configure_model()
    trainer.save_checkpoint(tmp_path / "lora.ckpt")
    assert isinstance(torch.load(tmp_path / "lora.ckpt", weights_only=True)["hyper_parameters"]["lora"], dict)
    reloaded = GenerativeRewardTask.load_from_checkpoint(tmp_path / "lora.ckpt")
    assert reloaded.lora_settings == LoraSettings(r=4)


# -- the real command line ------------------------------------------------------------------------


def _fit_args(config: str, shards: dict[str, str], root: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--config",
        str(ROOT / "configs" / "reward" / config),
        "--trainer.max_steps=2",
        "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={root}",
        f"--trainer.logger.init_args.save_dir={root}",
        f"--data.init_args.train={shards['train']}",
        f"--data.init_args.val={shards['val']}",
        f"--data.init_args.test={json.dumps({'test-id': shards['test-id'], 'test-ood': shards['test-ood']})}",
        "--data.init_args.num_workers=0",
        "--data.init_args.batch_size=4",
        *extra,
    ]


def test_cli_fit_exports_a_model_that_scores_like_the_task(shards, tmp_path, capsys):
    cli = main(_fit_args("shapes_pairwise.yaml", shards, tmp_path))
    task: GenerativeRewardTask = cli.model  # type: ignore[assignment]
    assert task.trainer.global_step == 2
    assert "val/acc" in cli.trainer.callback_metrics
    out = capsys.readouterr().out
    assert "[rewarddance] checkpoint:" in out and "[rewarddance] export:" in out
    export = task.export_path
    assert export is not None and (export / EXPORT_CONFIG).is_file() and (export / "config.json").is_file()
    record = json.loads((export / EXPORT_CONFIG).read_text())
    assert record["paradigm"] == "pairwise" and record["template"]["name"] == "default"
    # The export asks with the criteria most training samples were asked with (the shards name theirs), not the
    # template's default "overall", which no training sample used.
    assert 0 < sum(task.trained_criteria.values()) <= 8  # 2 steps of 4 samples, the point samples skipped
    most_asked = task.trained_criteria.most_common(1)[0][0]
    assert task.template.criteria[record["criteria"]] == most_asked != task.template.criteria["overall"]
    assert (
        RewardModel.from_pretrained(export)
        .queries(["a red circle"], [_image("red")[0]], [_image("blue")[0]])[0]
        .criteria
        == most_asked
    )

    # Named test sets are logged side by side.
    cli.trainer.test(task, datamodule=cli.datamodule, verbose=False)
    metrics = cli.trainer.callback_metrics
    for name in ("test-id", "test-ood"):
        for metric in ("acc", "acc_with_ties", "ece", "position_bias_rate"):
            assert f"{name}/{metric}" in metrics
    assert "test accuracy: test-id: acc" in capsys.readouterr().out

    # The export scores exactly like the task it came from.
    model = RewardModel.from_pretrained(export)
    prompts = ["a red circle", "two blue squares"]
    images = [_image("red")[0], _image("blue")[0]]
    references = [_image("white")[0], _image("green")[0]]
    rewards = model.score(prompts, images, references=references, batch_size=1)
    expected = task.score_queries(model.queries(prompts, images, references))
    torch.testing.assert_close(rewards, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("config", "task_class"),
    [("shapes_pointwise.yaml", GenerativeRewardTask), ("shapes_regressive.yaml", RegressiveRewardTask)],
)
def test_cli_fit_other_configs(shards, tmp_path, config, task_class):
    cli = main(_fit_args(config, shards, tmp_path, "--model.init_args.export=false"))
    assert isinstance(cli.model, task_class) and cli.trainer.global_step == 2
    assert "val/acc" in cli.trainer.callback_metrics


@pytest.mark.slow  # ~6 s on a 2-core box: two fits; tests/test_configs.py parses both configs in the default tier
def test_cli_fit_context_configs(shards, tmp_path):
    """The shipped CoT (reasons first here) and in-context configs train, validate and export end to end."""
    cot = main(
        _fit_args("shapes_cot.yaml", shards, tmp_path / "cot", "--model.init_args.rationale_format=reasons_first")
    )
    assert cot.trainer.global_step == 2 and "val/acc" in cot.trainer.callback_metrics
    assert RewardModel.from_pretrained(cot.model.export_path).reasons_first
    icl = main(_fit_args("shapes_icl.yaml", shards, tmp_path / "icl"))
    assert icl.trainer.global_step == 2 and "val/acc" in icl.trainer.callback_metrics
    pool = icl.model.examples_pool["pairwise"]
    assert len(pool) >= 2 and len({q.key for q in pool}) == len(pool)  # the tiny train split holds fewer than 256
    model = RewardModel.from_pretrained(icl.model.export_path)
    assert model.retriever.mode == "similar" and len(model.retriever.pool["pairwise"]) == len(pool)

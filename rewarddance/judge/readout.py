r"""Read the reward off a backbone: P("yes") (also after generated reasons), the scalar head, a shared prefix.

The generative reward is read from the LM head: r = P("yes" | images, prompt, instruction).

RewardDance (arXiv 2509.08826) defines the reward as the probability of the token "yes" at the
answer position, with no regression head. Two normalisations are offered:

- ``"yes_no"`` (default): a softmax over the two answer logits only,
  :math:`r = \exp(z_y) / (\exp(z_y) + \exp(z_n)) = \sigma(z_y - z_n)`. It ignores the mass the
  model puts on other tokens, which is large for a backbone not yet tuned to answer yes/no, so the
  reward spans (0, 1) from the first step. The paper does not say which it uses; this is the
  project's choice.
- ``"vocab"``: the softmax over the whole vocabulary, :math:`r = \exp(z_y) / \sum_v \exp(z_v)`.

The model is run with ``logits_to_keep=1``: only the last position's logits are computed (the
inputs are left-padded, so position -1 is every sample's answer position), which avoids a
[batch, length, vocab] tensor that dominates memory for long image sequences. The two-token
kernel (:func:`yes_no_log_probs`, :func:`last_token_logits`, :func:`yes_probability`) is generic and
lives in :mod:`rewarddance.models.logits`; this module builds the judge's readings on it:

- :func:`generative_log_probs` / :func:`generative_rewards`: P(yes) of queries, read the way the
  model was trained (reasons-first models generate their rationale first, :func:`generate_reasons`);
- :class:`RewardHead`, :func:`regressive_rewards`: the regressive baseline's scalar head on
  :func:`last_hidden_state`;
- :func:`rewards_with_shared_prefix`: N candidates against one reference, the shared prefix run once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers import BatchFeature

from rewarddance.judge.losses import judgment_positions, rationale_token_loss
from rewarddance.judge.prompting import EncodeReport, Query, RationaleFormat, Template, encode_queries
from rewarddance.models import Backbone
from rewarddance.models.logits import Normalization, last_token_logits, yes_no_log_probs, yes_probability
from rewarddance.models.lora import unwrap_peft

try:  # torch >= 2.6
    from torch.distributed.fsdp import FSDPModule
except ImportError:  # torch 2.4 / 2.5
    from torch.distributed._composable.fsdp import FSDPModule  # type: ignore[no-redef]

_SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids", "labels", "position_ids")


class PrefixNotShared(ValueError):
    """The candidates do not encode to sequences that differ only in their pixels (e.g. different sizes)."""


def image_starts(input_ids: Tensor, image_token_id: int) -> list[int]:
    """Positions of the first placeholder token of each image in one sequence (``[length]`` ids)."""
    positions = (input_ids == image_token_id).nonzero().flatten().tolist()
    return [p for i, p in enumerate(positions) if i == 0 or p - positions[i - 1] > 1]


def rewards_with_shared_prefix(
    model: nn.Module,
    pair: Mapping[str, Any],
    others: Mapping[str, Any],
    yes_token_id: int,
    no_token_id: int,
    image_token_id: int,
    candidate_images: int = 1,
    normalization: Normalization = "yes_no",
) -> Tensor:
    """P("yes") for N candidates asked the same question, encoding what they share once.

    Best-of-N against one reference asks the same question N times: instruction, prompt and the
    reference image are identical, only the candidate differs. Same-size candidates even give
    identical token sequences; only their pixels differ. So the processor runs once on the first
    full question (``pair``) and on the other candidates' images alone (``others``, from
    :func:`rewarddance.models.inputs.encode_images`); the model runs the shared prefix (everything
    before the first candidate image) once with the KV cache on, repeats that cache N times and
    runs only the N suffixes (candidate images and the rest of the question) as one batch.
    Positions come from the full sequence, so Qwen's multimodal (3-D) rotary positions of the
    suffix are exactly those a from-scratch forward uses: the rewards equal :func:`yes_probability`
    on the N full sequences to float tolerance (tested).

    Args:
        model: A Qwen-VL family model (pixel inputs described by ``image_grid_thw``) or one whose
            ``pixel_values`` hold one tile per image (InternVL without tiling).
        pair: Processor output of one question (one row): the shared images, then the first
            candidate's ``candidate_images`` images, then the rest of the question.
        others: Pixel inputs of the other N - 1 candidates, ``candidate_images`` images each, in order.
        yes_token_id: Id of "yes".
        no_token_id: Id of "no".
        image_token_id: The image placeholder token id.
        candidate_images: Images per candidate (a video candidate has one per frame).
        normalization: See the module docstring.

    Returns:
        ``[N]`` float32 rewards.

    Raises:
        PrefixNotShared: The other candidates' images differ in size from the first's (their
            sequences would differ in length), or nothing precedes the candidate.
    """
    input_ids = pair["input_ids"]
    if input_ids.shape[0] != 1:
        raise ValueError(f"pair must be one encoded question, got {input_ids.shape[0]} rows")
    length = input_ids.shape[1]
    starts = image_starts(input_ids[0], image_token_id)
    shared_images = len(starts) - candidate_images
    if shared_images < 1:
        raise PrefixNotShared(
            f"the question holds {len(starts)} images: none precedes the {candidate_images} of the candidate"
        )
    # The family's vision-start / <img> token sits right before an image's first placeholder.
    split = starts[shared_images] - 1
    pixels, others_pixels = pair["pixel_values"], others["pixel_values"]
    grid = pair.get("image_grid_thw")
    if grid is not None:
        candidate_grid = grid[shared_images:]
        n = 1 + others["image_grid_thw"].shape[0] // candidate_images
        if not torch.equal(others["image_grid_thw"], candidate_grid.repeat(n - 1, 1)):
            raise PrefixNotShared("the candidates differ in size, so their sequences differ in length")
        prefix_rows = int(grid[:shared_images].prod(-1).sum())
        prefix_extra = {"image_grid_thw": grid[:shared_images]}
        suffix_extra = {"image_grid_thw": candidate_grid.repeat(n, 1)}
        position_ids = _full_position_ids(model, pair)
    else:
        n = 1 + others_pixels.shape[0] // candidate_images
        if pixels.shape[0] != len(starts) or others_pixels.shape[0] != (n - 1) * candidate_images:
            raise PrefixNotShared("one pixel tile per image is needed (InternVL without tiling)")
        if others_pixels.shape[1:] != pixels.shape[1:]:
            raise PrefixNotShared("the candidates differ in size, so their sequences differ in length")
        prefix_rows = shared_images
        prefix_extra, suffix_extra = {}, {}
        position_ids = torch.arange(length)[None]
    suffix_positions = position_ids[..., split:]
    token_types = pair.get("mm_token_type_ids")
    prefix = {
        "input_ids": input_ids[:, :split],
        "pixel_values": pixels[:prefix_rows],
        **prefix_extra,
        **({"mm_token_type_ids": token_types[:, :split]} if token_types is not None else {}),
    }
    suffix = {
        "input_ids": input_ids[:, split:].expand(n, -1),
        # Row i's images: the first candidate's come from the pair, the others' from ``others``.
        "pixel_values": torch.cat([pixels[prefix_rows:], others_pixels]),
        "attention_mask": torch.ones(n, length, dtype=torch.long),
        "position_ids": suffix_positions.expand(*suffix_positions.shape[:-2], n, -1),
        "cache_position": torch.arange(split, length),
        **suffix_extra,
        **({"mm_token_type_ids": token_types[:, split:].expand(n, -1)} if token_types is not None else {}),
    }
    device = next(model.parameters()).device
    to = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
    cache = model(**to(prefix), use_cache=True, logits_to_keep=1).cache
    cache.batch_repeat_interleave(n)
    logits = model(**to(suffix), cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :]
    return yes_no_log_probs(logits, yes_token_id, no_token_id, normalization)[:, 0].exp()


def _full_position_ids(model: nn.Module, inputs: Mapping[str, Any]) -> Tensor:
    """Qwen-VL multimodal rotary positions of full sequences (no forward pass needed)."""
    inner = getattr(model, "model", model)
    kwargs = {"image_grid_thw": inputs["image_grid_thw"], "attention_mask": inputs.get("attention_mask")}
    if "mm_token_type_ids" in inputs:
        kwargs["mm_token_type_ids"] = inputs["mm_token_type_ids"]
    position_ids, _ = inner.get_rope_index(inputs["input_ids"], **kwargs)
    return position_ids


# --------------------------------------------------------------------------------------------
# Readings of queries (the tasks and RewardModel share them)
# --------------------------------------------------------------------------------------------


class RewardHead(nn.Module):
    """The regressive baseline's head: ``r = w . h + b`` on the last hidden state at the last position.

    Args:
        hidden_size: Width of the language model's hidden state.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        # Zero init: every reward starts at 0, so the first BT gradients come from the data alone.
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        """``[batch, hidden]`` -> ``[batch]`` scalar rewards (float32)."""
        return self.linear(hidden.float()).squeeze(-1)


def last_hidden_state(model: nn.Module, inputs: Mapping[str, Any]) -> Tensor:
    """The language model's final (normed) hidden state at the last position, ``[batch, hidden]``.

    Runs the VLM body (``model.model``: vision tower, projector, language model) without the LM
    head, so no vocabulary-sized logits are ever computed. LoRA layers injected by PEFT are used.

    A model sharded with FSDP2 (:func:`rewarddance.distributed.shard_task`) is entered at the top
    instead, where its root unit's hooks gather the embeddings and reduce their gradients: it is
    called whole with ``logits_to_keep=1`` and a forward hook on the body keeps the body's output.
    Same values; the only extra work is the LM head on one position per row.
    """
    base = unwrap_peft(model)
    if isinstance(base, FSDPModule):
        captured: list[Tensor] = []

        def keep(module: nn.Module, args: Any, output: Any) -> None:
            captured.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

        handle = base.model.register_forward_hook(keep)
        try:
            model(**{k: v for k, v in inputs.items() if k != "labels"}, logits_to_keep=1, use_cache=False)
        finally:
            handle.remove()
        return captured[-1][:, -1]
    device = next(base.parameters()).device
    model_inputs = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in inputs.items() if k != "labels"}
    return base.model(**model_inputs, use_cache=False).last_hidden_state[:, -1]


def hidden_size(model: nn.Module) -> int:
    """Width of a VLM's language model."""
    config = unwrap_peft(model).config
    return int(getattr(config, "text_config", config).hidden_size)


def drop_last_position(inputs: Mapping[str, Any]) -> BatchFeature:
    """Remove the last position of every sequence tensor (left padding: every row's last token).

    Used to read the reward right *before* the end-of-turn token that ``Backbone.encode`` appends
    to an answer: encoding a partial answer (the reasons-first prefix) that way reuses the
    encoder's token-boundary checks.
    """
    length = inputs["input_ids"].shape[1]
    out = {
        k: v[:, :-1] if k in _SEQUENCE_KEYS and isinstance(v, Tensor) and v.dim() >= 2 and v.shape[1] == length else v
        for k, v in inputs.items()
    }
    return BatchFeature(out)


def _split_reasons(text: str, template: Template) -> str:
    """The rationale part of a generated reasons-first answer (before the answer marker)."""
    for marker in (template.reasons_marker, template.reasons_marker.strip()):
        if marker and marker in text:
            return text.split(marker)[0].strip()
    return text.strip()


def generate_reasons(
    backbone: Backbone,
    template: Template,
    queries: Sequence[Query],
    *,
    max_new_tokens: int = 64,
    max_length: int | None = None,
) -> list[str]:
    """Greedily generate reasons-first rationales for queries (the text before the answer marker)."""
    inputs, _ = encode_queries(backbone, template, queries, rationale_format="reasons_first", max_length=max_length)
    model = backbone.model
    device = next(model.parameters()).device
    inputs = BatchFeature({k: v.to(device) if isinstance(v, Tensor) else v for k, v in inputs.items()})
    out = model.generate(
        **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=backbone.tokenizer.pad_token_id
    )
    texts = backbone.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return [_split_reasons(t, template) for t in texts]


def generative_log_probs(
    backbone: Backbone,
    template: Template,
    queries: Sequence[Query],
    *,
    normalization: Normalization = "yes_no",
    rationale_format: RationaleFormat = "none",
    max_length: int | None = None,
    max_new_tokens: int = 64,
) -> tuple[Tensor, EncodeReport, list[str] | None]:
    """``[n, 2]`` log P(yes), log P(no) for each query, read the way the model was trained.

    - ``none`` / ``judgment_first``: at the last prompt position (``logits_to_keep=1``): for a
      judgment-first model this is the first answer token, so no rationale is generated (the
      paper's RL setting).
    - ``reasons_first``: the rationale is generated greedily first (``max_new_tokens``), then
      P(yes) is read right after ``<reasons><answer marker>``.

    Returns:
        ``(log-probabilities [n, 2] float32 on the model's device, encode report, rationales or None)``.
    """
    queries = [Query(**{**q.__dict__, "answer": None}) for q in queries]
    reasons: list[str] | None = None
    if rationale_format == "reasons_first":
        reasons = generate_reasons(backbone, template, queries, max_new_tokens=max_new_tokens, max_length=max_length)
        prefixed = [Query(**{**q.__dict__, "answer": template.reasons_prefix(r)}) for q, r in zip(queries, reasons)]
        inputs, report = encode_queries(
            backbone, template, prefixed, rationale_format=rationale_format, with_answers=True, max_length=max_length
        )
        inputs = drop_last_position(inputs)
    else:
        inputs, report = encode_queries(
            backbone, template, queries, rationale_format=rationale_format, max_length=max_length
        )
    return backbone.yes_no_log_probs(inputs, normalization), report, reasons


def generative_rewards(
    backbone: Backbone,
    template: Template,
    queries: Sequence[Query],
    *,
    normalization: Normalization = "yes_no",
    rationale_format: RationaleFormat = "none",
    max_length: int | None = None,
    max_new_tokens: int = 64,
) -> tuple[Tensor, EncodeReport, list[str] | None]:
    """P("yes") for each query (see :func:`generative_log_probs`), as ``[n]`` float32 on CPU."""
    log_probs, report, reasons = generative_log_probs(
        backbone,
        template,
        queries,
        normalization=normalization,
        rationale_format=rationale_format,
        max_length=max_length,
        max_new_tokens=max_new_tokens,
    )
    return log_probs[:, 0].exp().float().cpu(), report, reasons


def regressive_rewards(
    backbone: Backbone,
    head: RewardHead,
    template: Template,
    queries: Sequence[Query],
    *,
    max_length: int | None = None,
) -> tuple[Tensor, EncodeReport]:
    """The regressive baseline's scalar reward for each (pointwise) query."""
    inputs, report = encode_queries(backbone, template, queries, max_length=max_length)
    return head(last_hidden_state(backbone.model, inputs)).float().cpu(), report


def judgment_log_probs(
    backbone: Backbone, inputs: Mapping[str, Any], judgment: Tensor, normalization: Normalization = "yes_no"
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``[R, 2]`` log P(yes), log P(no) at each row's judgment position, and with answers (``labels``
    in ``inputs``) the per-row rationale-token loss and token count (else None, None).

    Without answers the judgment is the next token after the prompt (``logits_to_keep=1``). With
    answers (left-padded, so every answer ends at the last position) only the last ``K + 1``
    logits are computed, K the longest answer; a shorter answer's extra positions carry -100
    labels and are masked (tests/tasks/test_reward.py checks positions and masking).

    Args:
        backbone: The backbone (its model is run with gradients, as training needs).
        inputs: The batch's model inputs, ``labels`` marking answer tokens.
        judgment: ``[R]`` index of the judgment token in each row's answer (see
            :func:`rewarddance.judge.losses.judgment_positions`).
        normalization: See :mod:`rewarddance.models.logits`.

    Raises:
        ValueError: A judgment token is neither the yes nor the no token (the template's answer
            layout does not put the answer word on its own token).
    """
    labels = inputs.get("labels")
    if labels is None:
        return backbone.yes_no_log_probs(inputs, normalization), None, None
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    lengths = (labels != -100).sum(dim=1)
    kept = int(lengths.max())
    logits = backbone.model(**model_inputs, logits_to_keep=kept + 1, use_cache=False).logits[:, :-1]
    tokens = labels[:, -kept:]
    positions = judgment_positions(lengths, judgment, kept)
    rows = torch.arange(labels.shape[0], device=labels.device)
    answer_ids = tokens[rows, positions]
    expected = torch.tensor([backbone.yes_token_id, backbone.no_token_id], device=labels.device)
    if not torch.isin(answer_ids, expected).all():
        words = backbone.tokenizer.convert_ids_to_tokens(expected.tolist())
        raise ValueError(
            f"The judgment token of an answer is not one of {words} (found "
            f"{backbone.tokenizer.convert_ids_to_tokens(answer_ids.tolist())}); the template's answer format "
            "must put the answer word on its own token."
        )
    log_probs = yes_no_log_probs(logits[rows, positions], backbone.yes_token_id, backbone.no_token_id, normalization)
    rationale, count = rationale_token_loss(logits, tokens, positions)
    return log_probs, rationale, count


__all__ = [
    "Normalization",
    "PrefixNotShared",
    "RewardHead",
    "drop_last_position",
    "generate_reasons",
    "generative_log_probs",
    "generative_rewards",
    "hidden_size",
    "image_starts",
    "judgment_log_probs",
    "last_hidden_state",
    "last_token_logits",
    "regressive_rewards",
    "rewards_with_shared_prefix",
    "yes_no_log_probs",
    "yes_probability",
]

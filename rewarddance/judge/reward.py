"""A trained reward model as an RL reward: :class:`RewardModelReward`, registered as ``reward_model``.

A reasons-first model (trained to write its rationale before the judgment) is a reward too, wherever no
gradient is needed: GRPO reads reward values only, and best-of-N references are chosen without gradients.
Its rewards are read the way :meth:`RewardModel.score` reads them (the rationale generated greedily, then
P("yes") after it) and its rationales are kept in :attr:`RewardModelReward.last_rationales`. ReFL, which
backpropagates the reward into the generator, refuses it: sampling the rationale token by token has no
gradient (:attr:`RewardModelReward.differentiable` is False, and a call on images that need gradients raises).

Image-to-video: each prompt's condition image (its metadata's ``condition_image``, what the I2V generator is
conditioned on) is shown to the model before the clips, as in training (``condition.<ext>`` shard members), in
every path: GRPO's rewards, ReFL's differentiable rewards and the pairwise model's best-of-N references (chosen
and cached per prompt and condition image). A model whose export records that it was trained with a condition
image before every clip refuses prompts without one, and one trained without them refuses prompts with one
(:meth:`RewardModel.check_conditions`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from torch import Tensor, nn

from rewarddance.errors import UsageError
from rewarddance.models.pixels import to_pil_images
from rewarddance.rl.reference import ReferenceCache, ReferenceSelection
from rewarddance.rl.rewards import CandidateSampler, Reward, register_reward

__all__ = ["RewardModelReward"]


@register_reward("reward_model")
class RewardModelReward(Reward):
    """A trained rewarddance reward model (exported folder), frozen, as a differentiable reward.

    Pointwise and regressive models score each image alone. A pairwise model answers "is image 2 better than
    image 1?" with the candidate as image 2 and a reference as image 1: for each prompt, ``best_of_n`` samples of
    the starting generator are judged against each other (every pair, both orders by default), ranked by their
    win counts, and the ``top_k`` best (``which: bottom``: worst) become its references, cached for the rest of
    the run (the starting generator does not change, so they never go stale). The reward is the mean
    P(candidate better) over a prompt's references.

    Args:
        path: The export folder (``RewardModel.from_pretrained``), e.g. ``runs/shapes_pairwise/version_0/export``.
        criteria: Criteria name or text to ask with; null: the one the model was exported with.
        dtype: Parameter dtype of the frozen model (``bfloat16`` on GPUs); null keeps the saved one.
        best_of_n: Pairwise: starting-model samples per prompt the references are chosen from (paper: 16).
        top_k: Pairwise: references per prompt (paper: 2).
        which: Pairwise: ``top`` (the paper's choice) or ``bottom`` (its ablation) by win count.
        both_orders: Pairwise: judge each pair of samples in both orders while ranking (cancels position bias).
        soft: Pairwise: rank by summed win probabilities instead of win counts.
        judge_batch_size: Pairs per reward-model call while ranking (null: all of a prompt's at once).
        cache_size: Prompts whose references are kept (least recently used dropped first); null: all.
        quantize: Reproduce the processor's uint8 roundings in the forward pass (straight-through gradients).
        seed: Seed of the reference samples (each prompt's samples derive from it and the prompt text).
    """

    def __init__(
        self,
        path: str,
        criteria: str | None = None,
        dtype: str | None = None,
        best_of_n: int = 16,
        top_k: int = 2,
        which: Literal["top", "bottom"] = "top",
        both_orders: bool = True,
        soft: bool = False,
        judge_batch_size: int | None = None,
        cache_size: int | None = None,
        quantize: bool = True,
        seed: int = 0,
    ) -> None:
        if not 2 <= best_of_n <= 64:
            raise UsageError(
                f"reward_model reward: best_of_n must be in [2, 64] (the paper uses up to 16), got {best_of_n}"
            )
        if not 1 <= top_k <= best_of_n:
            raise UsageError(f"reward_model reward: top_k must be in [1, best_of_n={best_of_n}], got {top_k}")
        self.path, self.criteria, self.dtype = path, criteria, dtype
        self.best_of_n, self.top_k, self.which = best_of_n, top_k, which
        self.both_orders, self.soft, self.judge_batch_size = both_orders, soft, judge_batch_size
        self.quantize, self.seed = quantize, seed
        self.cache = ReferenceCache(max_prompts=cache_size)
        self.model: Any = None  # rewarddance.judge.reward_model.RewardModel once set up
        self.sampler: CandidateSampler | None = None
        self.conditions: dict[str, Image.Image] = {}
        """Image-to-video: the last condition image seen per prompt text (as the generator adapter keeps them), so
        that :meth:`references` called with a prompt alone finds its references."""
        self.last_rationales: list[str] | None = None
        """Reasons-first models: the rationale behind each reward of the last call (pairwise: one line per
        reference, ``reference <j>: <rationale>``); None for other models."""

    def setup(self, sampler: CandidateSampler | None = None) -> None:
        """Load the model (once), freeze it, and keep the starting-model sampler for references.

        Raises:
            FileNotFoundError: ``path`` is not an export folder.
            ValueError: A pairwise model without a sampler.
        """
        if self.model is None:
            from rewarddance.judge.reward_model import EXPORT_CONFIG, RewardModel

            folder = Path(self.path)
            if not (folder / EXPORT_CONFIG).is_file():
                raise FileNotFoundError(
                    f"No reward model at {folder} (no {EXPORT_CONFIG}). Train and export one, e.g. "
                    "`python -m rewarddance fit --config configs/reward/shapes_pairwise.yaml` (it writes "
                    "<log dir>/export), and point reward.path there; or use reward: shapes-color (a toy) to try "
                    "the RL loop."
                )
            model = RewardModel.from_pretrained(folder, dtype=self.dtype)
            # Frozen: ReFL needs gradients through the model to the pixels, never into it.
            model.backbone.model.requires_grad_(False).eval()
            if model.head is not None:
                model.head.requires_grad_(False)
            self.model = model
        self.sampler = sampler
        if self.needs_references and sampler is None:
            raise ValueError("A pairwise reward model needs a sampler of the starting generator for its references")

    @property
    def needs_references(self) -> bool:
        """True for a pairwise generative model."""
        model = self._model()
        return model.kind == "generative" and model.paradigm == "pairwise"

    def _model(self) -> Any:
        if self.model is None:
            raise RuntimeError("Call setup() before using the reward model")
        return self.model

    @property
    def reasons_first(self) -> bool:
        """Whether the model writes its rationale before the judgment (then its rewards carry no gradient)."""
        if self.model is not None:
            return bool(self.model.reasons_first)
        from rewarddance.judge.reward_model import EXPORT_CONFIG

        # Before setup: read the export's record (no weights), so a config can be checked cheaply.
        try:
            config = json.loads((Path(self.path) / EXPORT_CONFIG).read_text())
        except (OSError, ValueError):
            return False
        return config.get("kind") == "generative" and config.get("rationale_format") == "reasons_first"

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        """False for a reasons-first model: its rationale is sampled token by token, which has no gradient."""
        return not self.reasons_first

    def to(self, device: torch.device | str) -> RewardModelReward:
        self._model().to(device)
        return self

    def frozen_modules(self) -> list[nn.Module]:
        model = self._model()
        return [model.backbone.model, *([model.head] if model.head is not None else [])]

    def log_values(self) -> dict[str, float]:
        if self.model is None or not self.needs_references:
            return {}
        return {"references/prompts": float(len(self.cache)), "references/hits": float(self.cache.hits)}

    def condition_images(
        self, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]] | None
    ) -> list[Image.Image | None] | None:
        """Each prompt's condition image, read from its metadata's ``condition_image`` (a data:image URL, a PNG/JPEG
        path or a PIL image, as the I2V generator reads it), None where it has none; None when no prompt has one.

        Raises:
            UsageError: A model trained with a condition image before every clip and a prompt without one, or a
                model trained without them and a prompt with one; a malformed ``condition_image``.
        """
        from rewarddance.models.adapters import load_condition_image  # diffusers: imported only when needed

        values = [
            m.get("condition_image") if isinstance(m, Mapping) else None for m in (metadata or [{}] * len(prompts))
        ]
        if len(values) != len(prompts):
            raise ValueError(f"Got {len(prompts)} prompts but {len(values)} metadata entries")
        images = [
            load_condition_image(v, f"reward_model reward: metadata 'condition_image' of prompt {p!r}") if v else None
            for p, v in zip(prompts, values)
        ]
        self._model().check_conditions(
            images,
            [f"prompt {p!r}" for p in prompts],
            how=f"reward_model reward ({self.path}) reads each prompt's metadata 'condition_image' (a data:image URL "
            "or a PNG/JPEG path; the shapes-i2v:<split> prompt source has them)",
        )
        return images if any(i is not None for i in images) else None

    def _differentiable(
        self,
        images: Tensor,
        prompts: Sequence[str],
        references: Tensor | None = None,
        tags: Sequence[str | None] | None = None,
        conditions: Sequence[Image.Image | None] | None = None,
    ) -> Tensor:
        model = self._model()
        if model.reasons_first:
            return self._generated(images, prompts, references, tags, conditions)
        from rewarddance.judge.differentiable import differentiable_rewards

        self.last_rationales = None
        return differentiable_rewards(
            model, list(prompts), images, references, criteria=self.criteria, quantize=self.quantize, tags=tags,
            conditions=conditions,
        )  # fmt: skip

    def _generated(
        self,
        images: Tensor,
        prompts: Sequence[str],
        references: Tensor | None,
        tags: Sequence[str | None] | None,
        conditions: Sequence[Image.Image | None] | None,
    ) -> Tensor:
        """A reasons-first model's rewards: rationale generated, then P(yes), as ``RewardModel.score`` reads them."""
        if torch.is_grad_enabled() and (images.requires_grad or (references is not None and references.requires_grad)):
            raise UsageError(
                f"{self.path} is a reasons-first reward model: it generates its rationale token by token before the "
                "judgment, and that sampling has no gradient, so the reward cannot be backpropagated into the "
                "generator (ReFL). Use it with algorithm: grpo or for best-of-N, or train a judgment-first "
                "(rationale_format: judgment_first) or plain reward model for ReFL."
            )
        model = self._model()
        refs = _pil(references) if references is not None else None
        rewards = model.score(
            list(prompts), _pil(images), refs, criteria=self.criteria, batch_size=len(prompts), tags=tags,
            conditions=conditions,
        )  # fmt: skip
        self.last_rationales = list(model.last_rationales or [])
        return rewards.to(images.device)

    def judge(
        self, prompt: str, first: Tensor, second: Tensor, tag: str | None = None, condition: Image.Image | None = None
    ) -> Tensor:
        """P(``second`` better than ``first``) for a batch of pairs of one prompt (no gradient)."""
        with torch.no_grad():
            n = second.shape[0]
            conditions = [condition] * n if condition is not None else None
            return self._differentiable(
                second, [prompt] * n, references=first, tags=[tag] * n, conditions=conditions
            ).float()

    def reference_seed(self, prompt: str) -> int:
        """Seed of a prompt's candidate samples: fixed per prompt, so references do not depend on batch order."""
        return (self.seed * 1_000_003 + zlib.crc32(prompt.encode())) % 2**31

    @staticmethod
    def reference_key(prompt: str, condition: Image.Image | None = None) -> Any:
        """The reference cache's key: the prompt, with a fingerprint of its condition image's pixels if any."""
        if condition is None:
            return prompt
        digest = hashlib.sha1(f"{condition.mode}{condition.size}".encode() + condition.tobytes()).hexdigest()
        return (prompt, digest)

    def references(
        self, prompt: str, tag: str | None = None, condition: Image.Image | None = None
    ) -> ReferenceSelection:
        """The cached references of ``prompt``, choosing them first on a miss (``best_of_n`` samples, ranked).

        Image-to-video: ``condition`` is the prompt's condition image (the sampler's generator is conditioned on
        the same one, registered per prompt); without it, the last one given for ``prompt``. References are
        cached per prompt and condition image, and judged with the condition shown.
        """
        if self.sampler is None:
            raise RuntimeError("No starting-model sampler: call setup(sampler)")
        if condition is not None:
            self.conditions[prompt] = condition
        else:
            condition = self.conditions.get(prompt)
        sampler = self.sampler
        return self.cache.get_or_select(
            self.reference_key(prompt, condition),
            lambda: sampler(prompt, self.best_of_n, self.reference_seed(prompt)),
            functools.partial(self.judge, prompt, tag=tag, condition=condition),
            k=self.top_k,
            which=self.which,
            both_orders=self.both_orders,
            soft=self.soft,
            batch_size=self.judge_batch_size,
        )

    def prepare(self, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> None:
        if self.needs_references:
            conditions = self.condition_images(prompts, metadata) or [None] * len(prompts)
            for prompt, tag, condition in zip(prompts, _tags(metadata, len(prompts)), conditions):
                self.references(prompt, tag, condition)

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> Tensor:
        tags = _tags(metadata, len(prompts))
        conditions = self.condition_images(prompts, metadata)
        if not self.needs_references:
            return self._differentiable(images, prompts, tags=tags, conditions=conditions).float()
        k = self.top_k
        each = conditions or [None] * len(prompts)
        references = torch.cat([self.references(p, t, c).references for p, t, c in zip(prompts, tags, each)])
        references = references.to(images.device, images.dtype)
        # Each candidate against each of its prompt's k references, in one batch: [B * k].
        rewards = self._differentiable(
            images.repeat_interleave(k, dim=0),
            [p for p in prompts for _ in range(k)],
            references=references,
            tags=[t for t in tags for _ in range(k)],
            conditions=[c for c in conditions for _ in range(k)] if conditions is not None else None,
        )
        if self.last_rationales is not None:
            per_pair = self.last_rationales
            self.last_rationales = [
                "\n".join(f"reference {j + 1}: {per_pair[i * k + j]}" for j in range(k)) for i in range(len(prompts))
            ]
        return rewards.float().view(len(prompts), k).mean(dim=1)

    def __repr__(self) -> str:
        order = ", reasons-first: rationale generated before the judgment, no gradient" if self.reasons_first else ""
        return f"RewardModelReward(path={self.path!r}, best_of_n={self.best_of_n}, top_k={self.top_k}{order})"


def _pil(images: Tensor) -> list[Any]:
    """Images ``[B, 3, H, W]`` as PIL images; videos ``[B, T, 3, H, W]`` as lists of PIL frames."""
    return [to_pil_images(video) for video in images] if images.dim() == 5 else to_pil_images(images)


def _tags(metadata: Sequence[Mapping[str, Any]] | None, n: int) -> list[str | None]:
    """Each prompt's GenEval tag (for a model that retrieves its in-context examples by tag), None where absent."""
    if not metadata:
        return [None] * n
    return [str(m["tag"]) if isinstance(m, Mapping) and m.get("tag") else None for m in metadata]

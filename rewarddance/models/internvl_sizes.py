"""The InternVL checkpoints rewarddance knows by size: one table for the loader and the planner.

:data:`INTERNVL_SIZES` maps a size label (``--size`` of the ``internvl`` family) to an
:class:`InternVLCheckpoint`: its hub id, whether it is transformers-native, which of the paper's
sizes it stands for, its architecture (written here so it can be built on the ``meta`` device
without the hub) and its published parameter count. ``rewarddance.models.backbones`` registers the
family's ``hub_ids`` from it and ``rewarddance.planning`` plans from the same entries, so the two
accept the same names and sizes (``tests/models/test_backbone_sizes.py`` checks it).

The RewardDance paper scales InternVL reward models at 1B, 2B, 4B, 8B and 26B (the InternVL2/2.5
sizes). Every size label resolves to a transformers-native checkpoint (no remote code):

- 1B, 2B, 8B: InternVL3 ``-hf``; 4B: InternVL3.5 ``-HF`` (InternVL3 has no 4B);
- 26B: no official native checkpoint of a 26B-class dense InternVL exists, so ``26B`` is
  **mapped** to InternVL3-38B-hf: the nearest official native dense checkpoint on a log scale
  (38.4 B is 1.51x the paper's 25.5 B; the next smaller, InternVL3-14B-hf at 15.1 B, is 1.69x
  below) and the only one with the paper's InternViT-6B vision tower. ``14B`` is the cheaper
  neighbour. The paper's own InternVL2.5-26B (remote code only) is kept in
  :data:`REMOTE_CODE_ARCHITECTURES`, so ``plan --backbone OpenGVLab/InternVL2_5-26B`` plans it.

Sources of every number are in ``docs/backbones.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class InternVLCheckpoint:
    """One InternVL checkpoint.

    Attributes:
        hub_id: Hugging Face hub id.
        native: Loads with transformers' own ``InternVLForConditionalGeneration`` (no remote code).
        paper_size: The paper's size this checkpoint stands for (``"26B"``...), else None.
        config: Architecture fields of a transformers ``InternVLConfig`` (``model_type`` first),
            enough to build the model on the meta device; None when not written here.
        published_params: The parameter count published for it (see ``published_source``).
        published_source: Where ``published_params`` comes from.
    """

    hub_id: str
    native: bool = True
    paper_size: str | None = None
    config: Mapping[str, Any] | None = None
    published_params: float | None = None
    published_source: str = ""


# --------------------------------------------------------------------------------------------
# Architectures. Only architecture fields; everything else is the transformers default.
# --------------------------------------------------------------------------------------------

INTERNVIT_300M: dict[str, Any] = {
    # InternViT-300M-448px-V2_5, the vision tower of InternVL3-1B/2B/8B/14B and InternVL3.5-1B..14B.
    # transformers' InternVLVisionConfig defaults are this tower: 1024 wide, 24 layers, 16 heads,
    # MLP 4096, 448 px, patch 14, LayerNorm, no q/k norm. The qkv bias is on (the remote-code module
    # prints `qkv: Linear(1024, 3072, bias=True)`), which the -hf configs spell attention_bias=true.
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "attention_bias": True,
    "use_qk_norm": False,
    "norm_type": "layer_norm",
    "image_size": [448, 448],
    "patch_size": [14, 14],
}

INTERNVIT_6B: dict[str, Any] = {
    # InternViT-6B-448px (V1-5 .. V2_5), the vision tower of InternVL2.5-26B and InternVL3-38B/78B:
    # OpenGVLab/InternViT-6B-448px-V1-5 config.json: hidden 3200, 45 layers, 25 heads, MLP 12800,
    # qkv_bias false, qk_normalization true, patch 14, 448 px; norm_type is the remote-code
    # InternVisionConfig default 'rms_norm'. transformers' conversion script renames qkv_bias ->
    # attention_bias and qk_normalization -> use_qk_norm. 5.54 B parameters (InternVL 2.5 report: 5.5 B).
    "hidden_size": 3200,
    "num_hidden_layers": 45,
    "num_attention_heads": 25,
    "intermediate_size": 12800,
    "attention_bias": False,
    "use_qk_norm": True,
    "norm_type": "rms_norm",
    "image_size": [448, 448],
    "patch_size": [14, 14],
}

# InternVL3 (-hf) checkpoints use Qwen2.5 text models with a vocabulary of 151674 = Qwen2.5's
# 151665 tokens + 9 InternVL tokens, and an untied lm_head (the checkpoint sizes below need it).
_INTERNVL3_VOCAB = 151674


def _internvl(vision: dict[str, Any], text: dict[str, Any]) -> dict[str, Any]:
    return {
        "model_type": "internvl",
        "vision_config": vision,
        "text_config": text,
        "downsample_ratio": 0.5,  # pixel shuffle 2x2: 1024 patches of a 448 px tile -> 256 tokens
        "image_seq_length": 256,
        "tie_word_embeddings": False,
    }


def _qwen2(hidden: int, mlp: int, layers: int, heads: int, kv_heads: int) -> dict[str, Any]:
    return {
        "model_type": "qwen2",
        "hidden_size": hidden,
        "intermediate_size": mlp,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": _INTERNVL3_VOCAB,
    }


INTERNVL2_5_26B = InternVLCheckpoint(
    # InternViT-6B + internlm2_5-20b-chat (InternVL2.5 model card). transformers'
    # convert_internvl_weights_to_hf.py maps InternVL2_5-26B(-MPO) to InternVLForConditionalGeneration
    # with a LlamaConfig text model (InternLM2's fused wqkv split into q/k/v, same parameter count).
    # internlm2_5-20b config.json: 6144 wide, 48 layers, 48 heads, 8 KV heads, MLP 16384, vocab
    # 92544, untied. The chat model adds InternVL's 9 special tokens (the conversion script's image
    # token id is 92546, beyond 92544): vocab 92553.
    hub_id="OpenGVLab/InternVL2_5-26B",
    native=False,
    paper_size="26B",
    config=_internvl(
        INTERNVIT_6B,
        {
            "model_type": "llama",
            "hidden_size": 6144,
            "intermediate_size": 16384,
            "num_hidden_layers": 48,
            "num_attention_heads": 48,
            "num_key_value_heads": 8,
            "vocab_size": 92553,
        },
    ),
    published_params=25_514_186_112,
    published_source="hub parameter count of the transformers-format conversion of InternVL2.5-26B-MPO "
    "(jliu7350/internvl2_5-26b-mpo-hf); InternVL 2.5 report: 25.5 B",
)

REMOTE_CODE_ARCHITECTURES: dict[str, InternVLCheckpoint] = {INTERNVL2_5_26B.hub_id: INTERNVL2_5_26B}
"""Checkpoints published only as remote code (``model_type: internvl_chat``) whose architecture the
planner knows in transformers' native form (what ``convert_internvl_weights_to_hf.py`` makes of them)."""


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------

_INTERNVL3_38B = InternVLCheckpoint(
    # InternViT-6B-448px-V2_5 + Qwen2.5-32B (InternVL3 model card). Qwen2.5-32B config.json:
    # 5120 wide, 64 layers, 40 heads, 8 KV heads, MLP 27648.
    hub_id="OpenGVLab/InternVL3-38B-hf",
    config=_internvl(INTERNVIT_6B, _qwen2(5120, 27648, 64, 40, 8)),
    published_params=38.4e9,
    published_source="InternVL3 report (arXiv 2504.10479), Table 1: 38.4 B",
)

INTERNVL_SIZES: dict[str, InternVLCheckpoint] = {
    "1B": InternVLCheckpoint(
        # Qwen2.5-0.5B text model: 896 wide, 24 layers, 14 heads, 2 KV heads, MLP 4864.
        hub_id="OpenGVLab/InternVL3-1B-hf",
        paper_size="1B",
        config=_internvl(INTERNVIT_300M, _qwen2(896, 4864, 24, 14, 2)),
        published_params=1.88e9 / 2,
        published_source="model.safetensors 1.88 GB on the hub (bf16, 2 bytes per parameter)",
    ),
    "2B": InternVLCheckpoint(
        # Qwen2.5-1.5B text model: 1536 wide, 28 layers, 12 heads, 2 KV heads, MLP 8960.
        hub_id="OpenGVLab/InternVL3-2B-hf",
        paper_size="2B",
        config=_internvl(INTERNVIT_300M, _qwen2(1536, 8960, 28, 12, 2)),
        published_params=4.18e9 / 2,
        published_source="model.safetensors 4.18 GB on the hub (bf16)",
    ),
    "4B": InternVLCheckpoint(
        # InternVL3 has no 4B. Qwen3-4B text model (Qwen3-4B config.json): 2560 wide, 36 layers,
        # 32 heads, 8 KV heads, head_dim 128, MLP 9728, vocab 151936, q/k RMSNorm, untied lm_head.
        hub_id="OpenGVLab/InternVL3_5-4B-HF",
        paper_size="4B",
        config=_internvl(
            INTERNVIT_300M,
            {
                "model_type": "qwen3",
                "hidden_size": 2560,
                "intermediate_size": 9728,
                "num_hidden_layers": 36,
                "num_attention_heads": 32,
                "num_key_value_heads": 8,
                "head_dim": 128,
                "vocab_size": 151936,
            },
        ),
        published_params=9.48e9 / 2,
        published_source="weights of the InternVL3_5-4B repository, 9.48 GB on the hub (bf16)",
    ),
    "8B": InternVLCheckpoint(
        # Qwen2.5-7B text model: 3584 wide, 28 layers, 28 heads, 4 KV heads, MLP 18944.
        hub_id="OpenGVLab/InternVL3-8B-hf",
        paper_size="8B",
        config=_internvl(INTERNVIT_300M, _qwen2(3584, 18944, 28, 28, 4)),
        published_params=(4.88 + 4.99 + 4.93 + 1.09) * 1e9 / 2,
        published_source="4 safetensors shards of 4.88 + 4.99 + 4.93 + 1.09 GB on the hub (bf16)",
    ),
    "14B": InternVLCheckpoint(
        # Qwen2.5-14B text model: 5120 wide, 48 layers, 40 heads, 8 KV heads, MLP 13824.
        hub_id="OpenGVLab/InternVL3-14B-hf",
        config=_internvl(INTERNVIT_300M, _qwen2(5120, 13824, 48, 40, 8)),
        published_params=15.1e9,
        published_source="InternVL3 report (arXiv 2504.10479), Table 1: 15.1 B (the -hf repository: 30.3 GB)",
    ),
    # The paper's 26B mapped to the nearest official native checkpoint (module docstring).
    "26B": InternVLCheckpoint(
        hub_id=_INTERNVL3_38B.hub_id,
        paper_size="26B",
        config=_INTERNVL3_38B.config,
        published_params=_INTERNVL3_38B.published_params,
        published_source=_INTERNVL3_38B.published_source,
    ),
    "38B": _INTERNVL3_38B,
    "78B": InternVLCheckpoint(hub_id="OpenGVLab/InternVL3-78B-hf"),
    "3.5-1B": InternVLCheckpoint(hub_id="OpenGVLab/InternVL3_5-1B-HF"),
    "3.5-2B": InternVLCheckpoint(hub_id="OpenGVLab/InternVL3_5-2B-HF"),
    "3.5-4B": InternVLCheckpoint(hub_id="OpenGVLab/InternVL3_5-4B-HF"),
    "3.5-8B": InternVLCheckpoint(hub_id="OpenGVLab/InternVL3_5-8B-HF"),
    "3.5-14B": InternVLCheckpoint(hub_id="OpenGVLab/InternVL3_5-14B-HF"),
    "3.5-38B": InternVLCheckpoint(hub_id="OpenGVLab/InternVL3_5-38B-HF"),
}
"""``internvl`` size label -> checkpoint. Every entry is transformers-native."""

PAPER_SIZE_LABELS: tuple[str, ...] = ("1B", "2B", "4B", "8B", "26B")
"""The paper's InternVL reward-model sizes; each is a key of :data:`INTERNVL_SIZES`."""


def known_architectures() -> dict[str, Mapping[str, Any]]:
    """Hub id -> written architecture, for every checkpoint here that has one (native or not)."""
    entries = [*INTERNVL_SIZES.values(), *REMOTE_CODE_ARCHITECTURES.values()]
    return {e.hub_id: e.config for e in entries if e.config is not None}

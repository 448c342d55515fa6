"""Tiny tokenizers for the offline (tiny) backbones and generators, trained on a built-in corpus.

Hub checkpoints bring their own tokenizers. The tiny models are built without network access
(tests, tutorials and CPU runs must not depend on the hub), so the project trains its tokenizers
in milliseconds on a built-in corpus of shapes-world words and reward instructions:
:func:`train_tiny_tokenizer` (a byte-level BPE for the VLM backbones), and the generators' CLIP
and T5 tokenizers (:func:`train_tiny_clip_tokenizer`, :func:`train_tiny_t5_tokenizer`). The
byte-level ones can still encode any text; the corpus only decides which words become single
tokens. "yes" and "no" must be single tokens, since the reward is read from exactly those two
logits; :func:`single_token_id` asserts it.
"""

from __future__ import annotations

import itertools
import json
import string
from collections.abc import Iterable, Mapping

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import CLIPTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast, T5Tokenizer

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "rectangle",
    "star",
    "hexagon",
    "pentagon",
    "diamond",
    "ellipse",
    "oval",
    "heart",
    "cross",
    "ring",
    "shape",
    "object",
)
"""Shape names of the shapes world (plurals are added by the corpus)."""

COLOURS: tuple[str, ...] = (
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "brown",
    "black",
    "white",
    "gray",
    "colour",
    "color",
)
"""The ten GenEval colours, plus a few colour words."""

NUMBERS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "no",
    "a",
    "an",
    "the",
    "single",
    "pair",
    "many",
    "several",
    "count",
    "number",
)
"""Counting words (digits are covered by the byte alphabet and the corpus)."""

RELATIONS: tuple[str, ...] = (
    "left",
    "right",
    "above",
    "below",
    "top",
    "bottom",
    "next",
    "to",
    "of",
    "on",
    "in",
    "under",
    "over",
    "behind",
    "front",
    "near",
    "beside",
    "between",
    "and",
    "with",
    "middle",
    "center",
    "corner",
    "position",
    "up",
    "down",
    "moving",
    "moves",
    "still",
    "big",
    "small",
    "large",
    "tiny",
)
"""Spatial relations, motion directions (video) and sizes."""

INSTRUCTION_WORDS: tuple[str, ...] = (
    "yes",
    "no",
    "Yes",
    "No",
    "image",
    "images",
    "video",
    "frame",
    "frames",
    "photo",
    "picture",
    "prompt",
    "caption",
    "better",
    "worse",
    "than",
    "is",
    "are",
    "does",
    "do",
    "it",
    "this",
    "that",
    "match",
    "matches",
    "evaluate",
    "Evaluate",
    "Please",
    "please",
    "answer",
    "question",
    "generated",
    "from",
    "given",
    "for",
    "reference",
    "candidate",
    "quality",
    "alignment",
    "aesthetic",
    "text",
    "motion",
    "reason",
    "because",
    "detailed",
    "give",
    "the",
    "You",
    "you",
    "are",
    "helpful",
    "assistant",
    "user",
    "system",
    "Is",
    "Does",
    "Which",
    "which",
    "or",
    "not",
    "criteria",
    "correct",
    "wrong",
    "missing",
    "extra",
    "there",
    "here",
    "shows",
    "contains",
    "has",
)
"""Words of reward instructions (the paper's template) and of the chat templates."""

_SENTENCES: tuple[str, ...] = (
    'Please evaluate two images generated from the prompt: "a red circle to the left of a blue square".',
    'Is image 2 better than image 1? Please answer "yes" or "no", and give the detailed reason.',
    'Does the image match the prompt? Please answer "yes" or "no".',
    "Evaluate the quality of the video frames and the text alignment.",
    "You are a helpful assistant.",
    "yes\nno\nYes\nNo\n",
)


def shapes_corpus() -> list[str]:
    """Return the built-in training corpus: every word alone, with a leading space, in sentences.

    Byte-level BPE pre-tokenizes ``" red"`` and ``"red"`` differently, and the answer of a chat
    turn starts a new line (no space), so each word appears in both forms often enough to be
    merged into a single token.

    Returns:
        Lines of text.
    """
    words = list(dict.fromkeys(SHAPES + COLOURS + NUMBERS + RELATIONS + INSTRUCTION_WORDS))
    plurals = [w + "s" for w in SHAPES] + ["boxes", "crosses"]
    lines = list(_SENTENCES)
    lines += words + plurals
    lines.append(" ".join(words + plurals))
    # Short prompts in the GenEval style so frequent phrases merge too.
    for count, colour, shape in itertools.product(NUMBERS[:6], COLOURS[:10], SHAPES[:8]):
        lines.append(f"a photo of {count} {colour} {shape}s")
    for c1, c2 in itertools.product(COLOURS[:10], repeat=2):
        lines.append(f"a {c1} circle to the left of a {c2} square, a {c1} star above a {c2} triangle")
    lines += [str(i) for i in range(100)]
    return lines


def train_tiny_tokenizer(
    *,
    special_tokens: Mapping[str, str],
    extra_special_tokens: Mapping[str, str] | None = None,
    chat_template: str | None = None,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 1024,
    model_max_length: int = 4096,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer and wrap it for transformers.

    Args:
        special_tokens: Standard special tokens by role: any of ``pad_token``, ``eos_token``,
            ``bos_token``, ``unk_token``. ``pad_token`` and ``eos_token`` are required.
        extra_special_tokens: Family tokens by attribute name, e.g. ``{"image_token": "<|image_pad|>"}``.
            Passed as a dict so the tokenizer exposes ``tokenizer.image_token`` and
            ``tokenizer.image_token_id``, which the family processors read.
        chat_template: Jinja chat template stored with the tokenizer.
        corpus: Training lines; defaults to :func:`shapes_corpus`.
        vocab_size: Target vocabulary size including the 256 byte symbols and special tokens.
        model_max_length: Stored maximum length.

    Returns:
        A fast tokenizer with ``padding_side="left"`` (the reward is read at the last position,
        which left padding keeps aligned across a batch).
    """
    if "pad_token" not in special_tokens or "eos_token" not in special_tokens:
        raise ValueError(f"special_tokens needs pad_token and eos_token, got {sorted(special_tokens)}")
    extra_special_tokens = dict(extra_special_tokens or {})
    # Special tokens go first so their ids are stable and small whatever the corpus.
    all_special = list(dict.fromkeys([*special_tokens.values(), *extra_special_tokens.values()]))

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps offsets exact; no BOS/EOS insertion (chat templates place them).
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=all_special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(corpus) if corpus is not None else shapes_corpus(), trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        padding_side="left",
        truncation_side="left",
        model_max_length=model_max_length,
        extra_special_tokens=extra_special_tokens,
        chat_template=chat_template,
        clean_up_tokenization_spaces=False,
        **special_tokens,
    )
    return tokenizer


def single_token_id(tokenizer: PreTrainedTokenizerBase, word: str, source: str | None = None) -> int:
    """Return the id of ``word``, asserting that it encodes to exactly one token.

    Args:
        tokenizer: Any transformers tokenizer.
        word: The word, as the model would emit it right after the generation prompt.
        source: Where the tokenizer comes from (backbone name or path), for the error message;
            defaults to the tokenizer's ``name_or_path``.

    Returns:
        The token id.

    Raises:
        ValueError: If ``word`` encodes to zero or several tokens; names the tokenizer, since a
            reward read from the first piece of a multi-token word would be silently wrong.
    """
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        name = source or getattr(tokenizer, "name_or_path", "") or "<unnamed>"
        raise ValueError(
            f"Tokenizer {name!r} ({type(tokenizer).__name__}) encodes {word!r} as {len(ids)} tokens {pieces}; "
            "the yes/no reward needs it to be a single token. Use a tokenizer in which it is one "
            "(every supported hub family is), or choose other answer words."
        )
    return ids[0]


# --------------------------------------------------------------------------------------------
# The generators' text-encoder tokenizers (CLIP BPE and T5 unigram)
# --------------------------------------------------------------------------------------------
_CLIP_BOS, _CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
# CLIPTokenizer's own pre-tokenizer split: training with it makes the merges match what
# CLIPTokenizer will apply.
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def train_tiny_clip_tokenizer(vocab_size: int = 1000, model_max_length: int = 77) -> CLIPTokenizer:
    """Train a CLIP-style BPE (lower-cased, ``</w>`` word ends, byte-level alphabet) on the shapes corpus.

    The result is a genuine ``CLIPTokenizer`` (so pipelines save and reload it under the same class as
    the hub's); byte-level, so any text encodes.

    Args:
        vocab_size: Target vocabulary size (the corpus is small: ~700 are reached).
        model_max_length: Padded prompt length; 77 as every CLIP checkpoint (the text encoder's
            position table is sized to it).

    Returns:
        The tokenizer.
    """
    backend = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token=_CLIP_EOS))
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[_CLIP_BOS, _CLIP_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    backend.train_from_iterator(shapes_corpus(), trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    # tokenizers serialises merges as pairs (lists); CLIPTokenizer wants tuples.
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    trained = dict(model["vocab"])
    # A word's last character starts as "<c></w>"; the trainer only adds those seen at a word end,
    # so add every byte in that form (as OpenAI's vocab has) or e.g. a final "!" would become unk.
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    for char in alphabet:
        trained.setdefault(char + "</w>", len(trained))
    # The trainer numbers tokens in hash order (single characters) and breaks ties between equally frequent
    # merges differently on every call: number them by (specials, single characters, length, text) instead, so
    # the same corpus always gives the same ids. (Tied merges never compete for the same pair in this corpus'
    # tokenizations checked by the tests; a saved pipeline keeps its own vocab and merges anyway.)
    singles = {*alphabet, *(c + "</w>" for c in alphabet)}
    specials = [_CLIP_BOS, _CLIP_EOS]
    ordered = specials + sorted((t for t in trained if t not in specials), key=lambda t: (t not in singles, len(t), t))
    vocab = {token: i for i, token in enumerate(ordered)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def train_tiny_t5_tokenizer(vocab_size: int = 600, model_max_length: int = 32) -> T5Tokenizer:
    """Train a T5-style unigram tokenizer (SentencePiece ``▁`` word starts) on the shapes corpus.

    A genuine ``T5Tokenizer`` (the class SD3, Flux and Wan's UMT5 checkpoints load), with T5's id
    layout: ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2. Printable ASCII is in the alphabet; other
    characters map to ``<unk>``, as in a SentencePiece model without byte fallback.

    Args:
        vocab_size: Upper bound on the vocabulary (unigram pruning stops earlier on this corpus).
        model_max_length: Stored maximum length; :func:`sample` pads T5 prompts to at most this.

    Returns:
        The tokenizer (no ``<extra_id_*>`` sentinels: encoders never see them).
    """
    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation),
        show_progress=False,
    )
    backend.train_from_iterator(shapes_corpus(), trainer=trainer)
    vocab = [tuple(piece) for piece in json.loads(backend.to_str())["model"]["vocab"]]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)

"""Parameter dtypes named in configs and on command lines (``"bfloat16"``, ``"float32"``...) as torch dtypes."""

from __future__ import annotations

from typing import Literal, overload

import torch

from rewarddance.errors import UsageError


@overload
def resolve_dtype(dtype: None, *, allow_auto: bool = False) -> None: ...


@overload
def resolve_dtype(dtype: str | torch.dtype, *, allow_auto: Literal[False] = False) -> torch.dtype: ...


@overload
def resolve_dtype(dtype: str | torch.dtype | None, *, allow_auto: bool) -> torch.dtype | str | None: ...


def resolve_dtype(dtype: str | torch.dtype | None, *, allow_auto: bool = False) -> torch.dtype | str | None:
    """The torch dtype a name stands for; a dtype or None passes through.

    Args:
        dtype: A ``torch`` attribute name (``"bfloat16"``), a ``torch.dtype``, or None.
        allow_auto: Pass ``"auto"`` through unchanged (transformers' "the checkpoint's own dtype").

    Raises:
        UsageError: A name that is not a torch dtype (a typo such as ``"float33"``), naming it.
    """
    if dtype is None or isinstance(dtype, torch.dtype) or (allow_auto and dtype == "auto"):
        return dtype
    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype):
        choices = "'bfloat16', 'float32' or 'auto'" if allow_auto else "'bfloat16' or 'float32'"
        raise UsageError(f"Unknown dtype {dtype!r}; use e.g. {choices}.")
    return resolved

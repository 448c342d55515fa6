"""What a user sees: no library noise on stderr, and only the known noise is silenced (rewarddance/_noise.py);
that `--help` prints nothing else is in tests/test_cli.py.

Each known message is triggered through the library's own code path twice: with rewarddance's
filters (nothing shows) and without them (the message shows, so the check can fail and the filter
is still needed; if a control fails after an upgrade, the library stopped emitting the message
and its filter in rewarddance/_noise.py can go).
"""

import logging
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from lightning.pytorch.utilities.combined_loader import CombinedLoader

from rewarddance._noise import silence_known_noise


def _leafspec_warnings(*, filtered: bool) -> list[str]:
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")  # no once-per-location memory from earlier tests
        if filtered:
            silence_known_noise()  # ahead of "always", as at import
        CombinedLoader(torch.utils.data.DataLoader([0]))  # what every fit, validate and test builds
        warnings.warn("another FutureWarning", FutureWarning, stacklevel=1)
    return [str(w.message) for w in shown]


def test_lightning_leafspec_warning_is_silenced_and_only_it():
    assert any("LeafSpec" in m for m in _leafspec_warnings(filtered=False))
    shown = _leafspec_warnings(filtered=True)
    assert not any("LeafSpec" in m for m in shown)
    assert "another FutureWarning" in shown


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


# transformers 5.x classes whose default backend is torchvision and which have a PIL twin, not
# otherwise used by the tests (each name warns only the first time it is looked up).
FALLBACK_NAMES = ["BeitImageProcessor", "DPTImageProcessor"]


@pytest.mark.skipif(transformers.utils.is_torchvision_available(), reason="with torchvision there is no fallback")
def test_transformers_torchvision_fallback_is_silenced_and_only_it():
    fresh = [name for name in FALLBACK_NAMES if name not in vars(transformers)]
    assert len(fresh) == 2, "looked up earlier in this process: pick other names"
    logger = logging.getLogger("transformers.utils.import_utils")
    ours = list(logger.filters)
    assert ours, "rewarddance installs its filter at import"
    capture = _Capture()
    logging.getLogger("transformers").addHandler(capture)
    try:
        getattr(transformers, fresh[0])
        logger.warning("another transformers warning")
        for f in ours:
            logger.removeFilter(f)
        getattr(transformers, fresh[1])
    finally:
        for f in ours:
            logger.addFilter(f)
        logging.getLogger("transformers").removeHandler(capture)
    assert capture.messages[0] == "another transformers warning"
    assert len(capture.messages) == 2 and capture.messages[1].startswith(f"`{fresh[1]}` requires torchvision")


def _trainer_messages(tmp_path: Path) -> list[str]:
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger

    capture = _Capture()
    logging.getLogger("lightning.pytorch").addHandler(capture)
    try:
        Trainer(logger=CSVLogger(tmp_path), enable_progress_bar=False, enable_model_summary=False)
        logging.getLogger("lightning.pytorch.utilities.rank_zero").info("another lightning message")
    finally:
        logging.getLogger("lightning.pytorch").removeHandler(capture)
    return capture.messages


def test_lightning_cloud_tips_are_silenced_and_only_they(tmp_path):
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    ours = list(logger.filters)
    assert ours, "rewarddance installs its filter at import"
    shown = _trainer_messages(tmp_path / "filtered")
    assert not any("Tip: For seamless cloud" in m for m in shown)
    assert "another lightning message" in shown
    for f in ours:
        logger.removeFilter(f)
    try:
        unfiltered = _trainer_messages(tmp_path / "plain")
    finally:
        for f in ours:
            logger.addFilter(f)
    assert any(m.startswith("💡 Tip: For seamless cloud logging") for m in unfiltered)

"""Silence the library messages every rewarddance command used to open with, and only those.

All come from code rewarddance does not own and cannot avoid calling, and none asks the
user to do anything:

- transformers 5.x logs "`CLIPImageProcessor` requires torchvision (not installed); falling back
  to `CLIPImageProcessorPil`" (and the same for Siglip) when diffusers imports those names at
  import time (``diffusers/loaders/ip_adapter.py``), which every diffusers pipeline import does.
  rewarddance builds its processors from the PIL classes by name, so the fallback changes nothing
  it uses; with torchvision installed the message does not appear at all.
- torch 2.13 deprecates constructing ``LeafSpec``; Lightning 2.6's ``CombinedLoader`` still does
  (``lightning/pytorch/utilities/_pytree.py``) for every dataloader of every fit, validate and test.
- Lightning 2.6's ``ModelCheckpoint`` warns at every ``every_n_train_steps`` save of a manually optimized task
  (the RL task, generator pretraining) that the checkpoint holds the weights after the step's update, and asks
  for a ``saved_models`` dict on a ``layer`` attribute; automatic optimization saves the same state, which is
  what resuming needs.
- Lightning 2.6 opens every fit with two "💡 Tip: For seamless cloud ..." lines advertising its
  hosted services (litlogger, litmodels) whenever those packages are not installed
  (``logger_connector.py``, ``callback_connector.py``, logged through ``rank_zero_info``).

Each filter matches its message's exact wording and origin, so any other warning still shows.
tests/test_noise.py checks that ``python -m rewarddance --help`` prints nothing on stderr and that
Lightning's loader still warns when rewarddance is not imported (so the filter is still needed).
"""

import logging
import re
import warnings

_TORCHVISION_FALLBACK = re.compile(
    r"`\w+ImageProcessor` requires torchvision \(not installed\); falling back to `\w+ImageProcessorPil`"
)


_CLOUD_TIP = re.compile(r"💡 Tip: For seamless cloud (logging|uploads)")


class _DropTorchvisionFallback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _TORCHVISION_FALLBACK.match(record.getMessage())


class _DropCloudTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _CLOUD_TIP.match(record.getMessage())


def silence_known_noise() -> None:
    """Install the filters (idempotent: a second call adds nothing)."""
    # The message is a transformers log record (logger.warning_once), not a Python warning. A
    # logger's filters see the records created on that logger; transformers names its loggers by
    # module, and getLogger returns the same object whether or not transformers is imported yet.
    logger = logging.getLogger("transformers.utils.import_utils")
    if not any(isinstance(f, _DropTorchvisionFallback) for f in logger.filters):
        logger.addFilter(_DropTorchvisionFallback())
    # rank_zero_info logs on this logger (lightning/pytorch/utilities/rank_zero.py sets it).
    tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropCloudTip) for f in tips.filters):
        tips.addFilter(_DropCloudTip())
    warnings.filterwarnings(
        "ignore",
        message=re.escape("Using ModelCheckpoint with manual optimization and every_n_train_steps, but no pre-opt"),
        category=UserWarning,
    )
    warnings.filterwarnings(
        "ignore",
        message=re.escape("`isinstance(treespec, LeafSpec)` is deprecated"),
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )

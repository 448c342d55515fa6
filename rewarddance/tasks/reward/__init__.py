"""Reward-model tasks: generative (reward = P("yes")) and the regressive baseline, as LightningModules.

RewardDance (arXiv 2509.08826) reads the reward from the language-model head: a VLM sees an
instruction with criteria, the prompt and one or two images, and r = P("yes"). These tasks
train that, on ``rewarddance`` shards (``ShardDataModule``), and export a folder that
:class:`rewarddance.judge.reward_model.RewardModel` loads for RL.

- :class:`GenerativeRewardTask` ``paradigm: pairwise`` (the paper's main RM): "is image 2 better
  than image 1?" with the pair's first image as image 1 (the reference) and the second as image 2
  (the candidate). Every pair is trained in *both* orders (targets t and 1 - t, rationales with
  "image 1"/"image 2" swapped), so the model cannot learn a position preference; evaluation asks
  both orders too and reports the position-bias rate. At RL time image 1 is the best-of-N
  reference, so training "first vs second" is the paradigm itself. ``Sample.references`` (extra
  correct renders in the shapes data) are not used and not decoded (``needs_references = False``).
- ``paradigm: pointwise``: one image and a quality/alignment question. Pairs are trained with
  :func:`rewarddance.judge.losses.pointwise_generative_loss` (Bradley-Terry on the yes-vs-no log-odds
  + ``ce_weight`` x CE, default 0.1), point samples (``Sample.answer``) with plain yes/no CE.
- :class:`RegressiveRewardTask`: the paper's baseline, a linear head on the last hidden state at
  the last position, Bradley-Terry loss, same data and metrics (``prob_second = sigmoid(r2 - r1)``).

The tasks only orchestrate; the judge does the rest (:mod:`rewarddance.judge`): the math in
plain functions (``judge/losses.py``, ``judge/readout.py``), the text in templates
(``judge/prompting.py``, ``judge/templates/*.yaml``), batches (``judge/batch.py``), metrics
(``judge/evaluation.py``) and the export (``judge/export.py``). Subclass and override one small
method to change a piece: :meth:`RewardTask.criteria_for`, :meth:`RewardTask.instruction_for`,
:meth:`RewardTask.pair_target`, :meth:`RewardTask.loss_weights`, :meth:`RewardTask.parameter_groups`,
:meth:`GenerativeRewardTask.answer_word`, ...

Batches are built inside the DataLoader workers by :attr:`RewardTask.collator`, a
:class:`rewarddance.judge.batch.RewardCollator` the DataModule hands to them: it holds the
processor, the template and a copy of the task without its weights (for the row hooks), so
tokenisation and image processing run in parallel with training.

Modules: :mod:`~rewarddance.tasks.reward.base` (:class:`RewardTask`),
:mod:`~rewarddance.tasks.reward.generative`, :mod:`~rewarddance.tasks.reward.regressive`.
"""

from rewarddance.tasks.reward.base import RewardTask
from rewarddance.tasks.reward.generative import GenerativeRewardTask
from rewarddance.tasks.reward.regressive import RegressiveRewardTask

__all__ = ["GenerativeRewardTask", "RegressiveRewardTask", "RewardTask"]

"""The judge: a query (instruction, prompt, reference, candidate) becomes P("yes"), its losses, its export.

- :mod:`~rewarddance.judge.prompting`: templates, queries, their encoding;
- :mod:`~rewarddance.judge.batch`: samples -> rows -> one batch (:class:`~rewarddance.judge.batch.RewardCollator`);
- :mod:`~rewarddance.judge.readout`: P(yes) (also after generated reasons), the scalar head, a shared prefix;
- :mod:`~rewarddance.judge.losses`: the training losses; :mod:`~rewarddance.judge.evaluation`: per-set metrics;
- :mod:`~rewarddance.judge.examples`: in-context examples; :mod:`~rewarddance.judge.differentiable`: rewards
  with gradients to the pixels (ReFL); :mod:`~rewarddance.judge.export` and
  :mod:`~rewarddance.judge.reward_model` (:class:`~rewarddance.judge.reward_model.RewardModel`): the exported
  folder and the scoring API; :mod:`~rewarddance.judge.reward`: a reward model as an RL reward.

Importing the package registers the ``reward_model`` RL reward (:mod:`rewarddance.judge.reward`).
"""

from rewarddance.judge import reward  # noqa: F401 - registers the "reward_model" reward

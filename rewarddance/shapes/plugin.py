"""Registers the shapes world with the generic registries: the ``rewarddance.plugins`` entry point.

Generic code never imports :mod:`rewarddance.shapes`; it finds what the world offers by name, through
:mod:`rewarddance.registry`, which runs this function the first time a registry misses a name. The world's
commands (``data shapes``, ``data generated``, in :mod:`.commands`) are declared in the ``rewarddance.commands``
entry-point group instead: the command line reads that group when it builds its parser.
"""

from __future__ import annotations


def register() -> None:
    """Add the shapes rewards (``shapes-color``, ``shapes-oracle``), the generated prompt sources
    (``shapes:<split>``, ``shapes-video:<split>``, ``shapes-i2v:<split>``: motion prompts with a first frame as
    their condition image) and the pixel oracle as the evaluator of GenEval metadata."""
    from rewarddance.callbacks.evaluation import EVALUATORS, GENEVAL
    from rewarddance.data.prompts import PROMPT_SOURCES, GeneratedPromptSource
    from rewarddance.rl.rewards import register_reward
    from rewarddance.shapes.evaluation import ShapesOracleEvaluator
    from rewarddance.shapes.prompts import TAGS, geneval_prompts
    from rewarddance.shapes.rewards import ShapesColorReward, ShapesOracleReward
    from rewarddance.shapes.splits import SPLIT_IDS
    from rewarddance.shapes.video import VIDEO_TAGS, i2v_geneval_prompts, video_geneval_prompts

    register_reward("shapes-color", ShapesColorReward)
    register_reward("shapes-oracle", ShapesOracleReward)
    for scheme, tags, generate in (
        ("shapes", TAGS, geneval_prompts),
        ("shapes-video", VIDEO_TAGS, video_geneval_prompts),
        ("shapes-i2v", VIDEO_TAGS, i2v_geneval_prompts),
    ):
        PROMPT_SOURCES.register(
            scheme,
            GeneratedPromptSource(
                scheme=scheme,
                world="shapes",
                splits=tuple(SPLIT_IDS),
                tags=tags,
                generate=generate,
            ),
        )
    EVALUATORS.register(GENEVAL, ShapesOracleEvaluator())

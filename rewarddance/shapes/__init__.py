"""The shapes world: a synthetic text-to-image (and text-to-video) domain with a pixel judge.

No real checkpoint or dataset can be downloaded where rewarddance is developed and tested, so
the project brings its own world in which correctness is known exactly: scenes of 1-4 circles,
squares and triangles in GenEval's ten colours, prompts with GenEval's six tags and metadata
format, an oracle that judges any image (including a generator's) from pixels alone, and
builders for preference pairs, pointwise samples, captions with visual questions, and video.

Modules: :mod:`.scene` (objects, geometry, relations, layout), :mod:`.render` (pixels,
degradations), :mod:`.prompts` (GenEval-style prompts, satisfying and violating scenes),
:mod:`.rules` (GenEval's judging rules), :mod:`.oracle` (pixel detection and verdicts),
:mod:`.video` (motion prompts, clips, tracking oracle), :mod:`.pairs` (pairs and points),
:mod:`.captions` (captions and questions), :mod:`.splits` (held-out combinations),
:mod:`.build` (shards), :mod:`.generated` (pairs of a generator's samples), :mod:`.text_image`
(prompt-render streams for generator pretraining), :mod:`.rewards` (toy and oracle rewards).

It is a plug-in: generic rewarddance never imports it. :mod:`.plugin` registers its rewards, its
generated prompt sources (``shapes:<split>``, ``shapes-video:<split>``) and its oracle as the
evaluator of GenEval metadata (:mod:`.evaluation`); its commands (:mod:`.commands`: ``data shapes``,
``data generated``) are entry points of the ``rewarddance.commands`` group.
"""

from rewarddance.shapes.build import build_caption_split, build_split, sample_rng
from rewarddance.shapes.captions import caption_text, make_caption, random_scene, scene_questions
from rewarddance.shapes.oracle import Detection, detect, evaluate, evaluate_parts, judge_image
from rewarddance.shapes.pairs import World, make_pair, make_point
from rewarddance.shapes.prompts import (
    TAGS,
    VIOLATIONS,
    geneval_prompts,
    prompt_text,
    read_geneval_jsonl,
    sample_prompt,
    sample_scene,
    sample_violating_scene,
    scene_judgement,
    scene_satisfies,
    violate,
    violations_for,
    write_geneval_jsonl,
)
from rewarddance.shapes.render import DEGRADATIONS, RenderOptions, degrade, render, render_clip
from rewarddance.shapes.rules import Judgement, judge
from rewarddance.shapes.scene import (
    COLOR_NAMES,
    COLORS,
    DIRECTIONS,
    RELATIONS,
    SHAPES,
    STYLES,
    Scene,
    SceneObject,
    relations,
)
from rewarddance.shapes.splits import HELDOUT_COLOR_SHAPE, HELDOUT_RELATIONS, SPLITS
from rewarddance.shapes.video import (
    VIDEO_TAGS,
    VIDEO_VIOLATIONS,
    Track,
    evaluate_video,
    evaluate_video_parts,
    sample_video_prompt,
    sample_video_scene,
    sample_violating_video_scene,
    track,
    video_judgement,
)

__all__ = [
    "COLORS",
    "COLOR_NAMES",
    "DEGRADATIONS",
    "DIRECTIONS",
    "HELDOUT_COLOR_SHAPE",
    "HELDOUT_RELATIONS",
    "RELATIONS",
    "SHAPES",
    "SPLITS",
    "STYLES",
    "TAGS",
    "VIDEO_TAGS",
    "VIDEO_VIOLATIONS",
    "VIOLATIONS",
    "Detection",
    "Judgement",
    "RenderOptions",
    "Scene",
    "SceneObject",
    "Track",
    "World",
    "build_caption_split",
    "build_split",
    "caption_text",
    "degrade",
    "detect",
    "evaluate",
    "evaluate_parts",
    "evaluate_video",
    "evaluate_video_parts",
    "geneval_prompts",
    "judge",
    "judge_image",
    "make_caption",
    "make_pair",
    "make_point",
    "prompt_text",
    "random_scene",
    "read_geneval_jsonl",
    "relations",
    "render",
    "render_clip",
    "sample_prompt",
    "sample_rng",
    "sample_scene",
    "sample_video_prompt",
    "sample_video_scene",
    "sample_violating_scene",
    "sample_violating_video_scene",
    "scene_judgement",
    "scene_questions",
    "scene_satisfies",
    "track",
    "video_judgement",
    "violate",
    "violations_for",
    "write_geneval_jsonl",
]

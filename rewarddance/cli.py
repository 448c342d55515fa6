"""rewarddance: train generative reward models for visual generation, and RL against them.

Lightning's ``fit`` / ``validate`` / ``test`` / ``predict`` come from :class:`LightningCLI`;
the project's own commands (data building, inspection, ...) are plain typed functions added
as further subcommands of the same parser, so ``--help`` lists them all and their arguments
are documented from the functions' signatures and docstrings.
"""

from __future__ import annotations

import inspect
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from rewarddance.checkpointing import AtomicCheckpointIO, load_error
from rewarddance.commands import COMMANDS, CommandTree
from rewarddance.data.datamodule import ShardDataModule  # noqa: F401 - short class_path in YAML
from rewarddance.errors import (
    EXIT_INTERRUPTED,
    EXIT_USER_ERROR,
    BadFileError,
    UsageError,
    debug_requested,
    describe,
    is_expected,
)
from rewarddance.rl.rewards import build_reward
from rewarddance.tasks import GenerativeRewardTask, RegressiveRewardTask  # noqa: F401 - short class_path in YAML
from rewarddance.wandb_resume import WandbRunId, resume_wandb_run

DESCRIPTION = (
    __doc__.splitlines()[0] + " Errors are reported in a line or two; add --debug (or set REWARDDANCE_DEBUG=1) "
    "for the traceback."
)


def _short_doc(fn: Callable[..., Any]) -> str:
    return (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""


def _description(fn: Callable[..., Any]) -> str | None:
    # The Args section is shown per option by jsonargparse; keep only the prose above it.
    doc = (fn.__doc__ or "").split("Args:")[0].strip()
    return " ".join(doc.split()) or None


class RewardDanceCLI(LightningCLI):
    """LightningCLI plus the project's commands (``data shapes``, ``data import``, ``data inspect``, ...)."""

    project_commands: CommandTree = COMMANDS

    def _add_subcommands(self, parser: Any, **kwargs: Any) -> None:
        super()._add_subcommands(parser, **kwargs)
        for name, target in self.project_commands.items():
            self._attach(parser._subcommands_action, name, target)

    def _attach(self, subcommands: Any, name: str, target: Callable[..., Any] | CommandTree) -> None:
        # jsonargparse wants each level attached to its parent before its own subcommands are added.
        if isinstance(target, dict):
            doc = str(target.get("__doc__", ""))
            parser = ArgumentParser(description=doc)
            subcommands.add_subcommand(name, parser, help=doc)
            children = parser.add_subcommands(dest="command")
            for child_name, child in target.items():
                if child_name != "__doc__":
                    self._attach(children, child_name, child)  # type: ignore[arg-type]
            return
        parser = ArgumentParser(description=_description(target))
        # Positional-only parameters (before "/") are positional on the command line; the rest are --options.
        params = inspect.signature(target).parameters
        positional = {n for n, p in params.items() if p.kind is inspect.Parameter.POSITIONAL_ONLY}
        if positional:
            parser.add_function_arguments(target, as_group=False, as_positional=True, skip=set(params) - positional)
        parser.add_function_arguments(target, as_group=False, skip=positional)
        subcommands.add_subcommand(name, parser, help=_short_doc(target))

    def _resolve_command(self) -> tuple[Callable[..., Any], dict[str, Any]] | None:
        name = self.config["subcommand"]
        if name not in self.project_commands:
            return None
        target: Any = self.project_commands[name]
        config = self.config[name]
        while isinstance(target, dict):
            child = config["command"]
            target, config = target[child], config[child]
        kwargs = {k: v for k, v in dict(config).items() if k not in ("command", "config", "__path__")}
        return target, kwargs

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After fit, test the final weights on every test set of the datamodule and end with a summary "
            "of the accuracies and of where the checkpoint and the export were written.",
        )
        parser.add_argument(
            "--torch_threads",
            type=int | None,
            default=None,
            help="torch intra-op threads for fit (null: torch's default, one per core). Set in the config so a "
            "run's speed does not depend on OMP_NUM_THREADS (docs/quickstart.md measures 1 vs 2).",
        )

    def before_fit(self) -> None:
        # LightningCLI calls before_<subcommand> right before trainer.fit: after the config is parsed, before any
        # tensor work, so the thread count holds for the whole fit; the clock starts here for after_fit's speed line.
        threads = self.config["fit"].get("torch_threads")
        if threads:
            torch.set_num_threads(threads)
        self._fit_started = time.perf_counter(), time.process_time()

    def after_fit(self) -> None:
        # Measured before testing: the fit's own wall time (model loading and validation included), steps/s, and
        # this process's CPU time, which other load on the machine inflates far less than the wall time.
        wall_started, cpu_started = self._fit_started
        wall, cpu = time.perf_counter() - wall_started, time.process_time() - cpu_started
        steps = self.trainer.global_step
        # A resumed fit's global_step counts the checkpoint's steps too, which this run's clock did not see.
        rate = "resumed" if self.config["fit"].get("ckpt_path") else f"{steps / wall:.2f} steps/s"
        speed = (
            f"[rewarddance] fit: {steps} steps in {wall:.0f} s ({rate}, validation included), "
            f"{torch.get_num_threads()} torch thread(s), {cpu:.0f} s CPU in the main process"
        )
        if self.config["fit"].get("test_after_fit") and getattr(self.datamodule, "test", None) is not None:
            self._test_after_fit()
        if self.trainer.is_global_zero:
            print(speed)

    def _test_after_fit(self) -> None:
        results = self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)
        if not self.trainer.is_global_zero:
            return
        accuracies = {k: v for result in results for k, v in result.items() if k.endswith("/acc")}
        callback = self.trainer.checkpoint_callback
        checkpoint = (callback.best_model_path or callback.last_model_path) if callback is not None else ""
        export = getattr(self.model, "export_path", None)
        print(
            "[rewarddance] " + " | ".join(f"{k.split('/')[0]} pairwise accuracy {v:.3f}" for k, v in accuracies.items())
        )
        print(f"[rewarddance] checkpoint: {checkpoint or 'none'}   export: {export or 'none'}")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        # Lightning's default CheckpointIO writes onto the target path, so a kill mid-save leaves a
        # truncated last.ckpt; AtomicCheckpointIO (rewarddance/checkpointing.py) writes a temporary file
        # and renames it. Only where the user configured no plugins and the strategy saves through the
        # default CheckpointIO (single device, DDP); ModelParallelStrategy/FSDP2 write sharded folders.
        plugins = {**self._get(self.config_init, "trainer", default={}), **kwargs}.get("plugins")
        strategy = trainer.strategy
        if (
            not plugins
            and type(strategy) in (SingleDeviceStrategy, DDPStrategy)
            and type(strategy.checkpoint_io) is TorchCheckpointIO
        ):
            strategy.checkpoint_io = AtomicCheckpointIO()
        # Record the wandb run id in every checkpoint, so `fit --ckpt_path` continues the same run
        # (before_instantiate_classes, rewarddance/wandb_resume.py).
        wandb = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if wandb:
            trainer.callbacks.append(WandbRunId(wandb[0]))
        return trainer

    def before_instantiate_classes(self) -> None:
        # A resumed fit logs into the wandb run recorded in its checkpoint, not a new one; needs the
        # parsed config, as the logger's id is an init argument.
        if self.subcommand == "fit":
            resume_wandb_run(self.config["fit"])
        self._check_reward()

    def _check_reward(self) -> None:
        # A model's reward (GeneratorRLTask) is plain data to the parser (rewarddance.rl.rewards.RewardSpec) and is
        # built in configure_model, after the generator loads; build it once now (rewards build cheaply, weights
        # load in setup) so a wrong name, class_path or init_args is refused at once, naming the field.
        model = self.config[self.subcommand].get("model") if self.subcommand else None
        init_args = model.get("init_args") if isinstance(model, Namespace) else None
        if isinstance(init_args, Namespace) and init_args.get("reward") is not None:
            build_reward(init_args["reward"], field="model.init_args.reward")

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads --ckpt_path's hyperparameters with a bare torch.load before the trainer loads it
        # through AtomicCheckpointIO: report an unreadable or unsafe file the same way here.
        try:
            super()._parse_ckpt_path()
        except Exception as err:
            path = self.config[self.config["subcommand"]].get("ckpt_path")
            refusal = load_error(path, err) if path else None
            if refusal is None:
                raise
            raise refusal from err

    def _set_seed(self) -> None:
        if self.config["subcommand"] not in self.project_commands:
            super()._set_seed()

    def _add_instantiators(self) -> None:
        if self.config["subcommand"] not in self.project_commands:
            super()._add_instantiators()

    def instantiate_classes(self) -> None:
        if self.config["subcommand"] in self.project_commands:
            return
        try:
            super().instantiate_classes()
        except (ValueError, MisconfigurationException) as err:
            if is_expected(err):
                raise
            cause = _refusal(err)
            if is_expected(cause):
                raise cause from err
            # The parser checked the types; a ValueError from a configured class's constructor is its check of a
            # value the user gave (e.g. GeneratorRLTask's algorithm), and Lightning's MisconfigurationException
            # the Trainer's refusal of a combination of its arguments.
            raise UsageError(f"the {self.config['subcommand']} configuration was refused: {cause}") from err

    def _run_subcommand(self, subcommand: str) -> None:
        resolved = self._resolve_command()
        if resolved is None:
            super()._run_subcommand(subcommand)
            return
        fn, kwargs = resolved
        params = inspect.signature(fn).parameters
        args = [kwargs.pop(n) for n, p in params.items() if p.kind is inspect.Parameter.POSITIONAL_ONLY]
        self.result = fn(*args, **kwargs)


UNION_REFUSAL = "Does not validate against any of the Union subtypes"
"""How jsonargparse words its error when the constructor of a configured subclass (``model``, ``data``) refuses a
value: the constructor's own error is its ``__context__``, and its message is followed by a dump of the config."""


def _refusal(error: BaseException) -> BaseException:
    """The error to report for a refused configuration: the first expected error in the chain of ``error`` (its
    ``__cause__`` or ``__context__``, and theirs), else the constructor's error under jsonargparse's, else ``error``."""
    chain = [error]
    while (inner := chain[-1].__cause__ or chain[-1].__context__) is not None and inner not in chain:
        chain.append(inner)
    expected = next((e for e in chain if is_expected(e)), None)
    if expected is not None:
        return expected
    if str(error).startswith(UNION_REFUSAL) and len(chain) > 1:
        return chain[1]
    return error


def _check_config_files(argv: list[str]) -> None:
    """Name the file of a ``--config`` that is not valid YAML (jsonargparse's message names only line and column)."""
    for i, arg in enumerate(argv):
        path = arg.split("=", 1)[1] if arg.startswith("--config=") else None
        if arg in ("--config", "-c") and i + 1 < len(argv):
            path = argv[i + 1]
        if path is None or not Path(path).is_file():
            continue  # a missing file is jsonargparse's to report (it names it)
        try:
            yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise BadFileError(f"config file {path}{where}: not valid YAML ({problem})") from err


def main(args: list[str] | None = None) -> RewardDanceCLI:
    """Run the command line with ``args`` (default: ``sys.argv[1:]``); returns the CLI object.

    Tests and notebooks call ``main(["fit", "--config", "configs/quickstart.yaml"])`` in-process;
    ``cli.result`` holds what a project command returned.

    An expected error (:func:`rewarddance.errors.is_expected`: a bad file, name, value, sample or
    checkpoint) is printed in a line or two on stderr and ends the command with
    ``SystemExit(EXIT_USER_ERROR)``; ``--debug`` (removed here, before the parser sees it) or
    ``REWARDDANCE_DEBUG=1`` lets it propagate with its traceback. Other exceptions are bugs and
    always propagate.
    """
    debug, argv = debug_requested(list(sys.argv[1:] if args is None else args))
    try:
        _check_config_files(argv)
        with warnings.catch_warnings():
            # Called in-process (tests, notebooks) the host's own argv is set too; args wins, as intended.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter", category=UserWarning)
            return RewardDanceCLI(
                args=argv,
                parser_kwargs={"prog": "python -m rewarddance", "description": DESCRIPTION},
                subclass_mode_model=True,
                subclass_mode_data=True,
                save_config_kwargs={"overwrite": True},
            )
    except KeyboardInterrupt:
        if debug:
            raise
        print("rewarddance: interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except Exception as error:
        if debug or not is_expected(error):
            raise
        print(describe(error), file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None


def console_main() -> int:
    """Entry point of the ``rewarddance`` console script and ``python -m rewarddance``: exit status 0 on success.

    (The script runs ``sys.exit(entry_point())``; :func:`main` returns the CLI object, which
    ``sys.exit`` would print and turn into status 1.) Errors exit through :func:`main`'s ``SystemExit``.
    """
    main()
    return 0

"""``python -m rewarddance export``: checkpoints (sharded FSDP2 folders and single files) to export folders.

1. The quickstart recipe on a 1-layer tiny Qwen2-VL under ``configs/trainer/fsdp.yaml`` (FSDP2, bf16
   compute, activation checkpointing) on 2 CPU processes (gloo) for 2 steps, through the real
   command line: it leaves a sharded checkpoint folder (``__0_0.distcp``, ``__1_0.distcp``,
   ``meta.pt``) at its last step and, when fit ends, the export gathered from the in-training model.
   The command, in one process without a process group, exports the folder to the same weights
   (bit for bit) and the same rewards. The launch runs in its own process group and is SIGKILLed on a
   hard timeout (a hung Lightning run ignores SIGTERM, docs/notes.md).
2. A single-file ``.ckpt`` of a LoRA reward task (one process, no CLI: no ``_class_path``, the task
   class comes from the checkpoint's ``rewarddance`` record): the export scores like the in-training
   task and holds the trained adapter alone in ``lora/``, which applied to the base model gives the
   exported merged model; a checkpoint without hyperparameters needs ``--run_config``.
3. A single-file ``.ckpt`` of ``GeneratorRLTask`` (tiny SD3, LoRA): a diffusers folder whose fused
   denoiser computes what the tuned one does, with the adapter alone in ``lora/``.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from peft import PeftModel
from safetensors.torch import load_file

from rewarddance.cli import main
from rewarddance.data.datamodule import ShardDataModule
from rewarddance.data.schema import Sample, decode_sample
from rewarddance.data.stream import iter_tar_samples, resolve_shards
from rewarddance.judge.reward_model import RewardModel
from rewarddance.models import LoraSettings, load_backbone
from rewarddance.tasks import GenerativeRewardTask
from tests.processes import run_group

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 180  # the 2-process fit takes ~12 s here (mostly imports); the margin is for a busier machine
TINY: dict[str, Any] = {
    "hidden_size": 32,
    "num_layers": 1,
    "num_heads": 2,
    "num_kv_heads": 1,
    "intermediate_size": 64,
    "vision_hidden_size": 32,
    "vision_depth": 1,
    "vision_heads": 1,
    "vision_intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
}
LORA = {"r": 4, "alpha": 8, "dropout": 0.0}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # tests/conftest.py sets it too; repeated so this file runs fast alone (docs/notes.md)


@pytest.fixture(scope="module")
def pairs() -> list[Sample]:
    """Four labelled pairs of the bundled validation set, to score."""
    raws = [raw for info in resolve_shards(str(ROOT / "data/shapes/val")) for raw in iter_tar_samples(info.url)]
    samples = [decode_sample(raw, load_references=False) for raw in raws]
    return [s for s in samples if s.kind == "pair"][:4]


def _score(model: RewardModel, pairs: list[Sample]) -> torch.Tensor:
    prompts = [s.prompt for s in pairs]
    return model.score(prompts, [s.second[0] for s in pairs], references=[s.first[0] for s in pairs])  # type: ignore[index]


def _export(ckpt: Path, out: Path, *extra: str) -> Path:
    return Path(main(["export", "--checkpoint", str(ckpt), "--out", str(out), *extra]).result)


# -- 1. a sharded FSDP2 checkpoint, from the real command line on 2 processes --------------------


def _fsdp_fit(root: Path) -> tuple[int, str]:
    config = {
        "seed_everything": 0,
        "test_after_fit": False,
        "trainer": {
            "max_time": None,
            "max_steps": 2,
            "limit_val_batches": 0,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(root),
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(root / "ckpt"), "save_top_k": -1, "every_n_train_steps": 2},
                }
            ],
        },
        "model": {
            "init_args": {"backbone": "tiny-qwen2-vl", "backbone_kwargs": TINY, "export_dir": str(root / "fit_export")}
        },
        "data": {"init_args": {"batch_size": 2, "num_workers": 0, "shuffle_buffer": 16}},
    }
    (root / "tiny.yaml").write_text(json.dumps(config))  # JSON is YAML
    cmd = [sys.executable, "-m", "rewarddance", "fit", "--config", "configs/quickstart.yaml"]
    cmd += ["--config", str(root / "tiny.yaml"), "--trainer", "configs/trainer/fsdp.yaml"]
    cmd += ["--trainer.accelerator=cpu", "--trainer.devices=2"]  # the fragment asks for GPUs
    proc = run_group(cmd, cwd=ROOT, timeout=TIMEOUT_S, what="The 2-process fit", env={"OMP_NUM_THREADS": "1"})
    return proc.returncode, proc.stdout


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_sharded_fsdp_checkpoint_exports_the_in_training_model(tmp_path, pairs, capsys):
    code, stdout = _fsdp_fit(tmp_path)
    assert code == 0, stdout[-5000:]
    assert "vision_cache_mb is ignored under FSDP" in stdout  # the quickstart's cache would desynchronise the ranks
    folder = tmp_path / "ckpt" / "epoch=0-step=2.ckpt"
    assert folder.is_dir() and (folder / "meta.pt").is_file()
    assert sorted(p.name for p in folder.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]

    exported = _export(folder, tmp_path / "export")
    assert exported == tmp_path / "export"
    assert f"[rewarddance] export: {exported}" in capsys.readouterr().out
    assert not torch.distributed.is_initialized()  # one process, no process group

    # The export written when fit ended, gathered from the shards of the model as training left it.
    reference = RewardModel.from_pretrained(tmp_path / "fit_export")
    model = RewardModel.from_pretrained(exported)
    assert model.config == reference.config
    ours, theirs = model.backbone.model.state_dict(), reference.backbone.model.state_dict()
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    torch.testing.assert_close(_score(model, pairs), _score(reference, pairs), rtol=0, atol=1e-6)
    # The trained weights, not the initial ones (the tiny backbone's initialisation is seeded, the same every time).
    initial = load_backbone("tiny-qwen2-vl", **TINY).model.state_dict()
    assert any(not torch.equal(ours[k], initial[k]) for k in initial)


# -- 2. a single-file checkpoint of a LoRA reward task -------------------------------------------


def _lora_task() -> GenerativeRewardTask:
    return GenerativeRewardTask(
        paradigm="pairwise",
        backbone="tiny-qwen2-vl",
        backbone_kwargs=TINY,
        template="short",
        lora=LoraSettings(**LORA),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0),
        export=False,
    )


@pytest.mark.timeout(120)
def test_lora_checkpoint_file_exports_merged_model_and_adapter(tmp_path, pairs, capsys):
    L.seed_everything(0, verbose=False)
    task = _lora_task()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=2,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_train_steps=2)],
    )
    data = ShardDataModule(train=str(ROOT / "data/shapes/train"), batch_size=2, num_workers=0, shuffle=False)
    trainer.fit(task, datamodule=data)
    ckpt = tmp_path / "ckpt" / "epoch=0-step=2.ckpt"
    assert ckpt.is_file()
    task.eval()

    out = _export(ckpt, tmp_path / "export")
    model = RewardModel.from_pretrained(out)
    assert model.config["lora"] == "merged"
    # The merged export scores like the in-training task (adapters unmerged, on top of the frozen base).
    expected = task.score_queries(
        model.queries([s.prompt for s in pairs], [s.second[0] for s in pairs], [s.first[0] for s in pairs])
    )  # type: ignore[index]
    torch.testing.assert_close(_score(model, pairs), expected.float(), rtol=0, atol=1e-5)

    # The adapter alone: PEFT's folder, holding exactly the trained adapters (which moved: lora_B starts at 0).
    assert (out / "lora" / "adapter_config.json").is_file()
    adapter = load_file(out / "lora" / "adapter_model.safetensors")
    trained = {n.removeprefix("model."): p.detach() for n, p in task.named_parameters() if p.requires_grad}
    assert len(adapter) == len(trained) > 0
    for name, value in trained.items():
        assert torch.equal(adapter[name.replace(".default", "")], value), name
    assert any(bool(v.abs().sum()) for k, v in adapter.items() if "lora_B" in k)
    # Applied to the base model, it gives the exported merged model.
    base = copy.deepcopy(task.model).unload()
    merged = PeftModel.from_pretrained(base, out / "lora").merge_and_unload().state_dict()
    exported = model.backbone.model.state_dict()
    assert set(merged) == set(exported)
    for key, value in merged.items():
        torch.testing.assert_close(exported[key], value, rtol=0, atol=1e-6, msg=key)

    # Without hyperparameters (or the task records) the checkpoint cannot say what to build: --run_config does.
    bare = torch.load(ckpt, weights_only=True)
    bare = {k: v for k, v in bare.items() if k not in ("hyper_parameters", "rewarddance")}
    torch.save(bare, tmp_path / "bare.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        _export(tmp_path / "bare.ckpt", tmp_path / "bare_export")
    assert exit_info.value.code == 1 and "--run_config" in capsys.readouterr().err
    assert not (tmp_path / "bare_export").exists()
    run_config = {
        "model": {
            "class_path": "GenerativeRewardTask",
            "init_args": {"backbone": "tiny-qwen2-vl", "backbone_kwargs": TINY, "template": "short", "lora": LORA},
        }
    }
    (tmp_path / "run.yaml").write_text(json.dumps(run_config))
    again = RewardModel.from_pretrained(
        _export(tmp_path / "bare.ckpt", tmp_path / "bare_export", "--run_config", str(tmp_path / "run.yaml"))
    )
    for key, value in again.backbone.model.state_dict().items():
        assert torch.equal(value, exported[key]), key


# -- 3. a single-file checkpoint of an RL-tuned generator ----------------------------------------


@pytest.mark.timeout(120)
def test_rl_generator_checkpoint_exports_a_pipeline_with_the_adapter(tmp_path):
    from rewarddance.data.prompts import PromptDataModule
    from rewarddance.models.adapters import adapter_for
    from rewarddance.models.generators import load_generator
    from rewarddance.rl.settings import GeneratorLora
    from rewarddance.shapes import geneval_prompts, write_geneval_jsonl
    from rewarddance.tasks import GeneratorRLTask

    prompts = write_geneval_jsonl(tmp_path / "train.jsonl", geneval_prompts(1, split="train", tags=("colors",)))
    task = GeneratorRLTask(
        generator="tiny-sd3",
        lora=GeneratorLora(r=4),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0),
        num_inference_steps=4,
        eval_every=None,
        plot=False,
        export=False,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_train_steps=2)],
    )
    trainer.fit(task, datamodule=PromptDataModule(train=str(prompts), batch_size=2, shuffle=False))

    (ckpt,) = (tmp_path / "ckpt").glob("*step=2.ckpt")
    out = _export(ckpt, tmp_path / "export")
    assert any((out / "lora").glob("*.safetensors"))  # the adapter alone
    exported = load_generator(out)
    assert not any("lora" in name for name, _ in exported.denoiser.named_parameters())  # fused
    # The exported denoiser computes what the tuned one does, on the same inputs. (The same prompt
    # embeddings: a tiny generator's CLIP tokenizer is retrained at every load_generator("tiny-sd3"),
    # and its ids are not reproducible, so the tiny pipeline's text path differs between builds.)
    adapter, context = task.adapter, task.adapter.prepare(["a red circle"], height=32, width=32, num_inference_steps=4)
    latents = adapter.initial_latents(context, 0)
    with torch.no_grad():
        tuned = adapter.model_output(latents, 1, context)
        ours = adapter_for(exported).model_output(latents, 1, context)
        start = adapter_for(load_generator("tiny-sd3")).model_output(latents, 1, context)  # seeded: the run's start
    torch.testing.assert_close(ours, tuned, atol=1e-4, rtol=1e-4)
    assert (start - tuned).abs().max() > 1e-3  # the tuned adapter is in the export, not the starting model


@pytest.mark.timeout(120)
def test_refl_checkpoint_with_the_reference_anchor_builds_for_export():
    """A ReFL run's anchor loss trains on its pairwise reward model's references; the export's stand-in reward
    chooses none, so the export turns the anchor off instead of refusing the checkpoint (it refused before)."""
    from rewarddance.commands.export import build_task

    hparams = {
        "_class_path": "rewarddance.tasks.GeneratorRLTask",
        "generator": "tiny-sd3",
        "algorithm": "refl",
        "reward": {"kind": "reward_model", "path": "/elsewhere/rm/export", "best_of_n": 16, "top_k": 2},
        "refl": {"t_min": 2, "t_max": 3, "hinge": None, "scale": 1.0, "anchor_weight": 30.0, "anchor_steps": None},
        "num_inference_steps": 4,
        "eval_every": None,
    }
    task = build_task({"hyper_parameters": hparams})
    assert task.refl_settings.anchor_weight == 0.0
    assert (task.refl_settings.t_min, task.refl_settings.t_max) == (2, 3)  # the rest of the run's settings kept

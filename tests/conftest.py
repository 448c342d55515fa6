"""Test-wide settings: one thread per process (two threads on the busy 2-core machine were 4x to 7x
slower, docs/notes.md), no network, no wandb account."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

torch.set_num_threads(1)

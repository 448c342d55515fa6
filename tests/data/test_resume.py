"""The stream's position in a checkpoint: a loader restored at any batch continues with exactly the
batches an uninterrupted epoch would have given, without decoding what it passes over; positions it
cannot continue exactly are refused, and a mid-epoch resume without a position warns."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rewarddance.data.prompts import PromptLoader
from rewarddance.data.stream import ResumeError, ShardStream, StreamLoader
from rewarddance.data.stream import dataset as stream_dataset

try:  # tests/ is a package here; the fallback keeps the file runnable if it stops being one
    from .streamkit import good_record, with_meta, write_dataset, write_records
except ImportError:
    from streamkit import good_record, with_meta, write_dataset, write_records  # type: ignore[no-redef]

torch.set_num_threads(1)


def _batches(loader: StreamLoader, stop: int | None = None) -> list[list[tuple[str, bool]]]:
    out = []
    for batch in loader:
        out.append([(s.key, s.padding) for s in batch])
        if stop is not None and len(out) == stop:
            break
    return out


def _with_bad_samples(folder: Path) -> None:
    """Three shards of 7; four bad samples (labels no reader accepts) spread over them."""
    shards = [[good_record(f"s{s}x{j:02d}", 7 * s + j) for j in range(7)] for s in range(3)]
    for s, j in ((0, 1), (1, 3), (1, 4), (2, 6)):
        shards[s][j] = with_meta(shards[s][j], label="nope")
    write_records(folder, shards)


CASES = {
    # name: (stream kwargs, num_workers, data)
    "shuffled-2-workers": ({"shuffle": True, "shuffle_buffer": 5}, 2, "uneven"),
    "in-process": ({"shuffle": True, "shuffle_buffer": 5}, 0, "uneven"),
    "skip-bad-2-workers": ({"shuffle": True, "shuffle_buffer": 4, "on_error": "skip"}, 2, "bad"),
    "rank-1-of-2": ({"shuffle": True, "shuffle_buffer": 3, "rank": 1, "world_size": 2}, 2, "uneven"),
    "resampled": ({"shuffle": True, "shuffle_buffer": 6, "resampled": True, "epoch_length": 13}, 2, "uneven"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_restored_loader_continues_exactly_at_every_batch(tmp_path, case):
    kwargs, workers, data = CASES[case]
    if data == "bad":
        _with_bad_samples(tmp_path)
    else:
        write_dataset(tmp_path, [7, 5, 9])

    def loader() -> StreamLoader:
        return StreamLoader(ShardStream(tmp_path, batch_size=3, seed=5, **kwargs), num_workers=workers)

    reference = loader()
    reference.set_epoch(2)
    full = _batches(reference)
    assert len(full) == len(reference) >= 4
    for cut in range(1, len(full) + 1):
        first = loader()
        first.set_epoch(2)
        assert _batches(first, stop=cut) == full[:cut]
        state = first.state_dict()
        resumed = loader()
        resumed.load_state_dict(state)
        resumed.set_epoch(2)
        assert _batches(resumed) == full[cut:], f"resumed after batch {cut}"
        if "on_error" in kwargs:  # the epoch's report counts the bad samples of both halves
            assert resumed.last_report["skipped"] == reference.last_report["skipped"] == {"label": 4}
        # The position is the epoch's: the next epoch starts afresh.
        resumed.set_epoch(3)
        again = loader()
        again.set_epoch(3)
        assert _batches(resumed) == _batches(again)


def test_restored_position_is_passed_over_without_decoding(tmp_path, monkeypatch):
    write_dataset(tmp_path, [7, 5, 9])
    decoded: list[str] = []
    real = stream_dataset.decode_sample

    def counting(raw, **kwargs):
        decoded.append(raw["__key__"])
        return real(raw, **kwargs)

    monkeypatch.setattr(stream_dataset, "decode_sample", counting)
    first = StreamLoader(ShardStream(tmp_path, batch_size=3, shuffle=True, shuffle_buffer=5))
    head = _batches(first, stop=4)
    resumed = StreamLoader(ShardStream(tmp_path, batch_size=3, shuffle=True, shuffle_buffer=5))
    resumed.load_state_dict(first.state_dict())
    decoded.clear()
    tail = _batches(resumed)
    assert len(decoded) == 21 - 12 == sum(len(b) for b in tail)  # only what it hands out
    assert {k for b in head for k, _ in b}.isdisjoint(decoded)


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ({"num_workers": 1}, "num_workers was 2, is 1"),
        ({"batch_size": 4}, "batch_size was 3, is 4"),
        ({"seed": 6}, "seed was 5, is 6"),
        ({"world_size": 2}, "world_size was 1, is 2"),
    ],
)
def test_position_saved_under_other_settings_is_refused(tmp_path, change, what):
    write_dataset(tmp_path, [7, 5, 9])

    def loader(num_workers: int = 2, **kwargs) -> StreamLoader:
        settings = {"batch_size": 3, "seed": 5, "shuffle": True, "shuffle_buffer": 5, "rank": 0, "world_size": 1}
        return StreamLoader(ShardStream(tmp_path, **{**settings, **kwargs}), num_workers=num_workers)

    first = loader()
    _batches(first, stop=2)
    resumed = loader(**change)
    resumed.load_state_dict(first.state_dict())
    with pytest.raises(ResumeError, match="resuming at batch 2 of epoch 0") as err:
        _batches(resumed)
    assert what in str(err.value) and "end-of-epoch checkpoint" in str(err.value)


def test_position_of_an_ended_epoch_does_not_bind_the_next(tmp_path):
    write_dataset(tmp_path, [7, 5, 9])
    first = StreamLoader(ShardStream(tmp_path, batch_size=3, seed=5), num_workers=2)
    _batches(first, stop=2)
    resumed = StreamLoader(ShardStream(tmp_path, batch_size=4, seed=5), num_workers=1)  # other settings...
    resumed.load_state_dict(first.state_dict())
    resumed.set_epoch(1)  # ...but a new epoch: nothing of it was consumed, so nothing to refuse
    assert len(_batches(resumed)) == len(resumed) == 6


def test_mid_epoch_resume_without_a_position_warns(tmp_path):
    write_dataset(tmp_path, [7, 5, 9])
    # What a trainer restored from a checkpoint without loader state reports: 3 batches already done.
    loader = StreamLoader(ShardStream(tmp_path, batch_size=3), progress_fn=lambda: 3, name="train")
    with pytest.warns(UserWarning, match=r"train: resuming at batch 3 of epoch 0, but the checkpoint holds no data"):
        batches = _batches(loader)
    assert len(batches) == 7  # the epoch restarts (what Lightning would do), loudly


def test_inconsistent_position_is_refused(tmp_path):
    write_dataset(tmp_path, [7, 5, 9])
    first = StreamLoader(ShardStream(tmp_path, batch_size=3))
    _batches(first, stop=2)
    resumed = StreamLoader(ShardStream(tmp_path, batch_size=3), progress_fn=lambda: 3)
    resumed.load_state_dict(first.state_dict())
    with pytest.raises(ResumeError, match="position is batch 2 of epoch 0"):
        _batches(resumed)


# --------------------------------------------------------------------------------------------
# In-memory prompts (the RL DataModule's default source)


def _prompt_loader(items: list[str], done: list[int], **kwargs) -> PromptLoader:
    """Batches of 2 from ``items``, shuffled from seed 3; ``done[0]`` plays the trainer's progress."""
    settings = {"batch_size": 2, "shuffle": True, "num_workers": 2, "collate_fn": list}
    return PromptLoader(
        items, generator=torch.Generator().manual_seed(3), progress_fn=lambda: done[0], **{**settings, **kwargs}
    )


@pytest.mark.parametrize("cut", [1, 3, 5])
def test_restored_prompt_loader_continues_exactly(cut):
    items = [f"p{i}" for i in range(11)]
    done = [0]
    reference = _prompt_loader(items, done)
    epochs = [list(reference) for _ in range(3)]  # three epochs of an uninterrupted run
    assert epochs[0] != epochs[1] and sorted(p for b in epochs[1] for p in b) == sorted(items)

    first = _prompt_loader(items, done)
    list(first)  # epoch 0
    head = []
    for batch in first:  # epoch 1, up to the checkpoint
        head.append(batch)
        if len(head) == cut:
            break
    state = first.state_dict()
    resumed, done[0] = _prompt_loader(items, done), cut  # a trainer restored mid-epoch reports `cut` done
    resumed.load_state_dict(state)
    assert head + list(resumed) == epochs[1]
    done[0] = 0
    assert list(resumed) == epochs[2]  # and the next epoch is the uninterrupted run's too

    at_end = _prompt_loader(items, done)  # a checkpoint at the end of epoch 1
    at_end.load_state_dict(_end_state(items, done))
    assert list(at_end) == epochs[2]


def _end_state(items: list[str], done: list[int]) -> dict:
    loader = _prompt_loader(items, done)
    list(loader), list(loader)
    return loader.state_dict()


def test_prompt_position_under_other_settings_is_refused_and_a_missing_one_warns():
    items = [f"p{i}" for i in range(11)]
    done = [0]
    first = _prompt_loader(items, done)
    next(iter(first))
    state = first.state_dict()
    done[0] = 1
    resumed = _prompt_loader(items, done, batch_size=3)
    resumed.load_state_dict(state)
    with pytest.raises(ResumeError, match="batch_size was 2, is 3"):
        list(resumed)
    with pytest.warns(UserWarning, match="holds no prompt position"):
        assert len(list(_prompt_loader(items, done))) == 6  # restarts the epoch, loudly


def test_a_position_of_another_kind_of_loader_is_refused(tmp_path):
    write_dataset(tmp_path, [7, 5, 9])
    prompts = _prompt_loader(["a", "b", "c"], [0])
    shards = StreamLoader(ShardStream(tmp_path, batch_size=3))
    with pytest.raises(ResumeError, match=r"is a 'prompts' loader's.*streams shards"):
        shards.load_state_dict(prompts.state_dict())
    with pytest.raises(ResumeError, match=r"is a 'shards' loader's.*holds prompts in memory"):
        prompts.load_state_dict(shards.state_dict())

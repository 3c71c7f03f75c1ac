"""Data-aware estimates: the batch shapes computed without training are the ones the prepared
loader yields, and the planner's expected peak follows them."""

import pytest

from nexa_core import data_shapes
from nexa_core.errors import ConfigError
from nexa_core.planner import PlanConfig, make_plan
from nexa_core.train_config import TrainConfig


def _prepared_shapes(config: TrainConfig, epochs: int) -> list[tuple[int, int]]:
    """What DeepSpeedTrainer's loader really yields: Accelerate-prepared, seedable sampler, per epoch."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed

    from nexa_core import datasets
    from nexa_core.training_run import load_tokenizer

    set_seed(config.seed)  # as the trainer does before prepare
    data = datasets.build_dataloaders(
        config.task, load_tokenizer(config.model), config.dataset, config.eval_dataset,
        batch_size=config.batch_size, seq_len=config.seq_len, seed=config.seed,
    )  # fmt: skip
    loader = Accelerator(dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True)).prepare(
        data.train_loader
    )
    shapes = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:
            if config.task == "embedding":  # each side padded to its own longest: the longer side
                ids = [batch["anchor_input_ids"], batch["positive_input_ids"]]
                shapes.append((ids[0].shape[0], max(t.shape[1] for t in ids)))
            else:
                shapes.append(tuple(batch["input_ids"].shape))
    return shapes


@pytest.mark.parametrize(
    "task,dataset,batch_size,seq_len",
    [("ner", None, 8, 24), ("causal-lm", "sample:instructions", 16, 128), ("embedding", None, 6, 64)],
)
def test_computed_batches_are_the_ones_the_prepared_loader_yields(task, dataset, batch_size, seq_len):
    config = TrainConfig(task=task, dataset=dataset, batch_size=batch_size, seq_len=seq_len, seed=3, epochs=2)
    real = _prepared_shapes(config, epochs=2)
    profile = data_shapes.profile_for(config)
    lengths = data_shapes._lengths(
        config.model,
        config.task,
        config.dataset,
        config.eval_dataset,
        seq_len,
        3,
        data_shapes._stamp(config.dataset),
    )
    assert data_shapes.trained_batches(lengths, batch_size, 3, epochs=2) == [real]
    assert profile.batches == len(real) and profile.longest == max(real, key=lambda s: (s[1], s[0]))
    assert profile.max_tokens == max(lengths) <= seq_len and profile.examples == len(lengths)
    assert set(profile.shapes) <= set(real)


def test_max_steps_and_accumulation_stop_at_the_last_optimizer_step():
    lengths = list(range(1, 41))  # 40 examples, batches of 4: 10 per epoch
    assert len(data_shapes.trained_batches(lengths, 4, 0, max_steps=3)[0]) == 3
    assert len(data_shapes.trained_batches(lengths, 4, 0, max_steps=3, gradient_accumulation=2)[0]) == 6
    # an epoch of 10 micro-batches with accumulation 4 steps 3 times (the last at the epoch's end)
    assert len(data_shapes.trained_batches(lengths, 4, 0, max_steps=4, gradient_accumulation=4)[0]) == 14


def test_two_ranks_split_every_example_between_them():
    lengths = list(range(1, 31))
    per_rank = [data_shapes.rank_batches(30, 4, 7, 0, ranks=2, rank=r) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 4  # 8 batches of 4 (the last two completed)
    seen = [i for batches in per_rank for b in batches for i in b]
    assert set(seen) == set(range(30))
    shapes = data_shapes.trained_batches(lengths, 4, 7, ranks=2)
    assert [len(s) for s in shapes] == [4, 4] and all(rows == 4 for s in shapes for rows, _ in s)


def test_peak_shapes_keep_only_undominated_shapes_longest_first():
    assert data_shapes.peak_shapes([(8, 30), (8, 36), (3, 40), (8, 12), (2, 40), (8, 36)]) == (
        (3, 40),
        (8, 36),
    )


def test_padding_to_the_cap_plans_every_batch_at_seq_len():
    profile = data_shapes.profile([5, 9, 12], seq_len=64, batch_size=2, pad_to_seq_len=True)
    assert profile.shapes == ((2, 64),) and profile.padded_to_cap and profile.truncated == 0
    cut = data_shapes.profile([5, 64, 64, 20], seq_len=64, batch_size=4)
    assert cut.truncated == 2 and cut.median_tokens == 42 and cut.p95_tokens == 64


def test_unreadable_data_is_a_config_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no labels"}\n')
    with pytest.raises(ConfigError, match="label"):
        data_shapes.profile_for(TrainConfig(task="classification", dataset=str(bad)))


def test_planner_expected_peak_follows_the_data_and_stays_below_the_cap():
    base = dict(gpus=0, batch_size=8, seq_len=256, host_memory_gb=64)
    plan = make_plan(PlanConfig(**base, batch_shapes=((8, 36), (3, 60))))
    for e in plan.estimates:
        assert e.expected is not None and e.expected.host.total_bytes < e.host.total_bytes
        # the larger of the two shapes' estimates, whichever shape it is
        assert (e.expected.rows, e.expected.tokens) in ((8, 36), (3, 60))
        assert e.to_dict()["expected"]["batch_tokens"] == e.expected.tokens
    at_cap = make_plan(PlanConfig(**base, batch_shapes=((8, 256),)))
    assert all(e.expected.host == e.host for e in at_cap.estimates)
    assert all(e.expected is None for e in make_plan(PlanConfig(**base)).estimates)


def test_batch_shapes_outside_the_batch_are_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"batch_shapes: .*rows <= batch_size \(8\)"):
        PlanConfig(gpus=0, batch_size=8, seq_len=128, batch_shapes=((9, 10),))
    with pytest.raises(ConfigError, match=r"tokens <= seq_len \(128\)"):
        PlanConfig(gpus=0, batch_size=8, seq_len=128, batch_shapes=((8, 129),))

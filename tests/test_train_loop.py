"""The training loop's arithmetic and bookkeeping, each piece on its own (nexa_core/train_loop.py);
the loop that uses them is exercised by the real runs in tests/test_trainer.py."""

import torch

from nexa_core.train_loop import Schedule, ThroughputWindow, batches, due, epochs_from


def test_schedule_counts_optimizer_steps_with_accumulation_and_max_steps():
    assert Schedule.of(10, 1, 3, None) == Schedule(total_steps=30, steps_per_epoch=10, epochs=3)
    # 10 batches in groups of 4: steps after batches 4, 8 and the partial group at 10
    assert Schedule.of(10, 4, 2, None) == Schedule(6, 3, 2)
    # max_steps wins over epochs and sets how many epochs are needed to reach it
    assert Schedule.of(10, 1, 1, 25) == Schedule(25, 10, 3)
    assert Schedule.of(0, 1, 1, None).total_steps == 1  # an empty loader still counts one step


def test_a_resumed_run_continues_from_its_epoch_and_none_once_finished():
    schedule = Schedule(30, 10, 3)
    assert list(epochs_from(0, 0, schedule)) == [0, 1, 2]
    assert list(epochs_from(1, 14, schedule)) == [1, 2]
    assert list(epochs_from(2, 30, schedule)) == []  # already at its last step


def test_periodic_actions_fall_on_their_steps_but_never_the_last():
    assert [s for s in range(1, 11) if due(s, 3, 10)] == [3, 6, 9]
    assert [s for s in range(1, 11) if due(s, 5, 10)] == [5]  # step 10 is the run's end
    assert not any(due(s, None, 10) or due(s, 0, 10) for s in range(1, 11))


def test_batches_skip_what_a_resumed_epoch_already_trained_on():
    loader = ["a", "b", "c", "d"]
    assert list(batches(loader, 0, lambda _, __: None)) == [(1, "a"), (2, "b"), (3, "c"), (4, "d")]
    skipped = list(batches(loader, 2, lambda data, n: data[n:]))
    assert skipped == [(3, "c"), (4, "d")]  # numbered within the epoch, as checkpoints record them


def test_throughput_window_rates_over_all_ranks_then_restarts():
    now = iter([100.0, 102.0, 102.0, 103.0, 103.0])
    window = ThroughputWindow(clock=lambda: next(now))
    batch = {
        "input_ids": torch.ones(4, 8, dtype=torch.long),
        "attention_mask": torch.ones(4, 8, dtype=torch.long),
    }
    window.add(batch)
    window.add(batch)
    rates = window.close(ranks=2)
    assert rates == {"samples_per_s": 8.0, "tokens_per_s": 64.0, "step_time_s": 2.0}
    window.add(batch)
    assert window.close(ranks=1)["samples_per_s"] == 4.0  # the second window: 1 s, 4 samples

"""Per-task metrics on known inputs: seqeval's entity F1 with ignored (-100) positions, throughput
counts for every batch shape the datasets produce."""

import torch

from nexa_core import task_metrics

LABELS = ["O", "B-EQUIPMENT", "I-EQUIPMENT", "B-LOCATION", "I-LOCATION"]


def test_entity_f1_counts_whole_entities_and_skips_padding():
    refs = [torch.tensor([[0, 1, 2, 0, 3, -100, -100]])]
    exact = [torch.tensor([[0, 1, 2, 0, 3, 4, 4]])]  # the padded tail is ignored whatever it holds
    assert task_metrics.seqeval_f1(exact, refs, LABELS) == 1.0
    half = [torch.tensor([[0, 1, 0, 0, 3, 0, 0]])]  # equipment cut short: one of two entities right
    assert task_metrics.seqeval_f1(half, refs, LABELS) == 0.5
    assert task_metrics.seqeval_f1([], [], LABELS) == 0.0


def test_throughput_counts_for_each_batch_shape():
    ner = {"input_ids": torch.zeros(4, 8), "attention_mask": torch.tensor([[1] * 5 + [0] * 3] * 4)}
    assert task_metrics.batch_size(ner) == 4 and task_metrics.token_count(ner) == 20
    pairs = {
        "anchor_input_ids": torch.zeros(2, 4), "anchor_attention_mask": torch.ones(2, 4),
        "positive_input_ids": torch.zeros(2, 4), "positive_attention_mask": torch.ones(2, 3),
    }  # fmt: skip
    assert task_metrics.batch_size(pairs) == 2 and task_metrics.token_count(pairs) == 14

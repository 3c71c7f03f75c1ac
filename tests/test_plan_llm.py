"""Plans at LLM scale: 70B on an 8-GPU node, machines other than this one, the loading path, and
sequence lengths beyond what a model takes (CLI and core; the pages have their own tests)."""

import json
import subprocess
import sys

import pytest

from nexa_core import hardware
from nexa_core.errors import ConfigError
from nexa_core.memory import GIB
from nexa_core.planner import PlanConfig, is_other_machine, make_plan

THIS_MACHINE = hardware.Hardware((), 23 * GIB, 22 * GIB)  # CPU-only, like the reference machine
LLAMA_70B_NODE = dict(model="meta-llama/Llama-3.1-70B", task="causal-lm", gpus=8, gpu_memory_gb=80,
                      gradient_checkpointing=True, batch_size=1, seq_len=4096)  # fmt: skip


def nexa(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nexa_core", *args], capture_output=True, text=True, timeout=300
    )


def test_llama_70b_lora_on_an_8xh100_node_fits_with_zero3_from_the_cli():
    out = nexa("plan", "meta-llama/Llama-3.1-70B", "--task", "causal-lm", "--gpus", "8", "--gpu-memory-gb", "80",
               "--host-memory-gb", "2048", "--lora", "--gradient-checkpointing", "--batch-size", "1",
               "--seq-len", "4096", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    rec = plan["recommendation"]
    assert rec["zero_stage"] == 3 and rec["offload_optimizer"] == "none"
    chosen = next(e for e in plan["estimates"] if e["label"] == "ZeRO-3")
    assert chosen["fits"] and chosen["per_gpu"]["total_bytes"] < 0.9 * 80 * GIB
    # sharded creation: the host holds rank 0's read of the bf16 checkpoint once, not 8 fp32 copies
    assert chosen["host"]["params_bytes"] == plan["model"]["params"] * 2
    assert "sharded at creation" in chosen["load_path"]
    assert plan["inputs"]["host_checked"] is True


def test_llama_70b_full_fine_tune_needs_optimizer_offload_and_says_which_term_does_not_fit():
    plan = make_plan(PlanConfig(**LLAMA_70B_NODE, host_memory_gb=2048), THIS_MACHINE)
    rec = plan.recommendation
    assert rec.layout is not None and (rec.layout.zero_stage, rec.layout.offload_optimizer) == (3, True)
    assert not rec.layout.offload_param  # parameter offload is slower; not needed here
    # the faster options are named with the term that overflows
    assert "ZeRO-3 needs" in rec.reason and "largest term: optimizer states" in rec.reason
    # on 1 TiB of host RAM the offloaded optimizer no longer fits either: nothing fits, and the
    # advice names only steps not taken (checkpointing is on, the batch is already 1)
    small = make_plan(PlanConfig(**LLAMA_70B_NODE, host_memory_gb=1024), THIS_MACHINE).recommendation
    assert small.layout is None
    assert "host RAM of 1024.00 GiB (largest term: optimizer states" in small.reason
    assert "turn on LoRA" in small.reason
    assert "gradient checkpointing" not in small.reason and "reduce the micro-batch" not in small.reason


def test_another_machine_is_not_checked_against_this_machines_ram():
    config = PlanConfig(**LLAMA_70B_NODE, lora=True)
    assert is_other_machine(config, THIS_MACHINE)
    plan = make_plan(config, THIS_MACHINE)
    assert plan.host_budget_bytes is None
    assert any("host RAM not checked" in n for n in plan.notes)
    assert all(not any("host RAM" in f for f in e.fit_notes) for e in plan.estimates)
    assert "(host RAM not checked)" in plan.recommendation.reason
    # this machine as it is: its own RAM is the budget
    here = make_plan(PlanConfig(gpus=0), THIS_MACHINE)
    assert not is_other_machine(here.config, THIS_MACHINE) and here.host_budget_bytes == 22 * GIB


def test_a_hardware_preset_fills_the_machine_and_explicit_flags_win():
    config = PlanConfig(model="meta-llama/Llama-3.1-8B", task="causal-lm", hardware="1xA100-40GB")
    assert (config.gpus, config.gpu_memory_gb, config.host_memory_gb) == (1, 40, 85)
    config = PlanConfig(
        model="meta-llama/Llama-3.1-8B", task="causal-lm", hardware="1xA100-40GB", host_memory_gb=200
    )
    assert config.host_memory_gb == 200
    with pytest.raises(
        ConfigError, match=r"hardware \(--hardware\): 'nope' is not a preset; choose one of 8xH100"
    ):
        PlanConfig(hardware="nope")


def test_the_unsharded_zero3_path_costs_a_full_copy_per_rank():
    sharded = make_plan(PlanConfig(**LLAMA_70B_NODE, lora=True, host_memory_gb=2048), THIS_MACHINE)
    whole = make_plan(
        PlanConfig(**LLAMA_70B_NODE, lora=True, host_memory_gb=2048, zero3_init=False), THIS_MACHINE
    )
    z3 = [next(e for e in p.estimates if e.label == "ZeRO-3") for p in (sharded, whole)]
    params = sharded.size.params
    assert z3[0].host.params_bytes == params * 2  # rank 0 reads the bf16 checkpoint
    assert z3[1].host.params_bytes == 8 * params * 2  # eight bf16 copies, one per rank
    assert "one full 16-bit copy per rank" in z3[1].load_path
    # on a node with 1 TiB of RAM, only the sharded path fits the host
    on_1tib = [
        next(e for e in make_plan(PlanConfig(**LLAMA_70B_NODE, lora=True, host_memory_gb=1024, zero3_init=z),
                                  THIS_MACHINE).estimates if e.label == "ZeRO-3")
        for z in (True, False)
    ]  # fmt: skip
    assert on_1tib[0].fits and not on_1tib[1].fits


@pytest.mark.parametrize(
    "command", [["plan", "sentence-transformers/all-MiniLM-L6-v2"], ["train", "--max-steps", "1"]]
)
def test_cli_refuses_a_sequence_beyond_the_models_limit(command, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "nexa_core", *command, "--seq-len", "100000"],
        capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "NEXA_HOME": str(tmp_path)},
    )  # fmt: skip
    assert out.returncode == 2
    assert (
        "seq_len (--seq-len): 100000 is longer than sentence-transformers/all-MiniLM-L6-v2's limit of 512"
        in out.stderr
    )
    assert "Traceback" not in out.stderr

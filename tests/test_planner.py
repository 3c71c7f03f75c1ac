import json
import subprocess
import sys

import pytest

from nexa_core import cli, hardware
from nexa_core.errors import ConfigError
from nexa_core.memory import GIB
from nexa_core.planner import PlanConfig, make_plan, plan_command

NO_HW = hardware.Hardware((), 0, 0)
ONE_GPU = hardware.Hardware((hardware.Gpu(0, "Test GPU", 16 * GIB, 15 * GIB),), 64 * GIB, 60 * GIB)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        PlanConfig(
            model="--evil", task="translation", precision="fp8", batch_size=0, seq_len=-1, gpus=-2, nodes=0
        )
    fields = " ".join(err.value.problems)
    for name in ("model", "task", "precision", "batch_size", "seq_len", "gpus", "nodes"):
        assert name in fields
    assert "ner, classification, embedding, causal-lm" in fields  # the allowed values are listed
    assert len(err.value.problems) == 7


def test_lora_needs_a_real_model():
    with pytest.raises(ConfigError, match="lora"):
        PlanConfig(params=10**9, lora=True)


def test_cpu_only_plan_has_zero_gpu_totals_and_host_terms():
    plan = make_plan(PlanConfig(gpus=0, host_memory_gb=24), NO_HW)
    assert plan.precision.value == "fp32"
    assert all(e.per_gpu.total_bytes == 0 for e in plan.estimates)
    assert all(e.host.activations_bytes > 0 and e.host.params_bytes > 0 for e in plan.estimates)
    rec = plan.recommendation
    assert rec.layout is not None and rec.layout.zero_stage == 0
    assert "fastest option that fits" in rec.reason


def test_hypothetical_model_plans_model_states_only():
    plan = make_plan(PlanConfig(params=10**9, gpus=1, gpu_memory_gb=80, host_memory_gb=256), NO_HW)
    assert plan.size.params == 10**9
    assert all(e.per_gpu.activations_bytes == 0 for e in plan.estimates)
    assert any("activations omitted" in n for n in plan.notes)


def test_recommendation_is_the_fastest_fitting_layout():
    # 1B params in bf16 on one 16 GiB GPU: ZeRO-0..3 need ~20 GiB; optimizer offload fits.
    plan = make_plan(PlanConfig(params=10**9, gpus=1, gpu_memory_gb=16, host_memory_gb=64), NO_HW)
    rec = plan.recommendation.layout
    assert rec is not None and rec.offload_optimizer and not rec.offload_param
    assert "do not fit" in plan.recommendation.reason
    fitting = [e for e in plan.estimates if e.fits]
    assert all(
        (e.layout.offload_optimizer, e.layout.zero_stage) >= (rec.offload_optimizer, rec.zero_stage)
        for e in fitting
    )


def test_nothing_fits_says_what_to_change():
    plan = make_plan(PlanConfig(params=10**11, gpus=1, gpu_memory_gb=8, host_memory_gb=16), NO_HW)
    assert plan.recommendation.layout is None
    assert "Nothing fits" in plan.recommendation.reason


def test_more_gpus_shrink_sharded_states():
    one = make_plan(
        PlanConfig(model="gpt2-xl", task="causal-lm", gpus=1, gpu_memory_gb=80, host_memory_gb=500), NO_HW
    )
    eight = make_plan(
        PlanConfig(model="gpt2-xl", task="causal-lm", gpus=8, gpu_memory_gb=80, host_memory_gb=500), NO_HW
    )
    z3 = lambda p: next(e for e in p.estimates if e.label == "ZeRO-3")  # noqa: E731
    assert z3(eight).per_gpu.optimizer_bytes == pytest.approx(z3(one).per_gpu.optimizer_bytes / 8, rel=1e-6)


def test_detected_hardware_fills_defaults():
    plan = make_plan(PlanConfig(params=10**8), ONE_GPU)
    assert (
        plan.gpus_per_node == 1 and plan.gpu_budget_bytes == 15 * GIB and plan.host_budget_bytes == 60 * GIB
    )


def test_json_interface(capsys):
    code = cli.main(
        ["plan", "sentence-transformers/all-MiniLM-L6-v2", "--gpus", "0", "--host-memory-gb", "24", "--json"]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["params"] == 22_568_071 and out["model"]["trainable_params"] == 22_568_071
    assert out["model"]["largest_layer_params"] == 30522 * 384
    assert set(out["recommendation"]) >= {"zero_stage", "offload_optimizer", "offload_param", "reason"}
    assert len(out["estimates"]) == 8
    for e in out["estimates"]:
        assert set(e["per_gpu"]) >= {"params_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes",
                                     "overhead_bytes", "total_bytes"}  # fmt: skip
        assert e["offload_optimizer"] in ("none", "cpu") and e["offload_param"] in ("none", "cpu")
        assert (
            isinstance(e["fits"], bool) and e["host"]["total_bytes"] > 0 and e["per_gpu"]["total_bytes"] == 0
        )


def test_human_table(capsys):
    assert cli.main(["plan", "gpt2", "--task", "causal-lm", "--gpus", "2", "--gpu-memory-gb", "24",
                     "--host-memory-gb", "64", "--lora", "--lora-rank", "4"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "ZeRO-3 + optimizer→CPU + params→CPU" in out and "Recommendation:" in out and "LoRA r=4" in out


def test_cli_bad_input_is_a_message_not_a_traceback(capsys):
    assert cli.main(["plan", "gpt2", "--task", "nope", "--batch-size", "0"]) == 2
    err = capsys.readouterr().err
    assert "task (--task)" in err and "batch_size (--batch-size)" in err and "Traceback" not in err


def test_cli_offline_hub_id(capsys):
    assert cli.main(["plan", "someone/unknown-model", "--gpus", "0"]) == 2
    assert "offline" in capsys.readouterr().err


def test_plan_command_round_trips():
    config = PlanConfig(model="gpt2", task="causal-lm", batch_size=4, seq_len=256, lora=True, lora_rank=16, gpus=2,
                        nodes=2, gpu_memory_gb=24)  # fmt: skip
    command = plan_command(config)
    args = cli.build_parser().parse_args(command.split()[1:])
    assert (args.model, args.task, args.batch_size, args.seq_len, args.lora_rank, args.gpus, args.nodes) == (
        "gpt2", "causal-lm", 4, 256, 16, 2, 2)  # fmt: skip


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "nexa_core", "plan", "--params", "1000", "--gpus", "0", "--json"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["model"]["params"] == 1000


def test_nexa_core_never_imports_streamlit():
    """The CLI and the trainer run where Streamlit is not wanted: importing every nexa_core module
    must not pull it in (pages hold the UI, nexa_core the logic)."""
    code = (
        "import importlib, pkgutil, sys, nexa_core\n"
        "names = [m.name for m in pkgutil.walk_packages(nexa_core.__path__, 'nexa_core.')\n"
        "         if m.name != 'nexa_core.__main__']  # that one runs the CLI\n"
        "[importlib.import_module(n) for n in names]\n"
        "print(len(names), 'streamlit' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    count, imported = out.stdout.split()
    assert int(count) > 30  # every module was walked, not an empty package
    assert imported == "False"


@pytest.mark.parametrize(
    "text, count", [("7B", 7 * 10**9), ("350m", 350 * 10**6), ("1.3e9", 1_300_000_000), ("1_000", 1000)]
)
def test_param_counts_as_people_write_them(text, count):
    from nexa_core.commands.plan import param_count

    assert param_count(text) == count


def test_a_bad_param_count_names_the_flag_and_the_forms(capsys):
    assert_exit = pytest.raises(SystemExit)
    with assert_exit:
        cli.main(["plan", "--params", "lots"])
    err = capsys.readouterr().err
    assert "--params" in err and "7B" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--gpu-memory-gb", "nan"),
        ("--gpu-memory-gb", "inf"),
        ("--host-memory-gb", "nan"),
        ("--host-memory-gb", "-inf"),
    ],
)
def test_memory_sizes_that_are_not_finite_are_a_message_naming_the_flag(capsys, flag, value):
    """float() takes 'nan' and 'inf'; nan passed the `<= 0` check and failed deep in the maths."""
    assert (
        cli.main(["plan", "--params", "1B", "--gpus", "1", "--gpu-memory-gb", "24", f"{flag}={value}"]) == 2
    )
    err = capsys.readouterr().err
    field = flag[2:].replace("-", "_")
    assert f"nexa plan: error: {field} ({flag}): must be a positive, finite number of GiB, got {value}" in err
    assert "Traceback" not in err

import json
import os

import pytest
import yaml

from nexa_core import device_manager
from nexa_core.device_manager import DEFAULT_ACCELERATE_CONFIG, DEFAULT_DEEPSPEED_CONFIG, DeepSpeedSettings
from nexa_core.enums import DeepSpeedMode, Offload, Precision
from nexa_core.errors import ConfigError
from nexa_core.train_config import TrainConfig


def test_deployment_deepspeed_config_is_the_seed_shape():
    config = json.loads(DEFAULT_DEEPSPEED_CONFIG.read_text())
    zero = config["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert config["bf16"]["enabled"] == "auto" and config["fp16"]["enabled"] == "auto"
    assert config["train_micro_batch_size_per_gpu"] == "auto" and "activation_checkpointing" in config
    # DeepSpeed's own config parser accepts it once Accelerate has filled the "auto" values
    from deepspeed.runtime.config import DeepSpeedConfig

    filled = DeepSpeedSettings(mode="on").deepspeed_config(Precision.FP32)
    filled.update(train_batch_size=8, train_micro_batch_size_per_gpu=8, gradient_clipping=1.0)
    filled["optimizer"] = {"type": "AdamW", "params": {"lr": 1e-4, "weight_decay": 0.0}}
    filled["scheduler"] = {"type": "WarmupLR", "params": {"warmup_num_steps": 1}}
    for key in ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"):
        filled["zero_optimization"][key] = 1000
    parsed = DeepSpeedConfig(filled)
    assert parsed.zero_optimization_stage == 3


def test_accelerate_config_points_at_the_deepspeed_file():
    config = yaml.safe_load(DEFAULT_ACCELERATE_CONFIG.read_text())
    assert config["distributed_type"] == "DEEPSPEED"
    assert config["deepspeed_config"]["deepspeed_config_file"] == "deployment/deepspeed_config.json"
    from accelerate.commands.config.config_args import ClusterConfig

    known = set(ClusterConfig.__dataclass_fields__)
    assert set(config) <= known, set(config) - known  # every key is one Accelerate's schema knows


def test_seed_environment_variables_fill_defaults():
    env = {
        "USE_DEEPSPEED": "true",
        "DEEPSPEED_ZERO_STAGE": "2",
        "DEEPSPEED_OFFLOAD_OPTIMIZER": "cpu",
        "DEEPSPEED_OFFLOAD_PARAM": "none",
        "DEEPSPEED_CPU_CHECKPOINTING": "true",
        "ENABLE_MIXED_PRECISION": "false",
        "GRADIENT_ACCUMULATION_STEPS": "4",
    }
    s = DeepSpeedSettings.from_env(env)
    assert s.mode is DeepSpeedMode.ON and s.layout() == (2, Offload.CPU, Offload.NONE)
    assert s.precision is Precision.FP32 and s.gradient_accumulation_steps == 4 and s.cpu_checkpointing
    config = s.deepspeed_config(Precision.FP32)
    assert config["zero_optimization"]["stage"] == 2 and "offload_param" not in config["zero_optimization"]
    assert (
        config["gradient_accumulation_steps"] == 4 and config["activation_checkpointing"]["cpu_checkpointing"]
    )
    # flags win over the environment
    assert DeepSpeedSettings.from_env(env, zero_stage=1).layout()[0] == 1


def test_auto_mode_follows_the_hardware():
    s = DeepSpeedSettings.from_env({})
    assert s.deepspeed_enabled(has_gpu=True) and not s.deepspeed_enabled(has_gpu=False)
    assert DeepSpeedSettings.from_env({"USE_DEEPSPEED": "true"}).deepspeed_enabled(has_gpu=False)
    assert s.resolved_precision(has_gpu=False) is Precision.FP32


def test_unset_choices_come_from_the_config_file():
    assert DeepSpeedSettings.from_env({}).layout() == (3, Offload.CPU, Offload.CPU)


def test_invalid_settings_name_the_variable():
    with pytest.raises(ConfigError) as err:
        DeepSpeedSettings.from_env(
            {"DEEPSPEED_ZERO_STAGE": "5", "DEEPSPEED_OFFLOAD_PARAM": "disk", "USE_DEEPSPEED": "maybe"}
        )
    text = str(err.value)
    assert (
        "DEEPSPEED_ZERO_STAGE" in text
        and "DEEPSPEED_OFFLOAD_PARAM" in text
        and "none, cpu" in text
        and "USE_DEEPSPEED" in text
    )


def test_param_offload_needs_stage_3():
    with pytest.raises(ConfigError, match="offload_param"):
        DeepSpeedSettings(zero_stage=2, offload_param="cpu", offload_optimizer="none")


def test_train_config_collects_every_problem_and_round_trips(tmp_path):
    with pytest.raises(ConfigError) as err:
        TrainConfig(
            model="--x", task="nope", batch_size=0, lr=3, tracker="excel", name="a/b", dataset="/no/such.csv"
        )
    assert len(err.value.problems) >= 7
    config = TrainConfig(task="classification", zero_stage=2, offload_optimizer="cpu", lora=True)
    config.write(tmp_path / "run.json")
    assert TrainConfig.load(tmp_path / "run.json") == config
    (tmp_path / "bad.json").write_text('{"unknown_field": 1}')
    with pytest.raises(ConfigError, match="unknown field"):
        TrainConfig.load(tmp_path / "bad.json")


def test_a_tracker_that_is_not_installed_is_a_clear_error():
    import importlib.util

    if importlib.util.find_spec("mlflow") is not None:
        pytest.skip("mlflow is installed here")
    with pytest.raises(ConfigError, match="mlflow is not installed"):
        TrainConfig(tracker="mlflow")


def test_a_runs_auto_mode_defers_to_use_deepspeed_and_explicit_choices_win(monkeypatch):
    """The panel and the CLI send deepspeed=auto unless the user picks: a deployment's USE_DEEPSPEED
    (render.yaml, Dockerfile) must then decide, and an explicit on/off must still override it."""
    monkeypatch.setenv("USE_DEEPSPEED", "true")
    assert TrainConfig().deepspeed_settings().deepspeed_enabled(has_gpu=False)
    assert not TrainConfig(deepspeed="off").deepspeed_settings().deepspeed_enabled(has_gpu=True)
    monkeypatch.setenv("USE_DEEPSPEED", "false")
    assert not TrainConfig().deepspeed_settings().deepspeed_enabled(has_gpu=True)
    monkeypatch.delenv("USE_DEEPSPEED")
    assert TrainConfig().deepspeed_settings().deepspeed_enabled(has_gpu=True)
    assert not TrainConfig().deepspeed_settings().deepspeed_enabled(has_gpu=False)


def test_arch_suffixes_that_deepspeed_cannot_parse_are_dropped():
    # "9.0a" made every FusedAdam build fail on an H200 image (int('0a') in DeepSpeed's builder)
    assert device_manager.deepspeed_arch_list("9.0a") == "9.0"
    assert device_manager.deepspeed_arch_list("8.0;9.0a;10.0f+PTX") == "8.0;9.0;10.0+PTX"
    assert device_manager.deepspeed_arch_list("7.5 8.6+PTX") == "7.5 8.6+PTX"
    env = {"TORCH_CUDA_ARCH_LIST": "9.0a"}
    assert device_manager.ensure_deepspeed_arch_list(env) == "9.0"
    assert env == {"TORCH_CUDA_ARCH_LIST": "9.0"}
    untouched = {"TORCH_CUDA_ARCH_LIST": "9.0+PTX"}
    assert device_manager.ensure_deepspeed_arch_list(untouched) is None
    assert untouched == {"TORCH_CUDA_ARCH_LIST": "9.0+PTX"}
    assert device_manager.ensure_deepspeed_arch_list({}) is None


def test_the_rewritten_list_is_one_deepspeeds_builder_accepts():
    from deepspeed.ops.op_builder.builder import CUDAOpBuilder

    class Probe(CUDAOpBuilder):  # only compute_capability_args is exercised; no build happens
        NAME = "probe"

        def __init__(self):
            super().__init__(name=self.NAME)

        def absolute_name(self):
            return "probe"

        def sources(self):
            return []

    probe = Probe()
    probe.jit_mode = True
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_CUDA_ARCH_LIST", "9.0a")
        with pytest.raises(ValueError, match="0a"):
            probe.compute_capability_args()
        mp.setenv("TORCH_CUDA_ARCH_LIST", device_manager.deepspeed_arch_list("9.0a"))
        probe.compute_capability_args()  # JIT mode: leaves the list torch's extension build reads
        assert os.environ["TORCH_CUDA_ARCH_LIST"] == "9.0+PTX"


def test_a_build_lock_a_killed_process_left_is_cleared_and_a_live_build_is_not(tmp_path):
    import time

    dead = tmp_path / "py311_cpu" / "deepspeed_shm_comm"
    live = tmp_path / "py311_cpu" / "cpu_adam"
    for folder in (dead, live):
        folder.mkdir(parents=True)
        (folder / "build.ninja").write_text("")
        (folder / "lock").write_text("")
    old = time.time() - device_manager.STALE_BUILD_LOCK_S - 60
    for entry in (dead / "build.ninja", dead / "lock", live / "lock"):
        os.utime(entry, (old, old))
    # cpu_adam's lock is old too, but its build wrote build.ninja just now: still in use
    assert device_manager.stale_build_locks(tmp_path, time.time()) == [dead / "lock"]
    assert device_manager.clear_stale_build_locks(tmp_path) == [dead / "lock"]
    assert not (dead / "lock").exists() and (live / "lock").exists()


def test_torchs_own_loader_proceeds_once_the_stale_lock_is_cleared(tmp_path):
    """The waiting side is torch's FileBaton, which polls until the lock file is gone."""
    import threading
    import time

    from torch.utils.file_baton import FileBaton

    lock = tmp_path / "op" / "lock"
    lock.parent.mkdir()
    lock.write_text("")  # left by a killed loader
    old = time.time() - device_manager.STALE_BUILD_LOCK_S - 1
    os.utime(lock, (old, old))
    waiter = threading.Thread(target=FileBaton(str(lock), wait_seconds=0.05).wait, daemon=True)
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive()  # waiting on the dead process's lock
    device_manager.clear_stale_build_locks(tmp_path)
    waiter.join(timeout=5)
    assert not waiter.is_alive()

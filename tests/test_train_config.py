"""One validated TrainConfig from the CLI, the run manager and the seed guide's keyword form alike:
the trainer reads its choices from it, and the seed's names map to its fields in one place."""

import pytest

from nexa_core.enums import DeepSpeedMode, Offload
from nexa_core.errors import ConfigError
from nexa_core.train_config import TrainConfig

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def test_the_seed_guides_keywords_become_config_fields():
    config = TrainConfig.from_seed_kwargs(
        MINILM, zero_stage=3, offload_optimizer=True, offload_params=True, gradient_checkpointing=True,
        use_lora=True, learning_rate=1e-4, use_deepspeed=True, gradient_accumulation_steps=4, num_labels=7,
    )  # fmt: skip
    assert (config.zero_stage, config.offload_optimizer, config.offload_param) == (
        3,
        Offload.CPU,
        Offload.CPU,
    )
    assert (config.lora, config.lr, config.deepspeed, config.gradient_accumulation) == (
        True,
        1e-4,
        DeepSpeedMode.ON,
        4,
    )
    assert config.gradient_checkpointing and config.num_labels == 7
    auto = TrainConfig.from_seed_kwargs(MINILM, use_deepspeed=None, offload_params=False)
    assert auto.deepspeed is DeepSpeedMode.AUTO and auto.offload_param is Offload.NONE


def test_an_unknown_seed_keyword_is_refused_with_the_allowed_fields():
    with pytest.raises(ConfigError, match=r"unknown field\(s\) offload_everything; allowed: .*zero_stage"):
        TrainConfig.from_seed_kwargs(MINILM, offload_everything=True)


SEED_FORM = """
from nexa_core.enums import Offload
from nexa_core.trainer import DeepSpeedTrainer

trainer = DeepSpeedTrainer(model_name="sentence-transformers/all-MiniLM-L6-v2", zero_stage=3,
                           offload_optimizer=True, offload_params=True, gradient_checkpointing=True,
                           use_deepspeed=True)
assert trainer.config.offload_param is Offload.CPU and trainer.settings.layout()[0] == 3
assert trainer.sharded_init()  # ZeRO-3: created partitioned
assert all(hasattr(p, "ds_tensor") for p in trainer.model.parameters())
try:
    DeepSpeedTrainer("sentence-transformers/all-MiniLM-L6-v2", config=trainer.config)
except TypeError as exc:
    assert "not both" in str(exc)
else:
    raise AssertionError("config= and seed keywords together were accepted")
print("ok")
"""


@pytest.mark.slow
def test_the_seed_guides_constructor_builds_the_configured_trainer(tmp_path):
    """In its own process, as every trainer test: DeepSpeed and Accelerate keep process-wide state
    (the rank variables, AcceleratorState) that would leak into the tests after it."""
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", SEED_FORM], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, NEXA_HOME=str(tmp_path)))  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]

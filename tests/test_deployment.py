"""deployment/Dockerfile and deployment/render.yaml stay true to the project: the image installs the
README's requirements with the same torch pin, copies files that exist, runs as a non-root user and
binds as docs/SECURITY.md requires; the Blueprint builds that Dockerfile and sets exactly the seed's
DeepSpeed variables, the ones nexa_core reads. (No Docker engine in CI: the image is not built here.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from nexa_core import security
from nexa_core.device_manager import DeepSpeedSettings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deployment" / "Dockerfile"
RENDER = ROOT / "deployment" / "render.yaml"


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        logical.append(current.strip())
        current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for name, args in _instructions(DOCKERFILE):
        if name == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(args))
    return env


def _render_service() -> dict:
    blueprint = yaml.safe_load(RENDER.read_text())
    (service,) = blueprint["services"]
    return service


def _render_env() -> dict[str, dict]:
    return {item["key"]: item for item in _render_service()["envVars"]}


def _torch_pin(text: str) -> str:
    match = re.search(r"torch\s*==\s*[\w.*+]+", text)
    assert match, "no torch pin found"
    return re.sub(r"\s", "", match.group(0))


def _variables_deepspeed_reads() -> set[str]:
    """Every environment variable DeepSpeedSettings.from_env looks up, recorded as it asks."""

    class Recording(dict):
        def __init__(self) -> None:
            super().__init__()
            self.asked: set[str] = set()

        def get(self, key, default=None):
            self.asked.add(key)
            return super().get(key, default)

        def __contains__(self, key):
            self.asked.add(key)
            return super().__contains__(key)

    env = Recording()
    DeepSpeedSettings.from_env(env)
    return set(env.asked)


# ------------------------------------------------------------------ Dockerfile
def test_dockerfile_installs_the_readme_requirements_with_the_same_torch_pin():
    steps = _instructions(DOCKERFILE)
    assert steps[0] == ("FROM", "python:3.11-slim")
    installs = [args for name, args in steps if name == "RUN" and "pip install" in args]
    assert any(re.search(r"pip install\b[^&]*-r requirements\.txt", args) for args in installs), installs
    # The README's set-up installs requirements-dev.txt, which starts with `-r requirements.txt`.
    assert (ROOT / "requirements-dev.txt").read_text().splitlines()[0] == "-r requirements.txt"
    torch_installs = [args for args in installs if "torch==" in args]
    assert torch_installs, "the Dockerfile should install torch explicitly from the CPU index"
    assert _torch_pin(torch_installs[0]) == _torch_pin((ROOT / "requirements.txt").read_text())
    for args in installs:
        if "torch" in args or "requirements.txt" in args:
            # Without the CPU index pip takes the multi-GB CUDA build from PyPI.
            assert "https://download.pytorch.org/whl/cpu" in args, args


def test_everything_the_dockerfile_copies_exists():
    copies = [shlex.split(args) for name, args in _instructions(DOCKERFILE) if name == "COPY"]
    assert copies
    for parts in copies:
        sources = [p for p in parts[:-1] if not p.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file in the build context"
    copied = {source.rstrip("/") for parts in copies for source in parts[:-1]}
    # What the panel and the `nexa` entry point need at run time.
    for needed in (
        "requirements.txt",
        "pyproject.toml",
        "app.py",
        "nexa_core",
        "pages",
        "nexa_ui",
        "deployment",
        ".streamlit",
    ):
        assert needed in copied, f"the image lacks {needed}"


def test_the_container_runs_as_a_non_root_user_and_serves_on_8501():
    steps = _instructions(DOCKERFILE)
    users = [args.strip() for name, args in steps if name == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    assert ("EXPOSE", "8501") in steps
    cmd = [args for name, args in steps if name == "CMD"][-1]
    assert cmd in ('["nexa", "serve"]', '["bash", "scripts/app.sh"]'), cmd
    env = _dockerfile_env()
    assert env["NEXA_ADDRESS"] == "0.0.0.0" and env["NEXA_PORT"] == "8501"
    assert env["HF_HUB_OFFLINE"] == "1"


def test_the_container_binds_only_with_a_sign_in_as_security_requires(tmp_path):
    """The image's and the Blueprint's settings as `nexa serve` reads them: refused without a token,
    accepted with one (docs/SECURITY.md)."""
    env = {**_dockerfile_env(), **{k: v["value"] for k, v in _render_env().items() if "value" in v}}
    settings = security.serve_settings(ROOT, env, user_home=tmp_path)
    assert settings.address == "0.0.0.0" and settings.port == 8501
    assert security.exposure_problems(settings), "0.0.0.0 without a sign-in must be refused"
    signed = security.serve_settings(
        ROOT, {**env, security.TOKEN_ENV: "correct-horse-battery-staple-42"}, user_home=tmp_path
    )
    assert security.exposure_problems(signed) == []


# ------------------------------------------------------------------ render.yaml
def test_render_blueprint_builds_the_dockerfile_with_a_health_check_and_a_disk():
    service = _render_service()
    assert service["type"] == "web"
    assert service["runtime"] == "docker"
    context = ROOT / service.get("dockerContext", ".")
    assert (context / service["dockerfilePath"]).resolve() == DOCKERFILE
    assert service["healthCheckPath"] == "/_stcore/health"
    env = _render_env()
    home = env["NEXA_HOME"]["value"]
    assert Path(home).is_relative_to(service["disk"]["mountPath"]), "runs must live on the persistent disk"
    assert service["disk"]["sizeGB"] >= 1
    assert env["NEXA_PORT"]["value"] == env["PORT"]["value"] == "8501"


def test_the_access_token_is_a_secret_never_a_value_in_the_file():
    token = _render_env()[security.TOKEN_ENV]
    assert token.get("sync") is False and "value" not in token


def test_render_sets_exactly_the_deepspeed_variables_nexa_core_reads():
    read = _variables_deepspeed_reads()
    # Accelerate's own pass-through variables, set by `accelerate launch`, not by a deployment.
    seed = {name for name in read if not name.startswith("ACCELERATE_")}
    assert "USE_DEEPSPEED" in seed and "DEEPSPEED_ZERO_STAGE" in seed  # the recorder works
    env = _render_env()
    deepspeed_like = {
        k for k in env if k.startswith(("USE_DEEPSPEED", "DEEPSPEED_", "ENABLE_MIXED", "GRADIENT_ACCUM"))
    }
    assert deepspeed_like == seed, f"missing: {seed - deepspeed_like}, unknown: {deepspeed_like - seed}"


def test_render_deepspeed_values_are_valid_settings(monkeypatch):
    """The Blueprint's values build a DeepSpeedSettings without a ConfigError (the config file path is
    relative to the project folder, the container's working directory)."""
    monkeypatch.chdir(ROOT)
    values = {k: v["value"] for k, v in _render_env().items() if "value" in v}
    settings = DeepSpeedSettings.from_env(values)
    assert settings.zero_stage == int(values["DEEPSPEED_ZERO_STAGE"])
    assert settings.gradient_accumulation_steps == int(values["GRADIENT_ACCUMULATION_STEPS"])
    assert settings.offload_optimizer == values["DEEPSPEED_OFFLOAD_OPTIMIZER"]
    assert settings.offload_param == values["DEEPSPEED_OFFLOAD_PARAM"]

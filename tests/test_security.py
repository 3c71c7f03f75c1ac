"""Binding and sign-in defaults: the pure exposure check, `nexa serve` refusing unsafe exposure,
and a real server started with defaults listening on loopback only."""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
import tomllib

from nexa_core import cli, datasets, security
from nexa_core.errors import ConfigError
from nexa_core.security import ServeSettings, exposure_problems
from tests.run_helpers import end_process, tiny_bert

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "correct-horse-battery-staple-42"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEXA_", "STREAMLIT_"))}
    return {**env, "NEXA_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ the pure check
@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1", "localhost", "unix:///tmp/nexa.sock"])
def test_loopback_needs_nothing(address):
    assert exposure_problems(ServeSettings(address, xsrf_protection=False, cors_protection=False)) == []


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "192.0.2.7", "my-host.example", None, ""])
def test_beyond_loopback_without_auth_is_refused_with_the_fix(address):
    (problem,) = exposure_problems(ServeSettings(address))
    assert problem.startswith("address (NEXA_ADDRESS)")
    assert "NEXA_ACCESS_TOKEN" in problem and "[auth]" in problem and "127.0.0.1" in problem


def test_a_long_token_or_oidc_allows_exposure_a_short_token_does_not():
    assert exposure_problems(ServeSettings("0.0.0.0", token=TOKEN)) == []
    assert exposure_problems(ServeSettings("0.0.0.0", oidc=True)) == []
    (problem,) = exposure_problems(ServeSettings("0.0.0.0", token="secret"))
    assert problem.startswith("access token (NEXA_ACCESS_TOKEN): 6 characters is too short")
    assert "secret" not in repr(ServeSettings("0.0.0.0", token="secret"))  # never printed


@pytest.mark.parametrize(
    "token",
    [" " * 16, "a" * 16, "t" * 40, "abababababababab", "passwordpassword", "1234567812345678", "\t" * 20],
    ids=["16-spaces", "16-a", "40-t", "abab", "word-twice", "digits-only", "tabs"],
)
def test_long_but_predictable_tokens_are_refused_with_how_to_make_one(token):
    (problem,) = exposure_problems(ServeSettings("0.0.0.0", token=token))
    assert problem.startswith("access token (NEXA_ACCESS_TOKEN): too predictable")
    assert "secrets.token_urlsafe(32)" in problem and "openssl rand -base64 32" in problem
    assert token not in problem  # never echoed


def test_generated_tokens_are_accepted():
    import secrets

    tokens = [secrets.token_urlsafe(n) for n in (12, 16, 32) for _ in range(300)]
    tokens += [secrets.token_hex(16) for _ in range(300)] + [TOKEN]
    assert [t for t in tokens if exposure_problems(ServeSettings("0.0.0.0", token=t))] == []


def test_xsrf_or_cors_off_beyond_loopback_is_refused_even_with_auth():
    problems = exposure_problems(
        ServeSettings("0.0.0.0", token=TOKEN, xsrf_protection=False, cors_protection=False)
    )
    assert [p.split(":")[0] for p in problems] == ["server.enableXsrfProtection", "server.enableCORS"]
    assert all("bind 127.0.0.1" in p for p in problems)


@pytest.mark.parametrize("address", ["--server.headless=false", "0.0.0.0;touch x", "a b", "$(id)", "\n"])
def test_hostile_addresses_never_reach_the_command_line(address):
    (problem,) = security.address_problems(address, 8501)
    assert problem.startswith("address (NEXA_ADDRESS / --address)")


@pytest.mark.parametrize("port", [0, 70000, "80; id", True])
def test_bad_ports(port):
    (problem,) = security.address_problems("127.0.0.1", port)
    assert problem.startswith("port (NEXA_PORT / --port)")


def test_token_comparison():
    assert security.token_matches(TOKEN, TOKEN)
    assert not security.token_matches(TOKEN[:-1], TOKEN)
    assert not security.token_matches("", "")  # no token configured never signs anyone in
    assert security.token_fingerprint(TOKEN) != security.token_fingerprint(TOKEN + "x")


def test_shipped_streamlit_config_binds_loopback_with_protections_on():
    server = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]
    assert server["address"] == "127.0.0.1"
    assert server["enableXsrfProtection"] is True and server["enableCORS"] is True
    # Streamlit's endpoints enforce NEXA's upload limit, not their 200 MB default
    assert server["maxUploadSize"] == server["maxMessageSize"] == security.UPLOAD_LIMIT_MB == 50
    assert security.UPLOAD_LIMIT_MB * 1024 * 1024 == datasets.LIMIT_BYTES


@pytest.mark.parametrize("option", ["maxUploadSize", "maxMessageSize"])
def test_request_sizes_above_nexas_limit_are_refused_beyond_loopback_only(tmp_path, option):
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "config.toml").write_text(f"[server]\n{option} = 200\n")
    raised = security.serve_settings(
        tmp_path, {"NEXA_ADDRESS": "0.0.0.0", "NEXA_ACCESS_TOKEN": TOKEN}, tmp_path
    )
    (problem,) = exposure_problems(raised)
    assert problem.startswith(f"server.{option}: 200 MB is above NEXA's 50 MB limit")
    assert "bind 127.0.0.1" in problem
    assert exposure_problems(replace(raised, address="127.0.0.1")) == []  # a local choice on loopback
    variable = security.SIZE_OPTIONS[f"server.{option}"][1]
    env = {"NEXA_ADDRESS": "0.0.0.0", "NEXA_ACCESS_TOKEN": TOKEN, variable: "40"}
    assert exposure_problems(security.serve_settings(tmp_path, env, tmp_path)) == []  # the variable wins
    with pytest.raises(ConfigError, match=rf"server.{option} \({variable}\): must be a whole number"):
        security.serve_settings(tmp_path, {variable: "lots"}, tmp_path)


def test_beyond_loopback_the_app_needs_nexas_guard():
    """A plain `streamlit run app.py --server.address 0.0.0.0` (no guard in front of the upload and
    metrics endpoints) is refused even with a token; `nexa serve` runs the guarded server."""
    (problem,) = exposure_problems(ServeSettings("0.0.0.0", token=TOKEN, guarded=False))
    assert problem.startswith("server: started without NEXA's guard") and "nexa serve" in problem
    assert exposure_problems(ServeSettings("127.0.0.1", guarded=False)) == []


def test_serve_argv_runs_the_guarded_server_with_nexas_limits(tmp_path):
    settings = security.serve_settings(ROOT, {"NEXA_PORT": "9001"}, tmp_path)
    argv = security.serve_argv(settings, ROOT, "python")
    assert argv[:5] == ["python", "-m", "streamlit", "run", str(ROOT / "nexa_ui" / "server.py")]
    assert argv[argv.index("--server.maxUploadSize") + 1] == "50"
    assert argv[argv.index("--server.maxMessageSize") + 1] == "50"
    assert argv[argv.index("--server.port") + 1] == "9001"
    unix = security.serve_settings(ROOT, {"NEXA_ADDRESS": "unix:///tmp/nexa.sock"}, tmp_path)
    assert security.serve_argv(unix, ROOT, "python")[4] == str(ROOT / "app.py")  # st.App binds no socket


def test_serve_settings_read_streamlit_files_then_environment(tmp_path):
    project, home = tmp_path / "project", tmp_path / "user"
    (project / ".streamlit").mkdir(parents=True)
    (home / ".streamlit").mkdir(parents=True)
    (home / ".streamlit" / "config.toml").write_text("[server]\nenableCORS = false\n")
    (project / ".streamlit" / "config.toml").write_text("[server]\nenableXsrfProtection = false\n")
    s = security.serve_settings(project, {"NEXA_ADDRESS": "0.0.0.0", "NEXA_PORT": "9000"}, home)
    assert (s.address, s.port, s.xsrf_protection, s.cors_protection, s.oidc) == (
        "0.0.0.0",
        9000,
        False,
        False,
        False,
    )
    env = {"STREAMLIT_SERVER_ENABLE_XSRF_PROTECTION": "true", "STREAMLIT_SERVER_ENABLE_CORS": "TRUE"}
    (project / ".streamlit" / "secrets.toml").write_text(
        '[auth]\nredirect_uri = "https://x/oauth2callback"\n'
    )
    s = security.serve_settings(project, env, home)
    assert (s.address, s.port, s.xsrf_protection, s.cors_protection, s.oidc) == (
        "127.0.0.1",
        8501,
        True,
        True,
        True,
    )
    (project / ".streamlit" / "config.toml").write_text("[server\n")
    with pytest.raises(ConfigError, match="config.toml: not valid TOML"):
        security.serve_settings(project, {}, home)


# ------------------------------------------------------------------ `nexa serve`
def test_serve_refuses_xsrf_off_and_bad_port_without_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NEXA_ADDRESS", "0.0.0.0")
    monkeypatch.setenv("NEXA_ACCESS_TOKEN", TOKEN)
    monkeypatch.setenv("STREAMLIT_SERVER_ENABLE_XSRF_PROTECTION", "false")
    monkeypatch.setattr(os, "execv", pytest.fail)  # a regression must not replace the test process
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "nexa serve: error: refusing to start the panel" in err
    assert "nexa serve: error: server.enableXsrfProtection" in err and "Traceback" not in err
    assert cli.main(["serve", "--port", "http"]) == 2
    assert "port (NEXA_PORT / --port)" in capsys.readouterr().err
    monkeypatch.delenv("STREAMLIT_SERVER_ENABLE_XSRF_PROTECTION")
    monkeypatch.setenv("STREAMLIT_SERVER_MAX_UPLOAD_SIZE", "500")
    assert cli.main(["serve"]) == 2
    assert (
        "nexa serve: error: server.maxUploadSize: 500 MB is above NEXA's 50 MB limit"
        in capsys.readouterr().err
    )


def test_serve_beyond_loopback_without_auth_exits_2_and_never_listens(tmp_path):
    port = _free_port()
    done = subprocess.run(
        [sys.executable, "-m", "nexa_core", "serve"],
        env=_env(tmp_path, NEXA_ADDRESS="0.0.0.0", NEXA_PORT=str(port)),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "refusing to start the panel" in done.stderr and "NEXA_ACCESS_TOKEN" in done.stderr
    assert "bind 127.0.0.1" in done.stderr and "Traceback" not in done.stderr
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def _non_loopback_ipv4() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return None


def test_serve_with_defaults_listens_on_loopback_only(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexa_core", "serve"],
        env=_env(tmp_path, NEXA_PORT=str(port)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
    )  # fmt: skip
    try:
        server = psutil.Process(proc.pid)  # exec keeps the pid: this is Streamlit itself
        listening: list = []
        deadline = time.monotonic() + 120
        while not listening and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            listening = [c.laddr for c in server.net_connections("inet") if c.status == psutil.CONN_LISTEN]
        assert listening, "the server never started listening"
        assert "streamlit" in server.cmdline() and "127.0.0.1" in server.cmdline()
        assert {a.ip for a in listening} == {"127.0.0.1"} and {a.port for a in listening} == {port}
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # it does serve on loopback
        outside = _non_loopback_ipv4()
        if outside:  # the machine's own network address: nothing answers there
            with pytest.raises(OSError), socket.create_connection((outside, port), timeout=2):
                pass
    finally:
        end_process(proc)


# ------------------------------------------------------------------ no pickle from user input
UNPICKLERS = {"pickle", "_pickle", "cPickle", "dill", "joblib", "shelve", "marshal", "cloudpickle"}
# Loaders that may unpickle: each must run inside `with weights_only_torch_load():`.
GUARDED = {"load_state", "load_checkpoint", "get_fp32_state_dict_from_zero_checkpoint"}


def _calls_outside_guard(tree: ast.AST) -> list[int]:
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    bad = []
    for node in ast.walk(tree):
        name = getattr(getattr(node, "func", None), "attr", None) or getattr(
            getattr(node, "func", None), "id", None
        )
        if isinstance(node, ast.Call) and name in GUARDED:
            up, guarded = node, False
            while up in parents and not guarded:
                up = parents[up]
                guarded = isinstance(up, ast.With) and "weights_only_torch_load" in ast.unparse(up.items[0])
            bad += [] if guarded else [node.lineno]
    return bad


def test_no_unsafe_deserialisation_in_nexa_core():
    """No pickle-family module; torch.load only with weights_only=True; safetensors on save; every
    DeepSpeed/Accelerate checkpoint load inside the weights-only guard."""
    sources = [
        *(ROOT / "nexa_core").rglob("*.py"),
        *(ROOT / "pages").glob("*.py"),
        *(ROOT / "nexa_ui").glob("*.py"),
        ROOT / "app.py",
    ]
    for source in sources:
        tree = ast.parse(source.read_text(), str(source))
        for node in ast.walk(tree):
            where = f"{source.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                modules = (
                    [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                )
                assert not {m.split(".")[0] for m in modules} & UNPICKLERS, where
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                assert "weights_only" in {k.arg for k in node.keywords}, (
                    f"{where}: torch.load without weights_only"
                )
            if isinstance(node, ast.keyword) and node.arg in ("weights_only", "safe_serialization"):
                assert isinstance(node.value, ast.Constant) and node.value.value is True, where
        assert not _calls_outside_guard(tree), f"{source}: unguarded checkpoint load"


class _Payload:
    """What a crafted checkpoint carries: unpickling it calls Path.touch(marker)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_deepspeed_checkpoint_loading_refuses_pickled_code(tmp_path, monkeypatch):
    import contextlib

    import torch

    from nexa_core import export, safe_load

    marker = tmp_path / "PWNED"
    tag = tmp_path / "step-1" / "pytorch_model"
    tag.mkdir(parents=True)
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        torch.save({"payload": _Payload(marker)}, tag / name)
    with pytest.raises(Exception, match="(?i)weights.only|unsupported global"):
        export._state_dict(tmp_path / "step-1")  # DeepSpeed's zero_to_fp32, as `nexa export` runs it
    assert not marker.exists()
    # The same load without the guard runs the payload: the guard is what stops it.
    monkeypatch.setattr(safe_load, "weights_only_torch_load", contextlib.nullcontext)
    with contextlib.suppress(Exception):
        export._state_dict(tmp_path / "step-1")
    assert marker.exists()


def test_checkpoints_and_exports_hold_safetensors_only(nexa_home, tmp_path):
    from nexa_core.export import export_checkpoint

    model = tiny_bert(tmp_path / "tiny-bert")
    done = subprocess.run(
        [sys.executable, "-m", "nexa_core", "train", "--model", str(model), "--random-init", "--task", "classification",
         "--max-steps", "1", "--batch-size", "2", "--seq-len", "16", "--deepspeed", "off", "--no-eval", "--json"],
        env={**os.environ, "NEXA_HOME": str(nexa_home)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    ckpt = Path(result["checkpoint_dir"])
    assert (ckpt / "model.safetensors").exists() and not list(ckpt.glob("pytorch_model*"))
    # Optimizer, scheduler and RNG states are torch pickles: Accelerate reads them weights-only, so
    # they must be plain data (tensors, numbers, numpy arrays) that such a load accepts.
    from accelerate.utils.other import load

    states = [p for p in ckpt.iterdir() if p.suffix in (".bin", ".pkl", ".pt")]
    assert states and all(load(p, weights_only=True) is not None for p in states)
    out = export_checkpoint(result["run_id"], nexa_home / "exports" / "tiny")
    weights = sorted(
        p.name for p in out.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pkl", ".pth")
    )
    assert weights == ["model.safetensors"]


def test_sign_in_throttle_backs_off_per_client_and_forgets_on_success():
    throttle = security.SignInThrottle(free=2, base_s=1.0, max_s=8.0, max_clients=3)
    for t in (0.0, 0.1):
        assert throttle.wait_s("a", t) == 0
        throttle.failed("a", t)
    assert throttle.wait_s("a", 0.1) == pytest.approx(1.0)  # 1 s after the third strike's window opens
    assert throttle.wait_s("b", 0.1) == 0  # another address is not affected
    throttle.failed("a", 1.2)
    assert throttle.wait_s("a", 1.2) == pytest.approx(2.0)  # doubles
    for t in range(10):
        throttle.failed("a", 2.0 + t)
    assert throttle.wait_s("a", 11.0) == pytest.approx(8.0)  # capped at max_s
    throttle.succeeded("a")
    assert throttle.wait_s("a", 11.0) == 0
    for client in "cdef":  # memory stays bounded: the oldest records go first
        throttle.failed(client, 20.0)
    assert len(throttle._failures) == 3 and "c" not in throttle._failures


def test_sign_in_throttle_also_brakes_guessing_spread_over_many_addresses():
    """Per address is not enough: an attacker with many addresses (or behind a shared proxy, many
    clients) gets ``global_limit`` wrong tokens per ``global_window_s`` in all, then every try waits."""
    throttle = security.SignInThrottle(free=5, global_limit=10, global_window_s=60.0)
    for n in range(10):  # ten addresses, one wrong token each: none reaches its own limit
        assert throttle.wait_s(f"10.0.0.{n}", float(n)) == 0
        throttle.failed(f"10.0.0.{n}", float(n))
    assert throttle.wait_s("10.0.0.99", 9.0) == pytest.approx(51.0)  # until the oldest leaves the window
    assert throttle.wait_s("10.0.0.99", 60.5) == 0  # one failure has aged out
    throttle.succeeded("10.0.0.1")  # a right token clears that address only, not the server-wide count
    assert throttle.wait_s("10.0.0.99", 59.0) > 0
    assert len(throttle._recent) <= 10  # memory stays bounded

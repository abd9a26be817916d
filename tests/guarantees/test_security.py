"""Security: secrets never reach a backend, hostile names never write outside the run folder, and a
process killed with SIGKILL leaves files a reader can trust.

Plugin loading controls (``LOGBUS_DISABLE_PLUGIN_AUTOLOAD``, the ``LOGBUS_LOAD_PLUGINS`` allowlist)
are tested with real installed distributions in ``test_plugins.py::test_load_controls``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from composer import Callback, Trainer
from composer.models import ComposerClassifier
from hypothesis import given, settings
from hypothesis import strategies as st
from wandb_reader import read_only_run

import logbus
from logbus.composer import LogBusLogger, WandBLogger
from logbus.demo import DigitsCNN, digits_loaders
from logbus.records import REDACTED, Hyperparameters, Image, Mask, RunStarted, Table, redact_secrets

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:composer.*")
FAKE_API_KEY = "f4ke0123456789abcdef0123456789abcdef7777"


class Recorder:
    supports = frozenset({Table})

    def __init__(self):
        self.records: list = []

    def log(self, record):
        self.records.append(record)

    def close(self, finish):
        pass


def leaves(value):
    """Every non-container value inside ``value`` (mapping values, list items), recursively."""
    if isinstance(value, dict):
        for item in value.values():
            yield from leaves(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from leaves(item)
    else:
        yield value


def files_under(*roots: Path) -> list[Path]:
    return [path for root in roots for path in root.rglob("*") if path.is_file()]


# -- secrets ---------------------------------------------------------------------------------------
def test_everything_under_a_secret_looking_key_is_redacted_before_any_backend(wandb_offline, logbus_dir, tmp_path):
    recorder = Recorder()
    config = {"credentials": {"user": "u", "pass": "pw"}, "db_password": 1234, "lr": 0.1,
              "service": {"api_key": ["k-ea1f90", {"nested": "k-ea1f91"}], "host": "db.local"}}
    later = {"private_key": {"pem": "k-ea1f92", "bits": 4096}, "hf_token": 98765, "batch_size": 8, "note": None}
    with logbus.start_run("secrets", backends=[recorder, "local", ("wandb", {"project": "security"}),
                                               ("tensorboard", {"log_dir": str(tmp_path / "tb")})],
                          config=config) as run:
        run.log_hyperparameters(later)
        run.log({"loss": 1.0}, step=0)

    [started] = [r for r in recorder.records if isinstance(r, RunStarted)]
    [hparams] = [r for r in recorder.records if isinstance(r, Hyperparameters)]
    assert started.config == {"credentials": REDACTED, "db_password": REDACTED, "lr": 0.1,
                              "service": {"api_key": REDACTED, "host": "db.local"}}
    assert hparams.values == {"private_key": REDACTED, "hf_token": REDACTED, "batch_size": 8, "note": None}
    for value in [*leaves(started.config), *leaves(hparams.values)]:
        assert value not in (1234, 98765, 4096) and not (isinstance(value, str) and ("pw" in value or "k-ea1f" in value))
    local = json.loads((logbus_dir / "secrets" / "hparams.json").read_text())
    assert local["credentials"] == local["db_password"] == local["private_key"] == local["hf_token"] == REDACTED
    wandb_config = read_only_run(wandb_offline).config
    assert wandb_config["credentials"] == wandb_config["db_password"] == wandb_config["hf_token"] == REDACTED
    assert wandb_config["service"] == {"api_key": REDACTED, "host": "db.local"}
    written = files_under(wandb_offline, logbus_dir, tmp_path / "tb")
    assert any(path.name.startswith("events.out.tfevents") for path in written)
    for path in written:
        data = path.read_bytes()
        for secret in (b"k-ea1f90", b"k-ea1f91", b"k-ea1f92", b'"pw"'):
            assert secret not in data, (secret, path)


@dataclasses.dataclass
class OptimizerSettings:
    lr: float = 0.1
    client_secret: str = "k-ob0003"


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    layers: int = 4
    hf_token: str = "k-ob0002"
    optimizer: OptimizerSettings = dataclasses.field(default_factory=OptimizerSettings)


Endpoint = collections.namedtuple("Endpoint", "url password")


def session_hparams(folder: Path) -> dict:
    """The TensorBoard HParams dashboard's view of a run (as tests/plugins/test_tensorboard_backend.py reads it)."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import metadata as hparams_metadata
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = event_accumulator.EventAccumulator(str(folder))
    events.Reload()
    content = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    start = plugin_data_pb2.HParamsPluginData.FromString(content[hparams_metadata.SESSION_START_INFO_TAG])
    return {name: getattr(value, value.WhichOneof("kind")) for name, value in start.session_start_info.hparams.items()}


def test_secrets_inside_objects_are_redacted_by_key_on_every_backend(wandb_offline, logbus_dir, tmp_path):
    # The usual `config={"args": args}`: an argparse.Namespace holding a dataclass holding a dataclass,
    # a SimpleNamespace in a list, a named tuple. Each reached every backend as its repr, secrets in it.
    args = argparse.Namespace(api_key="k-ob0001", epochs=3, model=ModelSettings(),
                              mirrors=[types.SimpleNamespace(host="m1", auth_token="k-ob0004")],
                              endpoint=Endpoint("https://x", "k-ob0005"))
    later = {"deploy": types.SimpleNamespace(region="eu", settings=OptimizerSettings(client_secret="k-ob0006"))}
    with logbus.start_run("objects", backends=["local", ("wandb", {"project": "security"}),
                                               ("tensorboard", {"log_dir": str(tmp_path / "tb")})],
                          config={"args": args}) as run:
        run.log_hyperparameters(later)
        run.log({"loss": 1.0}, step=0)
    args.epochs = 99  # stored as it was at the call

    expected_args = {"api_key": REDACTED, "epochs": 3,
                     "model": {"layers": 4, "hf_token": REDACTED, "optimizer": {"lr": 0.1, "client_secret": REDACTED}},
                     "mirrors": [{"host": "m1", "auth_token": REDACTED}], "endpoint": ["https://x", REDACTED]}
    local = json.loads((logbus_dir / "objects" / "hparams.json").read_text())
    assert local["args"] == expected_args
    assert local["deploy"] == {"region": "eu", "settings": {"lr": 0.1, "client_secret": REDACTED}}
    wandb_config = read_only_run(wandb_offline).config
    assert wandb_config["args"] == expected_args
    assert wandb_config["deploy"] == {"region": "eu", "settings": {"lr": 0.1, "client_secret": REDACTED}}
    tensorboard = session_hparams(tmp_path / "tb" / "objects" / "objects")
    assert {name: tensorboard[name] for name in ("args/api_key", "args/epochs", "args/model/hf_token",
                                                 "args/model/optimizer/client_secret", "deploy/settings/client_secret",
                                                 "deploy/region")} == {
        "args/api_key": REDACTED, "args/epochs": 3, "args/model/hf_token": REDACTED,
        "args/model/optimizer/client_secret": REDACTED, "deploy/settings/client_secret": REDACTED,
        "deploy/region": "eu"}
    written = files_under(wandb_offline, logbus_dir, tmp_path / "tb")
    assert any(path.name.startswith("events.out.tfevents") for path in written)
    for path in written:
        data = path.read_bytes()
        assert b"k-ob000" not in data, path


def test_a_namespace_or_dataclass_as_the_whole_config_is_taken_as_wandb_init_takes_it(logbus_dir):
    args = argparse.Namespace(lr=0.1, api_key="k-ob0007", model=ModelSettings())
    with logbus.start_run("namespace", config=args) as run:
        run.log({"loss": 1.0}, step=0)
    with logbus.start_run("dataclass", config=ModelSettings()):
        pass
    assert json.loads((logbus_dir / "namespace" / "hparams.json").read_text()) == {
        "lr": 0.1, "api_key": REDACTED,
        "model": {"layers": 4, "hf_token": REDACTED, "optimizer": {"lr": 0.1, "client_secret": REDACTED}}}
    assert json.loads((logbus_dir / "dataclass" / "hparams.json").read_text()) == {
        "layers": 4, "hf_token": REDACTED, "optimizer": {"lr": 0.1, "client_secret": REDACTED}}
    with pytest.raises(TypeError, match=r"^config: expected a mapping, a dataclass or an object with attributes "
                                        r"\(argparse.Namespace\), got list$"):
        logbus.start_run("listed", config=[("lr", 0.1)])


class LogsSecrets(Callback):
    """A user callback that logs configuration holding the key, the way people do by accident."""

    def fit_start(self, state, logger):
        logger.log_hyperparameters({"wandb_api_key": FAKE_API_KEY, "env": {"WANDB_API_KEY": FAKE_API_KEY},
                                    "copied": FAKE_API_KEY, "endpoints": ["https://api.wandb.ai", FAKE_API_KEY]})


def test_the_wandb_api_key_is_never_written_after_a_composer_fit(wandb_offline, logbus_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_API_KEY)
    monkeypatch.chdir(tmp_path)
    key = os.environ["WANDB_API_KEY"]
    wandb_logger = WandBLogger(project="security", tags=["ok", key],
                               init_kwargs={"config": {"key": key, "nested": {"token": key}, "copy": key},
                                            "notes": key, "group": key, "job_type": key})
    train_loader, _ = digits_loaders(batch_size=16)
    torch.manual_seed(0)
    trainer = Trainer(model=ComposerClassifier(DigitsCNN(), num_classes=10), train_dataloader=train_loader,
                      max_duration="3ba", device="cpu", progress_bar=False, seed=0, run_name="keyed",
                      loggers=[wandb_logger, LogBusLogger(backends=["local"])], callbacks=[LogsSecrets()])
    trainer.fit()
    trainer.close()

    run = read_only_run(wandb_offline)
    assert run.metric("loss/train/total")  # the run is there and was read back
    assert run.config["key"] == run.config["copy"] == run.config["wandb_api_key"] == REDACTED
    assert run.config["nested"] == {"token": REDACTED} and run.config["endpoints"][1] == REDACTED
    assert run.run.get("notes") == REDACTED and run.run.get("tags") == ["ok", REDACTED]
    written = files_under(tmp_path)  # the W&B dir, its data and cache dirs, the local run folder, cwd
    assert any(path.suffix == ".wandb" for path in written) and any(path.name == "hparams.json" for path in written)
    for path in written:
        assert key.encode() not in path.read_bytes(), path


# Real-world key names, as they appear in configs, env dumps and HTTP headers, in every case style.
REDACTED_KEYS = [
    "wandbApiKey", "WANDB_API_KEY", "OPENAI_API_KEY", "api_key", "apiKey", "x-api-key", "apikey", "openai_key",
    "authToken", "auth_token", "access_token", "refresh_token", "hf_token", "HF_TOKEN", "GITHUB_TOKEN", "SLACK_BOT_TOKEN",
    "NPM_TOKEN", "sessionToken", "dbPassword", "db_password", "PGPASSWORD", "MYSQL_ROOT_PASSWORD", "passwd",
    "passphrase", "ssh_passphrase", "secretKey", "SECRET_KEY", "AWS_SECRET_ACCESS_KEY", "STRIPE_SECRET_KEY",
    "client_secret", "clientSecret", "jwtSecret", "aws.secret", "secrets", "private_key", "privateKey", "ssh-private-key",
    "signing_key", "encryption_key", "Authorization", "Proxy-Authorization", "credentials", "credential",
    "GOOGLE_APPLICATION_CREDENTIALS", "HTTPAuthToken", "key", "token", "api_keys",
]
KEPT_KEYS = [
    "sort_key", "primary_key", "foreign_key", "sortKey", "primaryKey", "partition_key", "hash_key", "cache_key",
    "public_key", "input_key", "target_key", "label_key", "image_key", "num_keys", "max_keys", "rng_key",
    "keyboard", "monkey", "hotkey", "key_size", "keyframe_interval", "max_tokens", "maxTokens", "num_tokens",
    "pad_token", "eos_token", "bos_token", "pad_token_id", "eos_token_id", "image_token", "token_limit", "tokenizer",
    "tokenizer_name", "secretary", "secret_name", "password_min_length", "auth", "author", "authorization_url",
    "api_url", "api_version", "lr", "batch_size", "PWD", "keys",
]


@pytest.mark.parametrize("key", REDACTED_KEYS)
def test_a_secret_named_in_any_case_style_is_redacted(key):
    assert len(REDACTED_KEYS) >= 30
    assert redact_secrets({key: "s3cr3t-value", "lr": 0.1}) == {key: REDACTED, "lr": 0.1}


@pytest.mark.parametrize("key", KEPT_KEYS)
def test_a_harmless_key_that_shares_a_word_with_secrets_is_kept(key):
    assert len(KEPT_KEYS) >= 30
    assert redact_secrets({key: "plain-value", "nested": {key: 3}}) == {key: "plain-value", "nested": {key: 3}}


SECRET_KEYS = st.sampled_from(["api_key", "hf_token", "db_password", "client_secret", "credentials", "private_key",
                               "OPENAI_API_KEY", "passwd", "aws.secret", "auth-token", "credential"])
PLAIN_KEYS = st.sampled_from(["lr", "layers", "name", "max_tokens", "num_keys", "keyboard", "token_limit", "monkey",
                              "optimizer", "secretary"])
MARKED = st.one_of(st.just("s3cr3t-marker"), st.just(987654321), st.just(["s3cr3t-marker"]),
                   st.just({"inner": "s3cr3t-marker"}), st.just(b"s3cr3t-marker"))
PLAIN_LEAVES = st.one_of(st.integers(0, 1000), st.floats(allow_nan=False), st.text(alphabet="abc", max_size=4), st.none())


@st.composite
def configs(draw, depth: int = 0):
    items = {}
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            items[draw(SECRET_KEYS)] = draw(MARKED)
        elif depth < 2 and draw(st.booleans()):
            items[draw(PLAIN_KEYS)] = draw(st.one_of(configs(depth + 1), st.lists(configs(depth + 1), max_size=2)))
        else:
            items[draw(PLAIN_KEYS)] = draw(PLAIN_LEAVES)
    return items


@settings(max_examples=200, deadline=None)
@given(configs())
def test_no_value_under_a_secret_looking_key_survives_redaction(config):
    redacted = json.dumps(Hyperparameters(config).values, default=repr)
    assert "s3cr3t-marker" not in redacted and "987654321" not in redacted
    assert json.dumps(redact_secrets(config), default=repr) == redacted


# -- hostile names ---------------------------------------------------------------------------------
TOKEN = f"esc4pe{uuid.uuid4().hex[:8]}"  # fresh per session: earlier runs' temp folders hold older ones
HOSTILE = [
    f"../../../../{TOKEN}-up", f"../../../../../../../../../../../../{TOKEN}-root", f"/tmp/{TOKEN}-absolute",
    f"a/../../{TOKEN}-inner", f"..\\..\\{TOKEN}-backslash", f"nul\x00{TOKEN}", f"ctrl\x1b[2J{TOKEN}\r\n",
    f"{'x' * 5000}{TOKEN}", f"{'deep/' * 300}{TOKEN}", f"~/{TOKEN}-home", f"$HOME/{TOKEN}-var", f".{TOKEN}-hidden",
    "..", ".", "/", "", f"{TOKEN}\u202e-bidi", f"{TOKEN}/ok/../../../..",
]


def listing(root: Path, *, skip: list[Path] = ()) -> set[str]:
    out = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(folder, d) not in skip]
        out.update(os.path.join(folder, name) for name in dirs + files)
    return out


def escaped(token: str, root: Path) -> list[str]:
    """Paths anywhere on this machine (but /proc, /sys) named with ``token``, outside ``root``."""
    found = subprocess.run(["find", "/", "-path", "/proc", "-prune", "-o", "-path", "/sys", "-prune", "-o",
                            "-name", f"*{token}*", "-print"], capture_output=True, text=True, check=False).stdout
    return [path for path in found.splitlines() if not Path(path).is_relative_to(root)]


def test_hostile_names_raise_naming_the_argument_or_stay_inside_the_run_folder(tmp_path, monkeypatch, wandb_offline):
    # A fresh root, deep inside a private tree: an escape of a few levels lands where only this test writes.
    root = tmp_path / "d1" / "d2" / "d3" / "d4" / "root"
    (root / "runs").mkdir(parents=True)
    monkeypatch.setenv("LOGBUS_DIR", str(root / "runs"))
    monkeypatch.chdir(root)
    outside_root = [tmp_path / "d1", wandb_offline]  # W&B writes to its own folder (WANDB_DIR), checked below
    around = listing(tmp_path, skip=outside_root)
    top = set(os.listdir("/"))
    pixels = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    weights = root / "weights.pt"
    weights.write_bytes(b"w")
    refused: dict[str, list[str]] = {}

    def attempt(what: str, call, *args, **kwargs) -> None:
        try:
            call(*args, **kwargs)
        except (TypeError, ValueError) as error:
            argument = str(error).split(":", 1)[0]
            assert argument in ("key", "name", "artifact name", "run_name", "image.caption") or argument.startswith(
                ("metrics[", "image.masks[")), (what, error)
            refused.setdefault(what, []).append(argument)

    for index, name in enumerate(HOSTILE):
        backends = ["local", ("tensorboard", {"log_dir": str(root / "tb")})]
        if index % 6 == 0:  # W&B for a third of them: each run costs it a second or two
            backends.append(("wandb", {"project": "hostile"}))
        try:
            run = logbus.start_run(name, backends=backends)
        except (TypeError, ValueError) as error:
            assert str(error).startswith("run_name:"), error
            refused.setdefault("run name", []).append("run_name")
            run = logbus.start_run(f"run-{index}", backends=backends)
        with run:
            attempt("metric name", run.log, {name or "empty": 1.0}, step=0)  # names no backend can store: refused
            run.log({"loss": 0.5}, step=0)
            attempt("table key", run.log_table, name, ["a"], [[1]], step=0)
            attempt("images key", run.log_images, name, pixels[None].astype(np.float32) / 255, step=0, channels_last=True)
            attempt("artifact name", run.log_artifact, str(weights), name)
            labels = {0: name or "empty", 1: "ok"}
            try:
                image = Image(pixels=pixels, caption=name, masks={name or "empty": Mask(np.eye(4, dtype=np.int64), labels)})
            except ValueError as error:  # a mask name with control characters: refused, naming it
                assert str(error).startswith("image.masks["), error
                image = Image(pixels=pixels, caption=name, masks={"empty": Mask(np.eye(4, dtype=np.int64), labels)})
            run.log_table("samples/hostile", ["name", "image"], [[name, image]], step=1)
            samples = run.samples("classification", num_samples=None, class_names=[name or "empty", "ok"])
            samples.add(torch.rand(2, 3, 4, 4), torch.tensor([0, 1]), torch.randn(2, 2))
            samples.log("eval", step=2)
        assert all(not backend["failures"] for backend in run.bus.stats()["backends"].values()), run.bus.stats()

    # Every hostile key and artifact name with a path in it was refused, naming the argument.
    assert len(refused["table key"]) == len(refused["images key"]) >= 8
    assert set(refused["table key"]) == set(refused["images key"]) == {"key"}
    assert len(refused["artifact name"]) >= 8 and set(refused["artifact name"]) == {"artifact name"}
    assert refused["run name"] == ["run_name"]  # only the empty one
    # Metric names with control characters (the NUL, the escape sequence, the line ends) are refused.
    assert len(refused["metric name"]) == 2 and all(argument.startswith("metrics[") for argument in refused["metric name"])
    # Nothing was written outside the fresh root.
    assert listing(tmp_path, skip=outside_root) == around
    assert {path for path in listing(tmp_path / "d1") if not Path(path).is_relative_to(root)} == {
        str(root.parents[i]) for i in range(3)}  # d2, d3, d4: nothing new beside the root
    assert set(os.listdir("/")) == top
    assert escaped(TOKEN, tmp_path) == []
    assert all(Path(path).is_relative_to(wandb_offline / ".data") or Path(path).is_relative_to(wandb_offline / "wandb")
               or Path(path).is_relative_to(wandb_offline / ".cache") for path in listing(wandb_offline))
    # And inside it, each backend kept every file inside its own run folder, with tame names.
    assert sorted(os.listdir(root)) == ["runs", "tb", "weights.pt"]
    assert all(path.is_dir() and all(c.isalnum() or c in "._-" for c in path.name) for path in (root / "tb").iterdir())
    runs = sorted(path for path in (root / "runs").iterdir())
    assert len(runs) == len(HOSTILE)
    for run_dir in runs:
        assert run_dir.is_dir() and not run_dir.is_symlink()
        for path in run_dir.rglob("*"):
            assert not path.is_symlink() and os.path.realpath(path).startswith(os.path.realpath(run_dir) + os.sep)
            assert len(path.name) <= 255 and all(c.isalnum() or c in "._-" for c in path.name), path


def test_the_viewer_never_reads_outside_the_run_folder_from_a_tampered_table(tmp_path):
    # `logbus view` may be pointed at a run folder someone sent you: its rows files are not trusted. An image
    # cell whose pack id is a path is refused by the server, which writes no file at all.
    import pyarrow as pa
    import pyarrow.parquet as pq
    from werkzeug.test import Client

    from logbus.plugins.local import ViewerApp

    run_dir, outside = tmp_path / "run", tmp_path / "outside"
    with logbus.start_run("run", backends=[("local", {"root": str(tmp_path)})]) as run:
        run.log_table("t", ["x"], [[1]], step=0)
    outside.mkdir()
    pq.write_table(pa.table({"hash": ["h"], "kind": ["image"], "encoding": ["raw"], "dtype": ["uint8"],
                             "shape": [[4, 4]], "data": [np.eye(4, dtype=np.uint8).tobytes()]}), outside / "victim.parquet")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    client = Client(ViewerApp([str(run_dir)]))
    for pack in ("../outside/victim", "..%2Foutside%2Fvictim", str(outside / "victim"), "..", ".tmp"):
        assert client.get(f"/img/0/{pack}/h").status_code == 404, pack
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


# -- atomic files under SIGKILL --------------------------------------------------------------------
WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    import logbus
    from logbus.records import Image

    rng = np.random.default_rng(int(sys.argv[1]))
    run = logbus.start_run("killed", backends=["local"], config={"seed": int(sys.argv[1])})
    step = 0
    while True:  # until killed
        run.log({"loss": 1.0 / (step + 1), "step_copy": step}, step=step)
        if step % 5 == 0:  # big lines: a table of 1,000 rows is ~30 KB, several pages per write
            run.log_table("samples/val", ["id", "text"], [[i, "row %d of step %d" % (i, step)] for i in range(1000)],
                          step=step)
        if step % 7 == 0:
            run.log_table("samples/images", ["id", "image"],
                          [[step, Image(pixels=rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))]], step=step)
        if step % 11 == 0:  # hparams.json is rewritten whole each time
            run.log_hyperparameters({"history": list(range(step % 3000)), "step": step})
        step += 1
        if step % 200 == 0:
            run.flush()
""")


def check_jsonl(path: Path) -> tuple[list[dict], bool]:
    """The lines of ``path``: every newline-terminated line must parse; after the last newline there
    may be one fragment (the line the kill cut), which must not parse. Returns (lines, cut)."""
    data = path.read_bytes()
    complete, _, tail = data.rpartition(b"\n")
    lines = [json.loads(line) for line in complete.split(b"\n")] if complete else []
    if tail:
        with pytest.raises(json.JSONDecodeError):
            json.loads(tail)
    return lines, bool(tail)


def test_a_process_killed_mid_write_leaves_every_json_file_and_every_line_whole(tmp_path):
    script = tmp_path / "script" / "writer.py"
    script.parent.mkdir()
    script.write_text(WRITER)
    run_dirs = []
    for seed, after_lines in enumerate((150, 500, 1200)):  # killed at three different points
        root = tmp_path / f"root{seed}"
        run_dir = root / "killed"
        process = subprocess.Popen([sys.executable, str(script), str(seed)], cwd=tmp_path,
                                   env={**os.environ, "LOGBUS_DIR": str(root)}, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            metrics = run_dir / "metrics.jsonl"
            if metrics.exists() and metrics.stat().st_size > after_lines * 60:
                break
            time.sleep(0.01)
        assert process.poll() is None, process.communicate()[1][-3000:]
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        run_dirs.append(run_dir)

    for run_dir in run_dirs:
        for path in run_dir.rglob("*.json"):
            json.loads(path.read_text())  # replaced atomically: never half a file
        assert json.loads((run_dir / "run.json").read_text())["status"] == "running"  # it never closed
        metrics, _ = check_jsonl(run_dir / "metrics.jsonl")
        assert [line["step"] for line in metrics] == list(range(len(metrics))) and len(metrics) >= 100
        # Every rows and pack file under its finished name is whole Parquet (linked there once complete).
        for path in [*(run_dir / "rows").rglob("*.parquet"), *(run_dir / "packs").glob("*.parquet")]:
            pq.read_table(path)
        tables = logbus.read_table(run_dir, "samples/val")
        assert len(tables) and len(tables) == 1000 * len(set(tables._step))
        images = logbus.read_table(run_dir, "samples/images")
        assert len(images)
        for cell in images.image:  # a rows file is linked after its pack: every image is there, whole
            assert cell.to_numpy().shape == (8, 8, 3)
        leftovers = [p.name for p in run_dir.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl", ".png")
                     and p.name.startswith(".")]
        assert leftovers == []  # a temporary file never looks like a finished one
        assert [p for p in (run_dir / "rows").rglob("*") if p.is_file() and not p.name.endswith(".parquet")] == []


KILLED_BEFORE_RENAME = textwrap.dedent("""
    import os, signal, sys
    import logbus.files._atomic

    def killed(source, destination):  # the process dies between writing the temporary file and renaming it
        os.kill(os.getpid(), signal.SIGKILL)

    logbus.files._atomic.os.replace = killed
    logbus.files._atomic.write_json_atomic(os.path.join(sys.argv[1], "hparams.json"), {"lr": [0.1] * 1000})
""")


def test_a_write_killed_before_its_rename_leaves_nothing_that_looks_finished(tmp_path):
    (tmp_path / "hparams.json").write_text('{"lr": 0.5}')
    result = subprocess.run([sys.executable, "-c", KILLED_BEFORE_RENAME, str(tmp_path)], capture_output=True, check=False)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert json.loads((tmp_path / "hparams.json").read_text()) == {"lr": 0.5}  # the old file, whole
    [leftover] = [path for path in tmp_path.iterdir() if path.name != "hparams.json"]
    assert leftover.name.startswith(".") and leftover.suffix not in (".json", ".jsonl", ".png", ".html"), leftover.name


def test_every_file_of_a_run_folder_gets_the_same_permissions(logbus_dir):
    # Atomic writes go through mkstemp (0600): run.json, hparams.json and the rows and pack files must not end up
    # private while metrics.jsonl next to them follows the umask (a run folder shared with a team).
    with logbus.start_run("modes", backends=["local"], config={"lr": 0.1}) as run:
        run.log({"loss": 1.0}, step=0)
        run.log_table("samples/val", ["image"], [[Image(pixels=np.zeros((4, 4, 3), np.uint8))]], step=0)
    modes = {path.relative_to(logbus_dir).as_posix(): oct(path.stat().st_mode & 0o777)
             for path in (logbus_dir / "modes").rglob("*") if path.is_file()}
    assert {"modes/run.json", "modes/hparams.json", "modes/metrics.jsonl", "modes/packs/r0-000000.parquet",
            "modes/rows/samples/val/0000000000-r0-0.parquet"} <= set(modes)
    assert len(set(modes.values())) == 1, modes
    assert modes["modes/metrics.jsonl"] == oct(0o644 & ~os.umask(os.umask(0o022)))

"""The README's two commands, in the order a new user runs them: ``make demo`` (``logbus demo``), then
``make test``, whose first step is the lint.

The demo runs for real (Composer, W&B offline, the local backend) with its working directory in a
copy of the project made for the test and turned into a git repository, so ``git status`` shows what
the command left behind: nothing but the ignored ``logbus_runs/``. ``make clean`` then leaves the copy
as it was committed.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from wandb_reader import read_wandb_run

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LINTED = ["core", "plugins", "kernels", "tests", "benchmarks", "examples/logbus-example-plugin"]  # as `make lint`
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false"]


def _run(command: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False, **kwargs)


def project_copy(destination: Path) -> Path:
    """The project's files (tracked, and new ones git does not ignore), committed in a fresh repository."""
    listed = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], ROOT)
    assert listed.returncode == 0, listed.stderr
    for name in filter(None, listed.stdout.split("\0")):
        if (ROOT / name).is_file():  # a file deleted but not yet committed is still listed
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "copy"]):
        result = _run([*GIT, *command], destination)
        assert result.returncode == 0, result.stderr
    return destination


def git_status(tree: Path) -> list[str]:
    """``git status`` with untracked and ignored files, one path per line (``?? new``, ``!! ignored/``)."""
    result = _run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], tree)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def lint(tree: Path) -> subprocess.CompletedProcess:
    return _run([str(BIN / "ruff"), "check", *LINTED], tree)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """``logbus demo --epochs 1`` (what ``make demo`` runs) with a copy of the project as its working
    directory, none of the user's W&B or logbus settings, and a home folder of its own (W&B keeps
    caches and staged files there)."""
    tree = project_copy(tmp_path_factory.mktemp("project"))
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "LOGBUS_", "XDG_"))}
    env.update(HOME=str(home), WANDB_SILENT="true")
    result = _run([str(BIN / "logbus"), "demo", "--epochs", "1"], tree, env=env, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return tree, result


@pytest.mark.timeout(500)
def test_make_demo_then_the_lint_of_make_test_passes_and_leaves_only_logbus_runs(demo, tmp_path):
    tree, _ = demo
    left = git_status(tree)
    assert left and all(line.startswith("!! logbus_runs/") for line in left), left
    assert not (tree / "wandb").exists()
    result = lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr

    # `make clean` takes the copy back to what was committed: what the commands left is all ignored,
    # and all removed by it.
    cleaned = tmp_path / "cleaned"
    shutil.copytree(tree, cleaned, symlinks=True)
    assert git_status(cleaned), "the lint and the demo left ignored files to clean"
    result = _run(["make", "clean"], cleaned)
    assert result.returncode == 0, result.stdout + result.stderr
    assert git_status(cleaned) == []


def test_logbus_demo_prints_the_wandb_run_folder_that_wandb_opens(demo):
    tree, result = demo
    printed = dict(re.findall(r"^  (wandb|local): (.+)$", result.stdout, flags=re.M))
    wandb_run = (tree / printed["wandb"]).resolve()
    assert wandb_run.parent == tree / "logbus_runs" / "wandb" and wandb_run.name.startswith("offline-run-")
    assert f"wandb sync {printed['wandb']}\n" in result.stdout
    run = read_wandb_run(wandb_run)  # `wandb leet inspect --json <the printed folder>`
    assert run.exit_code == 0 and run.metric("metrics/eval/MulticlassAccuracy")
    (step, columns, rows), = run.tables("samples/eval")
    assert len(rows) == 100 and "image" in columns
    assert (tree / printed["local"] / "run.json").is_file()


def test_the_lint_config_names_every_third_party_module_the_code_imports(tmp_path):
    """isort decides first- or third-party by looking for a folder of that name in the project root; a
    module named in ``known-third-party`` stays third-party whatever folders sit there."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser is the dev extra's tomli
        import tomli as tomllib

    known = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]["isort"]["known-third-party"])
    local = {path.stem for folder in LINTED for path in (ROOT / folder).rglob("*.py")} | {"logbus_example_plugin"}
    imported = set()
    for folder in LINTED:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    made_by_tests = {"logbus_kit_probe", "logbus_broken_missing_dependency"}  # modules that tests write (or miss)
    third_party = imported - set(sys.stdlib_module_names) - {"logbus"} - local - made_by_tests
    assert third_party <= known, f"add to known-third-party in pyproject.toml: {sorted(third_party - known)}"

    tree = project_copy(tmp_path)
    for name in known:  # what a plain `wandb.init()` (or any tool) may leave in the project root
        (tree / name).mkdir()
    result = lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr


def test_make_clean_removes_every_folder_gitignore_names():
    """Each generated folder in .gitignore is removed by ``make clean`` and vice versa, so the two lists
    cannot drift (``.venv`` is ``$(VENV)``; ``__pycache__`` goes through ``find``; ``tmp*/`` is left to the
    developer who made it)."""
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".gitignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    recipe = re.search(r"^clean:\n((?:\t.*\n?)+)", (ROOT / "Makefile").read_text(), flags=re.M).group(1)
    removed = set(re.search(r"rm -rf (.*?)(?<!\\)\n", recipe, flags=re.S).group(1).replace("\\\n", " ").split())
    removed = {".venv" if name == "$(VENV)" else name.rstrip("/") for name in removed}
    assert ignored - removed == {"__pycache__", "*.pyc", "tmp*"} and "-name __pycache__" in recipe
    assert removed - ignored == set()


@pytest.mark.timeout(300)
def test_make_test_builds_the_docs_strictly_into_an_ignored_folder(tmp_path):
    """``make test`` runs ``make docs``: ``mkdocs build --strict`` (a broken link or anchor, a page left
    out of the nav or a docstring that does not match its signature fails it; ``--quiet`` would hide
    those warnings and let it pass), which leaves nothing in the tree but the ignored ``build/docs/``."""
    makefile = (ROOT / "Makefile").read_text()
    test_recipe = re.search(r"^test:.*\n((?:\t.*\n?)+)", makefile, flags=re.M).group(1)
    docs_recipe = re.search(r"^docs:.*\n((?:\t.*\n?)+)", makefile, flags=re.M).group(1)
    assert "$(MAKE) --no-print-directory docs" in test_recipe
    assert "mkdocs build --strict" in docs_recipe and "--quiet" not in docs_recipe and " -q" not in docs_recipe

    tree = project_copy(tmp_path)
    result = _run([str(BIN / "mkdocs"), "build", "--strict"], tree, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
                  timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tree / "build" / "docs" / "index.html").is_file()
    assert (tree / "build" / "docs" / "reference" / "api" / "index.html").read_text().count("logbus.composer") > 3
    left = git_status(tree)
    assert left and all(line.startswith("!! build/") for line in left), left

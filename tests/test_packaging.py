"""dkimbot installs like released software (issue 14): ``python -m build`` makes an sdist
and a wheel, the wheel installs (not editable, with its declared dependencies) into a
fresh virtual environment, and ``dkimbot demo`` runs from an empty directory there, on the
templates shipped inside the wheel. Staff-edited templates override the shipped ones
file by file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

from bot.adapters.mailout import MailRenderer, shipped_templates_dir
from bot.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
_JUNK = shutil.ignore_patterns(".git", "build", "dist", "state", "*.egg-info", "__pycache__",
                               ".pytest_cache", ".hypothesis", ".venv", ".mypy_cache", ".ruff_cache")


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH: the venv must find bot in its own site-packages, not in this tree."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist and wheel built by ``python -m build`` from a copy of the tree (the wheel is
    built from the sdist, so a file the sdist lacks is missing from the wheel too)."""
    base = tmp_path_factory.mktemp("pkg")
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=_JUNK)
    out = base / "dist"
    r = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(src)],
                       capture_output=True, text=True, timeout=600, env=_clean_env(), check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (base / "build.log").write_text(r.stdout + r.stderr, encoding="utf-8")
    return out


def test_the_build_is_free_of_setuptools_package_warnings(dist: Path) -> None:
    """Data-only directories (bot/web/templates, bot/web/static) are declared packages:
    setuptools says nothing about packages it "would ignore", and their files ship."""
    log = (dist.parent / "build.log").read_text(encoding="utf-8")
    assert "would be ignored" not in log and "is absent from the `packages`" not in log, log[-3000:]
    names = set(zipfile.ZipFile(next(dist.glob("dkimbot-*.whl"))).namelist())
    assert "bot/web/static/style.css" in names
    assert "bot/web/templates/base.html" in names


def test_the_wheel_carries_every_template_and_the_sdist_the_tests_and_docs(dist: Path) -> None:
    wheel = next(dist.glob("dkimbot-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(p.name for p in shipped_templates_dir().glob("*.txt"))
    assert shipped and all(f"bot/templates/{n}" in names for n in shipped)
    assert "bot/app/cli.py" in names
    sdist = next(dist.glob("dkimbot-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        members = {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}
    for needed in ("templates/request_reply.txt", "tests/conftest.py", "tests/servers.py",
                   "tests/test_packaging.py", "docs/CONTRACT.md", "setup.py", ".ci/run",
                   "contrib/systemd/dkimbot.service", "contrib/cron/dkimbot"):
        assert needed in members, needed


def test_the_wheel_installs_in_a_fresh_venv_and_the_demo_runs_from_an_empty_dir(
        dist: Path, tmp_path: Path) -> None:
    wheel = next(dist.glob("dkimbot-*.whl"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    py = env_dir / "bin" / "python"
    # Not editable, dependencies resolved by pip from the configured index: a dependency
    # missing from pyproject.toml fails here.
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)],
                       capture_output=True, text=True, timeout=900, env=_clean_env(), check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([str(env_dir / "bin" / "dkimbot"), "demo"], cwd=empty, capture_output=True,
                       text=True, timeout=300, env=_clean_env(), check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "demo finished: DKIM-0001 is completed" in r.stdout
    assert list(empty.iterdir()) == []
    # The bot it ran is the installed one, reading the wheel's templates.
    probe = "import bot.adapters.mailout as m; print(m.__file__); print(m.shipped_templates_dir())"
    r = subprocess.run([str(py), "-c", probe], cwd=empty, capture_output=True,
                       text=True, timeout=60, env=_clean_env(), check=False)
    module_file, templates = r.stdout.split()
    assert module_file.startswith(str(env_dir)) and templates.startswith(str(env_dir))


def test_an_override_dir_replaces_only_the_files_it_holds(tmp_path: Path) -> None:
    override = tmp_path / "mytemplates"
    override.mkdir()
    (override / "reminder.txt").write_text("Subject: 【至急】{{ ref }}\n\nご確認ください。\n",
                                           encoding="utf-8")
    (tmp_path / "c.toml").write_text('[service]\ntemplates_dir = "mytemplates"\n', encoding="utf-8")
    cfg = load_config(tmp_path / "c.toml")  # relative to the config file, not the cwd
    assert cfg.templates_dir == override
    ours = MailRenderer(cfg.templates_dir)
    assert ours.render("reminder", {"ref": "DKIM-0007"}) == ("【至急】DKIM-0007", "ご確認ください。\n")
    # Every other file, includes too, is the shipped one.
    shipped = shipped_templates_dir()
    for name in ("dkim_active.txt", "_footer.txt", "request_reply.txt"):
        assert Path(ours.env.get_template(name).filename).parent == shipped
    assert Path(MailRenderer(None).env.get_template("reminder.txt").filename).parent == shipped


def test_a_missing_override_dir_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('[service]\ntemplates_dir = "nowhere"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="templates_dir"):
        load_config(tmp_path / "c.toml")

"""An installed wheel works on its own: it carries the built-in models (the default, its coarse
member and decoders, the retired defaults) and finds them outside any source checkout, for a
``--prefix`` install whose data folder is not the interpreter's prefix."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import DATA, REPO

RELEASED = DATA / "released"


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The working tree built as a wheel and installed with --prefix into a temporary folder."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "gqtok", src / "gqtok", ignore=ignore)
    shutil.copytree(REPO / "weights", src / "weights", ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GQTOK_", "PYTHON"))}
    wheels = root / "wheels"
    # the environment's setuptools where it has one (Python 3.11 venvs do; 3.12 ones do not,
    # and pip then builds in isolation, with setuptools from the package index)
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    _run([*pip, "wheel", str(src), "--no-deps", *isolation, "-w", str(wheels)], root, env)
    (wheel,) = wheels.glob("gqtok-*.whl")
    prefix = root / "prefix"
    # --ignore-installed: without it pip would uninstall the test environment's own gqtok
    _run([*pip, "install", "--no-deps", "--ignore-installed", "--prefix", str(prefix),
          str(wheel)], root, env)
    (site,) = prefix.glob("lib/python3*/site-packages")
    env["PYTHONPATH"] = str(site)
    env["GQTOK_CACHE"] = str(root / "cache")
    work = root / "work"
    work.mkdir()
    return work, env


def test_the_installed_package_lists_its_models_from_its_own_data_folder(
    installed: tuple[Path, dict[str, str]],
) -> None:
    work, env = installed
    code = "import gqtok, gqtok.zoo.paths as p; print(gqtok.__file__); print(p.weights_dirs())"
    out = _run([sys.executable, "-c", code], work, env).stdout
    assert str(REPO) not in out  # the installed copy runs, not the checkout
    res = _run([sys.executable, "-m", "gqtok", "models", "--json"], work, env)
    listing = json.loads(res.stdout)
    (folder,) = listing["search_path"]  # one built-in folder: <prefix>/share/gqtok/weights
    assert Path(folder).parts[-3:] == ("share", "gqtok", "weights")
    rows = {r["name"]: r for r in listing["models"]}
    here = {name for name, r in rows.items() if r.get("available")}
    assert {"gqtok-f8c16-cpu-v3", "gqtok-f8c16-cpu-v3-coarse", "gqtok-f8c16-cpu-v1",
            "gqtok-f8c16-cpu-v2"} <= here
    for name in here:
        path = Path(rows[name]["path"])
        assert str(REPO) not in str(path)
        assert path.parts[-4:-1] in {("share", "gqtok", "weights"),
                                     ("gqtok", "weights", "retired")}


def test_the_installed_package_encodes_and_decodes_old_and_new_files(
    installed: tuple[Path, dict[str, str]],
) -> None:
    """The same bytes as the checkout's default model, and a file of a retired default and one
    of the coarse member decode to the pixels their releases gave."""
    work, env = installed
    gq = work / "sample.gq"
    _run([sys.executable, "-m", "gqtok", "encode", str(REPO / "examples" / "sample.jpg"),
          "-o", str(gq), "--overwrite"], work, env)
    ref = work / "ref.gq"
    ref_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    ref_env["PYTHONPATH"] = str(REPO)
    _run([sys.executable, "-m", "gqtok", "encode", str(REPO / "examples" / "sample.jpg"),
          "-o", str(ref), "--overwrite"], work, ref_env)
    assert gq.read_bytes() == ref.read_bytes()
    for name in ("v1.gq", "v3-coarse-q10.gq"):
        out = work / name.replace(".gq", ".png")
        _run([sys.executable, "-m", "gqtok", "decode", str(RELEASED / name), "-o", str(out),
              "--overwrite"], work, env)
        with Image.open(out) as a, Image.open(RELEASED / out.name) as b:
            diff = np.abs(np.asarray(a.convert("RGB"), np.int16)
                          - np.asarray(b.convert("RGB"), np.int16))
        assert diff.max() <= 3 and diff.mean() < 0.05

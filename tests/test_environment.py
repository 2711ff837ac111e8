"""The conda route (environment.yml) must name every runtime dependency that the pip
route (requirements.txt) pins, so the two installs cannot drift apart."""
import re

import yaml

from conftest import ROOT

# pip name -> the name conda-forge gives the same thing
CONDA_NAMES = {"torch": "pytorch", "opencv-python": "opencv"}


def _pip_requirements():
    names = []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.append(re.split(r"[=<>!~\[ ]", line)[0].lower())
    return names


def _conda_names(env):
    names = set()
    for dep in env["dependencies"]:
        specs = dep["pip"] if isinstance(dep, dict) else [dep]
        for spec in specs:
            names.add(re.split(r"[=<>!~\[ ]", spec.split("#")[0].strip())[0].lower())
    return names


def test_environment_yml_names_every_runtime_dependency():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "conda-forge" in env["channels"]
    conda = _conda_names(env)
    missing = [n for n in _pip_requirements() if CONDA_NAMES.get(n, n) not in conda]
    assert not missing, f"environment.yml lacks {missing} that requirements.txt pins"
    # ffcv's C extension needs these from conda when apt is not the route.
    assert {"pkg-config", "libjpeg-turbo", "opencv"} <= conda


def test_requirements_pin_cpu_torch_version_first_installed_by_make():
    reqs = _pip_requirements()
    assert reqs[0] == "torch", "make install installs torch first, alone, from this line"
    makefile = (ROOT / "Makefile").read_text()
    assert "grep -E '^torch=='" in makefile

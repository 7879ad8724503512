"""The package as a user installs it: `pip install .` into a fresh virtualenv (no
dependencies fetched: it sees this checkout's .venv for them) gives the package and every
console script pyproject.toml declares, each answering `--help` and `--version`; the runtime
ranges of pyproject.toml hold requirements.txt's pins; every script takes its file as
`--config FILE` or as `FILE`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from trackerdcs import __version__
from trackerdcs.cli import main as trackerdcs_main
from trackerdcs.cliargs import resolve_config
from trackerdcs.deploy import BCRYPT
from trackerdcs.health import build_parser as health_parser
from trackerdcs.health import main as health_main
from trackerdcs.health import target_from_argv
from trackerdcs.ingest.bridge import parse_args as ingest_args
from trackerdcs.sim.crate import build_parser as crate_parser

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]
LAB = str(ROOT / "examples" / "lab.yml")


def pins() -> dict[str, str]:
    """requirements.txt: name (lower case) -> pinned version."""
    out = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            [spec] = req.specifier
            out[req.name.lower()] = spec.version
    return out


def test_pyproject_ranges_hold_the_pins():
    pinned = pins()
    project = PYPROJECT["project"]
    declared = [*project["dependencies"]]
    for extra in ("deploy", "test"):
        declared += project["optional-dependencies"][extra]
    for line in declared:
        req = Requirement(line)
        assert req.name.lower() in pinned, f"{req.name}: not pinned in requirements.txt"
        assert req.specifier.contains(pinned[req.name.lower()]), (line, pinned[req.name.lower()])
    assert [Requirement(r).name for r in project["optional-dependencies"]["caen"]] == ["caen-libs"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtualenv with trackerdcs installed from this checkout (`pip install --no-deps
    --no-build-isolation .`); a .pth lends it this .venv's packages (the dependencies and the
    build backend), so nothing is downloaded."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "trackerdcs-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    source = tmp_path_factory.mktemp("source")  # setuptools builds in the tree: not in ours
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "trackerdcs", source / "trackerdcs",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-build-isolation", "--no-index", str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return venv


def test_the_installed_package_imports(installed, tmp_path):
    out = subprocess.run(
        [str(installed / "bin" / "python"), "-c",
         "import trackerdcs, trackerdcs.config, trackerdcs.client; print(trackerdcs.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.startswith(str(installed))  # the installed copy, not this checkout


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_console_script_has_help_and_version(installed, tmp_path, script):
    exe = installed / "bin" / script
    assert exe.is_file(), f"pip install . made no {script}"
    version = subprocess.run(
        [str(exe), "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert (version.returncode, version.stdout.strip()) == (0, f"{script} {__version__}")
    helped = subprocess.run(
        [str(exe), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0, helped.stderr
    assert f"usage: {script}" in helped.stdout and "--version" in helped.stdout
    assert "--config FILE" in helped.stdout or script == "trackerdcs"


# -- the file: `--config FILE` or `FILE`, everywhere --------------------------------------------
def test_check_config_takes_the_lab_either_way(capsys):
    assert trackerdcs_main(["check-config", LAB]) == 0
    bare = capsys.readouterr().out
    assert trackerdcs_main(["check-config", "--config", LAB]) == 0
    assert capsys.readouterr().out == bare and "ok (" in bare


def test_daemons_take_the_file_either_way_and_refuse_two():
    parser = crate_parser()
    for argv in (["--config", LAB], [LAB], ["--config", LAB, LAB]):
        args = parser.parse_args(argv)
        assert resolve_config(parser, args).config == LAB
    with pytest.raises(SystemExit) as two:
        resolve_config(parser, parser.parse_args(["--config", LAB, "other.yml"]))
    assert two.value.code == 2
    with pytest.raises(SystemExit):
        resolve_config(parser, parser.parse_args([]))  # no default: required
    assert ingest_args([]).config == "telegraf.conf"  # the bridge's default
    assert ingest_args(["other.conf"]).config == "other.conf"


def test_health_tells_the_bare_lab_file_from_prefixes(monkeypatch):
    args = health_parser().parse_args([LAB, "/hv"])
    assert args.prefixes == [LAB, "/hv"]  # main() splits them: see below
    target = target_from_argv(["/usr/bin/trackerdcs-power", LAB, "--crate", "sy4527"])
    assert (target.service, target.config, target.crate) == ("power", LAB, "sy4527")
    seen = {}
    monkeypatch.setattr(
        "trackerdcs.health.availability",
        lambda mqtt, prefixes, timeout: seen.setdefault("p", {p: "online" for p in prefixes}),
    )
    assert health_main([LAB, "/hv", "/lv"]) == 0
    assert list(seen["p"]) == ["/hv", "/lv"]


# -- deploy/init-env.py: bcrypt without `crypt` (gone from Python 3.13) -------------------------
def test_init_env_hashes_with_the_venv_s_bcrypt_when_its_python_has_none(tmp_path):
    """`python3 deploy/init-env.py` with a Python lacking bcrypt (here: `-S`, no site-packages)
    still makes the Node-RED hash, through the repo's virtualenv (`.venv`, which setup.sh makes;
    the hash's check against Node-RED's bcryptjs is tests/test_deployment.py's)."""
    out = tmp_path / ".env"
    done = subprocess.run(
        [sys.executable, "-S", str(ROOT / "deploy" / "init-env.py"), "-o", str(out)],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    values = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    hashed = values["NODE_RED_PASSWORD_HASH"].strip("'")
    assert BCRYPT.fullmatch(hashed) and hashed.startswith("$2b$10$"), "a bcrypt hash, cost 10"

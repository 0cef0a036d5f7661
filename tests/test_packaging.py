"""``python -m build`` makes a wheel and an sdist that install into a fresh venv and run.

The venv gets no packages of its own besides gbw (installed with ``--no-deps --no-index``):
the running interpreter's site-packages (torch and the other dependencies) are added by a
``.pth`` file, so nothing is downloaded or reinstalled. The build runs on a copy of the tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COPY = ("pyproject.toml", "README.md", "CHANGELOG.md", "MANIFEST.in", "src", "examples", "docs")


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, **kw)
    assert res.returncode == 0, f"{cmd}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res


def fresh_venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=False).create(path)
    python = path / "bin" / "python"
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib.stdout.strip(), "_gbw_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    return python


@pytest.mark.slow
def test_wheel_and_sdist_install_into_a_fresh_venv_and_run(tmp_path):
    src = tmp_path / "src_tree"
    src.mkdir()
    for name in COPY:
        item = ROOT / name
        if item.is_dir():
            shutil.copytree(
                item, src / name, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__")
            )
        else:
            shutil.copy2(item, src / name)
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)])
    import gbw

    wheel = dist / f"gbw-{gbw.__version__}-py3-none-any.whl"
    sdist = dist / f"gbw-{gbw.__version__}.tar.gz"
    assert wheel.is_file() and sdist.is_file()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    for kind, artefact in (("wheel", wheel), ("sdist", sdist)):
        env_dir = tmp_path / f"venv_{kind}"
        python = fresh_venv(env_dir)
        extra = ["--no-build-isolation"] if kind == "sdist" else []
        run(
            [
                *pip,
                "--python",
                str(python),
                "install",
                "--no-deps",
                "--no-index",
                *extra,
                str(artefact),
            ]
        )
        where = run([str(python), "-c", "import gbw; print(gbw.__file__, gbw.__version__)"]).stdout
        assert where.startswith(str(env_dir)) and where.split()[1] == gbw.__version__
        if kind == "wheel":  # the console script
            helptext = run([str(env_dir / "bin" / "gbw"), "--help"]).stdout
            assert "gbw convert" in helptext and "gbw predict" in helptext
    # the examples of the sdist, against the installed wheel's gbw
    unpacked = tmp_path / "unpacked"
    shutil.unpack_archive(sdist, unpacked)
    examples = unpacked / f"gbw-{gbw.__version__}" / "examples"
    python = tmp_path / "venv_wheel" / "bin" / "python"
    for script, args in (
        ("smp_unet_gbw.py", ["--size", "32", "--classes", "4"]),
        ("segformer_trainer_gbw.py", ["--size", "32"]),
        ("deeplabv3_amp_gbw.py", ["--size", "32", "--device", "cpu"]),
    ):
        out = run([str(python), str(examples / script), "--steps", "2", *args], cwd=tmp_path)
        assert out.stdout.count("GBW weights") == 2, script

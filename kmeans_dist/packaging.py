"""What a cluster needs to run the jobs: the package as a zip for ``spark-submit --py-files``,
and optionally a packed virtualenv (numpy, pyarrow, numba, ...) for ``--archives``.

    python -m kmeans_dist.packaging zip dist/kmeans_dist.zip
    python -m kmeans_dist.packaging env dist/kmeans_dist_env.tar.gz

The zip holds pure Python only. Executors still need numpy, pyarrow and pandas (and numba for
the fused kernel; without it the numpy kernel gives the same results): a cluster whose nodes lack
them gets the packed environment, built with venv-pack because it is what Spark's own
documentation uses for ``--archives`` and unpacks with plain ``tar`` (no runtime of its own, unlike
a pex). pyspark is left out of the environment: every Spark installation ships its own.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
#: runtime dependencies the executors import (pyspark comes with Spark itself)
EXECUTOR_REQUIREMENTS = ["numpy>=1.24", "pyarrow>=14", "pandas>=2.0,<3", "pyyaml>=6.0",
                         "numba>=0.59"]


def package_files() -> list[Path]:
    """Every source file of the package, sorted (no caches, no compiled files)."""
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def build_zip(dest: str | os.PathLike) -> Path:
    """Write ``kmeans_dist/**.py`` into a zip importable from ``--py-files``; return its path."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in package_files():
            # a fixed timestamp: the same sources give the same bytes
            info = zipfile.ZipInfo(str(path.relative_to(PACKAGE.parent)), (1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    tmp.replace(dest)
    return dest


def build_env(dest: str | os.PathLike, python: str = sys.executable) -> Path:
    """A packed virtualenv with the executors' dependencies, for ``--archives ENV#environment``."""
    dest = Path(dest).resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kmeans_dist_env_") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run(pip + ["--upgrade", "pip", "venv-pack"], check=True)
        subprocess.run(pip + EXECUTOR_REQUIREMENTS, check=True)
        src = Path(tmp) / "src"  # a copy, so the build leaves nothing in the source tree
        shutil.copytree(PACKAGE, src / PACKAGE.name,
                        ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(PACKAGE.parent / name, src / name)
        subprocess.run(pip + ["--no-deps", str(src)], check=True)
        if dest.exists():
            dest.unlink()
        subprocess.run([str(venv / "bin" / "venv-pack"), "-p", str(venv), "-o", str(dest)],
                       check=True)
    return dest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m kmeans_dist.packaging", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["zip", "env"])
    p.add_argument("dest")
    args = p.parse_args(argv)
    if args.what == "env" and shutil.which("tar") is None:
        p.error("tar is needed to pack the environment")
    built = build_zip(args.dest) if args.what == "zip" else build_env(args.dest)
    print(f"wrote {built} ({built.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()

"""A second Python environment for the peers that need a newer Python than the project's.

    python -m bench.envs      # find a Python >= 3.12, make bench/.venv-oban with oban; print what it did

oban-py (PyPI `oban`) requires Python >= 3.12 and ledger's environment may be
3.11, so its peer runs under its own interpreter, in `bench/.venv-oban`. The
base interpreter is, in this order: $BENCH_OBAN_PYTHON; `python3.14`, `python3.13`, `python3.12` on
PATH (pyenv's shims included, each tried for real: a shim of a version that is
installed but not selected answers with an error); pyenv's installed versions
($PYENV_ROOT or ~/.pyenv); Debian's /usr/bin/python3.1x. None found: the oban
rows are skipped, with this module's reason printed in their place. Where
ledger's own Python is >= 3.12, the bench extra installs oban beside it and
that interpreter serves.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["OBAN", "oban_python"]

ROOT = Path(__file__).resolve().parent.parent
OBAN = "oban==0.7.0"
VENV = ROOT / "bench" / ".venv-oban"
MINIMUM = (3, 12)


def _version(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    major, minor = out.stdout.split()
    return int(major), int(minor)


def _candidates() -> list[str]:
    found = [os.environ.get("BENCH_OBAN_PYTHON", "")]
    found += [p for name in ("python3.14", "python3.13", "python3.12") if (p := shutil.which(name))]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if pyenv.is_dir():
        newest_first = sorted(pyenv.iterdir(), key=lambda p: [int(x) if x.isdigit() else -1 for x in p.name.split(".")])
        found += [str(p / "bin" / "python3") for p in reversed(newest_first)]
    found += [f"/usr/bin/python3.{minor}" for minor in (14, 13, 12)]
    return [c for c in found if c and Path(c).exists()]


def _base() -> str | None:
    for python in _candidates():
        version = _version(python)
        if version and version >= MINIMUM:
            return python
    return None


def _has_oban(python: Path) -> bool:
    name, _, wanted = OBAN.partition("==")
    out = subprocess.run([str(python), "-c", f"from importlib.metadata import version; print(version({name!r}))"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    return out.returncode == 0 and out.stdout.strip() == wanted


def oban_python(install: bool = True) -> tuple[str | None, str]:
    """(the interpreter to run the oban peer with, what happened); (None, why not) when there is none."""
    if sys.version_info >= MINIMUM and _has_oban(Path(sys.executable)):
        return sys.executable, f"this Python has {OBAN} (the bench extra)"
    python = VENV / "bin" / "python"
    if python.exists() and (_version(str(python)) or (0, 0)) >= MINIMUM and _has_oban(python):
        return str(python), f"{VENV.name}: {OBAN}"
    if not install:
        return None, f"{VENV.name} has no {OBAN}: run `python -m bench.envs`"
    base = _base()
    if base is None:
        return None, (
            "no Python >= 3.12 found (tried $BENCH_OBAN_PYTHON, python3.1x on PATH, pyenv's versions, "
            "/usr/bin/python3.1x); oban-py needs one"
        )
    print(f"bench.envs: making {VENV.name} from {base} with {OBAN}", file=sys.stderr, flush=True)
    steps = [[base, "-m", "venv", "--clear", str(VENV)], [str(python), "-m", "pip", "install", "-q", OBAN]]
    for step in steps:
        out = subprocess.run(step, capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            return None, f"`{' '.join(step)}` failed: {(out.stderr or out.stdout).strip()[-500:]}"
    if not _has_oban(python):
        return None, f"{OBAN} did not install into {VENV.name}"
    return str(python), f"{VENV.name} made from {base}: {OBAN}"


def main() -> None:
    python, what = oban_python()
    print(what if python is None else f"{python} ({what})")
    sys.exit(0 if python else 1)


if __name__ == "__main__":
    main()

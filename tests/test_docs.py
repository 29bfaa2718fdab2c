"""The documentation names only what exists, and the README's Python examples run.

(a) Every dotted ``mdsens.<name>[.<name>...]`` in README.md and docs/*.md (prose, backticks
and code blocks alike) must resolve: import the longest importable module prefix, then
``getattr`` the rest. The pattern needs a dot followed by an identifier and no ``/``, ``.``,
``-`` or word character before ``mdsens``, so file paths (``mdsens/md/system.py``,
``docs/md.md``) and command lines (``mdsens relax ...``) are not collected; no other
exclusions are needed.

(b) Every ```python block of README.md runs in a fresh interpreter from the repository root
(``PYTHONPATH`` = repository root, so ``data/...`` paths work as written) and exits 0.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NAME = re.compile(r"(?<![\w/.-])mdsens(?:\.[A-Za-z_]\w*)+")
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _doc_names() -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    for path in DOCS:
        for match in NAME.finditer(path.read_text(encoding="utf-8")):
            names.setdefault(match.group(0), []).append(path.relative_to(ROOT).as_posix())
    return dict(sorted(names.items()))


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


DOC_NAMES = _doc_names()
README_BLOCKS = PYTHON_BLOCK.findall((ROOT / "README.md").read_text(encoding="utf-8"))


def test_docs_mention_names():
    assert "mdsens.implicit" in DOC_NAMES  # the collector finds something
    assert README_BLOCKS


@pytest.mark.parametrize("dotted", list(DOC_NAMES))
def test_doc_name_resolves(dotted):
    try:
        _resolve(dotted)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"`{dotted}` (in {', '.join(sorted(set(DOC_NAMES[dotted])))}) "
                    f"does not exist: {exc}")


@pytest.mark.parametrize("index", range(len(README_BLOCKS)))
def test_readme_python_block_runs(index):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    result = subprocess.run([sys.executable, "-c", README_BLOCKS[index]], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (
        f"README python block {index} failed:\n{README_BLOCKS[index]}\n{result.stderr[-3000:]}")

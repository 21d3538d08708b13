"""Every ```python block in docs/**/*.md runs.

The blocks of one file run in order in one namespace (a page is one session: later blocks
use what earlier ones defined), in a temporary working directory.  A block whose first line
is ``# no-test: <reason>`` is skipped; use it only for code that cannot run here (it needs a
GPU, MPI, real data) and say why.  A failing block is reported with its file and line.
"""

import pathlib
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
NEEDS_CXX = {"07-cuda-on-the-cpu.md"}  # pages whose code runs the CUDA kernels on the host


def python_blocks(text):
    """The ```python blocks of a Markdown text: a list of (line number of the first code
    line, code).  Indented blocks (inside a list item) are dedented."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i + 1
            end = start
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            if end == len(lines):
                raise ValueError(f"a ```python block opened at line {i + 1} is never closed")
            blocks.append((start + 1, textwrap.dedent("\n".join(lines[start:end]))))
            i = end + 1
        else:
            i += 1
    return blocks


def is_marked_no_test(code):
    first = code.strip().splitlines()[0] if code.strip() else ""
    return first.startswith("# no-test")


def test_block_extraction():
    text = "intro\n```python\nx = 1\n```\ntext\n  ```python\n  y = x + 1\n  ```\n```\nnot python\n```\n"
    assert python_blocks(text) == [(3, "x = 1"), (7, "y = x + 1")]
    with pytest.raises(ValueError):
        python_blocks("```python\nx = 1\n")


def test_the_tour_is_there():
    names = [p.name for p in sorted((DOCS / "tour").glob("*.md"))]
    assert names == ["01-autograd.md", "02-im2col-gemm.md", "03-pooling.md", "04-lrn.md",
                     "05-towers.md", "06-optimiser.md", "07-cuda-on-the-cpu.md"]
    for name in names:
        assert python_blocks((DOCS / "tour" / name).read_text(encoding="utf-8")), f"{name} has no code"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_python_blocks_run(page, tmp_path, monkeypatch):
    if page.name in NEEDS_CXX:
        from tinynet.cuda.emulate import compiler

        if compiler() is None:
            pytest.skip(f"{page.name} compiles the CUDA kernels for the CPU: no C++ compiler here")
    monkeypatch.chdir(tmp_path)  # a snippet that writes files writes them here
    namespace = {"__name__": "__docs__"}
    for line, code in python_blocks(page.read_text(encoding="utf-8")):
        if is_marked_no_test(code):
            reason = code.strip().splitlines()[0][len("# no-test"):].strip(" :")
            assert reason, f"{page.name}:{line}: '# no-test' needs a reason, e.g. '# no-test: needs a GPU'"
            continue
        # blank lines in front, so that a traceback's line number is the line in the .md file
        source = "\n" * (line - 1) + code
        exec(compile(source, str(page.relative_to(ROOT)), "exec"), namespace)

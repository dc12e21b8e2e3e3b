"""The README and the documentation pages: their code runs as written, the result tables they
quote are the records' own, and they describe the library, not how it was built."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_readme_python_examples_run():
    blocks = python_blocks(README)
    assert blocks, "README has no python example"
    ns: dict = {}
    for code in blocks:
        exec(compile(code, str(README), "exec"), ns)
    assert ns["act"].shape == (256, 2) and ns["lam"].shape == (256,)
    assert ns["loss"].requires_grad


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_the_guides_python_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever an example writes stays in a temporary folder
    ns: dict = {}
    for code in python_blocks(page):
        exec(compile(code, str(page), "exec"), ns)


def test_readme_names_the_two_commands():
    text = README.read_text()
    assert 'pip install -e . && cdp demo' in text
    assert 'pip install -e ".[dev]" && python -m pytest -q' in text
    assert len(text.splitlines()) <= 150  # a front page; the rest is in docs/


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_quoted_tables_are_the_records_own(page):
    from cdp.report import sync_blocks

    stale = sync_blocks(page, check=True)
    assert not stale, f"{page.name}: tables differ from the records in results/: run `cdp report --sync {page}` ({stale})"


#: words of a lab notebook: who measured what when, on which host, in which session
NARRATIVE = re.compile(r"\bsessions? \d|\bsession-\d|\bsessions \d+[–-]\d+|\b(AVX2|slower|faster) host\b|"
                       r"\bnot kept\b|\bone-off\b", re.I)


def test_no_narrative_of_how_the_project_was_built():
    files = [README, *PAGES, *sorted((ROOT / "src" / "cdp").rglob("*.py"))]
    hits = [f"{f.relative_to(ROOT)}:{i}: {line.strip()[:80]}" for f in files
            for i, line in enumerate(f.read_text().splitlines(), 1) if NARRATIVE.search(line)]
    assert not hits, "history belongs in CHANGELOG.md and the records, not the docs:\n" + "\n".join(hits)

"""The README's library example runs as written, and the result tables it quotes are the records' own."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    ns: dict = {}
    for code in blocks:
        exec(compile(code, str(README), "exec"), ns)
    assert ns["act"].shape == (256, 2) and ns["lam"].shape == (256,)
    assert ns["loss"].requires_grad


def test_readme_names_the_two_commands():
    text = README.read_text()
    assert 'pip install -e . && cdp demo' in text
    assert 'pip install -e ".[dev]" && python -m pytest -q' in text


def test_readme_tables_are_the_records_own():
    from cdp.report import sync_blocks

    stale = sync_blocks(README, check=True)
    assert not stale, f"README tables differ from the records in results/: run `cdp report --sync README.md` ({stale})"


def test_relative_links_in_the_docs_point_at_files_that_exist():
    root = README.parent
    for doc in [README, *sorted((root / "docs").glob("*.md"))]:
        for link in re.findall(r"\]\(([^)#]+)\)", doc.read_text()):
            if not link.startswith(("http://", "https://")):
                assert (doc.parent / link).exists(), f"{doc.name} links to {link}, which is not there"

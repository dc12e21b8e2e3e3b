"""The README's library example runs as written."""

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

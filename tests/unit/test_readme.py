"""The README's example runs as written (with a test-owned heap name)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.skipif(not README.exists(), reason="run from a source checkout")
def test_readme_examples_run(heap_name: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = README.read_text()
    examples = re.findall(r"```python\n(.*?)```\n\nIt prints:\n\n```text\n(.*?)```", text, re.S)
    assert len(examples) == 3 and '"my-swarm"' in examples[0][0]
    for code, promised in examples:
        if "langgraph" in code and importlib.util.find_spec("langgraph") is None:
            continue  # the test extra brings it from Python 3.10 on
        exec(compile(code.replace('"my-swarm"', repr(heap_name)), "README.md", "exec"), {})
        assert capsys.readouterr().out == promised


@pytest.mark.skipif(not README.exists(), reason="run from a source checkout")
def test_readme_setup_commands_are_the_ones_ci_runs() -> None:
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert 'pip install ".[test]" && swarmheap demo' in text
    assert "\npython -m pytest " in text
    assert 'pip install -q ".[test]"' in ci and "python3 -m pytest" in ci

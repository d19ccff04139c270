"""README's Python snippets run as copied, each on its own (a snippet that leans on an import
or a variable of another one fails here, not in a reader's session)."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _snippets():
    with open(README) as f:
        text = f.read()
    return [(text[: m.start()].count("\n") + 2, m.group(1))
            for m in re.finditer(r"```python\n(.*?)```", text, re.S)]


def test_readme_has_python_snippets():
    assert len(_snippets()) >= 4


@pytest.mark.parametrize("line,code", _snippets(), ids=lambda v: "line-%s" % v
                         if isinstance(v, int) else "")
def test_a_readme_snippet_runs_as_copied(line, code):
    exec(compile(code, "README.md:%d" % line, "exec"), {"__name__": "readme_snippet"})

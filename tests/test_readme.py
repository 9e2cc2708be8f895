"""The README's usage example runs as written."""
import pathlib
import re


def test_readme_example_runs():
    text = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    exec(compile(code, "README.md", "exec"), {})


def test_readme_links_only_to_files_that_exist():
    """Every link and every file path the README names is a file of this repository."""
    root = pathlib.Path(__file__).parent.parent
    text = (root / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)\)", text)
    paths = re.findall(r"`([\w./-]+/[\w.-]+\.(?:py|md|sh|json|png|txt))`", text)
    assert links and paths
    missing = sorted({p for p in links + paths
                      if "://" not in p and (p.startswith("..") or not (root / p).exists())})
    assert not missing, f"README.md names files that do not exist: {missing}"

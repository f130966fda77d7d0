"""The documents match the code: the page generated from the schema, the versions the README was tested with."""

from pathlib import Path

from analysis.schema import markdown

ROOT = Path(__file__).resolve().parents[1]


def test_results_schema_doc_is_the_one_generated_from_the_schema():
    doc = ROOT / "docs" / "results-schema.md"
    assert doc.read_text() == markdown(), "docs/results-schema.md is out of date: run `make docs`"


def test_options_doc_is_the_one_generated_from_the_parsers():
    from sweeps.options_doc import markdown as options_markdown

    doc = ROOT / "docs" / "options.md"
    assert doc.read_text() == options_markdown(), "docs/options.md is out of date: run `make docs`"


def test_the_readme_tested_with_line_agrees_with_the_pins():
    """The README's "Tested with" versions: torch is the Makefile's pin (also the `torch==` the README names), and
    every version satisfies pyproject's requirement for it, so the line cannot drift from the pins."""
    import re
    import tomllib

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = [line for line in readme.splitlines() if line.startswith("Tested with ")]
    assert len(lines) == 1, "README.md needs one line 'Tested with Python X, torch Y, ...'"
    tested = dict(item.split(" ") for item in lines[0].removeprefix("Tested with ").rstrip(".").split(", "))
    assert set(tested) == {"Python", "torch", "Ray", "Optuna", "Polars", "PyArrow"}, tested
    pin = re.search(r"^TORCH_VERSION \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert tested["torch"] == pin and f"`torch=={pin}`" in readme
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert tested["Python"] in SpecifierSet(project["requires-python"])
    required = {(r := Requirement(d)).name.lower(): r.specifier for d in project["dependencies"]}
    for name, version in tested.items():
        if name != "Python":
            spec = required[name.lower()]
            assert version in spec, f"{name} {version} is outside pyproject's {spec}"

"""The documents generated from code match the code."""

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

"""The docs cannot drift: the options reference is what the code generates, every number of the README's results
table is its results file's, and every link in the README and docs/ leads to a file that exists."""

from __future__ import annotations

import json
import re

import pytest

from conftest import ROOT
from resnets.recipes import EXPERIMENTS
from resnets.reference import reference

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))


def _table_rows(text: str) -> list[list[str]]:
    "The rows of the README's results table (the one with a results-file column), as lists of cells."
    head = next(i for i, line in enumerate(text.splitlines()) if line.startswith("| #") and "results file" in line)
    rows = []
    for line in text.splitlines()[head + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_the_options_reference_is_current():
    assert (ROOT / "docs" / "options.md").read_text() == reference(), "docs/options.md is out of date: run make docs"


def test_every_number_in_the_readme_results_table_is_its_results_file_s():
    rows = _table_rows(README.read_text())
    assert len(rows) >= 5 and {r[0] for r in rows} == {"1", "2", "3", "4", "5"}
    for number, _, ours, book, link in rows:
        path = re.fullmatch(r"\[[^]]+\]\(([^)]+)\)", link).group(1)
        r = json.loads((ROOT / path).read_text())
        assert f"{r['history'][-1]['accuracy']:.4f}" == ours, (number, path)
        assert f"{EXPERIMENTS[r['experiment']].book_accuracy[-1]:.4f}" == book, (number, path)


def test_the_table_check_fails_on_a_wrong_number(tmp_path, monkeypatch):
    "The check itself can fail: a README whose table says 0.6590 for experiment 1 is caught."
    text = README.read_text().replace("| 0.6454 |", "| 0.6590 |", 1)
    assert text != README.read_text()
    fake = tmp_path / "README.md"
    fake.write_text(text)
    monkeypatch.setitem(globals(), "README", fake)
    with pytest.raises(AssertionError):
        test_every_number_in_the_readme_results_table_is_its_results_file_s()


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
def test_every_link_leads_to_a_file(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if target.startswith(("http://", "https://", "#")):
            continue
        assert (page.parent / target.split("#")[0]).exists(), f"{page.name} links to {target}, which is not there"


def test_the_readme_stays_a_front_page():
    assert len(README.read_text().splitlines()) <= 150, "move detail to docs/guide.md"

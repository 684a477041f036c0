"""The docs say what the code and the example studies do: one duration for the quickstart, the data
folders a study's header names are the ones it reads, every ``weights:`` keyword in the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
STUDIES = sorted((ROOT / "studies").glob("*.yaml"))
DURATION = re.compile(r"about (a|one|two|three|\d+) minutes?")


def test_readme_and_the_quickstart_file_give_the_same_duration() -> None:
    readme = DURATION.findall((ROOT / "README.md").read_text().split("```")[1])  # the first command block
    header = DURATION.findall((ROOT / "studies" / "quickstart.yaml").read_text().split("\nname:")[0])
    assert readme and header and set(readme) == set(header), (readme, header)


@pytest.mark.parametrize("study", STUDIES, ids=[s.stem for s in STUDIES])
def test_a_study_header_names_only_the_data_folders_it_reads(study: Path) -> None:
    text = study.read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    data = yaml.safe_load(text)["data"]
    read = [str(v) for k, v in data.items() if k in ("folder", "train", "val", "csv") and v]
    for named in re.findall(r"data/[A-Za-z0-9_-]+", header):
        assert any(named in path for path in read), f"{study.name}'s header names {named}; it reads {read}"


def test_the_readme_lists_every_weights_keyword() -> None:
    from tlsearch_builtins.backbones._curated import PACKAGED

    readme = (ROOT / "README.md").read_text()
    sentence = readme[readme.index("`weights:` of a backbone is") :].split("\n\n")[0]
    for keyword in ("hub", "random", PACKAGED):
        assert f"`{keyword}`" in sentence, keyword

"""The shipped registry of the study's data sources (params/curation/biovfm21m_sources.yaml).

It must hold every row of the study's Table 1 as data: 61 data sets, about 21M images in
all, none downloaded (no root). The counts are the table's, so they are written here rather
than read from the paper's text, which a clean clone does not carry.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from biovfm_lib.curation.sources import load_sources

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = ROOT / "params" / "curation" / "biovfm21m_sources.yaml"

TABLE_ROWS = 61  # Table 1 of the study, both pages
TABLE_IMAGES = 21_472_715  # the sum of its #Images column
MODALITIES = {"x-ray", "ct", "mr", "ultrasound", "endoscopy", "dermoscopy", "microscopy",
              "fundus", "octa", "nuclear-medicine"}


@pytest.fixture(scope="module")
def sources():
    return load_sources(REGISTRY)


def test_registry_holds_every_row_of_the_table(sources):
    assert len(sources) == TABLE_ROWS
    names = [s.name for s in sources]
    assert len(set(names)) == len(names)
    assert names[0] == "BUS-B" and names[-1] == "E-ophtha"  # table order


def test_modalities_use_the_canonical_vocabulary(sources):
    for s in sources:
        parts = s.modality.split("+")
        assert set(parts) <= MODALITIES, f"{s.name}: {s.modality}"
        assert len(parts) == len(set(parts)), f"{s.name}: {s.modality}"
    multi = {s.name: s.modality for s in sources if "+" in s.modality}
    assert multi == {
        "RadImageNet": "ct+mr+ultrasound",
        "RP3D-DiagDS": "ct+mr+ultrasound+x-ray+nuclear-medicine",
        "SAM-Med2D-20M": "mr+ct+x-ray+nuclear-medicine+dermoscopy+endoscopy+ultrasound+fundus",
    }


def test_every_source_is_documented_and_none_is_downloaded(sources):
    for s in sources:
        assert s.year is not None and 2000 <= s.year <= 2024, s.name
        assert s.images is not None and s.images > 0, s.name
        assert s.reference and s.reference.startswith("["), s.name
        assert s.root is None and not s.available, s.name
        assert s.reader == "auto", s.name
        assert s.home is None or s.home.startswith("https://"), s.name


def test_total_images_match_the_name_21m(sources):
    total = sum(s.images for s in sources)
    assert total == TABLE_IMAGES
    assert 20_500_000 <= total <= 22_000_000


def test_a_few_rows_exactly_as_the_table_says(sources):
    by_name = {s.name: s for s in sources}
    assert (by_name["ChestXray-14"].year, by_name["ChestXray-14"].images) == (2017, 86524)
    assert (by_name["RP3D-DiagDS"].year, by_name["RP3D-DiagDS"].images) == (2023, 5274618)
    assert (by_name["CHASE_DB1"].year, by_name["CHASE_DB1"].images) == (2011, 20)
    assert (by_name["Montgomery-CXR"].year, by_name["Montgomery-CXR"].images) == (2014, 138)


GOOD = "  - {name: ok-source, modality: ct}\n"


@pytest.mark.parametrize(("entry", "problem"), [
    ("  - {name: bad-reader, modality: ct, reader: no-such-reader}\n",
     r"source bad-reader: reader: .*unknown reader 'no-such-reader'"),
    ("  - {name: 'Montgomery CXR', modality: x-ray}\n", r"source Montgomery CXR: name: "),
    ("  - {name: extra-key, modality: ct, url: 'https://example.org'}\n",
     r"source extra-key: url: Extra inputs are not permitted"),
])
def test_an_invalid_entry_is_named(tmp_path, entry, problem):
    path = tmp_path / "sources.yaml"
    path.write_text("sources:\n" + GOOD + entry)
    with pytest.raises(ValueError, match=problem):
        load_sources(path)


def test_a_repeated_name_is_an_error(tmp_path):
    path = tmp_path / "sources.yaml"
    path.write_text("sources:\n" + GOOD + GOOD)
    with pytest.raises(ValueError, match="'ok-source' appears more than once"):
        load_sources(path)

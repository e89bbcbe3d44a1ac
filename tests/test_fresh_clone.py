"""The shipped examples run from a clone of the repository alone: what they read is inside it, and the
UCI Adult sample in specs/data/ is what its README says (tests of the whole set in ../shared skip
when it is absent)."""

import hashlib
import re
from pathlib import Path

import pytest

from helpers import EXAMPLES, ROOT
from specc.data.prepare import prepare
from specc.language.spec import ImagesSource
from specc.training.run import load_spec

SAMPLE = ROOT / "specs" / "data" / "adult_sample.data"
SHARED_ADULT = ROOT.parent / "shared" / "data" / "adult" / "adult.data"  # README: ../shared beside the clone
needs_shared_adult = pytest.mark.skipif(not SHARED_ADULT.is_file(),
                                        reason=f"the whole UCI Adult set is not beside the repository ({SHARED_ADULT})")


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


@pytest.mark.parametrize("spec_path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_spec_reads_only_files_in_the_repository(spec_path):
    spec, _ = load_spec(spec_path)
    assert _inside(spec.data.source.path, ROOT), spec.data.source.path
    # a file, or the folder an images(...) source reads (its class folders, in the repository)
    source = spec.data.source
    assert source.path.is_file() or (isinstance(source, ImagesSource) and source.path.is_dir()), source.path
    for init in spec.inits:  # a pretrained run: trained first from another example (see finetune.spec)
        assert _inside(init.run, ROOT / "runs"), init.run


def test_adult_sample_is_what_its_readme_says():
    readme = (ROOT / "specs" / "data" / "README.md").read_text()
    digest = re.search(r"\(sha256 `([0-9a-f]{64})`", readme).group(1)
    data = SAMPLE.read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest
    lines = data.decode().splitlines()
    assert len(lines) == 4000 and "first 4,000 of the 32,561 rows" in readme
    assert lines[0] == ("39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, "
                        "Male, 2174, 0, 40, United-States, <=50K")
    assert all(len(line.split(", ")) == 15 for line in lines)
    assert "CC BY 4.0" in readme and "Kohavi" in readme and "Becker" in readme


def test_adult_spec_trains_on_the_sample():
    spec, _ = load_spec(ROOT / "specs" / "adult.spec")
    assert spec.data.source.path.resolve() == SAMPLE.resolve()
    prepared = prepare(spec.data, spec.model.inputs)
    assert (prepared.n_train, prepared.n_valid) == (3200, 800)  # last(0.2) of 4,000 rows
    assert prepared.vocabs["salary"].size == 2


@needs_shared_adult
def test_adult_sample_is_the_first_rows_of_the_whole_set():
    with open(SHARED_ADULT, "rb") as f:
        head = b"".join(f.readline() for _ in range(4000))
    assert SAMPLE.read_bytes() == head


@needs_shared_adult
def test_readme_command_for_the_whole_adult_set(monkeypatch):
    # README: from the repository root, --set paths are relative to the working directory.
    monkeypatch.chdir(ROOT)
    spec, _ = load_spec("specs/adult.spec", ['data.source.path="../shared/data/adult/adult.data"'])
    assert spec.data.source.path.resolve() == SHARED_ADULT.resolve()
    prepared = prepare(spec.data, spec.model.inputs)
    assert (prepared.n_train, prepared.n_valid) == (26049, 6512)

"""Shared fixtures: small generated ratings sets with specs beside them (plain helpers are in helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import collab_spec, copy_ratings

from specc.data import synth

if os.environ.get("MUTANT_UNDER_TEST"):  # under mutmut (docs/mutation-testing.md): its configuration is read
    from mutmut.configuration import config  # from the working folder, once: read it now, before a test's chdir

    config()


@pytest.fixture(scope="session")
def ratings_dir(tmp_path_factory) -> Path:
    """A small generated ratings set (60 users, 80 items, 3,000 ratings) and item titles."""
    folder = tmp_path_factory.mktemp("ratings")
    user, item, rating, titles = synth.generate(60, 80, 3000, seed=7)
    synth.write(folder / "ratings.csv", user, item, rating)
    synth.write_items(folder / "items.csv", titles)
    return folder


@pytest.fixture
def tiny(ratings_dir, tmp_path) -> Path:
    """A collab spec over the small ratings set, in its own folder."""
    copy_ratings(ratings_dir, tmp_path)
    return collab_spec(tmp_path)

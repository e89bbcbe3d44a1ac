"""specs/data/interactions.csv: generated implicit feedback whose choices follow hidden tastes."""

from pathlib import Path

import numpy as np
import pytest

from specc.data import synth

SHIPPED = Path(__file__).resolve().parent.parent / "specs" / "data" / "interactions.csv"
USERS, ITEMS, COUNT = 943, 1682, 60_000  # the documented command's defaults (specs/data/README.md)


@pytest.fixture(scope="module")
def shipped() -> np.ndarray:
    """The shipped file's rows as an int64 (n, 3) array: user, item, timestamp."""
    assert SHIPPED.read_text().partition("\n")[0] == "user,item,timestamp"
    return np.loadtxt(SHIPPED, delimiter=",", skiprows=1, dtype=np.int64)


@pytest.fixture(scope="module")
def generated() -> synth.Interactions:
    """What the documented command generates, with its hidden structure."""
    return synth.generate_interactions(USERS, ITEMS, COUNT, seed=0)


def test_shipped_file_is_what_the_documented_command_writes(tmp_path):
    out = tmp_path / "interactions.csv"
    assert synth.main(["--interactions", str(out)]) == 0
    assert out.read_bytes() == SHIPPED.read_bytes()


def test_shipped_file_has_the_documented_shape(shipped):
    user, item, _ = shipped.T
    assert len(shipped) == COUNT
    assert set(np.unique(user)) == set(range(1, USERS + 1))
    assert item.min() >= 1 and item.max() <= ITEMS


def test_each_pair_at_most_once_and_each_user_at_least_five(shipped):
    user, item, _ = shipped.T
    assert len(np.unique(user * (ITEMS + 1) + item)) == len(shipped)
    assert np.bincount(user)[1:].min() >= synth.MIN_PER_USER == 5


def test_timestamps_rise_within_each_user_and_rows_are_in_time_order(shipped):
    user, _, timestamp = shipped.T
    assert (np.diff(timestamp) >= 0).all()
    by_user = np.lexsort((np.arange(len(user)), user))  # each user's rows, in file order
    same_user = np.diff(user[by_user]) == 0
    assert (np.diff(timestamp[by_user])[same_user] > 0).all()


def test_generator_returns_the_rows_it_writes(shipped, generated):
    assert (np.stack([generated.user, generated.item, generated.timestamp], axis=1) == shipped).all()


def favourite_genre_lift(data: synth.Interactions) -> float:
    """Mean share of a user's interactions in their favourite hidden genre, over the share that
    genre would get if users chose by popularity alone."""
    favourite = data.user_factors.argmax(axis=1)  # (users,)
    in_favourite = data.genre[data.item - 1] == favourite[data.user - 1]
    share = np.bincount(data.user - 1, weights=in_favourite) / np.bincount(data.user - 1)
    genre_mass = np.bincount(data.genre, weights=data.popularity) / data.popularity.sum()
    return float(share.mean() / genre_mass[favourite].mean())


def test_users_over_choose_their_favourite_hidden_genre(generated):
    # With beta = 0 choices follow popularity alone: the favourite genre gets about its popularity share.
    assert 0.8 < favourite_genre_lift(synth.generate_interactions(USERS, ITEMS, COUNT, seed=0, beta=0.0)) < 1.25
    assert favourite_genre_lift(generated) > 3.0


def test_activity_respects_the_minimum_the_cap_and_the_total():
    counts = synth.activity(np.random.default_rng(1), 10, 95, minimum=5, cap=10)
    assert counts.sum() == 95 and counts.min() >= 5 and counts.max() <= 10
    with pytest.raises(ValueError, match="do not fit"):
        synth.activity(np.random.default_rng(1), 10, 101, minimum=5, cap=10)

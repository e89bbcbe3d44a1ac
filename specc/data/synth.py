"""Seeded generators of MovieLens-shaped ratings and interactions (MovieLens cannot be redistributed).

Users and items get latent factors over a few hidden genres, biases and a popularity skew:
    rating = clip(round(mean + user_bias + item_bias + <user, item> + noise), 1, 5)
Item popularity follows a Zipf-like law and user activity a log-normal one, as in MovieLens.
Interactions (implicit feedback, no rating) are chosen by the same kind of hidden structure:
a user picks items one after another, each with probability ∝ popularity * exp(beta * <user, item>).
Run `python -m specc.data.synth --help`.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GENRES = ("Action", "Romance", "Comedy", "Horror", "Documentary", "Sci-Fi", "Drama", "Animation")
_WORDS = ("Night", "River", "Empire", "Garden", "Signal", "Harbor", "Glass", "Winter", "Echo", "Machine",
          "Orchard", "Storm", "Mirror", "Lantern", "Frontier", "Letter", "Island", "Circus", "Paper", "Engine")


def generate(users: int, items: int, ratings: int, seed: int = 0, factors: int = len(GENRES)):
    """(user, item, rating) int arrays and per-item (title, genre); each pair rated at most once."""
    if ratings > users * items:
        raise ValueError("more ratings than user-item pairs")
    rng = np.random.default_rng(seed)
    # Popularity: item of rank r is drawn with weight r^-0.9; activity: log-normal per user.
    item_weight = rng.permutation(np.arange(1, items + 1) ** -0.9)
    user_weight = rng.lognormal(0.0, 1.0, users)
    item_p, user_p = item_weight / item_weight.sum(), user_weight / user_weight.sum()
    u_chunks, i_chunks, seen, have = [], [], np.zeros(0, np.int64), 0
    while have < ratings:
        n = int((ratings - have) * 1.3) + 1000
        u = rng.choice(users, n, p=user_p)
        i = rng.choice(items, n, p=item_p)
        key = np.concatenate([seen, u.astype(np.int64) * items + i])
        _, first = np.unique(key, return_index=True)
        keep = np.sort(first)
        keep = keep[keep >= len(seen)] - len(seen)
        keep = keep[: ratings - have]
        u_chunks.append(u[keep]), i_chunks.append(i[keep])
        seen = np.concatenate([seen, u[keep].astype(np.int64) * items + i[keep]])
        have += len(keep)
    user = np.concatenate(u_chunks)
    item = np.concatenate(i_chunks)

    # Each item leans to one genre; users like some genres and dislike others.
    genre = rng.integers(0, factors, items)
    item_f = rng.normal(0.0, 0.25, (items, factors))
    item_f[np.arange(items), genre] += 1.0
    user_f = rng.normal(0.0, 0.45, (users, factors))
    popularity = np.log(item_weight / item_weight.max())
    item_bias = rng.normal(0.0, 0.35, items) + 0.08 * popularity
    user_bias = rng.normal(0.0, 0.3, users)
    noise = rng.normal(0.0, 0.7, len(user))
    score = 3.9 + user_bias[user] + item_bias[item] + np.einsum("nk,nk->n", user_f[user], item_f[item]) + noise
    rating = np.clip(np.rint(score), 1, 5).astype(np.int64)

    titles = [f"{_WORDS[rng.integers(len(_WORDS))]} {_WORDS[rng.integers(len(_WORDS))]} ({GENRES[g % len(GENRES)]})"
              for g in genre]
    return user + 1, item + 1, rating, titles


# Interactions: the defaults that specs/data/interactions.csv was written with (see specs/data/README.md).
BETA = 2.0                 # how strongly taste, beside popularity, decides what a user picks
MIN_PER_USER = 5           # every user has at least this many interactions
EPOCH = 1_577_836_800      # 2020-01-01 00:00 UTC: the earliest a user's first interaction can be
_YEAR = 365 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Interactions:
    """Generated implicit feedback and the hidden structure that chose it.

    | field        | shape            | meaning                                                   |
    |--------------|------------------|-----------------------------------------------------------|
    | user, item   | (n,) int64       | 1-based ids; each pair at most once                       |
    | timestamp    | (n,) int64       | seconds since 1970; rows sorted by it, rising per user    |
    | genre        | (items,) int64   | item k+1's hidden genre, 0-based (GENRES[genre % 8])      |
    | item_factors | (items, factors) | noise plus 1.0 at the item's genre                        |
    | user_factors | (users, factors) | a user's taste for each genre                             |
    | popularity   | (items,)         | item k+1's Zipf weight, rank^-0.9                         |
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    genre: np.ndarray
    item_factors: np.ndarray
    user_factors: np.ndarray
    popularity: np.ndarray


def activity(rng: np.random.Generator, users: int, total: int, minimum: int, cap: int) -> np.ndarray:
    """Interactions per user: `minimum` each plus a log-normal share of the rest, none above `cap`."""
    if not minimum * users <= total <= cap * users:
        raise ValueError(f"{total} interactions do not fit {users} users with {minimum} to {cap} each")
    weight = rng.lognormal(0.0, 1.0, users)
    counts = minimum + rng.multinomial(total - minimum * users, weight / weight.sum())
    while (over := counts > cap).any():  # hand what the busiest users cannot take to the others
        spare = int((counts[over] - cap).sum())
        counts[over] = cap
        room = weight * (counts < cap)
        counts += rng.multinomial(spare, room / room.sum())
    return counts


def generate_interactions(users: int, items: int, interactions: int, seed: int = 0,
                          factors: int = len(GENRES), beta: float = BETA) -> Interactions:
    """Implicit feedback whose choices follow hidden genres, tastes and popularity (see Interactions)."""
    rng = np.random.default_rng(seed)
    popularity = rng.permutation(np.arange(1, items + 1) ** -0.9)
    counts = activity(rng, users, interactions, MIN_PER_USER, items // 2)
    genre = rng.integers(0, factors, items)
    item_f = rng.normal(0.0, 0.25, (items, factors))
    item_f[np.arange(items), genre] += 1.0
    user_f = rng.normal(0.0, 1.0, (users, factors))

    # Each user picks items one at a time, each time among those not yet picked, with probability
    # ∝ popularity * exp(beta * <user, item>). Sorting logits plus Gumbel noise draws exactly that
    # sequence (the Gumbel-top-k trick), all users at once; a user's first counts[u] are theirs, in order.
    logits = np.log(popularity) + beta * (user_f @ item_f.T)
    order = np.argsort(-(logits + rng.gumbel(size=logits.shape)), axis=1, kind="stable")
    user = np.repeat(np.arange(users), counts)
    starts = np.cumsum(counts) - counts
    rank = np.arange(len(user)) - np.repeat(starts, counts)
    item = order[user, rank]

    # Time: each user starts somewhere in the first year and stays for a stretch of a week to a year,
    # spread over their interactions; gaps are exponential, at least a second, so times strictly rise.
    start = EPOCH + rng.integers(0, _YEAR, users)
    pace = rng.uniform(_YEAR / 52, _YEAR, users) / counts
    gaps = 1 + np.floor(rng.exponential(pace[user])).astype(np.int64)
    gaps[starts] = 0
    elapsed = np.cumsum(gaps)
    timestamp = start[user] + elapsed - np.repeat(elapsed[starts], counts)
    by_time = np.lexsort((user, timestamp))
    return Interactions(user[by_time] + 1, item[by_time] + 1, timestamp[by_time], genre, item_f, user_f,
                        popularity)


def write(path: Path, user, item, rating) -> None:
    """Write `user,item,rating` rows atomically."""
    _write_columns(path, ("user", "item", "rating"), (user, item, rating))


def write_interactions(path: Path, data: Interactions) -> None:
    """Write `user,item,timestamp` rows atomically, in the order `data` holds them (by time)."""
    _write_columns(path, ("user", "item", "timestamp"), (data.user, data.item, data.timestamp))


def _write_columns(path: Path, names, columns) -> None:
    """Write integer columns as a CSV with a header, through a temporary file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        f.write(",".join(names) + "\n")
        block = 1_000_000
        for s in range(0, len(columns[0]), block):
            rows = np.stack([c[s:s + block] for c in columns], axis=1)
            np.savetxt(f, rows, fmt="%d", delimiter=",")
    os.replace(tmp, path)


def write_items(path: Path, titles) -> None:
    """Write `item,title,genre` rows atomically: the names `specc inspect --names` shows, and each item's
    genre (the one its title ends with) as a column of its own, for a side table (specs/svdpp.spec)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        f.write("item,title,genre\n")
        for k, title in enumerate(titles, start=1):
            f.write(f"{k},{title},{title.rsplit(' (', 1)[1].rstrip(')')}\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specc.data.synth", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", help="ratings CSV to write (optional with --interactions)")
    parser.add_argument("--users", type=int, default=943)
    parser.add_argument("--items", type=int, default=1682)
    parser.add_argument("--ratings", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--items-out", type=Path, help="also write item titles here")
    parser.add_argument("--interactions", type=Path, metavar="PATH",
                        help="write implicit feedback (user,item,timestamp) here, chosen by hidden tastes")
    parser.add_argument("--interaction-count", type=int, default=60_000, metavar="N",
                        help="how many interactions (default 60000)")
    parser.add_argument("--beta", type=float, default=BETA,
                        help=f"interactions: how strongly taste beside popularity decides (default {BETA})")
    args = parser.parse_args(argv)
    if args.out is None and args.interactions is None:
        parser.error("give a ratings CSV to write, --interactions PATH, or both")
    if args.items_out is not None and args.out is None:
        parser.error("--items-out goes with a ratings CSV to write")
    if args.out is not None:
        user, item, rating, titles = generate(args.users, args.items, args.ratings, args.seed)
        write(args.out, user, item, rating)
        if args.items_out:
            write_items(args.items_out, titles)
    if args.interactions is not None:
        data = generate_interactions(args.users, args.items, args.interaction_count, args.seed, beta=args.beta)
        write_interactions(args.interactions, data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

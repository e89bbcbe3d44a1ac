"""A seeded generator of MovieLens-shaped ratings (MovieLens itself cannot be redistributed).

Users and items get latent factors over a few hidden genres, biases and a popularity skew:
    rating = clip(round(mean + user_bias + item_bias + <user, item> + noise), 1, 5)
Item popularity follows a Zipf-like law and user activity a log-normal one, as in MovieLens.
Run `python -m specc.data.synth --help`.
"""

from __future__ import annotations

import argparse
import os
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


def write(path: Path, user, item, rating) -> None:
    """Write `user,item,rating` rows atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        f.write("user,item,rating\n")
        block = 1_000_000
        for s in range(0, len(user), block):
            rows = np.stack([user[s:s + block], item[s:s + block], rating[s:s + block]], axis=1)
            np.savetxt(f, rows, fmt="%d", delimiter=",")
    os.replace(tmp, path)


def write_items(path: Path, titles) -> None:
    """Write `item,title` rows atomically (the names `specc inspect --names` shows)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        f.write("item,title\n")
        for k, title in enumerate(titles, start=1):
            f.write(f"{k},{title}\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specc.data.synth", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="ratings CSV to write")
    parser.add_argument("--users", type=int, default=943)
    parser.add_argument("--items", type=int, default=1682)
    parser.add_argument("--ratings", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--items-out", type=Path, help="also write item titles here")
    args = parser.parse_args(argv)
    user, item, rating, titles = generate(args.users, args.items, args.ratings, args.seed)
    write(args.out, user, item, rating)
    if args.items_out:
        write_items(args.items_out, titles)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

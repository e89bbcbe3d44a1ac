"""Implicit feedback: the training interactions (user, item), the negatives each step draws, the
loss over a positive and its negatives, and the ranking of every item for a validation user.

A row of implicit feedback is a positive pair. A loss over pairs (specc.training.losses.PAIRS) has each
training step draw `negatives` items per row, none of them one of the user's own training items, from a
generator seeded by the batch's place in the run alone (specc.data.augment.batch_generator), so a resumed
run draws what an unstopped one does and two processes draw what one does; a loss over the catalogue
(CATALOGUE) draws nothing and scores every item for each row's user. Validation ranks every item for each validation user
with the user's training items masked out, as the exported model does (specc.export.topk), and
scores the ranking with specc.training.ranking."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx

from specc.data.augment import batch_generator
from specc.language.spec import Implicit, Spec
from specc.model import grid
from specc.training import losses
from specc.training.metrics import VALID_BATCH, torch_loss

UNKNOWN = 0  # the vocabulary index of an id never seen in training: never drawn, never ranked
REDRAWS = 72  # rounds of redrawing the negatives that are one of the user's items, at most (a user with nearly every item)
# (user, item) scores computed at once when every item is ranked: on the CPU few enough that a chunk's
# embedding rows stay in cache (1 << 14 ranked MovieLens-sized data about 4x faster than 1 << 22, one
# thread, bench/recommend.py's torch line); on a GPU many, for few launches
RANK_CELLS = {"cpu": 1 << 14, "cuda": 1 << 22}
BITMAP_CELLS = 1 << 28  # users x items at most for a table of every pair (256 MB of bools), else a binary search
VALID_STAGE = -1  # the `stage` of the generator that draws the validation loss's negatives
LR_FIND_STAGE = -2  # and lr-find's


@dataclass(frozen=True)
class Interactions:
    """The training interactions as vocabulary indices, on the device: sorted by user (`users`,
    `items`), each user's span of them (`starts`, CSR style: user u's are items[starts[u]:starts[u+1]]),
    their keys user * n_items + item sorted (for a look-up of a pair), and how often each item
    occurs (`popularity`; the unknown item never). Where users x items is at most BITMAP_CELLS, a
    table of every pair (`bitmap`) answers a look-up in one read instead of a binary search."""

    users: torch.Tensor
    items: torch.Tensor
    starts: torch.Tensor
    keys: torch.Tensor
    popularity: torch.Tensor
    n_items: int  # the item vocabulary's size, the unknown index included
    bitmap: torch.Tensor | None = None  # bool [users * n_items]: whether each pair is a training interaction
    # each side table column the model reads: (its key, user or item; its value by the key's vocabulary index)
    sides: dict[str, tuple[str, torch.Tensor]] | None = None

    @classmethod
    def of(cls, feedback: Implicit, train: dict[str, np.ndarray], n_users: int, n_items: int,
           device: torch.device) -> Interactions:
        users = torch.from_numpy(np.ascontiguousarray(train[feedback.user])).to(device)
        items = torch.from_numpy(np.ascontiguousarray(train[feedback.item])).to(device)
        order = torch.argsort(users * n_items + items, stable=True)
        users, items = users[order], items[order]
        starts = torch.zeros(n_users + 1, dtype=torch.int64, device=device)
        starts[1:] = torch.cumsum(torch.bincount(users, minlength=n_users), 0)
        popularity = torch.bincount(items, minlength=n_items).double()
        popularity[UNKNOWN] = 0.0
        keys = users * n_items + items
        bitmap = None
        if n_users * n_items <= BITMAP_CELLS:
            bitmap = torch.zeros(n_users * n_items, dtype=torch.bool, device=device)
            bitmap[keys] = True
        return cls(users, items, starts, keys, popularity, n_items, bitmap)

    def seen(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Whether each (user, item) pair is a training interaction."""
        keys = users * self.n_items + items
        if self.bitmap is not None:
            return self.bitmap[keys]
        at = torch.searchsorted(self.keys, keys).clamp(max=len(self.keys) - 1)
        return self.keys[at] == keys

    def owned(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every training item of each of `users`: (the user's place in `users`, the item), one pair each."""
        counts = self.starts[users + 1] - self.starts[users]
        owner = torch.repeat_interleave(torch.arange(len(users), device=users.device), counts)
        first = torch.repeat_interleave(self.starts[users], counts)
        offset = torch.arange(len(owner), device=users.device) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts)
        return owner, self.items[first + offset]

    def mask(self, scores: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """`scores` [users, items] with each user's training items (and the unknown item) at -inf."""
        scores = scores.index_put(self.owned(users), torch.tensor(-torch.inf, device=scores.device))
        scores[:, UNKNOWN] = -torch.inf
        return scores

    def multi_hot(self, users: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[users, items]: 1 where the item is one of the user's training items, else 0."""
        hot = torch.zeros(len(users), self.n_items, dtype=dtype, device=users.device)
        return hot.index_put_(self.owned(users), torch.tensor(1, dtype=dtype, device=users.device))


def draw_negatives(inter: Interactions, users: torch.Tensor, n: int, sampling: str,
                   generator: torch.Generator) -> torch.Tensor:
    """[len(users), n] item indices, none the unknown item nor (but for a user who has nearly every
    item) one of the user's training items: drawn uniformly or by popularity, the clashes redrawn
    together until none is left (at most REDRAWS rounds)."""
    shape = (len(users), n)

    def draw() -> torch.Tensor:
        if sampling == "uniform":
            return torch.randint(1, inter.n_items, shape, generator=generator, device=users.device)
        picked = torch.multinomial(inter.popularity.float(), shape[0] * n, replacement=True, generator=generator)
        return picked.view(shape)

    owners = users[:, None].expand(shape)
    drawn = draw()
    for _ in range(REDRAWS):
        clash = inter.seen(owners, drawn)
        if not bool(clash.any()):  # one look at the host a round: one or two rounds at a few per cent of clashes
            break
        drawn = torch.where(clash, draw(), drawn)
    return drawn


def negatives_drawer(spec: Spec, inter: Interactions, stage: int):
    """xs, epoch, step -> the batch's inputs and its negatives [batch, negatives] after them; None for a
    loss that compares with no negatives (its declaration's `negatives`): nothing is drawn."""
    feedback = spec.data.feedback
    if not losses.loss(spec.train.loss).negatives:
        return None
    user = spec.model.inputs.index(feedback.user)

    def draw(xs: list, epoch: int, step: int) -> list:
        generator = batch_generator(spec.train.seed, stage, epoch, step, xs[0].device)
        return [*xs, draw_negatives(inter, xs[user], feedback.negatives, feedback.sampling, generator)]
    return draw


def scorer(spec: Spec, forward, sides: dict | None = None):
    """(users, items) -> the model's score of each pair, whatever order the model takes its inputs in (a side
    table's column looked up by its key: Interactions.sides)."""
    feedback, order = spec.data.feedback, spec.model.inputs

    def score(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        given = {feedback.user: users, feedback.item: items}
        given.update({name: table[given[key]] for name, (key, table) in (sides or {}).items()})
        return forward(*[given[name] for name in order])[:, 0]
    return score


def item_scorer(spec: Spec, forward, inter: Interactions):
    """users -> the model's score of every item for each [users, n_items]: the model's output, for a model of
    users (view = users); else, for a model in evaluation whose values of both a user and an item allow it,
    the model over the grid of users x items (specc.model.grid); else the model run on each user paired with
    every item."""
    return item_scoring(spec, forward, inter)[0]


def item_scoring(spec: Spec, forward, inter: Interactions):
    """item_scorer's scorer, and whether it scores over the model's grid."""
    feedback, n_items = spec.data.feedback, inter.n_items
    if feedback.per_user:  # the model reads the user, and side table columns of the user
        def user_scores(users: torch.Tensor) -> torch.Tensor:
            given = {feedback.user: users}
            given.update({name: table[users] for name, (_, table) in (inter.sides or {}).items()})
            return forward(*[given[name] for name in spec.model.inputs])
        return user_scores, False
    over = model_grid(spec, forward, inter) if isinstance(forward, fx.GraphModule) and not forward.training else None
    if over is not None:
        return _grid_scores(over, feedback, inter), True
    score = scorer(spec, forward, inter.sides)
    catalogue = torch.arange(n_items)

    def every_item(users: torch.Tensor) -> torch.Tensor:
        items = catalogue.to(users.device)
        return score(users.repeat_interleave(n_items), items.repeat(len(users))).view(len(users), n_items)
    return every_item, False


def model_grid(spec: Spec, model: fx.GraphModule, inter: Interactions) -> grid.Grid | None:
    """The model's grid of users x items (specc.model.grid), a side table's column on its key's side; None for
    a model of users (view = users), or where the model has no grid."""
    feedback = spec.data.feedback
    if feedback.per_user:
        return None
    sides = {feedback.user: grid.USER, feedback.item: grid.ITEM}
    sides.update({name: sides[key] for name, (key, _) in (inter.sides or {}).items()})
    return grid.grid_of(model, sides)


def _grid_scores(over: grid.Grid, feedback: Implicit, inter: Interactions):
    """users -> [users, n_items] from the model's Grid: the items' values computed once, at the first call."""
    items: dict = {}

    def values(side: str, key: str, index: torch.Tensor) -> dict:
        given = {key: index}
        given.update({name: table[index] for name, (of, table) in (inter.sides or {}).items() if of == key})
        return over.side_values(side, given)

    def on_grid(users: torch.Tensor) -> torch.Tensor:
        if not items:
            items.update(values(grid.ITEM, feedback.item, torch.arange(inter.n_items, device=users.device)))
        return over.scores(values(grid.USER, feedback.user, users), items)
    return on_grid


def pair_loss(spec: Spec, score, users: torch.Tensor, items: torch.Tensor, negatives: torch.Tensor,
              loss) -> torch.Tensor:
    """The loss of each positive (users, items) against its negatives [rows, n]."""
    n = negatives.shape[1]
    pos = score(users, items)
    neg = score(users.repeat_interleave(n), negatives.reshape(-1)).view(-1, n)
    return loss(pos, neg)


def catalogue_loss(catalogue, users: torch.Tensor, items: torch.Tensor, loss) -> torch.Tensor:
    """The loss of each positive (users, items) against every item of the catalogue but the unknown one
    (1 .. n_items - 1, `catalogue(who)` their scores for each of `who` [who, n_items - 1]), the positive's item
    its class. Each distinct user is scored once: its rows share its scores (the same loss and gradient as
    scoring it once a row, in fewer pairs)."""
    who, row = torch.unique(users, return_inverse=True)
    return loss(catalogue(who)[row], items - (UNKNOWN + 1))


def pairs_catalogue(score, n_items: int):
    """who -> [who, n_items - 1]: the pair scorer `score` on each of who paired with every item but the unknown
    one (as training scores the catalogue: each pair a row of the model, in training mode)."""
    def catalogue(who: torch.Tensor) -> torch.Tensor:
        items = torch.arange(UNKNOWN + 1, n_items, device=who.device)
        return score(who.repeat_interleave(len(items)), items.repeat(len(who))).view(len(who), len(items))
    return catalogue


def _against_negatives(spec: Spec, score, inter: Interactions, user: int, item: int, base):
    """loss(xs) of a batch whose inputs end with its negatives (negatives_drawer)."""
    return lambda xs: pair_loss(spec, score, xs[user], xs[item], xs[-1], base)


def _against_catalogue(spec: Spec, score, inter: Interactions, user: int, item: int, base):
    """loss(xs) of a batch, each row against every item (catalogue_loss)."""
    catalogue = pairs_catalogue(score, inter.n_items)
    return lambda xs: catalogue_loss(catalogue, xs[user], xs[item], base)


def set_loss(scores: torch.Tensor, items: torch.Tensor, base) -> torch.Tensor:
    """The loss of each user's scores of every item [users, n_items] against the user's items multi-hot
    [users, n_items], the unknown item left out of both."""
    return base(scores[:, UNKNOWN + 1:], items[:, UNKNOWN + 1:])


def _against_sets(spec: Spec, score, inter: Interactions, user: int, item: int, base):
    """loss(xs) of a batch of users (view = users), the model's scores of every item against each user's
    training items."""
    def loss(xs):
        scores = score(xs[user])
        return set_loss(scores, inter.multi_hot(xs[user], scores.dtype), base)
    return loss


# How a batch's loss is taken for what the loss compares (LossDef.compares): a kind not here is a KeyError,
# never taken for another
BATCH_LOSS = {losses.PAIRS: _against_negatives, losses.CATALOGUE: _against_catalogue, losses.SETS: _against_sets}


def users_at_once(device: torch.device, n_items: int) -> int:
    """Users scored against every item in one run: RANK_CELLS of (user, item) pairs for the device."""
    return max(1, RANK_CELLS["cpu" if device.type == "cpu" else "cuda"] // n_items)


def ranked(scores_of, inter: Interactions, users: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each user's top k items and their scores (`scores_of`: item_scorer), every item ranked but the user's
    training items and the unknown item; a user never seen in training (the unknown index) gets the most
    popular items. Ties go to the lower index (a stable sort, as ONNX's TopK breaks them)."""
    n_items = inter.n_items
    chunk = users_at_once(users.device, n_items)
    tops, values = [], []
    for s in range(0, len(users), chunk):
        part = users[s:s + chunk]
        scores = scores_of(part)
        unknown = (part == UNKNOWN)[:, None]
        scores = torch.where(unknown, inter.popularity.to(scores.dtype)[None, :], scores)
        top, value = stable_top(inter.mask(scores, part), k)
        tops.append(top)
        values.append(value)
    return torch.cat(tops), torch.cat(values)


def stable_top(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's k largest scores and their places, as a stable sort of the row ranks them (equal scores in
    the order of their places): torch.topk's k put in that order, and the rows where topk may have picked
    among equal scores at the k-th (or where a score is NaN) sorted whole. A tenth of sorting every row, on
    a catalogue of 1,682 items."""
    k = min(k, scores.shape[1])
    top = torch.topk(scores, k, dim=1).indices
    top = torch.sort(top, dim=1).values  # the place order, which a stable sort keeps among equal scores
    order = torch.sort(torch.gather(scores, 1, top), dim=1, descending=True, stable=True).indices
    top = torch.gather(top, 1, order)
    values = torch.gather(scores, 1, top)
    unsure = ((scores >= values[:, -1:]).sum(1) > k) | torch.isnan(scores).any(1)
    if bool(unsure.any()):
        rows = unsure.nonzero()[:, 0]
        whole = torch.sort(scores[rows], dim=1, descending=True, stable=True)
        top[rows], values[rows] = whole.indices[:, :k], whole.values[:, :k]
    return top, values


def implicit_loss(spec: Spec, forward, params: list, inter: Interactions):
    """loss(xs, y) of a batch: the spec's loss of each positive against what it compares it with (its
    declaration's `compares`): the negatives after the inputs (negatives_drawer), or every item of `inter`'s
    catalogue; with the seed's l2 penalty over `params` when asked."""
    base, l2 = torch_loss(spec.train.loss), spec.train.l2
    order, feedback = spec.model.inputs, spec.data.feedback
    if feedback.per_user:  # a batch of users, the model's only input
        score, user, item = item_scorer(spec, forward, inter), order.index(feedback.user), None
    else:
        score, user, item = scorer(spec, forward, inter.sides), order.index(feedback.user), order.index(feedback.item)
    batch_loss = BATCH_LOSS[losses.loss(spec.train.loss).compares](spec, score, inter, user, item, base)

    def loss(xs, y):
        value = batch_loss(xs)
        if l2:
            value = value + l2 * torch.stack([(p * p).sum() for p in params]).sum()
        return value
    return loss


@dataclass(frozen=True)
class Scorers:
    """How validation scores the model: `pairs`, (users, items) -> a score each (None for a model of users);
    `every_item`, users -> [users, n_items] (item_scorer); `on_grid`, whether every_item is the model's grid,
    which scores every item for a user for less than the model takes on a few pairs."""

    pairs: object
    every_item: object
    on_grid: bool


def _valid_against_negatives(spec: Spec, scorers: Scorers, inter: Interactions, users: torch.Tensor,
                              items: torch.Tensor) -> float:
    """The mean loss of the validation interactions, each against negatives drawn once, from the seed: their
    scores read from each user's scores of every item on the model's grid, a run of users at a time (as
    `ranked` takes them), else the model run on the pairs."""
    feedback = spec.data.feedback
    generator = batch_generator(spec.train.seed, VALID_STAGE, 0, 0, users.device)
    negatives = draw_negatives(inter, users, feedback.negatives, feedback.sampling, generator)
    base, total = torch_loss(spec.train.loss), 0.0
    if not scorers.on_grid:
        for s in range(0, len(users), VALID_BATCH):
            part = slice(s, s + VALID_BATCH)
            value = pair_loss(spec, scorers.pairs, users[part], items[part], negatives[part], base)
            total += float(value) * len(users[part])
        return total / len(users)
    for part, mine, at in _user_runs(users, inter.n_items):
        scores = scorers.every_item(part)
        value = base(scores[at, items[mine]], scores[at[:, None], negatives[mine]])
        total += float(value) * len(mine)
    return total / len(users)


def _user_runs(users: torch.Tensor, n_items: int):
    """Each distinct user of `users` once, a run at a time whose scores of every item are about RANK_CELLS (as
    `ranked` takes them): (the run's users, the places in `users` of their rows, each such row's user's place
    in the run)."""
    who, owner = torch.unique(users, return_inverse=True)
    chunk = users_at_once(users.device, n_items)
    for s in range(0, len(who), chunk):
        mine = torch.nonzero((owner >= s) & (owner < s + chunk))[:, 0]
        yield who[s:s + chunk], mine, owner[mine] - s


def _valid_against_catalogue(spec: Spec, scorers: Scorers, inter: Interactions, users: torch.Tensor,
                             items: torch.Tensor) -> float:
    """The mean loss of the validation interactions, each against every item (catalogue_loss, the scores
    scorers.every_item's, as `ranked` takes them: over the model's grid where it has one), a run of users at a
    time whose scores are about RANK_CELLS. An item never seen in training is no class of the catalogue: its
    rows are left out (NaN when every row is one)."""
    base = torch_loss(spec.train.loss)

    def catalogue(who: torch.Tensor) -> torch.Tensor:  # every item but the unknown one
        return scorers.every_item(who)[:, UNKNOWN + 1:]

    known = items != UNKNOWN
    order = torch.argsort(users[known], stable=True)
    users, items = users[known][order], items[known][order]
    _, counts = torch.unique_consecutive(users, return_counts=True)
    ends = torch.cumsum(counts, 0).tolist()
    chunk = users_at_once(users.device, inter.n_items)
    total, start = 0.0, 0
    for s in range(0, len(ends), chunk):
        end = ends[min(s + chunk, len(ends)) - 1]
        part = slice(start, end)
        total += float(catalogue_loss(catalogue, users[part], items[part], base)) * (end - start)
        start = end
    return total / len(users) if len(users) else float("nan")


def _valid_against_sets(spec: Spec, scorers: Scorers, inter: Interactions, users: torch.Tensor,
                        items: torch.Tensor) -> float:
    """The mean loss of the validation users (view = users), each user's scores of every item
    (scorers.every_item) against its validation items (an item never seen in training left out), a run of
    users at a time."""
    base = torch_loss(spec.train.loss)
    known = items != UNKNOWN
    users, items = users[known], items[known]
    total, count = 0.0, 0
    for part, mine, at in _user_runs(users, inter.n_items):
        scores = scorers.every_item(part)
        hot = torch.zeros_like(scores).index_put_((at, items[mine]), torch.ones((), dtype=scores.dtype))
        total += float(set_loss(scores, hot, base)) * len(part)
        count += len(part)
    return total / count if count else float("nan")


# The validation loss for what the loss compares (LossDef.compares), as training takes it (BATCH_LOSS)
VALID_LOSS = {losses.PAIRS: _valid_against_negatives, losses.CATALOGUE: _valid_against_catalogue,
              losses.SETS: _valid_against_sets}


@torch.no_grad()
def validate(spec: Spec, model, inter: Interactions, valid: dict[str, torch.Tensor]) -> dict[str, float]:
    """The validation loss (VALID_LOSS: each validation interaction against negatives drawn once from the
    seed, or against every item) and the ranking metrics: every item ranked for each validation user, the
    user's training items masked out, relevant = the user's validation items."""
    from specc.training import ranking

    feedback = spec.data.feedback
    was_training = model.training
    model.eval()
    scores_of, on_grid = item_scoring(spec, model, inter)
    pairs = None if feedback.per_user else scorer(spec, model, inter.sides)  # a model of users scores no pairs
    scorers = Scorers(pairs, scores_of, on_grid)
    users, items = valid[feedback.user], valid[feedback.item]
    values = {"loss": VALID_LOSS[losses.loss(spec.train.loss).compares](spec, scorers, inter, users, items)}
    wanted = [losses.cutoff_of(m) for m in spec.train.metrics]
    if wanted:
        order = torch.argsort(users, stable=True)
        who, counts = torch.unique_consecutive(users[order], return_counts=True)
        indptr = np.concatenate([[0], np.cumsum(counts.cpu().numpy())])
        top, _ = ranked(scores_of, inter, who, max(k for _, k in wanted))
        values.update(ranking.ranking_scores(top.cpu().numpy(), indptr, items[order].cpu().numpy(), wanted))
    model.train(was_training)
    return values

"""A model of (user, item) pairs -> the same model over every user x item: the scores [users, items].

Each value of the lowered graph reads the user's columns, the item's, both or neither. A value of one
side is computed once per user (or once per item) and not once per pair; a value of both is computed on
a [users, items, ...] grid, the user's values broadcast along the items and the item's along the users,
which is what each pair alone gives only where the op that made it declares so (OpDef.grid). A dot
product of a user's value and an item's is one matrix product, the users' rows against the items'.
A graph with a value of both made by another op has no grid (`grid_of` gives None): its pairs are scored
one by one (specc.training.implicit.item_scorer)."""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from specc.model.lower import column_of, op_of

USER, ITEM = "user", "item"


class Grid:
    """The model's score of every item for each of a batch of users, from its values by side: `sides` holds
    the sides each value reads (grid_of), `dots` each dot product of a user's value and an item's."""

    def __init__(self, model: fx.GraphModule, sides: dict[fx.Node, frozenset],
                 dots: dict[fx.Node, tuple[fx.Node, fx.Node]]):
        self.model = model
        self.sides = sides  # fx node -> the sides its value reads: {USER}, {ITEM}, both, or none
        self.dots = dots  # the sum of a dot product -> (its user operand, its item operand)
        products = {total.args[0] for total in dots}  # computed within their sum's matrix product
        self.inputs = [n for n in model.graph.nodes if n.op == "placeholder"]
        self.nodes = [n for n in model.graph.nodes if n.op not in ("placeholder", "output") and n not in products]
        self.output = next(n for n in model.graph.nodes if n.op == "output").args[0]
        self.run = fx.Interpreter(model)  # its call_function, call_module, get_attr: fx's meaning of a node

    def side_values(self, side: str, inputs: dict[str, torch.Tensor]) -> dict[fx.Node, torch.Tensor]:
        """Every value that reads `side` alone (or nothing), from its inputs (column -> a batch of users or
        of items)."""
        env = {fnode: inputs[column_of(fnode)] for fnode in self.inputs if self.sides[fnode] == {side}}
        for fnode in self.nodes:
            if self.sides[fnode] <= {side}:
                env[fnode] = self._call(fnode, lambda n: env[n])
        return env

    def scores(self, users: dict[fx.Node, torch.Tensor], items: dict[fx.Node, torch.Tensor]) -> torch.Tensor:
        """[users, items]: each user's score of each item, from the users' values (side_values(USER, ...))
        and the items'."""
        n_users, n_items = len(next(iter(users.values()))), len(next(iter(items.values())))
        env: dict[fx.Node, torch.Tensor] = {}

        def lifted(fnode: fx.Node) -> torch.Tensor:  # a value as the grid reads it: [users, items, ...]
            side = self.sides[fnode]
            if side == {USER}:
                return users[fnode].unsqueeze(1)
            if side == {ITEM}:
                return items[fnode].unsqueeze(0)
            return env[fnode] if fnode in env else users.get(fnode, items.get(fnode))

        for fnode in self.nodes:
            if self.sides[fnode] != {USER, ITEM}:
                continue
            if fnode in self.dots:
                mine, theirs = self.dots[fnode]
                env[fnode] = (users[mine] @ items[theirs].T).unsqueeze(-1)
            else:
                env[fnode] = self._call(fnode, lifted)
        out = lifted(self.output)
        return out.expand(n_users, n_items, *out.shape[2:])[:, :, 0]

    def _call(self, fnode: fx.Node, value) -> torch.Tensor:
        args = fx.node.map_arg(fnode.args, value)
        kwargs = fx.node.map_arg(fnode.kwargs, value)
        return getattr(self.run, fnode.op)(fnode.target, args, kwargs)


def grid_of(model: fx.GraphModule, sides: dict[str, str]) -> Grid | None:
    """The model's Grid, `sides` naming the side of each input (its column -> USER or ITEM); None
    where an input has no side or a value of both sides is made by an op that does not declare `grid`."""
    of: dict[fx.Node, frozenset] = {}
    for fnode in model.graph.nodes:
        if fnode.op == "placeholder":
            if column_of(fnode) not in sides:
                return None
            of[fnode] = frozenset({sides[column_of(fnode)]})
        elif fnode.op != "output":
            of[fnode] = frozenset().union(*(of[n] for n in fnode.all_input_nodes))
            if of[fnode] == {USER, ITEM} and not getattr(op_of(fnode), "grid", False):
                return None
    return Grid(model, of, _dots(model, of))


def _dots(model: fx.GraphModule, of: dict[fx.Node, frozenset]) -> dict[fx.Node, tuple[fx.Node, fx.Node]]:
    """Each dot product (specc.model.lower's `dot`: a product, then its sum over the last axis) of a user's
    value and an item's: its sum -> (the user's operand, the item's)."""
    dots = {}
    for total in model.graph.nodes:
        if total.meta.get("op") != "dot" or total.target is not torch.sum:
            continue
        product = total.args[0]
        if product.target is not operator.mul or len(product.users) != 1:
            continue
        a, b = product.args
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
            continue
        if of[a] == {ITEM} and of[b] == {USER}:
            a, b = b, a
        if of[a] == {USER} and of[b] == {ITEM}:  # dot's operands are rows (its shape rule)
            dots[total] = (a, b)
    return dots

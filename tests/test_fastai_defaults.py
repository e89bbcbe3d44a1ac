"""The plan says which of fastai 1's defaults (the seed's, torch's) a spec trains with, and the
fastai 2 recipe it names gives fastai 2's schedule."""

import pytest

from helpers import prepared_spec
from specc.commands.cli import main
from specc.language.summary import describe

FASTAI1 = ("defaults: fastai 1's, the seed's (torch's OneCycleLR and AdamW have the same): pct_start=0.3, "
           "final_div=1e4 (the lr ends at peak / 250000), adam eps=1e-8\n"
           "  for fastai 2's, write fit_one_cycle(..., pct_start=0.25, final_div=4000) (the lr ends at peak / 1e5) "
           "and adam(eps=1e-5)")
FASTAI2 = ["train.optimizer=adam(betas=(0.9, 0.99), eps=1e-5, wd=0.01)",
           "train.fit=fit_one_cycle(epochs=3, lr=1e-2, pct_start=0.25, final_div=4000)"]


def test_check_and_show_plan_name_the_defaults_and_fastai_2s(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # show --stage plan draws its PNG here
    assert main(["check", str(tiny)]) == 0
    assert capsys.readouterr().out.endswith("\n" + FASTAI1 + "\n")
    assert main(["show", str(tiny), "--stage", "plan"]) == 0
    assert FASTAI1 + "\n" in capsys.readouterr().out


def test_a_spec_with_fastai_2s_values_gets_no_note(tiny):
    spec, _, plan = prepared_spec(tiny, [*FASTAI2, "data.batch=24"])
    text = describe(spec, plan)
    assert "defaults:" not in text and "fastai" not in text
    assert "over the first 75 steps (25%), then -> peak / 100000" in text  # 3 epochs of 2400 / 24 steps


def test_the_note_names_only_the_defaults_in_use(tiny):
    def note(*sets):
        spec, _, plan = prepared_spec(tiny, sets)
        return describe(spec, plan).split("\ndefaults: ")[1:]

    # Only pct_start: SGD has no eps, and with div=10 final_div=1e4 already ends at peak / 1e5.
    assert note("train.optimizer=sgd(momentum=0.9)", "train.fit=fit_one_cycle(epochs=1, lr=1e-2, div=10)") == [
        "fastai 1's, the seed's (torch's OneCycleLR and AdamW have the same): pct_start=0.3\n"
        "  for fastai 2's, write fit_one_cycle(..., pct_start=0.25)"]
    # fastai 2's end with another div: final_div = 1e5 / div.
    assert note("train.fit=fit_one_cycle(epochs=1, lr=1e-2, div=5, pct_start=0.25)", "train.optimizer=adam(eps=1e-5)") == [
        "fastai 1's, the seed's (torch's OneCycleLR and AdamW have the same): final_div=1e4 (the lr ends at peak / 50000)\n"
        "  for fastai 2's, write fit_one_cycle(..., final_div=20000) (the lr ends at peak / 1e5)"]
    # A constant learning rate: only Adam's eps.
    assert note("train.fit=fit(epochs=1, lr=1e-2)") == [
        "fastai 1's, the seed's (torch's OneCycleLR and AdamW have the same): adam eps=1e-8\n"
        "  for fastai 2's, write adam(eps=1e-5)"]
    assert note("train.fit=fit(epochs=1, lr=1e-2)", "train.optimizer=rmsprop()") == []


def test_the_named_recipes_give_fastai_1s_and_fastai_2s_schedules(tiny):
    # fastai 2: combined_cos(0.25, lr_max/25, lr_max, lr_max/1e5); fastai 1: pct 0.3, end lr_max/(25*1e4).
    from specc.training.optim import simulate_schedules

    peak = 1e-2
    for sets, pct, end in (((), 0.3, peak / 25 / 1e4), (FASTAI2, 0.25, peak / 1e5)):
        spec, _, plan = prepared_spec(tiny, [*sets, "data.batch=24"])  # 100 steps an epoch
        lrs, _ = simulate_schedules(spec, plan)["model"]
        total = plan.total_steps
        assert total == 300 and len(lrs) == total
        assert lrs[0] == pytest.approx(peak / 25, rel=1e-6)
        assert max(lrs) == pytest.approx(peak, rel=1e-6)
        assert lrs.index(max(lrs)) == int(pct * total) - 1  # torch's warm-up ends at step pct * total - 1
        assert lrs[-1] == pytest.approx(end, rel=1e-6)

"""Checks that need a CUDA device (skipped elsewhere; bench/gpu.sh runs them on the GPU machine):
the CUDA-graph step trains as the plain loop does, stops and resumes, the exported model runs under
onnxruntime's CUDA provider with the outputs torch gives, and a recommender's top k does too."""

import json

import numpy as np
import pytest
import torch
from helpers import StopAt, prepared_spec, roundtrip

from specc.training.loop import Interrupted, train
from specc.training.options import RunOptions

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_graph_step_trains_as_the_plain_loop():
    spec, prepared, plan = prepared_spec("specs/collab.spec", ["train.fit.epochs=2"])
    plain, plain_history = train(spec, prepared, plan, RunOptions("cuda", graph=False))
    fast, fast_history = train(spec, prepared, plan, RunOptions("cuda"))  # the default on CUDA: the graph
    a = [r.valid_loss for r in plain_history.records]
    b = [r.valid_loss for r in fast_history.records]
    assert b == pytest.approx(a, rel=2e-3)
    for (name, x), (_, y) in zip(plain.state_dict().items(), fast.state_dict().items()):
        assert float((x - y).abs().max()) < 5e-3 * max(1.0, float(x.abs().max())), name
    assert fast_history.step_lr == pytest.approx(plain_history.step_lr)


def test_graph_step_replays_the_uncaptured_step():
    """Capture leaves the weights as they were: the replayed run follows the same update taken
    uncaptured (same gather, same FlatAdam) to float rounding."""
    spec, prepared, plan = prepared_spec("specs/collab.spec", ["train.fit.epochs=1"])
    eager, _ = train(spec, prepared, plan, RunOptions("cuda", device_step="flat"))
    captured, _ = train(spec, prepared, plan, RunOptions("cuda"))
    for (name, x), (_, y) in zip(eager.state_dict().items(), captured.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-4, msg=name)


def test_graph_step_stops_and_resumes(tmp_path):
    spec, prepared, plan = prepared_spec("specs/collab.spec", ["train.fit.epochs=2"])
    whole, whole_history = train(spec, prepared, plan, RunOptions("cuda"))
    with pytest.raises(Interrupted) as stopped:
        train(spec, prepared, plan, RunOptions("cuda"), stop=StopAt(2000))
    state = roundtrip(stopped.value.state, tmp_path)
    resumed, resumed_history = train(spec, prepared, plan, RunOptions("cuda"), resume=state)
    assert resumed_history.records[-1].valid_loss == pytest.approx(whole_history.records[-1].valid_loss, rel=2e-3)


# 4,096 rows of ids, some never seen in training (users above 943, items above 1,682)
FEED = {"user": np.arange(4096, dtype=np.int64) % 950, "item": (np.arange(4096, dtype=np.int64) * 7) % 1700}


@pytest.fixture(scope="module")
def collab_run(tmp_path_factory):
    """specs/collab.spec trained on the GPU by the CLI, once for the tests below."""
    from specc.commands.cli import main

    out = tmp_path_factory.mktemp("collab") / "run"
    assert main(["train", "specs/collab.spec", "--device", "cuda", "--out", str(out), "--quiet"]) == 0
    return out


def test_cli_trains_on_cuda_and_onnxruntime_cuda_agrees_with_cpu(collab_run):
    from specc.inference.session import Session

    assert json.loads((collab_run / "run.json").read_text())["loop"] == "cuda-graph"
    gpu, cpu = Session(collab_run / "model.onnx", device="cuda"), Session(collab_run / "model.onnx", device="cpu")
    if gpu.provider != "CUDAExecutionProvider":
        pytest.skip("this onnxruntime has no CUDA provider")
    got, want = gpu.run_bound(FEED), cpu.run(FEED)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-3, atol=1e-3)


def test_exported_collab_model_runs_wholly_on_the_cuda_provider(collab_run):
    """Every node of the collab model (dense ids: no LabelEncoder) has a CUDA kernel: with the
    fallback to the CPU provider turned off, the session still builds, and runs from device buffers."""
    import onnxruntime as ort

    from specc.inference.session import Session

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider")
    want = Session(collab_run / "model.onnx", device="cpu").run(FEED)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    strict = ort.InferenceSession(str(collab_run / "model.onnx"), options, providers=["CUDAExecutionProvider"])
    assert strict.get_providers()[0] == "CUDAExecutionProvider"
    binding = strict.io_binding()
    buffers = {name: ort.OrtValue.ortvalue_from_numpy(values, "cuda", 0) for name, values in FEED.items()}
    for name, value in buffers.items():
        binding.bind_ortvalue_input(name, value)
    binding.bind_output("rating", "cuda")
    strict.run_with_iobinding(binding)
    np.testing.assert_allclose(binding.copy_outputs_to_cpu()[0], want["rating"], rtol=1e-3, atol=1e-3)


def test_a_recommender_ranks_on_the_grid_on_cuda_and_its_top_k_runs_on_the_cuda_provider(tmp_path):
    """specs/implicit.spec trained on the GPU (its validation ranked on the grid of users x items there); the
    exported top 10 under onnxruntime's CUDA provider returns the items and scores of its CPU provider."""
    from specc.commands.cli import main
    from specc.inference.session import Session

    out = tmp_path / "run"
    assert main(["train", "specs/implicit.spec", "--device", "cuda", "--out", str(out), "--quiet",
                 "--set", "train.fit.epochs=3"]) == 0
    users = {"user": np.array([*range(1, 944), 99999], dtype=np.int64)}
    gpu, cpu = Session(out / "model.onnx", device="cuda"), Session(out / "model.onnx", device="cpu")
    if gpu.provider != "CUDAExecutionProvider":
        pytest.skip("this onnxruntime has no CUDA provider")
    got, want = gpu.run(users), cpu.run(users)
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-3, atol=1e-3)
    gaps = np.abs(np.diff(want["scores"], axis=1)) > 1e-2  # ranks clearly apart on the CPU
    clear = np.ones_like(want["scores"], dtype=bool)
    clear[:, 1:] &= gaps
    clear[:, :-1] &= gaps
    assert (got["items"][clear] == want["items"][clear]).all()

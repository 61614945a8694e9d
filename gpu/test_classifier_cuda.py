"""The classifier's CUDA graphs against its eager forward, on the GPU machine
(`bash gpu/check.sh classifier`; YAP_GPU_CLASSIFIER names the trained model
folder). CI has no GPU: the padding these graphs rely on is checked there on
the CPU (yap_classifier/tests/test_graphs.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "yap_classifier" / "tests"))
from test_graphs import INPUTS  # noqa: E402
from yap_classifier.model import SequenceClassifier  # noqa: E402

from yap_classifier import window  # noqa: E402


def test_cuda_graphs_match_eager() -> None:
    built_model = Path(os.environ["YAP_GPU_CLASSIFIER"])
    graphed = SequenceClassifier.load(str(built_model), window_tokens=256, device="cuda", batch_size=4)
    eager = SequenceClassifier.load(str(built_model), window_tokens=256, device="cuda", cuda_graphs=False)
    assert graphed.cuda_graphs is not None and eager.cuda_graphs is None
    assert graphed.cuda_graphs.shapes == [(b, n) for b in (1, 2, 4) for n in (32, 64, 128, 256)]
    batch = [window.check_turns(t) for t in INPUTS]
    for chunk in (batch[:1], batch[4:5], batch[:3], batch[3:7], batch):  # the last (7 > 4) runs eager
        enc = graphed.tokenize(chunk)
        replayed = graphed.cuda_graphs.run(enc)
        assert (replayed is None) == (len(chunk) > 4)
        got = graphed.probabilities(chunk)
        want = eager.probabilities(chunk)
        assert (got - want).abs().max().item() <= 5e-3  # fp16 noise
    # replaying again gives the same numbers: no state leaks between shapes
    assert torch.equal(graphed.probabilities(batch[:2]), graphed.probabilities(batch[:2]))

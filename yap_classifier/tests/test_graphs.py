"""Bucket padding (the shapes CUDA graphs are captured at): padding an input
to a bucket must leave its probabilities as they were. The padding and the
forward are the same code the CUDA graphs replay, run here on the CPU. The
graphs themselves need a GPU: gpu/test_classifier_cuda.py, run by
`gpu/check.sh classifier` on the GPU machine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from yap_classifier.model import SequenceClassifier

from yap_classifier import graphs, window

RAMBLE = (
    "so um i was looking at my bank account this morning and there were like three charges i don't "
    "recognise and honestly i have no idea what half of these names even mean "
)
INPUTS = [
    ["can you look at my screen"],
    ["set a timer for five minutes"],
    ["which of these phones should i get", "what about this one"],
    ["tell me a joke", "ok another one", "what's on my screen right now"],
    [RAMBLE * 6 + "can you check this one for me"],  # cut to its tail
    ["est-ce que tu peux regarder mon écran", "これは何ですか 🙂"],
    ["lone surrogate \ud800 here", "what does this error say"],
]


def test_buckets_cover_the_window_and_the_batch_size() -> None:
    assert graphs.length_buckets(256) == (32, 64, 128, 256)
    assert graphs.length_buckets(100) == (32, 64, 100)
    assert graphs.length_buckets(512) == (32, 64, 128, 256, 512)
    assert graphs.batch_buckets(32) == (1, 2, 4, 8, 16, 32)
    assert graphs.batch_buckets(12) == (1, 2, 4, 8, 12)
    assert graphs.batch_buckets(1) == (1,)
    assert graphs.fit(33, (32, 64)) == 64
    assert graphs.fit(32, (32, 64)) == 32
    assert graphs.fit(65, (32, 64)) is None


def test_pack_pads_tokens_and_rows() -> None:
    enc = {
        "input_ids": torch.tensor([[101, 7, 102], [101, 102, 0]]),
        "token_type_ids": torch.zeros((2, 3), dtype=torch.long),
        "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
    }
    names = ("input_ids", "token_type_ids", "attention_mask")
    packed = graphs.pack(enc, names, batch=4, length=5, pad_id=9)
    assert packed.shape == (3, 4, 5)
    assert packed[0].tolist() == [[101, 7, 102, 9, 9], [101, 102, 0, 9, 9], [9] * 5, [9] * 5]
    assert packed[2].tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 0, 0, 0, 0]]
    assert not packed[1].any()
    with pytest.raises(ValueError, match="does not fit"):
        graphs.pack(enc, names, batch=1, length=5, pad_id=0)
    with pytest.raises(ValueError, match="does not fit"):
        graphs.pack(enc, names, batch=2, length=2, pad_id=0)


@pytest.mark.parametrize(("dtype", "tolerance"), [("float32", 1e-5), ("auto", 1e-2)])
def test_padding_to_a_bucket_keeps_the_probabilities(built_model: Path, dtype: str, tolerance: float) -> None:
    model = SequenceClassifier.load(str(built_model), window_tokens=256, device="cpu", dtype=dtype, batch_size=8)
    batch = [window.check_turns(t) for t in INPUTS]
    enc = model.tokenize(batch)
    rows, cols = enc["input_ids"].shape
    assert cols > 64  # the ramble makes the batch longer than the small buckets
    with torch.inference_mode():
        unpadded = model.probabilities(batch)
        worst = 0.0
        for length in (graphs.fit(cols, graphs.length_buckets(256)), 256):
            packed = graphs.pack(enc, model.input_names, batch=8, length=length, pad_id=model.pad_id)
            padded = graphs.forward(model.model, packed, model.input_names)
            assert padded.dtype == torch.float32
            assert not padded.isnan().any()  # the extra rows too
            worst = max(worst, (padded[:rows] - unpadded).abs().max().item())
        # each input alone, padded to its own bucket, as a lone session's turn is
        for turns, expected in zip(batch, unpadded, strict=True):
            one = model.tokenize([turns])
            length = graphs.fit(one["input_ids"].shape[1], graphs.length_buckets(256))
            assert length is not None
            packed = graphs.pack(one, model.input_names, batch=1, length=length, pad_id=model.pad_id)
            got = graphs.forward(model.model, packed, model.input_names)[0]
            worst = max(worst, (got - expected).abs().max().item())
    assert worst <= tolerance, f"{model.dtype}: padding moved a probability by {worst}"

import numpy as np
import pytest
import torch
from PIL import Image

import h_model
from h_model.checkpoint import save_checkpoint
from h_model.models import create_model
from h_model.preprocess import Preprocess


@pytest.fixture
def learner(tmp_path):
    torch.manual_seed(0)
    model = create_model("proto", "conv4").eval()
    save_checkpoint(tmp_path, model, {"preprocess": Preprocess(size=(28, 28), channels=1, invert=True).to_dict()})
    return h_model.load(tmp_path, device="cpu")


def blob(pos: int, kind: str):
    a = np.full((40, 40), 255, np.uint8)
    if kind == "bar":
        a[:, pos:pos + 6] = 0
    else:
        a[pos:pos + 6, :] = 0
    return a


def test_predict_accepts_every_input_kind_and_returns_caller_labels(learner, tmp_path):
    p = tmp_path / "bar.png"
    Image.fromarray(blob(10, "bar")).save(p)
    support = [p, Image.fromarray(blob(10, "row")), torch.from_numpy(blob(20, "bar")), blob(25, "row")]
    labels = ["vertical", "horizontal", "vertical", "horizontal"]
    pred = learner.predict(support, labels, [blob(12, "bar"), blob(12, "row")])
    assert pred.classes == ["vertical", "horizontal"]
    assert pred.probs.shape == (2, 2)
    assert np.allclose(pred.probs.sum(1), 1.0, atol=1e-5)
    assert all(lab in ("vertical", "horizontal") for lab in pred.labels)


def test_predict_matches_direct_model_call(learner):
    support = [blob(i, "bar") for i in (0, 10, 20)]
    queries = [blob(5, "bar"), blob(15, "bar")]
    pred = learner.predict(support, [7, 8, 9], queries)
    x = learner.tensors(support)
    q = learner.tensors(queries)
    with torch.no_grad():
        logits = learner.model(x, torch.tensor([0, 1, 2]), q)
    assert np.allclose(pred.probs, torch.softmax(logits, -1).numpy(), atol=1e-6)
    assert pred.labels == [[7, 8, 9][i] for i in logits.argmax(-1).tolist()]


def test_embed_shape_and_bad_calls(learner):
    z = learner.embed([blob(3, "bar"), blob(4, "row"), blob(5, "bar")])
    assert z.shape == (3, 64) and z.dtype == np.float32
    with pytest.raises(ValueError, match="labels"):
        learner.predict([blob(1, "bar")], [1, 2], [blob(1, "bar")])
    with pytest.raises(ValueError, match="two different labels"):
        learner.predict([blob(1, "bar")], ["a"], [blob(1, "bar")])
    with pytest.raises(h_model.ImageDecodeError):
        learner.predict([b"junk", blob(1, "bar")], [1, 2], [blob(1, "bar")])


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        h_model.load(tmp_path / "none")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="config.json"):
        h_model.load(tmp_path)

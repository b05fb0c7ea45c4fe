"""Fine-tune a CNN for new classes: two-phase schedule, training curves, learning-rate search.

The script version of ``docs/tutorials/05_fine_tuning.ipynb``, on Xfer's toy task: a small CNN
trained on the digits 0-4 is fine-tuned for 5-9 from 30 labelled images per class. Xfer's
defaults (SGD, learning rate 0.001, 5 epochs) barely move; a two-phase schedule (new head
first, then every layer at a tenth of the rate, cosine schedule, validation split, early
stopping) gets most test images right; Optuna searches the learning rate on a validation
split (skipped, with a note, when optuna is not installed).

Run: ``python examples/fine_tuning.py`` (about 30 s on 2 CPU cores).
"""

from __future__ import annotations

import argparse

from sklearn.base import clone
from sklearn.model_selection import train_test_split

import xfer
from xfer.toy_models import load_digit_images, train_digits_cnn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels-per-class", type=int, default=30)
    parser.add_argument("--trials", type=int, default=20, help="Optuna trials (0: no search)")
    parser.add_argument("--plot", help="save the training curves to this PNG file")
    args = parser.parse_args()

    source = train_digits_cnn(classes=(0, 1, 2, 3, 4), seed=0)
    images, digits = load_digit_images(classes=(5, 6, 7, 8, 9))
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits, train_size=5 * args.labels_per_class, stratify=digits, random_state=0
    )
    print(f"{len(y_train)} labelled images of the digits 5-9, {len(y_test)} test images")

    defaults = xfer.NeuralNetworkFineTuneRepurposer(source, "relu3", 5, random_state=0)
    defaults.fit(x_train, y_train)
    print(f"Xfer defaults (sgd, lr 0.001, 5 epochs): test accuracy {defaults.score(x_test, y_test):.3f}")

    base = dict(optimizer="adam", batch_size=16, lr_schedule="cosine", random_state=0)
    two_phase = xfer.NeuralNetworkFineTuneRepurposer(
        source, "relu3", None, optimizer_params={"learning_rate": 0.01},
        head_epochs=10, num_epochs=30, unfreeze_lr_factor=0.1,
        validation_fraction=0.2, early_stopping_patience=5, **base,
    )  # fmt: skip
    two_phase.fit(x_train, y_train)
    history = two_phase.history_
    print(
        f"two-phase fine-tune: test accuracy {two_phase.score(x_test, y_test):.3f} "
        f"({history.phase.count('head')} head epochs, {history.phase.count('full')} full, "
        f"best epoch {history.best_epoch})"
    )
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        axes = two_phase.plot_history()
        axes[0].figure.savefig(args.plot, bbox_inches="tight")
        print(f"training curves: {args.plot}")

    random_freeze = xfer.NeuralNetworkRandomFreezeRepurposer(
        source, None, fixed_layers=["conv1", "bn1", "conv2"], random_layers=["fc1"],
        optimizer_params={"learning_rate": 0.01}, num_epochs=30,
        validation_fraction=0.2, early_stopping_patience=5, **base,
    )  # fmt: skip
    random_freeze.fit(x_train, y_train)
    print(f"random freeze: test accuracy {random_freeze.score(x_test, y_test):.3f}")

    if args.trials <= 0:
        return
    try:
        import optuna
    except ImportError:
        print("learning-rate search skipped: pip install optuna")
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    x_fit, x_val, y_fit, y_val = train_test_split(
        x_train, y_train, test_size=0.2, stratify=y_train, random_state=1
    )
    template = xfer.NeuralNetworkFineTuneRepurposer(
        source, "relu3", None, head_epochs=10, num_epochs=30, unfreeze_lr_factor=0.1,
        early_stopping_patience=5, **base,
    )  # fmt: skip

    def fit_with(learning_rate: float):
        model = clone(template).set_params(optimizer_params={"learning_rate": learning_rate})
        return model.fit(x_fit, y_fit, validation_data=(x_val, y_val))

    def objective(trial) -> float:
        model = fit_with(trial.suggest_float("learning_rate", 1e-4, 0.3, log=True))
        return min(model.history_.val_loss)

    before = fit_with(0.01)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(objective, n_trials=args.trials)
    rate = study.best_params["learning_rate"]
    after = fit_with(rate)
    print(f"before search (lr 0.0100): test accuracy {before.score(x_test, y_test):.3f}")
    print(f"after search (lr {rate:.4f}, {args.trials} trials): test accuracy {after.score(x_test, y_test):.3f}")


if __name__ == "__main__":
    main()

"""The e2e job with scikit-learn's MLPClassifier: hidden layers as given (ReLU), Adam at the given lr, batch size,
max_iter = epochs, alpha = 0 (no L2, as reg=0), no early stopping (tol = 0 and n_iter_no_change beyond the
budget, so every epoch runs), float64; test accuracy at the end (validation accuracy of the final model is shown
too: MLPClassifier has no per-epoch hook, so it neither picks a best epoch nor saves one).

Run by `python -m framework.bench --e2e`; prints one JSON line (peer_common.emit)."""
import time

T0 = time.time()

import warnings  # noqa: E402

import sklearn  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402

from peer_common import emit, load_splits, now, parse_args  # noqa: E402


def main() -> None:
    args = parse_args(__doc__.split("\n")[0])
    d = load_splits(args.data)
    clf = MLPClassifier(hidden_layer_sizes=tuple(args.hidden), activation="relu", solver="adam", alpha=0.0,
                        batch_size=args.batch_size, learning_rate_init=args.lr, max_iter=args.epochs,
                        shuffle=True, random_state=args.seed, tol=0.0, n_iter_no_change=args.epochs + 1,
                        early_stopping=False)
    t_fit = now()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reaching max_iter is the budget, not a problem
        clf.fit(d["X_train"], d["y_train"])
    val_acc = clf.score(d["X_val"], d["y_val"])
    test_acc = clf.score(d["X_test"], d["y_test"])
    emit(t_fit, now(), t_script_start=T0, test_acc=test_acc, best_val_acc=val_acc, best_epoch=clf.n_iter_,
         epochs=clf.n_iter_, sklearn=sklearn.__version__)


if __name__ == "__main__":
    main()

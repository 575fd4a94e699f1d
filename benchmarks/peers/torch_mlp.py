"""The e2e job as a plain PyTorch script: MLP D-100-100-C (ReLU, He-normal weights, zero biases, float64 like the
framework's default), Adam (betas 0.9/0.999, eps 1e-8: the framework's defaults), softmax cross-entropy, no
regularization, shuffled mini-batches each epoch, validation accuracy after every epoch, `torch.save` of the
state dict whenever it improves, test accuracy of that best model at the end.

It does less than the framework's job (no EMA, no TensorBoard, one file per improvement rather than per epoch),
and batches by indexing tensors rather than through a DataLoader (the faster idiom), so the comparison favours it.
Run by `python -m framework.bench --e2e`; prints one JSON line (peer_common.emit)."""
import time

T0 = time.time()

import pathlib  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from peer_common import emit, load_splits, now, parse_args  # noqa: E402


def build_mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers sizes[0] -> ... -> sizes[-1] with ReLU between, initialized as the framework's init=he."""
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(fan_in, fan_out, dtype=torch.float64)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def accuracy(model, X, y) -> float:
    with torch.no_grad():
        return (model(X).argmax(dim=1) == y).double().mean().item()


def main() -> None:
    args = parse_args(__doc__.split("\n")[0])
    torch.manual_seed(args.seed)
    d = {k: (torch.from_numpy(v) if hasattr(v, "shape") else v) for k, v in load_splits(args.data).items()}
    X, y = d["X_train"], d["y_train"]
    model = build_mlp([X.shape[1], *args.hidden, d["num_classes"]])
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    order = torch.Generator().manual_seed(args.seed)
    best_path = pathlib.Path(args.out_dir) / "best.pt"
    best_acc, best_epoch = -1.0, 0
    t_fit = now()
    for epoch in range(1, args.epochs + 1):
        model.train()
        perm = torch.randperm(len(y), generator=order)
        for start in range(0, len(y), args.batch_size):
            idx = perm[start:start + args.batch_size]
            loss = F.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        val_acc = accuracy(model, d["X_val"], d["y_val"])
        if val_acc > best_acc:
            best_acc, best_epoch = val_acc, epoch
            torch.save(model.state_dict(), best_path)
    model.load_state_dict(torch.load(best_path))
    test_acc = accuracy(model, d["X_test"], d["y_test"])
    emit(t_fit, now(), t_script_start=T0, test_acc=test_acc, best_val_acc=best_acc, best_epoch=best_epoch,
         epochs=args.epochs, threads=torch.get_num_threads(), torch=torch.__version__)


if __name__ == "__main__":
    main()

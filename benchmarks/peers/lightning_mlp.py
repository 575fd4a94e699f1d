"""The e2e job in PyTorch Lightning: the same MLP and init as torch_mlp.py in a LightningModule, Adam at the given
lr, shuffled DataLoader batches, validation accuracy every epoch, ModelCheckpoint keeping the best by val_acc,
Lightning's default logger (TensorBoard when installed, like the framework's job), float64 ("64-true"), then
`trainer.test` on the best checkpoint. The progress bar and model summary are off (console noise only).

Run by `python -m framework.bench --e2e`; prints one JSON line (peer_common.emit)."""
import time

T0 = time.time()

import logging  # noqa: E402
import warnings  # noqa: E402

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from peer_common import emit, load_splits, now, parse_args  # noqa: E402
from torch_mlp import build_mlp  # noqa: E402


class MLP(L.LightningModule):
    def __init__(self, sizes: list[int], lr: float):
        super().__init__()
        self.net = build_mlp(sizes)
        self.lr = lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def _accuracy(self, batch) -> torch.Tensor:
        x, y = batch
        return (self.net(x).argmax(dim=1) == y).double().mean()

    def validation_step(self, batch, batch_idx):
        self.log("val_acc", self._accuracy(batch))

    def test_step(self, batch, batch_idx):
        self.log("test_acc", self._accuracy(batch))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def main() -> None:
    args = parse_args(__doc__.split("\n")[0])
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    logging.getLogger("lightning").setLevel(logging.WARNING)
    L.seed_everything(args.seed, verbose=False)
    d = {k: (torch.from_numpy(v) if hasattr(v, "shape") else v) for k, v in load_splits(args.data).items()}

    def loader(split, **kw):
        X, y = d[f"X_{split}"], d[f"y_{split}"]
        return DataLoader(TensorDataset(X, y), **kw)

    model = MLP([d["X_train"].shape[1], *args.hidden, d["num_classes"]], args.lr)
    best = ModelCheckpoint(dirpath=args.out_dir, monitor="val_acc", mode="max", save_top_k=1)
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, precision="64-true",
                        callbacks=[best], default_root_dir=args.out_dir, enable_progress_bar=False,
                        enable_model_summary=False)
    t_fit = now()
    trainer.fit(model, loader("train", batch_size=args.batch_size, shuffle=True),
                loader("val", batch_size=len(d["y_val"])))
    result = trainer.test(model, loader("test", batch_size=len(d["y_test"])), ckpt_path="best", verbose=False)
    emit(t_fit, now(), t_script_start=T0, test_acc=float(result[0]["test_acc"]),
         best_val_acc=float(best.best_model_score), best_epoch=None, epochs=trainer.current_epoch,
         threads=torch.get_num_threads(), lightning=L.__version__)


if __name__ == "__main__":
    main()

"""framework.bench e2e=true: the whole-job benchmark's data, its peers' availability, its option checks, and one tiny
end-to-end run of the harness (structure and accuracies only: no timing assertions on a shared machine)."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from conftest import assert_clean_failure, run_cli
from benchmarks import e2e as bench_e2e

BREAKDOWN_PARTS = {"start-up", "training steps", "evaluation", "checkpoints", "tensorboard", "exit", "other (in fit)"}


def installed(name: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in bench_e2e.PEERS[name].modules)


def test_dataset_is_deterministic_balanced_and_learnable(tmp_path):
    sizes = bench_e2e.make_dataset(tmp_path / "a.npz", rows=2000)
    bench_e2e.make_dataset(tmp_path / "b.npz", rows=2000)
    assert sizes == {"train": 1700, "val": 300, "test": 500}
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert sorted(a.files) == ["X_test", "X_train", "X_val", "y_test", "y_train", "y_val"]
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])
        X, y = a["X_train"], a["y_train"]
        assert X.shape == (1700, 40) and X.dtype == np.float64 and y.dtype == np.int64
        counts = np.bincount(y, minlength=10)
        assert counts.min() > 0.6 * counts.mean()  # every class well represented
        # learnable, and not by one linear rule: nearest class mean (a linear rule) beats chance (0.1) clearly,
        # nearest training row (non-linear) beats it
        Xt, yt = a["X_test"], a["y_test"]
        means = np.stack([X[y == c].mean(axis=0) for c in range(10)])
        by_mean = (((Xt[:, None, :] - means) ** 2).sum(-1).argmin(1) == yt).mean()
        nearest = y[(((Xt[:, None, :] - X[None]) ** 2).sum(-1)).argmin(1)]
        by_row = (nearest == yt).mean()
        assert 0.3 < by_mean < by_row, (by_mean, by_row)


def test_missing_peer_is_skipped_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_e2e, "PEER_DIR", tmp_path)  # an installed wheel: no benchmarks/peers/
    assert "benchmarks/peers" in bench_e2e.missing_peer("torch")
    (tmp_path / "lightning_mlp.py").write_text("")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "lightning" else real(m, *a))
    note = bench_e2e.missing_peer("lightning")
    assert note.startswith("skipped") and "pip install lightning" in note


@pytest.mark.parametrize("args, piece", [
    (["--repeats", "0"], "'repeats'"),
    (["repeats=0"], "'repeats'"),
    (["--peers", "torch,keras"], "keras"),
    (["peers=[torch,keras]"], "keras"),
    (["--rows", "10"], "'rows'"),
    (["timeout=0"], "'timeout'"),
    (["--json", "no/such/folder/out.json"], "no/such/folder"),
    (["quick=true"], "'quick' applies to the step benchmark only"),
    (["peer=torch"], "Did you mean peers?"),
])
def test_bad_options_fail_cleanly(args, piece, tmp_path):
    result = run_cli("e2e=true", *args, module="framework.bench", cwd=tmp_path)
    assert_clean_failure(result, [piece])
    assert result.returncode == 2


@pytest.mark.slow
def test_tiny_run_reports_every_job_and_the_breakdown(tmp_path):
    out = tmp_path / "e2e.json"
    result = run_cli("e2e=true", "epochs=2", "rows=1000", "repeats=1", f"json={out}",
                     module="framework.bench", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["machine"]["cpu"] and isinstance(r["machine"]["avx2"], bool) and isinstance(r["machine"]["avx512"], bool)
    assert "AVX2" in result.stdout and "AVX-512" in result.stdout
    assert r["job"]["rows"] == {"train": 850, "val": 150, "test": 250}
    assert r["job"]["steps"] == 2 * 9
    ran = [p for p in bench_e2e.PEERS if installed(p)]
    for name, note in r["peers"].items():
        assert note == "ran" if name in ran else note.startswith("skipped"), (name, note)
    assert set(r["runs"]) == {"framework", "profiled", *ran}
    for name, runs in r["runs"].items():
        assert len(runs) == 1
        # two epochs on 10 classes: each job learned something (chance is 0.1), and they agree roughly
        assert runs[0]["test_acc"] > 0.3, (name, runs[0])
        assert runs[0]["wall_s"] > 0 and runs[0]["fit_s"] > 0
    fw = r["runs"]["framework"][0]
    assert fw["steps"] == 18
    assert r["runs"]["profiled"][0]["test_acc"] == fw["test_acc"]  # the profiled process trains the same numbers
    b = r["breakdown"]
    assert set(b["parts_s"]) == BREAKDOWN_PARTS and b["unmeasured"] == []
    assert all(v >= 0 for k, v in b["parts_s"].items() if k != "other (in fit)")
    assert b["parts_s"]["other (in fit)"] > -1e-3  # the timed parts do not overlap
    assert b["calls"]["training steps"] == 2 and b["calls"]["evaluation"] >= 2 * 3
    verdicts = {g.get("peer") or g["part"]: g["verdict"] for g in r["goals"]}
    assert set(verdicts) == {*bench_e2e.PEERS, "checkpoints", "evaluation"}
    for key, verdict in verdicts.items():
        assert verdict in (("PASS", "MISS") if key in ran or key in ("checkpoints", "evaluation") else ("SKIP",))
    assert sum(line.strip().startswith(("PASS", "MISS", "SKIP")) for line in result.stdout.splitlines()) == 5

"""How a prediction ensemble combines its members' scores: the registry COMBINES of combine rules (built in:
mean_prob, mean_logits, vote, on one Numba kernel; a plugin adds one with `@COMBINES.register("name")` on a
CombineRule subclass) and EnsembleModel, M member models over one flat parameter vector whose scores combine."""
from __future__ import annotations

import numpy as np

from framework.components.model import Model
from framework.core.layout import Layout
from framework.core.registry import Registry
from framework.kernels.dense import jit

COMBINES = Registry("combine rule", "combine")
TINY = np.finfo(np.float64).tiny  # floor of combined probabilities before the log (keeps scores finite)


def softmax(scores, T: float = 1.0) -> np.ndarray:
    """Row softmax of scores (N, C) / T, float64."""
    s = np.asarray(scores, dtype=np.float64) / T
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@jit
def combine_kernel(stack, rule, T, out):
    """Ensemble probabilities out (N, C) float64 from the member scores stack (M, N, C) at temperature T.
    rule 0 mean_prob: mean_i softmax(s_i / T); 1 mean_logits: softmax(mean_i s_i / T); 2 vote: (votes +
    mean_prob) / (M + 1), votes[n, c] the number of members whose class for row n is c (the mean probability,
    < 1, only breaks ties between equal vote counts). Stable: every softmax shifts by its row max."""
    M, N, C = stack.shape
    inv_t = 1.0 / T
    for n in range(N):
        for c in range(C):
            out[n, c] = 0.0
        if rule == 1:
            for i in range(M):
                for c in range(C):
                    out[n, c] += stack[i, n, c]
            m = out[n, 0]
            for c in range(1, C):
                m = max(m, out[n, c])
            total = 0.0
            for c in range(C):
                out[n, c] = np.exp((out[n, c] - m) * inv_t / M)
                total += out[n, c]
            for c in range(C):
                out[n, c] /= total
            continue
        for i in range(M):
            best = 0
            for c in range(1, C):
                if stack[i, n, c] > stack[i, n, best]:
                    best = c
            m = stack[i, n, best]
            total = 0.0
            for c in range(C):
                total += np.exp((stack[i, n, c] - m) * inv_t)
            for c in range(C):
                out[n, c] += np.exp((stack[i, n, c] - m) * inv_t) / total / M
            if rule == 2:
                out[n, best] += 1.0
        if rule == 2:
            for c in range(C):
                out[n, c] /= M + 1


class CombineRule:
    """Base of combine rules, built with its validated config. `proba` turns the members' scores stack (M, N, C)
    float64 into ensemble class probabilities (N, C); `scores` into (N, C) scores whose softmax gives them back
    (so the softmax loss on them is the ensemble's NLL)."""

    def __init__(self, cfg=None):
        self.cfg = cfg

    def proba(self, stack: np.ndarray, T: float = 1.0) -> np.ndarray:
        raise NotImplementedError

    def scores(self, stack: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(self.proba(stack), TINY))


class KernelRule(CombineRule):
    """A built-in rule: combine_kernel with the rule number `rule`."""

    rule = 0

    def proba(self, stack, T=1.0):
        out = np.empty(stack.shape[1:])
        combine_kernel(stack, self.rule, float(T), out)
        return out


@COMBINES.register("mean_prob")
class MeanProb(KernelRule):
    """Mean of the members' softmax probabilities (the default)."""

    rule = 0


@COMBINES.register("mean_logits")
class MeanLogits(KernelRule):
    """Softmax of the members' mean scores."""

    rule = 1

    def scores(self, stack):
        return np.mean(stack, axis=0)


@COMBINES.register("vote")
class Vote(KernelRule):
    """Majority of the members' classes; ties go to the class with the higher mean probability."""

    rule = 2


def stack_scores(member_scores: list) -> np.ndarray:
    """M members' scores (each (N, C)) as one float64 array (M, N, C)."""
    return np.stack([np.asarray(s, dtype=np.float64) for s in member_scores])


def combine_proba(member_scores: list, rule: str, T: float = 1.0) -> np.ndarray:
    """Ensemble class probabilities (N, C) float64 from M members' scores (each (N, C)) by the combine rule named
    `rule` at temperature T."""
    return COMBINES.build(rule).proba(stack_scores(member_scores), T)


class EnsembleModel(Model):
    """M member models over one flat parameter vector (blocks m0.W1, m0.b1, ..., m1.W1, ...) whose scores
    combine the members' by the combine rule `combine`. Prediction only: an ensemble is trained through its
    members."""

    def __init__(self, models: list[Model], combine: str = "mean_prob"):
        rule = COMBINES.build(combine)  # an unknown name: a ConfigError listing the registered rules
        super().__init__({"combine": combine})
        self.models, self.combine, self.rule = list(models), combine, rule
        first = self.models[0]
        self.input_dim, self.num_classes = first.input_dim, first.num_classes
        self.dtype = np.result_type(*[m.dtype for m in self.models])
        self.layout = Layout([(f"m{i}.{b.name}", b.shape, b.decay) for i, m in enumerate(self.models)
                              for b in m.layout])
        self.offsets = np.cumsum([0] + [m.layout.size for m in self.models])
        self.loss_kind = first.loss_kind if len(self.models) == 1 else "softmax"

    def member_scores(self, theta, X) -> list[np.ndarray]:
        """Each member's scores (N, C) on preprocessed X (N, D)."""
        return [m.scores(theta[a:b].astype(m.dtype, copy=False), X)
                for m, a, b in zip(self.models, self.offsets[:-1], self.offsets[1:])]

    def scores(self, theta, X):
        """(N, C): a single member's own scores, else the combine rule's scores (mean_logits: the mean scores;
        the others: the log of the combined probabilities, so that softmax(scores) gives them back)."""
        parts = self.member_scores(theta, X)
        if len(parts) == 1:
            return parts[0]
        return self.rule.scores(stack_scores(parts))

    def predict_proba(self, theta, X) -> np.ndarray:
        """The combined probabilities (N, C), float64 (not a softmax of `scores`)."""
        return self.proba(theta, X)

    def proba(self, theta, X, T: float = 1.0) -> np.ndarray:
        """Class probabilities (N, C) float64 at temperature T (T > 1 softens them: distillation targets)."""
        parts = self.member_scores(theta, X)
        rule = self.rule if len(parts) > 1 else COMBINES.build("mean_prob")
        return rule.proba(stack_scores(parts), T)

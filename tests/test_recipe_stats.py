"""Statistics of the recipe's draws over thousands of seeded samples, against the spec.

These read the kernel's trace (what it drew), never the image-op pixels, so they hold for any
implementation of the image ops.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from ipmix_cli.augment.config import IPMixConfig
from ipmix_cli.augment.engine import augment_batch_traced
from ipmix_cli.augment.mixing_set import MixingSet
from ipmix_cli.augment.patch import (
    OPF_BRANCH,
    OPF_HEIGHT,
    OPF_LEFT,
    OPF_LEVEL,
    OPF_NEGATE,
    OPF_OP,
    OPF_Q,
    OPF_RULE,
    OPF_SIZE,
    OPF_SOURCE,
    OPF_SQUARE,
    OPF_TOP,
    OPF_WA,
    OPF_WB,
    OPF_WIDTH,
)
from ipmix_cli.augment.pixel_rules import RULE_ADD, RULE_MULTIPLY
from ipmix_cli.augment.pretransform import PRE_PICK

P_MIN = 1e-3
N_SAMPLES = 3000


def _uniform_chi2(values: np.ndarray, low: int, high: int) -> float:
    values = values.astype(np.int64)
    assert values.min() >= low and values.max() <= high, (values.min(), values.max())
    counts = np.bincount(values - low, minlength=high - low + 1)
    return stats.chisquare(counts).pvalue


def _run(config: IPMixConfig, n: int = N_SAMPLES, seed: int = 1234, n_pictures: int = 7):
    rng = np.random.default_rng(seed)
    H, W = config.size
    images = rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8)
    pictures = rng.integers(0, 256, (n_pictures, H + 4, W + 4, 3), dtype=np.uint8)
    mixing = MixingSet.from_pictures(pictures, config)
    return augment_batch_traced(images, np.arange(n), 0, mixing, config, seed)


@pytest.fixture(scope="module")
def cifar_trace():
    config = IPMixConfig.preset("cifar", pre="none")
    return config, _run(config)[1]


@pytest.fixture(scope="module")
def imagenet_like_trace():
    # the ImageNet preset's recipe (beta 4, mixed source, 6 sizes) on small images: the
    # statistics do not depend on the image size, and the 64/224 sizes exercise the clamp.
    config = IPMixConfig.preset("imagenet", pre="none", size=(32, 32), all_ops=True)
    return config, _run(config, seed=99)[1]


def test_chain_weights_are_dirichlet(cifar_trace) -> None:
    config, tr = cifar_trace
    w = tr.weights.reshape(-1, config.k)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-9)
    for i in range(config.k):  # Dirichlet(1, 1, 1) marginals are Beta(1, 2)
        assert stats.kstest(w[:, i], stats.beta(1, config.k - 1).cdf).pvalue > P_MIN
    # and not, say, uniform
    assert stats.kstest(w[:, 0], "uniform").pvalue < P_MIN
    # pairs: w1 / (w1 + w2) of a Dirichlet(1,1,1) is U(0, 1)
    assert stats.kstest(w[:, 0] / (w[:, 0] + w[:, 1]), "uniform").pvalue > P_MIN


def test_m_is_uniform(cifar_trace) -> None:
    _, tr = cifar_trace
    assert stats.kstest(tr.m.ravel(), "uniform").pvalue > P_MIN


def test_chain_kinds_and_op_counts(cifar_trace) -> None:
    config, tr = cifar_trace
    kinds = tr.kinds.ravel()
    assert stats.binomtest(int(kinds.sum()), kinds.size, 0.5).pvalue > P_MIN
    assert _uniform_chi2(tr.n_ops.ravel(), 0, config.t) > P_MIN
    # n_ops independent of the kind
    table = np.zeros((2, config.t + 1))
    np.add.at(table, (kinds, tr.n_ops.ravel()), 1)
    assert stats.chi2_contingency(table).pvalue > P_MIN


def test_image_ops_uniform_over_default_list(cifar_trace) -> None:
    config, tr = cifar_trace
    img = tr.op_records(kind=0)
    assert config.n_ops == 10
    assert _uniform_chi2(img[:, OPF_OP], 0, 9) > P_MIN
    levels = img[:, OPF_LEVEL]
    assert stats.kstest(levels, stats.uniform(0.1, config.severity - 0.1).cdf).pvalue > P_MIN
    neg = img[:, OPF_NEGATE]
    assert stats.binomtest(int(neg.sum()), neg.size, 0.5).pvalue > P_MIN


def test_image_ops_uniform_over_all_15(imagenet_like_trace) -> None:
    config, tr = imagenet_like_trace
    img = tr.op_records(kind=0)
    assert config.n_ops == 15
    assert _uniform_chi2(img[:, OPF_OP], 0, 14) > P_MIN
    assert stats.kstest(img[:, OPF_LEVEL], stats.uniform(0.1, 0.9).cdf).pvalue > P_MIN


def test_patch_sizes_rules_and_shapes(cifar_trace) -> None:
    config, tr = cifar_trace
    pr = tr.op_records(kind=1)
    sizes = np.array(config.patch_sizes)
    size_idx = np.searchsorted(sizes, pr[:, OPF_SIZE])
    assert np.all(sizes[size_idx] == pr[:, OPF_SIZE])
    assert _uniform_chi2(size_idx, 0, len(sizes) - 1) > P_MIN
    assert _uniform_chi2(pr[:, OPF_RULE], 0, 3) > P_MIN
    sq = pr[:, OPF_SQUARE]
    assert stats.binomtest(int(sq.sum()), sq.size, 0.5).pvalue > P_MIN
    assert np.all(pr[:, OPF_SOURCE] == 0)  # CIFAR: always the mixing picture
    H, W = config.size
    for s in config.patch_sizes:
        sel = pr[pr[:, OPF_SIZE] == s]
        square = sel[sel[:, OPF_SQUARE] == 1]
        free = sel[sel[:, OPF_SQUARE] == 0]
        assert np.all(square[:, OPF_WIDTH] == s) and np.all(square[:, OPF_HEIGHT] == s)
        assert _uniform_chi2(free[:, OPF_WIDTH], 2, s) > P_MIN
        assert _uniform_chi2(free[:, OPF_HEIGHT], 2, s) > P_MIN
        assert abs(stats.pearsonr(free[:, OPF_WIDTH], free[:, OPF_HEIGHT]).statistic) < 0.15
        if s < W:
            assert _uniform_chi2(sel[:, OPF_LEFT], 0, W - s) > P_MIN
            assert _uniform_chi2(sel[:, OPF_TOP], 0, H - s) > P_MIN


def test_mixing_weight_branches(cifar_trace) -> None:
    config, tr = cifar_trace
    pr = tr.op_records(kind=1)
    weighted = pr[(pr[:, OPF_RULE] == RULE_ADD) | (pr[:, OPF_RULE] == RULE_MULTIPLY)]
    random_rules = pr[pr[:, OPF_RULE] >= 2]
    br = weighted[:, OPF_BRANCH]
    assert stats.binomtest(int((br == 0).sum()), br.size, 0.5).pvalue > P_MIN
    b = config.beta
    b0, b1 = weighted[br == 0], weighted[br == 1]
    assert stats.kstest(b0[:, OPF_WA], stats.beta(b, 1).cdf).pvalue > P_MIN
    assert stats.kstest(b0[:, OPF_WB], stats.beta(1, b).cdf).pvalue > P_MIN
    assert stats.kstest(b1[:, OPF_WA] - 1, stats.beta(1, b).cdf).pvalue > P_MIN
    assert stats.kstest(-b1[:, OPF_WB], stats.beta(1, b).cdf).pvalue > P_MIN
    assert stats.kstest(random_rules[:, OPF_Q], "uniform").pvalue > P_MIN


def test_imagenet_patch_source_is_half_augmented_x(imagenet_like_trace) -> None:
    config, tr = imagenet_like_trace
    pr = tr.op_records(kind=1)
    src = pr[:, OPF_SOURCE]
    assert stats.binomtest(int(src.sum()), src.size, 0.5).pvalue > P_MIN
    aug = pr[src == 1]
    assert _uniform_chi2(aug[:, OPF_OP], 0, config.n_ops - 1) > P_MIN
    assert np.all(pr[src == 0, OPF_OP] == -1)
    # all six sizes drawn uniformly; 64 and 224 clamp to the 32 px image
    sizes = np.array(config.patch_sizes)
    assert _uniform_chi2(np.searchsorted(sizes, pr[:, OPF_SIZE]), 0, 5) > P_MIN
    big = pr[pr[:, OPF_SIZE] > 32]
    assert big[:, OPF_WIDTH].max() == 32 and big[:, OPF_LEFT].max() == 0
    # beta = 4 in this preset
    b0 = pr[(pr[:, OPF_RULE] <= 1) & (pr[:, OPF_BRANCH] == 0)]
    assert stats.kstest(b0[:, OPF_WA], stats.beta(4, 1).cdf).pvalue > P_MIN


def test_mixing_picture_choice_is_uniform(cifar_trace) -> None:
    _, tr = cifar_trace
    assert _uniform_chi2(tr.pre[:, PRE_PICK], 0, 6) > P_MIN


@pytest.mark.parametrize("t", [1, 5])
def test_other_t_and_k(t: int) -> None:
    config = IPMixConfig.preset("cifar", pre="none", t=t, k=4, size=(16, 16), patch_sizes=(4, 8))
    _, tr = _run(config, n=1200, seed=t)
    assert tr.weights.shape[-1] == 4
    assert _uniform_chi2(tr.n_ops.ravel(), 0, t) > P_MIN
    assert stats.kstest(tr.weights[..., 0].ravel(), stats.beta(1, 3).cdf).pvalue > P_MIN

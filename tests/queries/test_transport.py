"""queries.transport.sinkhorn_batch against a plain per-problem loop, POT, and itself."""
from __future__ import annotations

import doctest
import warnings

import numpy as np
import ot
import pytest
import torch

import queries.transport as transport
from queries.transport import sinkhorn_batch
from tests.helpers.reference import sinkhorn_loop


def random_problems(rng, P=150, m=10, n=8, scale=1.0, pad=True):
    """Uniform-ish costs, random marginals with zero-mass rows and padded columns."""
    M = (rng.random((P, m, n)) * scale).astype(np.float32)
    a = rng.random((P, m)).astype(np.float32) + 0.1
    b = rng.random((P, n)).astype(np.float32) + 0.1
    if pad:
        for p in range(P):
            a[p, rng.random(m) < 0.3] = 0.0  # excluded rows (like dropped crops)
            if not a[p].any():
                a[p, 0] = 1.0
            b[p, rng.integers(1, n + 1):] = 0.0  # padded columns, >= 1 real column
            M[p, :, b[p] == 0] = rng.choice([0.0, 1e6, -3.0])  # garbage in the padding
    a /= a.sum(1, keepdims=True)
    b /= b.sum(1, keepdims=True)
    return a, b, M


# ---------------------------------------------------------------- tests
def test_matches_plain_loop_with_reference_stopping_rule():
    rng = np.random.default_rng(0)
    a, b, M = random_problems(rng, P=300)
    res = sinkhorn_batch(a, b, M, 0.1)
    assert isinstance(res.plan, np.ndarray) and res.plan.dtype == np.float32
    assert res.plan.shape == M.shape and res.n_iter.shape == (300,)
    iters = []
    for p in range(len(a)):
        T, it = sinkhorn_loop(a[p], b[p], M[p], 0.1)
        iters.append(it)
        np.testing.assert_allclose(res.plan[p], T, atol=1e-5)
    assert np.array_equal(res.n_iter, iters)
    assert res.converged.all()
    assert len(set(iters)) > 3  # the problems really stop at different iterations
    # padded columns and zero-mass rows carry no mass; value = sum(T * M) over real entries
    assert (res.plan[b[:, None, :].repeat(M.shape[1], 1) == 0] == 0).all()
    assert (res.plan[a == 0] == 0).all()
    Mz = np.where((a[:, :, None] > 0) & (b[:, None, :] > 0), M, 0)
    np.testing.assert_allclose(res.value, (res.plan * Mz).sum((1, 2)), rtol=1e-5)
    # the last step fixes the column sums exactly
    np.testing.assert_allclose(res.plan.sum(1), b, atol=1e-6)


def test_per_problem_result_independent_of_batch():
    rng = np.random.default_rng(1)
    a, b, M = random_problems(rng, P=120, scale=3.0)
    full = sinkhorn_batch(a, b, M, 0.1, warn=False)  # some hit max_iter: also covered
    assert len(np.unique(full.n_iter)) > 3
    for p in [0, 7, 55, 119]:  # alone
        one = sinkhorn_batch(a[p : p + 1], b[p : p + 1], M[p : p + 1], 0.1, warn=False)
        assert np.array_equal(one.plan[0], full.plan[p])
        assert one.n_iter[0] == full.n_iter[p]
    idx = rng.permutation(120)[:37]  # other company, other order
    sub = sinkhorn_batch(a[idx], b[idx], M[idx], 0.1, warn=False)
    assert np.array_equal(sub.plan, full.plan[idx])
    assert np.array_equal(sub.n_iter, full.n_iter[idx])


def test_batch_global_stop_of_the_reference_would_differ():
    """Why the stopping test is per problem: with the reference's batch-mean error a
    problem's iteration count depends on its batch-mates."""
    rng = np.random.default_rng(2)
    a, b, M = random_problems(rng, P=60, scale=2.0, pad=False)
    res = sinkhorn_batch(a, b, M, 0.1, warn=False)
    fast, slow = int(np.argmin(res.n_iter)), int(np.argmax(res.n_iter))
    assert res.n_iter[fast] < res.n_iter[slow]
    pair = sinkhorn_batch(a[[fast, slow]], b[[fast, slow]], M[[fast, slow]], 0.1, warn=False)
    assert pair.n_iter[0] == res.n_iter[fast]  # a batch-global rule would run it longer


def test_log_domain_agrees_with_plain_kernel():
    rng = np.random.default_rng(3)
    a, b, M = random_problems(rng, P=200, scale=1.5)
    plain = sinkhorn_batch(a, b, M, 0.1, method="sinkhorn")
    logd = sinkhorn_batch(a, b, M, 0.1, method="sinkhorn_log")
    auto = sinkhorn_batch(a, b, M, 0.1)
    assert plain.converged.all() and logd.converged.all()
    assert not plain.log_domain.any() and logd.log_domain.all() and not auto.log_domain.any()
    assert np.array_equal(auto.plan, plain.plan)
    # Both evaluate the same stopping quantity, up to float32 rounding: a borderline
    # problem may stop one iteration apart; the others agree to float32 precision.
    same = logd.n_iter == plain.n_iter
    assert same.mean() >= 0.97
    np.testing.assert_allclose(logd.plan[same], plain.plan[same], atol=2e-6)
    tight = dict(tol=1e-6, max_iter=3000, warn=False)
    np.testing.assert_allclose(
        sinkhorn_batch(a, b, M, 0.1, method="sinkhorn_log", **tight).plan,
        sinkhorn_batch(a, b, M, 0.1, method="sinkhorn", **tight).plan,
        atol=2e-6,
    )


def test_underflow_cost_over_reg_200_is_finite_and_correct():
    rng = np.random.default_rng(4)
    a, b, M0 = random_problems(rng, P=40, m=8, n=6, scale=1.5)
    M = M0 + 20.0  # cost / reg ~ 200-215: exp(-M/reg) is 0 in float32 (and float64 ~1e-88)
    valid = (a[:, :, None] > 0) & (b[:, None, :] > 0)
    assert np.exp(-M[valid] / 0.1).max() == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto must not warn
        res = sinkhorn_batch(a, b, M, 0.1, tol=1e-7, max_iter=3000)
    assert res.log_domain.all() and np.isfinite(res.plan).all()
    np.testing.assert_allclose(res.plan.sum(2), a, atol=1e-5)
    np.testing.assert_allclose(res.plan.sum(1), b, atol=1e-5)
    for p in range(0, 40, 5):  # POT's log-domain solver in float64, unpadded problem
        rows, cols = a[p] > 0, b[p] > 0
        ref = ot.sinkhorn(
            a[p][rows].astype(np.float64), b[p][cols].astype(np.float64),
            M[p][np.ix_(rows, cols)].astype(np.float64), 0.1,
            method="sinkhorn_log", stopThr=1e-9, numItermax=500, warn=False,
        )
        np.testing.assert_allclose(res.plan[p][np.ix_(rows, cols)], ref, atol=1e-5)
    # The plan is invariant to a constant shift of the cost: the plain path on M0 agrees.
    shifted = sinkhorn_batch(a, b, M0, 0.1, tol=1e-7, max_iter=3000)
    assert not shifted.log_domain.any()
    np.testing.assert_allclose(res.plan, shifted.plan, atol=1e-5)
    # Forcing the plain kernel fails loudly, not silently.
    with pytest.warns(RuntimeWarning, match="non-finite"):
        sinkhorn_batch(a, b, M, 0.1, method="sinkhorn")


def test_plans_match_pot_at_tight_tolerance():
    rng = np.random.default_rng(5)
    a, b, M = random_problems(rng, P=30, m=9, n=7, scale=0.5, pad=False)
    a64, b64, M64 = (x.astype(np.float64) for x in (a, b, M))
    # equal total mass in float64 too (else the scalings drift by sum(a)/sum(b) per step)
    a64 /= a64.sum(1, keepdims=True)
    b64 /= b64.sum(1, keepdims=True)
    ours = sinkhorn_batch(a64, b64, M64, 0.1, tol=1e-11, max_iter=5000)
    assert ours.plan.dtype == np.float64 and ours.converged.all()
    ref = np.stack([ot.sinkhorn(a64[p], b64[p], M64[p], 0.1, stopThr=1e-12, numItermax=5000) for p in range(30)])
    np.testing.assert_allclose(ours.plan, ref, atol=1e-9)
    batch = ot.solve_batch(M64, 0.1, a=a64, b=b64, max_iter=5000, tol=1e-12, method="sinkhorn")
    np.testing.assert_allclose(ours.plan, batch.plan, atol=1e-9)
    np.testing.assert_allclose(ours.value, batch.value_linear, atol=1e-9)
    # float32 at the 1e-6 level
    ours32 = sinkhorn_batch(a, b, M, 0.1, tol=1e-6, max_iter=5000, warn=False)
    np.testing.assert_allclose(ours32.plan, ref, atol=1e-6)


def test_torch_in_torch_out_and_numpy_equal():
    rng = np.random.default_rng(6)
    a, b, M = random_problems(rng, P=20)
    res_np = sinkhorn_batch(a, b, M, 0.1)
    res_t = sinkhorn_batch(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(M), 0.1)
    assert isinstance(res_t.plan, torch.Tensor) and res_t.n_iter.dtype == torch.int64
    assert np.array_equal(res_t.plan.numpy(), res_np.plan)


def test_validation_and_warnings():
    rng = np.random.default_rng(7)
    a, b, M = random_problems(rng, P=4)
    with pytest.raises(ValueError, match="expected a"):
        sinkhorn_batch(a[:, :-1], b, M, 0.1)
    with pytest.raises(ValueError, match="unknown method"):
        sinkhorn_batch(a, b, M, 0.1, method="greenkhorn")
    with pytest.raises(ValueError, match="reg"):
        sinkhorn_batch(a, b, M, 0.0)
    with pytest.warns(RuntimeWarning, match="did not reach"):
        res = sinkhorn_batch(a, b, M * 5, 0.01, max_iter=2, tol=1e-9)
    assert not res.converged.any() and (res.n_iter == 2).all()
    empty = sinkhorn_batch(a[:0], b[:0], M[:0], 0.1)
    assert empty.plan.shape == (0,) + M.shape[1:]


def test_doctests():
    assert doctest.testmod(transport, raise_on_error=False).failed == 0

"""ActivationStats keeps exact, valid state: updates from several threads, unpickled states."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest

import awqkit


def _integer_batches(seed: int, n: int, tokens: int, k: int) -> list[np.ndarray]:
    # Small integers: every float32 partial sum of the Gram matrix and every float64 running
    # sum is exact, so the totals do not depend on the order in which the batches land.
    rng = np.random.default_rng(seed)
    return [rng.integers(-8, 9, size=(tokens, k)).astype(np.float32) for _ in range(n)]


def _state(st: awqkit.ActivationStats):
    return st.n_tokens, st._impl.sum_abs(), st._impl.sum_sq(), st.max_abs(), st.gram()


def _fed_by_threads(batches, k: int, n_threads: int) -> awqkit.ActivationStats:
    shared = awqkit.ActivationStats(k, gram=True)
    start = threading.Barrier(n_threads)

    def feed(part):
        start.wait()
        for b in part:
            shared.update(b)

    threads = [threading.Thread(target=feed, args=(batches[i::n_threads],)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return shared


def test_threads_updating_one_stats_lose_no_update():
    # Several rounds, each OpenMP thread count: an unsynchronised update loses sums only when
    # two threads meet in the same accumulation, which a single short round may not show.
    k = 96
    batches = _integer_batches(0, 160, 128, k)
    alone = awqkit.ActivationStats(k, gram=True)
    for b in batches:
        alone.update(b)
    want = _state(alone)
    for _ in range(3):
        for omp_threads in (2, 1):
            with awqkit.use_threads(omp_threads):
                shared = _fed_by_threads(batches, k, n_threads=4)
            for got, expected in zip(_state(shared), want):
                np.testing.assert_array_equal(got, expected)


def test_merging_stats_into_themselves_and_crosswise_from_threads():
    k = 32
    a = awqkit.ActivationStats(k, gram=True).update(_integer_batches(1, 1, 64, k)[0])
    b = awqkit.ActivationStats(k, gram=True).update(_integer_batches(2, 1, 64, k)[0])
    a0 = _state(a)
    a.merge(a)  # doubles, takes its one lock once
    np.testing.assert_array_equal(a.gram(), 2 * a0[4])
    # a.merge(b) racing b.merge(a) must neither deadlock nor tear: each sees the other whole.
    t = threading.Thread(target=a.merge, args=(b,))
    t.start()
    b.merge(a)
    t.join(timeout=30)
    assert not t.is_alive(), "a.merge(b) and b.merge(a) deadlocked"
    assert (a.n_tokens, b.n_tokens) in {(128 + 64, 64 + 128 + 64), (128 + 64 + 128, 64 + 128)}


class _Pickled:
    """Unpickles as whatever ``reduced`` (a __reduce__ value) builds."""

    def __init__(self, reduced):
        self.reduced = reduced

    def __reduce__(self):
        return self.reduced


def _corrupt(change):
    st = awqkit.ActivationStats(8, gram=True).update(_integer_batches(3, 1, 16, 8)[0])
    fn, (k, gram, state) = st.__reduce__()
    n, sa, ss, ma, g = (state[0], *(np.array(a, copy=True) for a in state[1:]))
    state = change([n, sa, ss, ma, g])
    return _Pickled((fn, (k, gram, tuple(state))))


def _set(i, value):
    def change(s):
        s[i] = value
        return s

    return change


def _poke(i, index, value):
    def change(s):
        s[i][index] = value
        return s

    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (_set(0, 2.5), "token count must be an integer"),
        (_set(0, -1), "token count"),
        (_poke(1, 3, np.nan), r"sum_abs\[3\]"),
        (_poke(1, 0, -1.0), r"sum_abs\[0\]"),
        (_poke(2, 5, -2.0), r"sum_sq\[5\]"),
        (_poke(2, 5, np.inf), r"sum_sq\[5\]"),
        (_poke(3, 7, -0.5), r"max_abs\[7\]"),
        (_poke(4, (1, 2), 123.0), "not symmetric"),
        (_poke(4, (2, 2), -4.0), "diagonal"),
        (_poke(4, (6, 6), np.nan), "diagonal"),
        (_poke(4, (0, 5), np.inf), "finite"),
        (_set(4, None), "lacks the Gram matrix"),
        (_set(1, np.zeros(9)), "shape"),
        (_set(4, np.zeros((8, 9))), "shape"),
    ],
)
def test_unpickling_a_corrupt_state_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        pickle.loads(pickle.dumps(_corrupt(change)))


def test_unpickling_refuses_sums_without_tokens_and_a_gram_matrix_the_stats_lack():
    st = awqkit.ActivationStats(8, gram=True).update(_integer_batches(4, 1, 16, 8)[0])
    fn, (k, _, state) = st.__reduce__()
    with pytest.raises(ValueError, match="no tokens"):
        pickle.loads(pickle.dumps(_Pickled((fn, (k, True, (0, *state[1:]))))))
    with pytest.raises(ValueError, match="made without one"):
        pickle.loads(pickle.dumps(_Pickled((fn, (k, False, state)))))
    clone = pickle.loads(pickle.dumps(st))  # a valid state still round-trips exactly
    for got, want in zip(_state(clone), _state(st)):
        np.testing.assert_array_equal(got, want)

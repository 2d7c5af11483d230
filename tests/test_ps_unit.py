"""Parameter-server and local-SGD pieces without MPI: shards, synchronisation steps, byte model, flag checks."""
import argparse

import pytest

from ring_allreduce.localsgd import train_plugin as local_plugin
from ring_allreduce.ps import layout
from ring_allreduce.ps import train_plugin as ps_plugin


@pytest.mark.parametrize("n,servers", [(0, 1), (1, 3), (10, 3), (2410, 2), (7, 7)])
def test_shards_cover_the_vector_once(n, servers):
    b = layout.shard_bounds(n, servers)
    sizes = [b[i + 1] - b[i] for i in range(servers)]
    assert b[0] == 0 and b[-1] == n and min(sizes) >= 0 and max(sizes) - min(sizes) <= 1


def test_sync_steps_are_epoch_ends_checkpoints_and_the_last_step():
    per_epoch = 5
    assert [t for t in range(12) if layout.is_sync_step(t, per_epoch)] == [4, 9]
    assert [t for t in range(12) if layout.is_sync_step(t, per_epoch, checkpoint_every=3)] == [2, 4, 5, 8, 9, 11]
    assert [t for t in range(12) if layout.is_sync_step(t, per_epoch, max_steps=7)] == [4, 6, 7, 8, 9, 10, 11]
    assert layout.sync_steps(0, 12, per_epoch) == 2


def test_ps_byte_model_conserves_the_traffic():
    """Without syncs the workers' pushes equal the servers' answers: W * n elements each way per step."""
    p, S, n, steps = 5, 2, 1001, 7
    sent = [layout.ps_bytes(r, p, S, n, 4, steps, 0) for r in range(p)]
    assert sum(sent[S:]) == sum(sent[:S]) == (p - S) * n * 4 * steps
    with_sync = [layout.ps_bytes(r, p, S, n, 4, steps, 1, "ring") for r in range(p)]
    ring3 = [layout.allreduce_bytes("ring", p, r, layout.STATS, 8) for r in range(p)]
    # a sync replaces one step's answers by parameters + momentum to every other rank
    assert with_sync[0] - sent[0] == ((2 * (p - 1) - (p - S)) * 501) * 4 + ring3[0]


def _ps_args(**kw):
    base = dict(mode="ps", servers=None, consistency=None, staleness=0, backup_workers=0, compression=None,
                shared_buckets=False, local_steps=0, kernel="auto")
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.mark.parametrize("kw,p,needle", [
    (dict(servers=2), 2, "at least one worker"),
    (dict(servers=0), 4, "--servers must be >= 1"),
    (dict(staleness=2), 3, "needs --consistency ssp"),
    (dict(consistency="asp", staleness=1), 3, "needs --consistency ssp"),
    (dict(backup_workers=1), 3, "--backup-workers"),
    (dict(compression="fp16"), 3, "--compression"),
    (dict(local_steps=4), 3, "--local-steps"),
    (dict(kernel="cupy"), 3, "GPU"),
    (dict(mode="allreduce", servers=2), 3, "--servers need --mode ps"),
    (dict(mode="allreduce", consistency="ssp"), 3, "--consistency need --mode ps"),
])
def test_ps_refuses_combinations_that_cannot_run(kw, p, needle):
    err = ps_plugin.check(_ps_args(**kw), p)
    assert err is not None and needle in err, err


@pytest.mark.parametrize("kw,p", [(dict(), 2), (dict(servers=2, consistency="ssp", staleness=3), 3),
                                  (dict(mode="allreduce"), 1)])
def test_ps_accepts_valid_combinations(kw, p):
    assert ps_plugin.check(_ps_args(**kw), p) is None


@pytest.mark.parametrize("kw,needle", [
    (dict(local_steps=-1), "--local-steps must be"),
    (dict(local_steps_after=2), "needs --local-steps"),
    (dict(local_steps=4, local_steps_after=-1), "--local-steps-after must be"),
    (dict(local_steps=4, backup_workers=1), "--backup-workers"),
    (dict(local_steps=4, compression="topk"), "--compression"),
])
def test_local_sgd_refuses_combinations_that_cannot_run(kw, needle):
    base = dict(local_steps=0, local_steps_after=0, backup_workers=0, compression=None, kernel="auto")
    base.update(kw)
    err = local_plugin.check(argparse.Namespace(**base))
    assert err is not None and needle in err, err


@pytest.mark.parametrize("p", [2, 3, 5, 8])
def test_allreduce_byte_model_ring_and_tree_move_the_vector_2_p_minus_1_times(p):
    n = 1000
    for algo in ("ring", "tree"):
        total = sum(layout.allreduce_bytes(algo, p, r, n, 4) for r in range(p))
        assert total == 2 * (p - 1) * n * 4, algo

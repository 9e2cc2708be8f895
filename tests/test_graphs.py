"""fastgen.sampling.graphs: the one capture cache of every sampler (keys, static inputs,
lifetimes, bound), exercised on the CPU through its eager stand-in backend."""
import gc
import weakref

import torch

from fastgen.sampling.graphs import EagerReplayBackend, GraphCache, weights_version


class Owner:
    pass


def _loop(buffers):
    return buffers["cond"] * 2 + buffers["noise"]


def test_fresh_conditioning_per_request_replays_one_graph_and_keeps_nothing_alive():
    cache, owner = GraphCache(backend=EagerReplayBackend()), Owner()
    seen = []
    for i in range(20):
        cond, noise = torch.full((4,), float(i)), torch.ones(4)
        out = cache.replay(owner, ("n", 4), {"cond": cond, "noise": noise}, _loop)
        assert torch.equal(out, cond * 2 + 1)       # the new conditioning was copied in
        seen.append(weakref.ref(cond))
        del cond, noise
    gc.collect()
    assert cache.captures == 1 and len(cache) == 1
    assert all(ref() is None for ref in seen)        # no request's tensor is kept alive


def test_entries_die_with_their_owner():
    cache, owner = GraphCache(backend=EagerReplayBackend()), Owner()
    cache.replay(owner, "a", {"cond": torch.zeros(2), "noise": torch.zeros(2)}, _loop)
    owner_ref = weakref.ref(owner)
    del owner
    gc.collect()
    assert owner_ref() is None and len(cache) == 0


def test_bounded_lru_and_clear():
    cache, owner = GraphCache(max_entries=2, backend=EagerReplayBackend()), Owner()
    inputs = {"cond": torch.zeros(2), "noise": torch.zeros(2)}
    for config in ("a", "b", "a", "c"):              # "b" is the least recently used when "c" comes
        cache.replay(owner, config, inputs, _loop)
    assert cache.captures == 3 and len(cache) == 2
    cache.replay(owner, "a", inputs, _loop)
    assert cache.captures == 3                        # "a" survived
    cache.replay(owner, "b", inputs, _loop)
    assert cache.captures == 4                        # "b" had been evicted
    cache.clear()
    assert len(cache) == 0


def test_weights_version_changes_when_weights_are_written():
    layer = torch.nn.Linear(2, 2)
    before = weights_version(layer)
    with torch.no_grad():
        layer.weight.add_(1)
    assert weights_version(layer) != before

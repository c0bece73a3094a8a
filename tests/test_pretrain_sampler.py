"""The distributed, resumable sampler (biovfm_lib.data.sampler)."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from biovfm_lib.data.sampler import ResumableDistributedSampler


def epoch_keys(sampler: ResumableDistributedSampler, epoch: int) -> list[tuple[int, int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("n, ranks", [(10, 1), (10, 2), (11, 3), (13, 4), (7, 7)])
def test_ranks_partition_each_epoch_and_epochs_differ(n, ranks):
    samplers = [ResumableDistributedSampler(n, ranks, r, seed=4) for r in range(ranks)]
    orders = []
    for epoch in (0, 1):
        shares = [epoch_keys(s, epoch) for s in samplers]
        assert {len(s) for s in shares} == {n // ranks} == {len(s) for s in samplers}
        assert all(e == epoch for share in shares for e, _ in share)
        indices = [i for share in shares for _, i in share]
        assert len(set(indices)) == len(indices) == n - n % ranks  # no overlap, drop_last
        assert set(indices) <= set(range(n))
        orders.append([i for _, i in epoch_keys(samplers[0], epoch)])
    if n // ranks > 2:
        assert orders[0] != orders[1]
    again = ResumableDistributedSampler(n, ranks, 0, seed=4)
    assert [i for _, i in epoch_keys(again, 1)] == orders[1]


def test_without_drop_last_every_index_is_seen_and_ranks_stay_equal():
    samplers = [ResumableDistributedSampler(10, 4, r, drop_last=False) for r in range(4)]
    shares = [[i for _, i in s] for s in samplers]
    assert [len(s) for s in shares] == [3, 3, 3, 3]
    assert {i for share in shares for i in share} == set(range(10))


def test_seed_and_shuffle_set_the_order():
    a = [i for _, i in ResumableDistributedSampler(50, seed=0)]
    assert a != [i for _, i in ResumableDistributedSampler(50, seed=1)]
    assert sorted(a) == list(range(50))
    assert [i for _, i in ResumableDistributedSampler(50, shuffle=False)] == list(range(50))


def test_resume_mid_epoch_yields_exactly_the_rest_of_an_uninterrupted_run():
    ranks, n, epochs = 3, 40, 3
    uninterrupted = [[epoch_keys(ResumableDistributedSampler(n, ranks, r, seed=9), e)
                      for e in range(epochs)] for r in range(ranks)]
    for stop_epoch, consumed in ((0, 5), (1, 0), (1, 13), (2, 12)):
        for rank in range(ranks):
            first = ResumableDistributedSampler(n, ranks, rank, seed=9)
            first.set_epoch(stop_epoch)
            first.advance(consumed)
            state = first.state_dict()
            resumed = ResumableDistributedSampler(n, ranks, rank, seed=9)
            resumed.load_state_dict(state)
            assert len(resumed) == n // ranks - consumed
            rest = epoch_keys(resumed, stop_epoch)  # the loop's set_epoch keeps the position
            assert rest == uninterrupted[rank][stop_epoch][consumed:]
            later = [epoch_keys(resumed, e) for e in range(stop_epoch + 1, epochs)]
            assert later == uninterrupted[rank][stop_epoch + 1:]


class Keys(Dataset):
    def __len__(self) -> int:
        return 30

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        return torch.tensor(key)


def test_position_counts_trained_batches_not_what_the_loader_prefetched():
    def loader(sampler):
        return DataLoader(Keys(), batch_size=4, sampler=sampler, num_workers=2,
                          prefetch_factor=2)

    full = torch.cat(list(loader(ResumableDistributedSampler(30, 2, 1, seed=3))))
    sampler = ResumableDistributedSampler(30, 2, 1, seed=3)
    seen = []
    for step, batch in enumerate(loader(sampler)):  # workers have fetched ahead by now
        seen.append(batch)
        sampler.advance(len(batch))
        if step == 1:
            state = sampler.state_dict()
            break
    resumed = ResumableDistributedSampler(30, 2, 1, seed=3)
    resumed.load_state_dict(state)
    seen += list(loader(resumed))
    assert torch.equal(torch.cat(seen), full)


def test_bad_use_is_refused():
    sampler = ResumableDistributedSampler(10, 2, 0)
    with pytest.raises(ValueError, match="cannot advance by 6: 0 of 5"):
        sampler.advance(6)
    state = sampler.state_dict()
    with pytest.raises(ValueError, match=r"'seed': \(0, 1\)"):
        ResumableDistributedSampler(10, 2, 0, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match=r"'num_replicas': \(2, 4\)"):
        ResumableDistributedSampler(10, 4, 0).load_state_dict(state)
    with pytest.raises(ValueError, match="rank 2 must be in"):
        ResumableDistributedSampler(10, 2, 2)
    with pytest.raises(ValueError, match="dataset_len 3 gives no sample"):
        ResumableDistributedSampler(3, 4, 0)
    sampler.advance(5)
    assert list(sampler) == [] and len(sampler) == 0
    sampler.set_epoch(1)
    assert len(list(sampler)) == 5

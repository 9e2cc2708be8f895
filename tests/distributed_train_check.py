"""Run under ``torchrun --nproc-per-node 2`` by tests/test_train.py (gloo, CPU): checks of the
data-parallel update that models with their own ``train_step`` (the GANs) get under torchrun.

1. ``average_gradients_on_step``: a linear model, each rank with its half of a batch, one SGD
   step: the parameters equal one process's step on the whole batch.
2. ``fastgen train dcgan`` for a few steps: every rank ends with rank 0's parameters and
   buffers (without the averaging the ranks, fed different data, would drift apart).
Usage: distributed_train_check.py OUT_DIR CONFIG_JSON.  A failed check raises."""
import json
import sys

import torch
import torch.distributed as dist

from fastgen.train import TrainOptions, loop, train
from fastgen.train.distributed import average_gradients_on_step, dist_env


def check_gradient_average() -> None:
    rank = dist_env().rank
    torch.manual_seed(0)
    x, y = torch.randn(8, 5), torch.randn(8, 3)
    whole, mine = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    mine.load_state_dict(whole.state_dict())
    opt_whole = torch.optim.SGD(whole.parameters(), lr=0.5)
    opt_mine = torch.optim.SGD(mine.parameters(), lr=0.5)
    average_gradients_on_step(opt_mine, dist_env())
    torch.nn.functional.mse_loss(whole(x), y).backward()
    opt_whole.step()
    half = slice(4 * rank, 4 * rank + 4)
    torch.nn.functional.mse_loss(mine(x[half]), y[half]).backward()
    opt_mine.step()
    for a, b in zip(whole.parameters(), mine.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


def check_gan_ranks_agree(out: str, config: dict) -> None:
    built = []
    attach = loop.attach_data
    loop.attach_data = lambda *args: built.append(attach(*args)) or built[-1]      # keep the trained model
    try:
        train(TrainOptions("dcgan", data="digits", steps=3, batch=8, out=out, config=config, device="cpu",
                           progress=False))
    finally:
        loop.attach_data = attach
    state = torch.cat([t.detach().float().reshape(-1) for t in built[0].state_dict().values()])
    gathered = [torch.empty_like(state) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, state)
    assert torch.equal(gathered[0], gathered[1]), "the ranks' parameters or buffers differ"


if __name__ == "__main__":
    dist.init_process_group("gloo")
    try:
        check_gradient_average()
        check_gan_ranks_agree(sys.argv[1], json.loads(sys.argv[2]))
    finally:
        dist.destroy_process_group()

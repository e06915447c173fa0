"""course_lib.train.loop: the one training loop every training function runs on (tiny models, a second or two)."""

import pytest
import torch

from course_lib.train.loop import Snapshots, TrainLoop, ema_update
from course_lib.train.state import Checkpointing


def linear(seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 1)


def test_the_loop_is_the_plain_loop_written_out():
    """zero_grad, backward, clip, step, schedule step, EMA: the same numbers as the loop by hand."""
    model, by_hand = linear(), linear()
    ema, ema_by_hand = linear(), linear()
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))

    def loss_of(net, i):
        rows = x[i * 8:(i + 1) * 8]
        return (net(rows).squeeze(1) - rows.sum(1)).pow(2).mean()

    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))
    loop = TrainLoop(model, opt, total_steps=6, lr_schedule=sched, grad_clip=0.5, ema=ema, ema_decay=0.9,
                     show_progress=False)
    result = loop.run(lambda i: loss_of(model, i))

    opt2 = torch.optim.AdamW(by_hand.parameters(), lr=0.1)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: min(1.0, (s + 1) / 3))
    losses = []
    for i in range(6):
        loss = loss_of(by_hand, i)
        opt2.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(by_hand.parameters(), 0.5)
        opt2.step()
        sched2.step()
        ema_update(ema_by_hand, by_hand, 0.9)
        losses.append(loss.item())
    assert result.history["loss"] == losses and result.steps == 6 and result.start_step == 0
    for a, b in ((model, by_hand), (ema, ema_by_hand)):
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not model.training  # left in eval mode


def test_a_step_with_several_optimizers_updates_on_its_own():
    G, D = linear(0), linear(1)
    loop = TrainLoop({"G": G, "D": D}, {"g": torch.optim.SGD(G.parameters(), lr=0.1),
                                        "d": torch.optim.SGD(D.parameters(), lr=0.1)}, total_steps=3,
                     show_progress=False)

    def step(i):
        loss_d = D(torch.ones(2, 3)).mean()
        loop.optimize(loss_d, "d")
        loss_g = G(torch.ones(2, 3)).mean()
        loop.optimize(loss_g, "g")
        return {"loss_d": loss_d, "loss_g": loss_g}

    result = loop.run(step)
    assert set(result.history) == {"loss_d", "loss_g"} and len(result.history["loss_d"]) == 3
    with pytest.raises(ValueError, match="several optimizers"):
        TrainLoop({"G": G, "D": D}, {"g": torch.optim.SGD(G.parameters(), lr=0.1),
                                     "d": torch.optim.SGD(D.parameters(), lr=0.1)}, total_steps=1,
                  show_progress=False).run(lambda i: G(torch.ones(1, 3)).mean())


def test_skipped_steps_hooks_and_the_time_limit():
    model = linear()
    seen = []
    loop = TrainLoop(model, torch.optim.SGD(model.parameters(), lr=0.1), total_steps=4, show_progress=False)
    result = loop.run(lambda i: None if i == 1 else model(torch.ones(1, 3)).mean(),
                      on_step=lambda i, values: seen.append((i, sorted(values))))
    assert len(result.history["loss"]) == 3 and seen == [(0, ["loss"]), (1, []), (2, ["loss"]), (3, ["loss"])]
    timed = TrainLoop(model, torch.optim.SGD(model.parameters(), lr=0.1), total_steps=10**6, max_seconds=0.0,
                      show_progress=False).run(lambda i: model(torch.ones(1, 3)).mean())
    assert timed.steps == 1 and timed.out_of_time
    with pytest.raises(ValueError, match="no 'loss' to optimize"):
        TrainLoop(model, torch.optim.SGD(model.parameters(), lr=0.1), total_steps=1,
                  show_progress=False).run(lambda i: {"error": model(torch.ones(1, 3)).mean()})


def test_stopped_and_resumed_with_state_equals_the_uninterrupted_run(tmp_path):
    def run(model, checkpoint):
        g = torch.Generator().manual_seed(3)
        snapshots = Snapshots()
        opt = torch.optim.AdamW(model.parameters(), lr=0.05)
        loop = TrainLoop(model, opt, total_steps=6, checkpoint=checkpoint, generators={"batches": g},
                         state={"snapshot": snapshots}, show_progress=False)

        def step(i):
            x = torch.randn(4, 3, generator=g)
            return {"loss": model(x).pow(2).mean(), "noise": torch.randn(()).abs()}  # global random state too

        result = loop.run(step, on_step=lambda i, v: snapshots.__setitem__(i + 1, model.weight.detach().clone()))
        return result.history, snapshots

    torch.manual_seed(0)
    whole = linear(5)
    history, snapshots = run(whole, None)
    torch.manual_seed(0)
    run(linear(5), Checkpointing(tmp_path / "state", stop_after=4))
    resumed = linear(9)
    torch.manual_seed(1)
    history2, snapshots2 = run(resumed, Checkpointing(resume=tmp_path / "state"))
    assert history2 == history and snapshots2.keys() == snapshots.keys()
    assert all(torch.equal(snapshots[k], snapshots2[k]) for k in snapshots)
    assert torch.equal(whole.weight, resumed.weight) and torch.equal(whole.bias, resumed.bias)

"""The optimisers the `opt` setting names: fastai's Adam stepped with torch's `_foreach_` ops, and fastai's ranger.

`OPT_FUNCS[exp.opt]` is what the Learner is given as `opt_func`; both keep fastai's hypers, defaults and state, so
fastai's schedules (`fit_one_cycle`, `fit_flat_cos`), `freeze` and discriminative learning rates work unchanged.
"""

from __future__ import annotations

from functools import partial

import torch
from fastai.optimizer import (
    Optimizer,
    adam_step,
    average_grad,
    average_sqr_grad,
    debias,
    l2_reg,
    ranger,
    step_stat,
    weight_decay,
)

from .config import OPTIMIZERS

__all__ = ["ForeachAdam", "OPT_FUNCS"]


class ForeachAdam(Optimizer):
    """fastai's `Adam` (AdamW: decoupled weight decay; fastai's defaults, hypers, state and `do_wd`), each step done
    by torch's `_foreach_` ops over all the tensors of a parameter group at once instead of fastai's five Python
    callbacks per tensor: the same operations in the same order, so the same numbers to the last bit (tested).
    L2 regularisation (`decouple_wd=False`) steps as fastai's does."""

    def __init__(self, params, lr, mom: float = 0.9, sqr_mom: float = 0.99, eps: float = 1e-5, wd: float = 0.01,
                 decouple_wd: bool = True):
        cbs = [weight_decay if decouple_wd else l2_reg, partial(average_grad, dampening=True), average_sqr_grad,
               step_stat, adam_step]  # fastai's Adam's, which describe the step (and give the hypers' defaults)
        super().__init__(params, cbs, lr=lr, mom=mom, sqr_mom=sqr_mom, eps=eps, wd=wd)
        self.decouple_wd = decouple_wd

    def step(self, closure=None):
        if closure is not None:
            raise NotImplementedError("fastai optimizers do not take a closure")
        if not self.decouple_wd:
            return super().step()
        groups = {}  # tensors that share hypers, step count and weight decay take each stage together
        for p, _, state, hyper in self.all_params(with_grad=True):
            groups.setdefault((id(hyper), state.get("step", 0), state.get("do_wd", True)), (hyper, []))[1].append(p)
        for (_, step, do_wd), (h, ps) in groups.items():
            grads, data, states = [p.grad.data for p in ps], [p.data for p in ps], [self.state[p] for p in ps]
            for st, g in zip(states, grads):
                for k in ("grad_avg", "sqr_avg"):
                    if st.get(k) is None:
                        st[k] = torch.zeros_like(g)
            avg, sqr = [st["grad_avg"] for st in states], [st["sqr_avg"] for st in states]
            if do_wd and h["wd"] != 0:
                torch._foreach_mul_(data, 1 - h["lr"] * h["wd"])
            torch._foreach_mul_(avg, h["mom"])
            torch._foreach_add_(avg, grads, alpha=1 - h["mom"])
            torch._foreach_mul_(sqr, h["sqr_mom"])
            torch._foreach_addcmul_(sqr, grads, grads, value=1 - h["sqr_mom"])
            step += 1
            debias1, debias2 = debias(h["mom"], 1 - h["mom"], step), debias(h["sqr_mom"], 1 - h["sqr_mom"], step)
            denom = torch._foreach_div(sqr, debias2)
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, h["eps"])
            torch._foreach_addcdiv_(data, avg, denom, value=-h["lr"] / debias1)
            for st in states:
                st["step"] = step


OPT_FUNCS = {"adam": ForeachAdam, "ranger": ranger}  # the `opt` setting's optimisers: fastai's, with fastai's defaults
assert tuple(OPT_FUNCS) == OPTIMIZERS, "config.OPTIMIZERS names these"


"""One registry of training methods: `METHODS[config.method]` is a pure step function.

A step has the signature `step(state, batch, rng, *, ctx) -> (state, metrics)`; `ctx` is a
`StepContext` bound with functools.partial before jit, so each step compiles once.
"""
from mgr_jax.methods.base import base_step
from mgr_jax.methods.common import StepContext, eval_step

METHODS = {
    'base': base_step,
}

"""One registry of training methods, selected by `config.method`.

Each `Method` names its pure step function (`step(state, batch, rng, gen_vars, *, ctx)`,
bound to a `StepContext` with functools.partial and jitted once) and what it needs: a
generator, a D_val batch per step, a finder, a second head.
"""
import dataclasses
import functools
from typing import Callable

from mgr_jax.methods import terms
from mgr_jax.methods.base import base_step
from mgr_jax.methods.common import (ClassifierContext, MetaContext, StepContext,
                                    SyntheticContext, eval_step)
from mgr_jax.methods.steps import finder_ascent_step, meta_step, regularized_step


@dataclasses.dataclass(frozen=True)
class Method:
  step: Callable
  uses_generator: bool = True
  meta: bool = False  # Meta-learns (MPS): needs D_val batches and finder state.
  ascent: bool = False  # A finder trained without meta-learning (finder state, no D_val).
  needs_labels: bool = False  # The term uses y_p: needs a conditional generator.
  synthetic_head: bool = False  # gda_mh: a second head ω_p ('fc_p').

  @property
  def finder(self) -> bool:
    """The state holds meta parameters φ (finder_params) and their optimiser state."""
    return self.meta or self.ascent


def _regularized(term, **kw):
  return Method(functools.partial(regularized_step, term=term), **kw)


def _meta(term, **kw):
  return Method(functools.partial(meta_step, term=term), meta=True, **kw)


def _ascent(objective, **kw):  # Table 7: the classifier trained with PCR, F_φ maximising.
  return Method(functools.partial(finder_ascent_step, term=terms.pcr, objective=objective),
                ascent=True, **kw)


METHODS = {
    'base': Method(base_step, uses_generator=False),
    'gda': _regularized(terms.gda, needs_labels=True),
    'gda_mh': _regularized(terms.gda_multi_head, needs_labels=True, synthetic_head=True),
    'gda_ssl': _regularized(terms.uda),
    'gda_mps': _meta(terms.gda, needs_labels=True),
    'pcr': _regularized(terms.pcr),
    'mgr': _meta(terms.pcr),
    'real_cr': _regularized(terms.real_consistency, uses_generator=False),
    'latent_augment': _regularized(terms.latent_augment),
    'finder_max_ce': _ascent(terms.gda, needs_labels=True),
    'finder_max_pcr': _ascent(terms.pcr),
}

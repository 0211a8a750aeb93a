"""Many training runs in one process: what compare, study, lambda_search and hypergrad share.

A `Job` is one `train_and_evaluate` call in its own resumable workdir; `run_jobs` runs a list
of them in order, reads the finished ones (results.json) instead of retraining, and prints a
line per run with the progress and an estimate of the time left. """
import dataclasses
import os
import statistics
import time
from typing import Callable, Dict, List, Optional

from mgr_jax.errors import UserError


@dataclasses.dataclass
class Job:
  label: str  # Shown in the progress lines, e.g. 'f0.1 mgr seed 0'.
  config: object  # The run's full ml_collections config.
  workdir: str
  on_step: Optional[Callable] = None  # Passed to train_and_evaluate (see its docstring).

  @property
  def finished(self) -> bool:
    return os.path.exists(os.path.join(self.workdir, 'results.json'))


def check_methods(methods) -> List[str]:
  from mgr_jax.methods import METHODS
  methods = [m.strip() for m in methods if m.strip()]
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise UserError(f'Unknown methods {unknown}; choose from {", ".join(sorted(METHODS))}.')
  if not methods:
    raise UserError('No methods given (e.g. --methods=base,mgr).')
  if len(set(methods)) != len(methods):
    raise UserError(f'--methods lists a method twice: {methods}.')
  return methods


def parse_numbers(values, kind, flag: str, low=None, high=None) -> list:
  """Comma-separated flag values -> distinct numbers of `kind` in [low, high]; UserError."""
  try:
    numbers = [kind(v) for v in values if str(v).strip()]
  except ValueError:
    raise UserError(f'--{flag}={",".join(map(str, values))}: expected {kind.__name__}s '
                    'separated by commas.') from None
  if not numbers:
    raise UserError(f'--{flag} is empty.')
  bad = [n for n in numbers if (low is not None and n <= low) or (high is not None and n > high)]
  if bad:
    raise UserError(f'--{flag}: {bad} out of range ({low}, {high}].')
  if len(set(numbers)) != len(numbers):
    raise UserError(f'--{flag} lists a value twice: {numbers}.')
  return numbers


def uses_generator(methods) -> bool:
  from mgr_jax.methods import METHODS
  return any(METHODS[m].uses_generator for m in methods)


def generator_dir(config, methods, generator_workdir: str) -> str:
  """Where the generator the runs share is (or will be, see `shared_generator`)."""
  if not uses_generator(methods):
    return ''
  if config.generator.checkpoint:
    return config.generator.checkpoint
  from mgr_jax.gan.loop import GENERATOR_SUBDIR
  return os.path.join(os.path.abspath(generator_workdir), GENERATOR_SUBDIR)


def shared_generator(config, methods, generator_workdir: str) -> str:
  """The generator directory the runs share: config.generator.checkpoint (checked), or one
  trained on the config's D (its data.fraction) into <generator_workdir>/generator, once."""
  if not uses_generator(methods):
    return ''
  from mgr_jax.train.setup import generator_dir as train_or_find
  path = train_or_find(config, generator_workdir)
  assert path == generator_dir(config, methods, generator_workdir), path
  return path


# The layout of a study directory W (study and lambda_search share it, and so the
# generator of each fraction): W/generator_f0.1/generator, W/f0.1/<run>, W/lambda.json.


def fraction_key(fraction: float) -> str:
  return f'{float(fraction):g}'


def fraction_dir(workdir: str, fraction: float) -> str:
  return os.path.join(workdir, f'f{fraction_key(fraction)}')


def generator_workdir(workdir: str, fraction: float) -> str:
  return os.path.join(workdir, f'generator_f{fraction_key(fraction)}')


LAMBDA_FILE = 'lambda.json'


def read_lam(spec: str, fractions) -> Dict[str, float]:
  """--lam: a number for every fraction, or a lambda.json of `experiments.lambda_search`
  (its choice per fraction) -> {fraction_key: λ}."""
  try:
    return {fraction_key(f): float(spec) for f in fractions}
  except ValueError:
    pass
  from mgr_jax.workdir import read_json
  if os.path.isdir(spec):
    spec = os.path.join(spec, LAMBDA_FILE)
  chosen = read_json(spec, '--lam takes a number or the lambda.json written by '
                     '`python -m experiments.lambda_search`.').get('lam_by_fraction', {})
  missing = [fraction_key(f) for f in fractions if fraction_key(f) not in chosen]
  if missing:
    raise UserError(f'{spec} has no λ for fraction(s) {missing} (it has {sorted(chosen)}); '
                    'run experiments.lambda_search with those --fractions.')
  return {fraction_key(f): float(chosen[fraction_key(f)]) for f in fractions}


def set_lam(config, lam: float) -> None:
  config.synth.lam = float(lam)


def run_config(config, method: str, seed: int, generator_dir: str):
  """A copy of `config` for one run of `method` with training seed `seed`."""
  from mgr_jax.methods import METHODS
  c = config.copy_and_resolve_references()
  c.method, c.seed = method, seed
  # Methods without a generator get '' so that their config does not depend on it.
  c.generator.checkpoint = generator_dir if METHODS[method].uses_generator else ''
  return c


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds < 60:
    return f'{seconds} s'
  if seconds < 3600:
    return f'{seconds // 60} min {seconds % 60:02d} s'
  return f'{seconds // 3600} h {seconds % 3600 // 60:02d} min'


class Progress:
  """One line per finished run: k/N, its result and an estimate of the time left.

  The estimate is the mean training time of the runs of the same method done so far in
  this process (another method's mean before the first one); finished runs, which are only
  read, cost nothing.
  """

  SHOWN = {'test_acc': 'test accuracy', 'best_val_acc': 'D_val accuracy'}

  def __init__(self, jobs: List[Job], prefix: str = '', metric: str = 'test_acc'):
    self.jobs, self.prefix, self.metric = jobs, prefix, metric
    self.seconds = {}  # method -> wall seconds of the runs trained here.
    self.done = 0

  def estimate_left(self) -> Optional[float]:
    pending = [j for j in self.jobs[self.done:] if not j.finished]
    if not pending:
      return 0.0
    if not self.seconds:
      return None
    overall = statistics.fmean(s for v in self.seconds.values() for s in v)
    return sum(statistics.fmean(self.seconds.get(j.config.method, [overall]))
               for j in pending)

  def record(self, job: Job, results: dict, seconds: float, trained: bool) -> str:
    self.done += 1
    if trained:
      self.seconds.setdefault(job.config.method, []).append(seconds)
    left = self.estimate_left()
    left = 'unknown' if left is None else _duration(left)
    how = f'trained in {_duration(seconds)}' if trained else 'read (finished before)'
    line = (f'{self.prefix}[{self.done}/{len(self.jobs)}] {job.label}: '
            f'{self.SHOWN[self.metric]} {100 * results[self.metric]:.2f} % ({how}); '
            f'time left about {left}')
    print(line, flush=True)
    return line


def run_jobs(jobs: List[Job], progress: Optional[Progress] = None) -> List[dict]:
  """Runs (or reads) every job in order; returns their results in the same order.

  A finished run is read only if it was made with the job's config (train_and_evaluate
  checks; else UserError): a summary never mixes two experiments. `progress` may span more
  jobs than these.
  """
  from mgr_jax.train.loop import train_and_evaluate
  progress = progress or Progress(jobs)
  prefix = progress.prefix
  out = []
  for job in jobs:
    trained = not job.finished
    if trained:
      print(f'{prefix}=== {job.label} ({job.workdir})', flush=True)
    start = time.time()
    results = train_and_evaluate(job.config, job.workdir, on_step=job.on_step)
    progress.record(job, results, time.time() - start, trained)
    out.append(results)
  return out


@dataclasses.dataclass
class FractionPlan:
  fraction: float
  config: object  # The config with this data.fraction.
  generator_workdir: str
  generator: str  # The generator directory of the fraction's runs ('' if none uses one).
  jobs: List[Job]


def plan_fractions(config, workdir: str, fractions, methods, make_jobs) -> List[FractionPlan]:
  """One FractionPlan per fraction; make_jobs(fraction_config, generator_dir, run_parent)
  -> that fraction's Jobs (their generator: the fraction's own, see the layout above)."""
  plans = []
  for fraction in fractions:
    fconfig = config.copy_and_resolve_references()
    fconfig.data.fraction = fraction
    gen_workdir = generator_workdir(workdir, fraction)
    generator = generator_dir(fconfig, methods, gen_workdir)
    jobs = make_jobs(fconfig, generator, fraction_dir(workdir, fraction))
    plans.append(FractionPlan(fraction, fconfig, gen_workdir, generator, jobs))
  return plans


def run_fractions(plans: List[FractionPlan], methods, prefix: str = '',
                  metric: str = 'test_acc') -> List[List[dict]]:
  """Each fraction in turn: its generator (trained on its D when a run still needs it),
  then its runs; one progress count over all of them. Results per plan, in job order."""
  progress = Progress([job for plan in plans for job in plan.jobs], prefix, metric)
  out = []
  for plan in plans:
    if not all(job.finished for job in plan.jobs):
      shared_generator(plan.config, methods, plan.generator_workdir)
    out.append(run_jobs(plan.jobs, progress))
  return out

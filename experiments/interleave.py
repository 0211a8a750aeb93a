"""Timing several programs side by side in rotating blocks of consecutive calls.

The benchmarks that put ours next to PyTorch (`bench_torch`, `bench_conv`) take turns so that
load from the rest of the machine hits every program alike, and they take turns in *blocks*:
an untimed call, then `block` timed ones. A call right after the other framework's pays for
that switch (its thread pool's wake-up, caches the other left cold), and not alike: at the
digits base step (2-core AMD EPYC, session 22) JAX after JAX took 40.8 ms and after torch 43.2,
torch after torch 39.9 and after JAX 41.1; with torch's 1-thread column in the rotation, so
that no call ever followed its own kind, JAX's step took 35.3-37.0 ms against 33.7-34.0 in
rounds of JAX and 2-thread torch alone, torch's the same. Training runs steps back to back,
so the timed calls are the ones that follow their own kind.
"""
import math
import time

BLOCK = 5  # Timed consecutive calls per turn, the benchmarks' default.


def time_in_blocks(runners, steps: int, warmup: int = 1, block: int = BLOCK, before=None,
                   clock=time.perf_counter):
  """{name: [seconds]}: `steps` timed calls of each runner (rounded up to whole blocks).

  `runners` maps a name to a no-argument callable that returns when its work is done. Round i
  runs every runner in turn, the order rotated by i; each turn is `before(name)` (if given),
  one untimed call, then `block` timed calls. The first `warmup` rounds are not timed. The
  k-th times of two runners come from the same round and position, so they pair.
  """
  order = list(runners.items())
  times = {name: [] for name in runners}
  for i in range(warmup + math.ceil(steps / block)):
    j = i % len(order)
    for name, call in order[j:] + order[:j]:
      if before is not None:
        before(name)
      call()  # After the other program's turn: not timed (module docstring).
      for _ in range(block):
        start = clock()
        call()
        if i >= warmup:
          times[name].append(clock() - start)
  return times

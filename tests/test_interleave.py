"""experiments.interleave: rotating blocks, the first call of each untimed, times paired."""
from experiments.interleave import time_in_blocks


class FakeClock:
  """A clock that only the runners move: each call advances it by that runner's cost, plus
  a switch penalty when the previous call was another runner's."""

  def __init__(self, costs, switch_penalty):
    self.now, self.last, self.calls = 0.0, None, []
    self.costs, self.switch_penalty = costs, switch_penalty

  def __call__(self):
    return self.now

  def runner(self, name):
    def call():
      self.now += self.costs[name] + (self.switch_penalty if self.last not in (None, name) else 0)
      self.last = name
      self.calls.append(name)
    return call


def test_blocks_rotate_and_time_only_calls_after_their_own_kind():
  clock = FakeClock({'a': 1.0, 'b': 3.0, 'c': 5.0}, switch_penalty=100.0)
  entered = []
  times = time_in_blocks({n: clock.runner(n) for n in 'abc'}, steps=7, warmup=1, block=3,
                         before=entered.append, clock=clock)
  # 7 steps -> 3 timed rounds of 3 (rounded up to whole blocks) after 1 warm-up round.
  assert {n: len(t) for n, t in times.items()} == {'a': 9, 'b': 9, 'c': 9}
  # No timed call paid the switch: each ran after its own kind.
  assert times == {'a': [1.0] * 9, 'b': [3.0] * 9, 'c': [5.0] * 9}
  # Each turn: `before`, one untimed call, then the block; the order rotates by round.
  assert ''.join(entered) == 'abc' + 'bca' + 'cab' + 'abc'
  assert ''.join(clock.calls) == ''.join(n * 4 for n in ''.join(entered))


def test_call_by_call_would_charge_every_call_the_switch():
  # block=1 still times the call after the untimed one: no switch in any timed call...
  clock = FakeClock({'a': 1.0, 'b': 2.0}, switch_penalty=100.0)
  times = time_in_blocks({n: clock.runner(n) for n in 'ab'}, steps=4, warmup=0, block=1,
                         clock=clock)
  assert times == {'a': [1.0] * 4, 'b': [2.0] * 4}
  # ...though the runners did switch (aabb bbaa aabb bbaa: 4 times): every switch fell on an
  # untimed call, which alternating step by step would have timed.
  assert clock.now == 4 * (1.0 + 1.0 + 2.0 + 2.0) + 100.0 * 4

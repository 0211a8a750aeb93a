"""Reading XLA CPU programs: which of a compiled program's YNNPACK fusions are convolutions."""


def ynn_convolutions(hlo_text: str) -> int:
  """How many of a compiled CPU program's YNNPACK fusions compute a convolution."""
  bodies, current = {}, None
  for line in hlo_text.splitlines():
    if line and not line.startswith(' ') and line.rstrip().endswith('{'):
      current = line.split()[0].lstrip('%')
      bodies[current] = ''
    elif current is not None:
      bodies[current] += line + '\n'
  calls = [line.split('calls=')[1].split(',')[0].strip().lstrip('%')
           for line in hlo_text.splitlines() if 'ynn_fusion' in line and 'calls=' in line]
  return sum(' convolution(' in bodies.get(c, '') for c in calls)

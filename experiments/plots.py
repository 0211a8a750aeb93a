"""matplotlib without a display (Agg), and PNGs written atomically."""
import os


def pyplot():
  import matplotlib
  matplotlib.use('Agg')  # Headless machines; no GUI backend is ever needed here.
  import matplotlib.pyplot as plt
  return plt


def save(fig, path: str, dpi: int = 120) -> str:
  """Writes `fig` as a PNG to `path` (write-then-rename) and closes it."""
  plt = pyplot()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + '.tmp'
  fig.savefig(tmp, dpi=dpi, bbox_inches='tight', format='png')
  plt.close(fig)
  os.replace(tmp, path)
  return path

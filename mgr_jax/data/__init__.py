"""Datasets behind one interface: `load_splits(data_config) -> Splits`.

`data.source` selects the source: `digits` (embedded default), `tfds:<name>`,
`folder:<path>`. Every source yields uint8 NHWC images at `data.image_size` and int32
labels; `protocol.make_splits` then applies the paper's D / D_val / fraction protocol.
"""
from mgr_jax.data.protocol import Split, Splits, make_splits
from mgr_jax.data.sources import load_source


def load_splits(data_config) -> Splits:
  raw = load_source(data_config)
  return make_splits(raw, data_config)

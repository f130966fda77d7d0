"""ouvae: hierarchical VAEs with Ornstein-Uhlenbeck spectral smoothing (Pervez & Gavves, ICML 2021).

Pure PyTorch; no Ray import anywhere in this package, so a trial, a notebook and a script all run the same code.
The package root stays import-light (no torch) so that `ouvae.__version__` is cheap to read.
"""

__version__ = "0.2.0"

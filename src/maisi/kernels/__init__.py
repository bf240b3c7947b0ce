"""Native CPU kernels, compiled from the C sources beside this file on first use (:mod:`maisi.kernels.build`).

- :mod:`maisi.kernels.winograd`: 3x3x3 convolutions by Winograd F(4x4x4, 3x3x3), used by
  :func:`maisi.performance.accelerate` on CPUs.
"""

"""Performance measurements the benchmark builds on: timing, FLOPs, the relation loss's cost, peer toolkits.

- :mod:`kdray.perf.timing`: interleaved repeats, medians with their spread, per-round ratios;
- :mod:`kdray.perf.flops`: a step's FLOPs (``FlopCounterMode``) against the machine's measured GEMM rate;
- :mod:`kdray.perf.relation_cost`: both exact paths of the relation loss at a shape;
- :mod:`kdray.perf.pair`: named shapes (``tiny``, ``minilm``, ``bert-base``), random-init pairs, batches;
- :mod:`kdray.perf.sides` and :mod:`kdray.perf.peers`: kdray against TextBrewer, same models and batches
  (``python -m kdray.perf.peers``; TextBrewer comes with the ``peers`` extra).

Submodules are imported by name; this package imports none of them, so ``kdray.perf.flops`` does
not pull in the peer toolkits.
"""

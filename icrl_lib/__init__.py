"""icrl_lib: in-context reinforcement learning (Monea et al., 2024) as a small research library.

Modules, named for the paper's concepts: ``tasks`` (datasets, labels, variants), ``prompts`` (chat messages),
``methods`` (the paper's methods as one table), ``strategies`` (which episodes enter the context), ``config`` (one
experiment's parameters), ``models`` and ``generation`` (constrained label decoding), ``kvcache`` (context KV reuse),
``window`` (episodes that fit a token window), ``stream`` (the rows a run uses), ``runner`` (the loop),
``storage`` (run folders, lock, resumable logs), ``results`` and ``aggregate`` (tables, metrics, seeds, the paper's
numbers), ``sweep`` and ``launchers`` (many runs: local, Slurm, Ray), ``plots`` and ``notebook`` (figures and
notebook helpers), ``errors`` (one-line user errors), ``cli`` (``python -m icrl_lib``).
"""

__version__ = "0.2.0"

"""``biovfm bench gpu``: one prepared check of every GPU code path, and its measurements.

A GPU is lent to this project now and then, for minutes. The check is ready before one is:
each step (env, probe, pretrain-throughput, huge-fits, strategies, numerics, augment, resume)
runs in its own subprocess with its own time limit, so a crash, an out-of-memory or a hang in
one is recorded and the next one runs, and the record (``gpu-check.json`` and a one-minute
``gpu-check.md``) is written whatever happened. On a CPU, ``--smoke`` runs every step at nano
size, so the command keeps working between GPU visits.
"""

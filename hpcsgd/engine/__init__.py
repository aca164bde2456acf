"""The engine on rank 0, in parts with one job each (README "How a run works"):

- ``interface``: what a method sees of the engine (``Engine``), its assignments and results;
- ``clock``: wall or simulated time -- when a job is done, what time it is;
- ``scheduler``: per-worker job queues, the send window, cancellation, the next event;
- ``params``: the parameters and the optimiser state, stepped like ``torch.optim``;
- ``recorder``: trace rows, evaluation schedule and progress lines;
- ``layout``: the checkpoint tree, built from the parts' state dicts;
- ``master``: the loop that composes them and the method.
"""

"""The runner: every Ray Tune and Optuna call of lsdc, split by job.

- :mod:`.cluster`: starting or joining Ray, checking resources, settings of the processes it starts;
- :mod:`.tasks`: backbones and k-means baselines as Ray tasks, and the storage's backbone cache;
- :mod:`.trainable`: the Tune function trainable that runs one trial, checkpoints and resumes;
- :mod:`.progress`: the live progress view (a Tune callback);
- :mod:`.orchestrate`: a planned study end to end (:func:`~.orchestrate.run_study`);
- :mod:`.search`: the Optuna search under Ray Tune;
- :mod:`.bench`: concurrent trials for ``lsdc.bench``'s ``ray-N`` variants.

Importing this package imports nothing heavy; its modules import ray.
"""

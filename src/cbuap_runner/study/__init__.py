"""A multi-objective search over CB-UAP's class-balance weights and switches: an Optuna study (Akiba et al.,
"Optuna: A next-generation hyperparameter optimization framework", KDD 2019) driven by ask/tell with NSGA-II (Deb et
al., "A fast and elitist multiobjective genetic algorithm: NSGA-II", IEEE TEC 2002), maximising the validation
fooling rate and the validation fooled-label entropy.

    python -m cbuap_runner.study cb_uap_fmnist [trials=N] [until_stable=false] [name=...] [dir=...] [seed=...]

    spec     the study's YAML (conf/study/<name>.yaml): name, dir, trials, until_stable, seed, population, the
             overrides of every run, of the trials and of the reference run, the search space
    space    the search space: how a trial's parameters become `attack.balance.*` overrides
    trial    one trial as one ordinary run of the runner (its own run directory and record), and its objectives
    loop     the study: its journal, a relaunch that continues it, failed trials, the reference run
    __main__ the command line

Why not Hydra's Optuna sweeper plugin: hydra-optuna-sweeper 1.3.0 pins optuna<3, its RDB storage needs
sqlalchemy<2 and alembic<1.14, one NaN objective ends the whole sweep, a relaunch writes its jobs into the
numbered directories of the earlier launch, and it reads a job's return value, which this runner's entry point
does not give (it records its metrics in run_summary.json). Here each trial is the plain command line
(`python -m cbuap_runner task=attack attack=cb_uap ...`) in a process of its own, numbered by its Optuna trial
number, so that a trial's record is exactly the record of a run, a crash of one trial is that trial's failure, and
a relaunch can never write over an earlier trial.
"""

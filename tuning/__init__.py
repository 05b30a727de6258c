"""The Ray Tune + Optuna multi-objective search of the student's distillation weights."""

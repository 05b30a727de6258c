"""pafo_ray: Pareto Fairness Optimization for personalized reward models on Ray.

Importing the package is light: ray, torch and optuna load only where a command needs them.
"""

__version__ = "0.1.0"

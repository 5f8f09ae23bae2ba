"""DAVIS-2017 J&F evaluation (region similarity J, boundary measure F, Mean/Recall/Decay).

``metrics`` holds the per-frame measures and per-object statistics, ``evaluation`` reads a
results folder and the ground truth and produces the two result tables; ``eval_davis.py`` at
the repository root is the command line. Numbers equal the official DAVIS-2017 toolkit's.
``mevis`` computes the MeViS offline metric with the same J and F (``eval_mevis.py``).
"""
from .evaluation import DavisEvaluator, DavisScores, evaluate_results_folder, load_or_evaluate
from .metrics import f_measure, frame_scores, jaccard, mean_recall_decay

__all__ = [
    "DavisEvaluator",
    "DavisScores",
    "evaluate_results_folder",
    "f_measure",
    "frame_scores",
    "jaccard",
    "load_or_evaluate",
    "mean_recall_decay",
]

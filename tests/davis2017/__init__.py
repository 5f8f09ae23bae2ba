"""Tests of the DAVIS-2017 J&F toolkit (`davis2017/`, `eval_davis.py`)."""

"""Logging set-up and training meters.

:func:`setup_logging` sends every module's ``logging.getLogger(__name__)`` records to the
console and, on the main process, to ``<output_dir>/train.log``; other ranks log warnings only.
:class:`MetricLogger` keeps windowed and whole-epoch averages of the logged scalars, and
:func:`append_json_line` writes the JSON-lines logs (``log.txt`` per epoch, ``log_iter.txt``).
"""
from __future__ import annotations

import json
import logging
import sys
from collections import defaultdict, deque
from pathlib import Path
from typing import Any, Mapping

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FILE = "train.log"
# Iterations averaged by the windowed ("median/avg") view of a meter, as in the original.
METER_WINDOW = 20
# Marks the handlers added by setup_logging (others, e.g. pytest's, are left alone).
_OURS = "_referformer_handler"


def setup_logging(output_dir: str | Path | None, *, is_main: bool = True, file_name: str = LOG_FILE) -> None:
    """Configure the root logger (calling it again replaces the handlers it added before, and only those)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _OURS, False):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    formatter = logging.Formatter(LOG_FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if is_main and output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(output_dir) / file_name, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        setattr(handler, _OURS, True)
        root.addHandler(handler)


def append_json_line(path: str | Path, record: Mapping[str, Any]) -> None:
    """Append one JSON object as a line (the original's ``log.txt`` format)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def format_metrics(metrics: Mapping[str, float]) -> str:
    """Metrics as a two-column text table (name, value with 4 decimals), in the given order."""
    if not metrics:
        return "(no metrics)"
    width = max(len(name) for name in metrics)
    return "\n".join(f"{name:<{width}}  {value:.4f}" for name, value in metrics.items())


class SmoothedValue:
    """A scalar series: the last :data:`METER_WINDOW` values and the running total of all of them."""

    def __init__(self, window: int = METER_WINDOW):
        self.window = deque(maxlen=window)
        self.total = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1) -> None:
        self.window.append(value)
        self.total += value * n
        self.count += n

    @property
    def avg(self) -> float:
        return sum(self.window) / max(len(self.window), 1)

    @property
    def global_avg(self) -> float:
        return self.total / max(self.count, 1)

    @property
    def value(self) -> float:
        return self.window[-1]


class MetricLogger:
    """Named :class:`SmoothedValue` meters; ``state_dict`` keeps the epoch totals for resumption."""

    def __init__(self):
        self.meters: dict[str, SmoothedValue] = defaultdict(SmoothedValue)

    def update(self, **values: float) -> None:
        for name, value in values.items():
            self.meters[name].update(float(value))

    def global_averages(self) -> dict[str, float]:
        return {name: meter.global_avg for name, meter in self.meters.items()}

    def latest(self) -> dict[str, float]:
        return {name: meter.value for name, meter in self.meters.items()}

    def state_dict(self) -> dict[str, tuple[float, int]]:
        """Epoch totals ``{name: (sum, count)}`` (the windows are not kept)."""
        return {name: (meter.total, meter.count) for name, meter in self.meters.items()}

    def load_state_dict(self, state: Mapping[str, tuple[float, int]]) -> None:
        for name, (total, count) in state.items():
            self.meters[name].total, self.meters[name].count = float(total), int(count)

    def format(self, names: tuple[str, ...] | None = None) -> str:
        """``name: windowed average (epoch average)`` for ``names`` (default: all meters)."""
        names = tuple(self.meters) if names is None else tuple(n for n in names if n in self.meters)
        return "  ".join(f"{n}: {self.meters[n].avg:.4g} ({self.meters[n].global_avg:.4g})" for n in names)

    def __str__(self) -> str:
        return self.format()

"""TensorBoard: numbers as scalars, texts (the guard's verdict) as text, settings in the HParams tab, report
files as text and images. Written with tensorboardX when installed (small: protobuf and numpy), else with
PyTorch's own writer (which needs the `tensorboard` package).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunesmith.track import TB_METRICS, flatten, split

TEXT_FILES = (".md", ".json", ".yaml")
MAX_TEXT_BYTES = 64 * 1024  # a larger file (the full report.json) stays out of TensorBoard's text tab
FLUSH_SECONDS = 10  # a killed run loses at most this much; resume replays it from metrics.jsonl


def writer_classes() -> tuple[Any, Any]:
    """(SummaryWriter class, its `summary` module)."""
    try:
        from tensorboardX import SummaryWriter, summary
    except ImportError:
        from torch.utils.tensorboard import SummaryWriter, summary
    return SummaryWriter, summary


class TensorBoardTracker:
    """One TensorBoard run folder. `purge_step` hides the folder's earlier events from that step on (what a
    resumed run or a repeated evaluation logs again), the way TensorBoard's own reader honours restarts."""

    name = "tensorboard"

    def __init__(self, log_dir: Path, *, purge_step: int | None = None):
        writer, self._summary = writer_classes()
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir
        # A nanosecond suffix keeps two writers of the same second apart (tensorboardX names files by second).
        self.writer = writer(str(log_dir), purge_step=purge_step, flush_secs=FLUSH_SECONDS,
                             filename_suffix=f".{time.time_ns()}")

    def log(self, record: dict[str, Any]) -> None:
        step, numbers, texts = split(record)
        for key, value in numbers.items():
            self.writer.add_scalar(key, value, step)
        for key, value in texts.items():
            self.writer.add_text(key, value, step)

    def log_config(self, config: dict[str, Any]) -> None:
        flat = flatten(config)
        table = "| setting | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in flat.items())
        self.writer.add_text("config", table, 0)
        # The HParams tab: this run's settings beside its final loss and eval loss, comparable across runs.
        hparams = {k: v for k, v in flat.items() if v is not None}
        file_writer = self.writer._get_file_writer()
        for summary in self._summary.hparams(hparams, dict.fromkeys(TB_METRICS)):
            file_writer.add_summary(summary)

    def log_artifacts(self, paths: Sequence[Path], *, folder: str, step: int) -> None:
        """PNG figures as images, Markdown / JSON / YAML files as text; TensorBoard has no place for others."""
        for path in paths:
            tag = f"{folder}/{path.name}"
            if path.suffix == ".png":
                self.writer.add_image(tag, _pixels(path), step, dataformats="HWC")
            elif path.suffix in TEXT_FILES and path.stat().st_size <= MAX_TEXT_BYTES:
                text = path.read_text(encoding="utf-8")
                self.writer.add_text(tag, text if path.suffix == ".md" else f"```\n{text}\n```", step)
        self.writer.flush()

    def close(self, status: str = "FINISHED") -> None:
        self.writer.close()

    def record(self) -> dict[str, Any]:
        return {"log_dir": self.log_dir.parent.name}  # beside the manifest

    def where(self) -> str:
        return f"TensorBoard: tensorboard --logdir {self.log_dir.parent}"


def _pixels(path: Path) -> Any:
    """(H, W, 3) uint8 pixels of a PNG (Pillow comes with matplotlib, a core dependency)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))

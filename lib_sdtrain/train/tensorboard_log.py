"""TensorBoard scalars under kohya's names (loss/current, loss/average, loss/epoch, lr/unet, lr/textencoder)."""

from __future__ import annotations

import time
from pathlib import Path

from lib_sdtrain.utils.progress import Progress


class TensorBoardLog:
    """Writes to `<logging_dir>/<output_name><timestamp>` when TensorBoard is installed; does nothing otherwise
    (after saying so once)."""

    def __init__(self, logging_dir: str | None, name: str, progress: Progress) -> None:
        self.writer = None
        if not logging_dir:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            progress.message("logging_dir is set but TensorBoard is not installed (pip install tensorboard); no logs.")
            return
        self.writer = SummaryWriter(str(Path(logging_dir) / f"{name}{time.strftime('%Y%m%d%H%M%S')}"))

    def step(self, step: int, loss: float, average: float, lrs: list[float], has_text_encoder: bool) -> None:
        if self.writer is None:
            return
        self.writer.add_scalar("loss/current", loss, step)
        self.writer.add_scalar("loss/average", average, step)
        names = (["lr/textencoder"] if has_text_encoder else []) + ["lr/unet"]
        for name, lr in zip(names, lrs, strict=False):
            self.writer.add_scalar(name, lr, step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Further values of a step under their TensorBoard names (scale_weight_norms' max_norm/*)."""
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def epoch(self, epoch: int, average: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("loss/epoch", average, epoch)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

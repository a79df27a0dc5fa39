"""The one progress bar of the platform (rich): description, bar, done/total, time left, and an optional status.

    from imagenet_transfer.progress import progress_bar

    with progress_bar(status=True, enabled=is_main) as bar:
        task = bar.add_task("pretrain small on full", total=1000, status="")
        bar.update(task, advance=1, status="loss 2.310")

Used by pre-training, shard preparation, feature extraction and the fine-tuning benchmarks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress


def progress_bar(*, status: bool = False, enabled: bool = True, transient: bool = False) -> Progress:
    """A rich `Progress` (a context manager). `status`: add a column showing each task's `status` field (every
    task then needs `status=` in `add_task`); `enabled=False`: draws nothing; `transient`: erased when done."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    if status:
        columns.append(TextColumn("{task.fields[status]}"))
    return Progress(*columns, disable=not enabled, transient=transient)

"""The run's TensorBoard log: every number of a record written as a scalar
(:func:`write_tensorboard`), and the points that a resumed run writes again removed.

``SummaryWriter(purge_step=N)`` only appends a marker asking readers to hide earlier points
at steps >= N; TensorBoard honours it, but the points stay in the files, so any other reader
(``summary_iterator``, tbparse, experiment trackers that import event files) sees each
re-done step twice. :func:`trim_event_files` rewrites the files without them, keeping every
other event as it was (wall times included).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

# Not matching "*tfevents*": TensorBoard, if it is watching, must not read a half-written copy.
TMP_GLOB = ".trim-*.tmp"


def trim_event_files(log_dir: str | os.PathLike, drop: Callable[[str, int], bool]) -> int:
    """Rewrite every event file of ``log_dir`` without the scalars where ``drop(tag, step)``.

    Each file is replaced atomically (a temporary ``.trim-*.tmp`` file, then a rename), so a
    kill leaves either the old or the new file; a file left with no scalar is deleted.
    Returns the number of scalar values removed.
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.summary.writer.record_writer import RecordWriter

    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        return 0
    for stale in log_dir.glob(TMP_GLOB):  # a trim that a kill interrupted
        stale.unlink()
    removed = 0
    for path in sorted(log_dir.glob("*tfevents*")):
        events, n_dropped, n_scalars = [], 0, 0
        for event in EventFileLoader(str(path)).Load():  # stops quietly at a truncated last record
            if event.HasField("summary"):
                keep = [v for v in event.summary.value if not drop(v.tag, event.step)]
                n_dropped += len(event.summary.value) - len(keep)
                n_scalars += len(keep)
                if not keep:
                    continue
                del event.summary.value[:]
                event.summary.value.extend(keep)
            events.append(event)
        if not n_dropped:
            continue
        removed += n_dropped
        if not n_scalars:
            path.unlink()
            continue
        tmp = log_dir / f".trim-{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            writer = RecordWriter(f)
            for event in events:
                writer.write(event.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return removed


def write_tensorboard(writer: Any, record: dict[str, Any], prefix: str = "") -> None:
    """Every number of ``record`` as a scalar, grouped as accuracies, losses or the rest."""
    for key, value in record.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
            group = "acc" if key.endswith("_acc") else "loss" if "loss" in key or "penalty" in key or "kl" in key else "misc"
            writer.add_scalar(f"{prefix}{group}/{key}", value, record["step"])
    writer.flush()

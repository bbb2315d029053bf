"""The paper's raw ``importance.csv`` (what its fine-tuning script writes), for tables
measured here."""

from __future__ import annotations

import math

from depthfx.io import PathLike, atomic_write
from depthfx.solver import ImportanceTable, csv_text


def write_raw_csv(table: ImportanceTable, path: PathLike) -> None:
    """Write the paper's raw ``importance.csv``: an unnamed index column (0), ``id, st, end,
    st_act, end_act`` and the metric columns the table recorded (the paper's ``train_loss,
    train_acc, val_loss, val_acc`` for finetune; the score column at least). A ``chain`` column
    is written only when a chain is not 0. ``ImportanceTable.read_csv`` reads it back."""
    columns = list(table.meta.get("columns") or [table.score])
    rows = {tuple(r[:5]): list(r[5:]) for r in table.meta.get("metrics") or []}
    if table.score not in columns or any(k not in rows for k in table.scores):
        columns, rows = [table.score], {k: [v] for k, v in table.scores.items()}
    multi = any(k[0] for k in table.scores)
    header = ["", "id", *(["chain"] if multi else []), "st", "end", "st_act", "end_act", *columns]
    body = (
        [0, n, *(k if multi else k[1:]), *(_blank(v) for v in rows[k])]
        for n, k in enumerate(table.scores)
    )
    atomic_write(path, csv_text(header, body))


def _blank(value: float | None) -> float | str:
    """Metrics that were not measured (None, or NaN) are written as empty fields."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


__all__ = ["write_raw_csv"]

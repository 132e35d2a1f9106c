"""SQLite group commit (db.GroupCommit) against one transaction per unit, in the same run.

    .venv/bin/python -m benchmarks.group_commit [--units 2000] [--threads 8] [--disk-ms 0,5]

Threads of one process each write small units (one INSERT) to a SQLite file as fast as they can,
through ``Database.batched`` (group commit) and, as the baseline, through ``Database.transaction``
(a commit and a WAL sync per unit). ``--disk-ms`` adds a delay to every ``fdatasync`` to stand in for
a slower disk than this machine's (0: the disk as it is). Printed per delay: units per second both
ways and their ratio. Every answer still comes after its own sync in both modes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _measure(write: Callable[[], Any], units: int, threads: int) -> float:
    per_thread = units // threads

    def loop() -> None:
        for _ in range(per_thread):
            write()

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return per_thread * threads / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--disk-ms", default="0,5", help="comma-separated extra fdatasync delays, in ms")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from sqlalchemy import Column, Integer, MetaData, String, Table, insert
    from sqlalchemy.orm import Session

    from db import Database

    real_fdatasync, delay = os.fdatasync, [0.0]

    def fdatasync(fd: int) -> None:
        if delay[0]:
            time.sleep(delay[0])
        real_fdatasync(fd)

    os.fdatasync = fdatasync
    table = Table("units", MetaData(), Column("id", Integer, primary_key=True), Column("v", String(8)))

    def unit(session: Session) -> int:
        session.execute(insert(table).values(v="x"))
        return 1

    with tempfile.TemporaryDirectory() as tmp:
        database = Database.from_url(f"sqlite:///{tmp}/units.sqlite3")
        table.metadata.create_all(database.engine)

        def alone() -> None:
            with database.transaction() as session:
                unit(session)

        for ms in (float(x) for x in args.disk_ms.split(",")):
            delay[0] = ms / 1000
            grouped = _measure(lambda: database.batched(unit), args.units, args.threads)
            single = _measure(alone, args.units, args.threads)
            print(f"fdatasync +{ms:.1f} ms: group commit {grouped:7.0f} units/s   one transaction per unit "
                  f"{single:7.0f} units/s   ratio {grouped / single:.1f}×   ({args.threads} threads)")
        database.dispose()


if __name__ == "__main__":
    main()

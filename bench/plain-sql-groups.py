#!/usr/bin/env python3
"""Plain SQL deleting the same number of users in groups of G: what one-request-at-a-time
erasure costs PostgreSQL itself on scattered rows, before any bookkeeping (docs/benchmark.md,
round 7).

Needs a bench database kept with its rows (`erasure bench --scenarios many --keep --database
erasure_bench_keep`); each run takes 500 users of the bulk platform not erased yet, from
u-b-START on, settles the stores as the bench does (VACUUM, CHECKPOINT, one read of the users'
rows), then deletes them with one plain `DELETE` per store and group, one transaction each, on
one connection, and prints the seconds it took.

    bench/plain-sql-groups.py erasure_bench_keep 600 16
    bench/plain-sql-groups.py erasure_bench_keep 1200 500
"""
import subprocess
import sys
import time

STORES = ("conversations", "sessions", "analytics_events")
USERS = 500


def psql(db, script):
    return subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-qAt", "-v", "ON_ERROR_STOP=1"],
        input=script, capture_output=True, text=True, check=True,
    ).stdout


def main():
    db, start, group = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    users = [f"u-b-{start + j}" for j in range(USERS)]
    everyone = "{" + ",".join(users) + "}"
    settle = "".join(f"VACUUM platform.{t};" for t in STORES) + "CHECKPOINT;"
    settle += "".join(
        f"SELECT count(*) FROM (SELECT * FROM platform.{t} WHERE user_id = ANY('{everyone}') OFFSET 0) x;"
        for t in STORES
    )
    psql(db, settle)
    statements = []
    for k in range(0, USERS, group):
        part = "{" + ",".join(users[k:k + group]) + "}"
        for t in STORES:
            statements.append(f"BEGIN; DELETE FROM platform.{t} WHERE user_id = ANY('{part}'); COMMIT;")
    started = time.monotonic()
    psql(db, "\n".join(statements))
    print(f"groups of {group}: {time.monotonic() - started:.3f} s for {USERS} users")


if __name__ == "__main__":
    main()

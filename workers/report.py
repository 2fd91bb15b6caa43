"""Plain-text summaries of what the worker has done (demo, operators)."""

from __future__ import annotations

import asyncpg

from workers.render import printable


async def summary_lines(conn: asyncpg.Connection) -> list[str]:
    """The summary's lines; values read back from the database are made printable."""
    lines = await _lines(conn)
    return [printable(line) for line in lines]


async def _lines(conn: asyncpg.Connection) -> list[str]:
    lines = ["", "== leadcycle summary"]
    rows = await conn.fetch(
        """SELECT topic, type, count(*) AS n FROM event_log WHERE disposition = 'accepted'
            GROUP BY topic, type ORDER BY topic, n DESC"""
    )
    total = sum(r["n"] for r in rows)
    lines.append(f"events consumed: {total}")
    for r in rows:
        lines.append(f"  {r['topic']:<9} {r['type']:<18} {r['n']:>7}")
    bots = await conn.fetchval("SELECT count(*) FROM event_log WHERE disposition = 'bot'")
    lines.append(f"bot events dropped: {bots}")
    letters = await conn.fetch(
        "SELECT reason, count(*) AS n FROM dead_letters GROUP BY reason ORDER BY n DESC"
    )
    lines.append(f"dead letters: {sum(r['n'] for r in letters)}")
    for r in letters:
        lines.append(f"  {r['reason']:<18} {r['n']:>7}")
    subjects = await conn.fetchval(
        "SELECT count(DISTINCT lead_id) FROM event_log WHERE lead_id IS NOT NULL"
    )
    anonymous = await conn.fetchval(
        "SELECT count(DISTINCT anonymous_id) FROM event_log WHERE lead_id IS NULL"
    )
    lines.append(f"known leads seen: {subjects}; anonymous-only visitors: {anonymous}")
    stages = await conn.fetch(
        """SELECT stage, count(*) AS n FROM leads WHERE merged_into IS NULL
            GROUP BY stage ORDER BY n DESC"""
    )
    lines.append("leads by stage (anonymous visitors are 'awareness'):")
    for r in stages:
        lines.append(f"  {r['stage']:<18} {r['n']:>7}")
    merged = await conn.fetchval("SELECT count(*) FROM leads WHERE merged_into IS NOT NULL")
    lines.append(f"anonymous visitors stitched into a lead on identify: {merged}")
    pool = await conn.fetch(
        "SELECT reason, track, count(*) AS n FROM recycle_pool GROUP BY 1, 2 ORDER BY n DESC"
    )
    lines.append(f"recycled, by reason: {sum(r['n'] for r in pool)}")
    for r in pool:
        lines.append(f"  {r['reason']:<18} {r['n']:>7}  nurture track {r['track']}")
    followups = await conn.fetch(
        """SELECT why_now, count(*) AS n, count(*) FILTER (WHERE status = 'open') AS open
             FROM followups GROUP BY why_now ORDER BY n DESC"""
    )
    lines.append(f"follow-ups created: {sum(r['n'] for r in followups)}")
    for r in followups:
        lines.append(f"  {r['why_now']:<18} {r['n']:>7}  ({r['open']} still open)")
    return lines

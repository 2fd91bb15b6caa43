"""The ``leadcycle`` console script: one subcommand per operator action."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import click

from infra import db, services
from infra.processes import ServiceError
from infra.settings import Settings

T = TypeVar("T")


def _settings() -> Settings:
    return Settings()


def _database(settings: Settings) -> str:
    """The configured or embedded database, or a clear error for the operator."""
    try:
        return services.database_dsn(settings)
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from exc


def _endpoints(settings: Settings) -> services.Endpoints:
    """The configured or embedded broker and database, or a clear error for the operator."""
    try:
        return services.endpoints(settings)
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """leadcycle: scores leads from behaviour, keeps their lifecycle, recycles the lost ones and
    hands inside sales a call list. Configuration comes from LEADCYCLE_* variables (README)."""


@main.command()
@click.option(
    "--loglevel", default=None, help="debug, info, warning (default: LEADCYCLE_LOG_LEVEL)"
)
def worker(loglevel: str | None) -> None:
    """Run the stream worker (faust) until stopped with Ctrl-C or SIGTERM."""
    import faust

    from workers.app import create_app

    settings = _settings()
    app = create_app(settings, _endpoints(settings))
    faust.Worker(app, loglevel=loglevel or settings.log_level).execute_from_commandline()


@main.command()
def migrate() -> None:
    """Apply pending database migrations (safe to run any number of times)."""
    dsn = _database(_settings())

    async def run() -> list[str]:
        conn = await db.connect(dsn)
        try:
            return await db.migrate(conn)
        finally:
            await conn.close()

    applied = asyncio.run(run())
    click.echo("applied: " + ", ".join(applied) if applied else "database is up to date")


@main.group(name="services")
def services_group() -> None:
    """Start, stop or inspect the embedded broker and database."""


@services_group.command()
def up() -> None:
    """Start the embedded broker and find or start PostgreSQL; create the database."""
    settings = _settings()
    try:
        found = services.up(settings)
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"kafka:    {found.kafka_url}")
    click.echo(f"database: {found.database_dsn}")


@services_group.command()
def down() -> None:
    """Stop what `services up` started (by PID); leaves external services alone."""
    stopped = services.down(_settings())
    click.echo("stopped: " + ", ".join(stopped) if stopped else "nothing to stop")


@services_group.command()
def status() -> None:
    """Show where the broker and the database are."""
    for name, line in services.status(_settings()).items():
        click.echo(f"{name:9} {line}")


@main.command()
@click.option("--write", is_flag=True, help="rewrite schemas/*.json and docs/contract.md")
@click.option("--dir", "root", default=".", type=click.Path(path_type=Path), help="project root")
def schema(write: bool, root: Path) -> None:
    """Print (or --write) the JSON Schemas of every topic, generated from the models."""
    from events.schema import json_schemas, render_schema, splice_contract

    schemas = json_schemas()
    if not write:
        click.echo(json.dumps(schemas, indent=2, ensure_ascii=False))
        return
    (root / "schemas").mkdir(exist_ok=True)
    for name, body in schemas.items():
        (root / "schemas" / name).write_text(render_schema(body))
    doc = root / "docs" / "contract.md"
    doc.write_text(splice_contract(doc.read_text()))
    click.echo(f"wrote {len(schemas)} schemas and {doc}")


async def _with_conn(dsn: str, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    conn = await db.connect(dsn)
    try:
        return await work(conn)
    finally:
        await conn.close()


@main.command()
@click.option("--rep", default=None, help="only this rep's follow-ups")
@click.option(
    "--date",
    "day",
    default=None,
    type=click.DateTime(["%Y-%m-%d"]),
    help="only those due by the end of this day (overdue included)",
)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table")
@click.option("--limit", default=None, type=int, help="at most this many rows")
def calllist(rep: str | None, day: datetime | None, fmt: str, limit: int | None) -> None:
    """Print open follow-ups, by due time then priority, with the context a rep needs."""
    from infra.calllist import open_followups
    from scoring.rules import load_rules
    from workers.render import call_list_csv, call_list_json, call_list_table, terminal_text

    if day is not None and day.date() >= date.max:
        raise click.BadParameter("must be before 9999-12-31", param_hint="--date")
    settings = _settings()
    tz = load_rules(settings.rules_file).calendar.timezone
    entries = asyncio.run(
        _with_conn(
            _database(settings),
            lambda c: open_followups(
                c, rep=rep, day=day.date() if day else None, tz=tz, limit=limit
            ),
        )
    )
    if fmt == "table":
        text = terminal_text(call_list_table(entries, tz))  # cells are printable already
    else:
        text = call_list_json(entries) if fmt == "json" else call_list_csv(entries)
    click.echo(text.rstrip("\n"))


@main.command()
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def lead(query: str, fmt: str) -> None:
    """Show one lead (by lead id, email or anonymous id): state, stage history, score
    explanation (ledger) and its check.

    QUERY is a lead id, else an email (any case, spaces around it ignored), else an anonymous
    id (with or without "anon:"). A merged anonymous visitor leads to the lead it was merged
    into; how QUERY was resolved is printed first ("resolved" in JSON). An email that several
    leads share lists them and exits 1: pass one of their lead ids instead. Nothing found:
    exits 1.
    """
    from scoring.rules import load_rules
    from workers.explain import explain_lead, render_explanation
    from workers.lookup import Resolution, describe, resolve
    from workers.render import json_text, printable

    settings = _settings()
    rules = load_rules(settings.rules_file)

    async def look(conn: asyncpg.Connection) -> tuple[Resolution, dict[str, Any] | None]:
        # One snapshot: the lead resolved is the lead explained.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            found = await resolve(conn, query)
            if found.lead_id is None:
                return found, None
            return found, await explain_lead(conn, found.lead_id, rules, at=datetime.now(UTC))

    found, doc = asyncio.run(_with_conn(_database(settings), look))
    if found.ambiguous:
        click.echo(
            json_text(json.dumps({"resolved": found.as_json()}, indent=2, ensure_ascii=False))
            if fmt == "json"
            else "\n".join(printable(line) for line in describe(found))
        )
        raise click.ClickException(
            f"{found.key!r} matches {len(found.candidates)} leads: pass one of their lead ids"
        )
    if found.lead_id is None:
        raise click.ClickException(f"no lead id, email or anonymous id matches {query!r}")
    if doc is None:  # a link or a merge to a lead without a row
        raise click.ClickException(f"{query!r} resolves to {found.lead_id!r}, which has no row")
    if fmt == "json":
        doc = {"resolved": found.as_json(), **doc}
        click.echo(json_text(json.dumps(doc, indent=2, ensure_ascii=False, default=str)))
        return
    if found.lead_id != query or found.hops:  # a lead id typed as is: nothing to tell
        click.echo("\n".join(printable(line) for line in describe(found)))
    click.echo(render_explanation(doc))


@main.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def duplicates(fmt: str) -> None:
    """List emails that several CRM leads share (one person under two CRM ids?).

    leadcycle merges a lead made by a website identify (email:<address>) into the CRM lead
    with that email on its own; two CRM lead ids are never merged automatically: fix them in
    the CRM, and the next profile update of each shows here no more.
    """
    from infra.leadstore import duplicate_emails
    from workers.render import json_text, printable

    settings = _settings()
    found = asyncio.run(_with_conn(_database(settings), duplicate_emails))
    if fmt == "json":
        doc = [{"email": email, "lead_ids": ids} for email, ids in found]
        click.echo(json_text(json.dumps(doc, indent=2, ensure_ascii=False)))
        return
    if not found:
        click.echo("no email is shared by two CRM leads")
    for email, ids in found:
        click.echo(printable(f"{email}  {', '.join(ids)}"))


@main.command()
@click.option("--now", "at", default=None, help="sweep as of this time (RFC 3339); default now")
def sweep(at: str | None) -> None:
    """Run one sweep (SLA expiry, revisit dates, overdue follow-ups) and publish its outputs."""
    from workers.sweeper import run_sweep_once

    settings = _settings()
    found = _endpoints(settings)
    now = datetime.fromisoformat(at) if at else datetime.now(UTC)
    if now.tzinfo is None:
        raise click.BadParameter(
            "needs a UTC offset, e.g. 2027-03-01T09:00:00+09:00", param_hint="--now"
        )
    report = asyncio.run(run_sweep_once(settings, found, now=now))
    if not report.ran:
        click.echo("another worker is sweeping right now; nothing done")
    else:
        click.echo(
            f"swept at {now.isoformat()}: {report.leads} leads checked, "
            f"{report.overdue} follow-ups newly overdue, {report.outputs} messages, "
            f"{report.purged} anonymous visitors purged"
        )


@main.command()
@click.option(
    "--rules",
    "rules_file",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="rule set to rescore with (default: LEADCYCLE_RULES_FILE)",
)
@click.option("--dry-run", is_flag=True, help="report what would change; write nothing")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def replay(rules_file: Path | None, dry_run: bool, fmt: str) -> None:
    """Rescore every lead from the event log under a rule set (progress on stderr).

    Replaces each lead's scores, score columns and ledger with the replayed ones (old ledger
    entries move to score_ledger_history); stages, history, recycling, BANT and follow-ups stay
    as the worker decided them. Publishes nothing. Safe with workers running (docs/operations.md).
    """
    from scoring.errors import RulesError
    from scoring.rules import load_rules
    from workers.render import terminal_text
    from workers.replay import ReplayConflict, render_report, run_replay

    settings = _settings()
    try:
        current = load_rules(settings.rules_file)
        rules = load_rules(rules_file) if rules_file else current
    except RulesError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        report = run_replay(
            _database(settings), rules, current=current, now=datetime.now(UTC), dry_run=dry_run
        )
    except ReplayConflict as exc:
        raise click.ClickException(str(exc)) from exc
    # Lead ids and rule versions come from outside: no escapes reach the terminal.
    text = render_report(report, fmt)
    click.echo(text if fmt == "json" else terminal_text(text))


@main.command()
@click.option("--leads", default=300, show_default=True, help="how many leads' journeys")
@click.option("--seed", default=7, show_default=True, help="random seed (same seed, same run)")
@click.option("--timeout", default=180.0, show_default=True, help="seconds to wait for the worker")
def demo(leads: int, seed: int, timeout: float) -> None:
    """Start everything, run the worker on generated traffic, print a summary, stop everything."""
    from workers.demo import run_demo

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = run_demo(_settings(), leads=leads, seed=seed, timeout=timeout)
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(code)


if __name__ == "__main__":
    main()

"""``chimp-worker dlq``: the dead-letter queues ``dlq.<queue>`` of the worker's queues."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import click

from chimp_worker.cli import AppContext, pass_app
from chimp_worker.commands.options import FOLDER, stack

if TYPE_CHECKING:
    from chimp_worker.broker import BrokerOptions
    from chimp_worker.broker.dead_letters import DeadLetter, Selector

QUEUES_HELP = (
    "events, work, a queue name or a dlq.<queue> name (repeatable; default: the dead-letter "
    "queues of CHIMP_EVENTS_QUEUE and CHIMP_WORK_QUEUE)"
)
DETAIL_WIDTH = 100


@click.group()
def dlq() -> None:
    """Dead letters: messages that can never succeed as they are, kept in dlq.<queue> with the
    reason (x-chimp-reason, or the broker's delivery_limit). Look at them, fix the cause, then
    reinject them to the queue they came from, or purge them (saving them first with --save).

    \b
    Example:
      chimp-worker dlq list
      chimp-worker dlq show work --limit 5
      chimp-worker dlq reinject work --reason database_unavailable --yes
      chimp-worker dlq purge events --reason event_not_json --save /var/tmp/dlq --yes
    """


def _queue_argument() -> Any:
    return click.argument("queues", nargs=-1, metavar="[QUEUE]...")


def _selection_options() -> Any:
    return stack(
        click.option("--all", "take_all", is_flag=True, help="Every message of the queue(s)."),
        click.option("--reason", "reasons", multiple=True, help="Only messages with this reason."),
        click.option(
            "--message-id", "message_ids", multiple=True, help="Only this message (repeatable)."
        ),
        click.option(
            "--limit",
            type=click.IntRange(min=1),
            help="Look at no more than this many messages per queue (oldest first).",
        ),
        click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation."),
    )


class _QueueSummary(TypedDict):
    """One row of ``dlq list``: a dead-letter queue, its depth (None: missing), its reasons."""

    queue: str
    messages: int | None
    reasons: dict[str, int]


def _broker(app: AppContext) -> BrokerOptions:
    from chimp_worker.broker import BrokerOptions

    return BrokerOptions.from_settings(app.settings())


def _resolve(broker: BrokerOptions, queues: Sequence[str]) -> list[str]:
    from chimp_worker.broker.dead_letters import resolve_queue, worker_dead_letter_queues

    if not queues:
        return worker_dead_letter_queues(broker)
    return list(dict.fromkeys(resolve_queue(broker, name) for name in queues))


def _selector(take_all: bool, reasons: Sequence[str], message_ids: Sequence[str]) -> Selector:
    if not (take_all or reasons or message_ids):
        raise click.UsageError("say which messages: --all, --reason REASON or --message-id ID")

    def select(letter: DeadLetter) -> bool:
        if reasons and letter.reason not in reasons:
            return False
        return not message_ids or letter.message_id in message_ids

    return select


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.UsageError(f"{question} -- not at a terminal: add --yes to go ahead")
    click.confirm(question, abort=True, err=True)


@dlq.command("list")
@_queue_argument()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Messages per queue read to count the reasons.",
)
@pass_app
def list_command(app: AppContext, queues: tuple[str, ...], fmt: str, limit: int) -> None:
    """How many messages each dead-letter queue holds, by reason. Nothing is removed.

    \b
    Example:
      chimp-worker dlq list
      chimp-worker dlq list --format json
    """
    from chimp_worker.broker.dead_letters import DeadLetterQueues

    broker = _broker(app)
    rows: list[_QueueSummary] = []
    with DeadLetterQueues(broker) as queues_:
        for queue in _resolve(broker, queues):
            count = queues_.count(queue)
            reasons: Counter[str] = Counter()
            if count.messages:
                reasons.update(letter.reason for letter in queues_.browse(queue, limit=limit))
            rows.append({"queue": queue, "messages": count.messages, "reasons": dict(reasons)})
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(row["queue"]) for row in rows)
    click.echo(f"{'queue':<{width}}  {'messages':>8}  reasons")
    for row in rows:
        messages = "missing" if row["messages"] is None else str(row["messages"])
        listed = ", ".join(f"{reason} {n}" for reason, n in row["reasons"].items()) or "-"
        click.echo(f"{row['queue']:<{width}}  {messages:>8}  {listed}")


@dlq.command("show")
@_queue_argument()
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Messages per queue, oldest first.",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@pass_app
def show(app: AppContext, queues: tuple[str, ...], limit: int, fmt: str) -> None:
    """Each message with why it died (x-chimp-reason and its detail), where it came from, when,
    its message id (for reinject/purge --message-id) and its body. Nothing is removed.

    \b
    Example:
      chimp-worker dlq show events
      chimp-worker dlq show work --limit 1 --format json
    """
    from chimp_worker.broker.dead_letters import DeadLetterQueues

    broker = _broker(app)
    letters: list[DeadLetter] = []
    with DeadLetterQueues(broker) as queues_:
        for queue in _resolve(broker, queues):
            letters += queues_.browse(queue, limit=limit)
    if fmt == "json":
        click.echo(json.dumps([letter.as_dict() for letter in letters], indent=2))
        return
    if not letters:
        click.echo("no dead letters")
    for letter in letters:
        click.echo(
            f"{letter.queue} #{letter.position}  reason {letter.reason}  "
            f"from {letter.source_queue}  at {letter.dead_lettered_at or '-'}  "
            f"id {letter.message_id or '-'}"
        )
        if letter.detail:
            click.echo(f"  detail  {_clip(letter.detail)}")
        click.echo(f"  body    {_clip(letter.body.decode('utf-8', errors='replace'))}")


@dlq.command("reinject")
@_queue_argument()
@_selection_options()
@pass_app
def reinject(
    app: AppContext,
    queues: tuple[str, ...],
    take_all: bool,
    reasons: tuple[str, ...],
    message_ids: tuple[str, ...],
    limit: int | None,
    yes: bool,
) -> None:
    """Send chosen messages back to the queue they died in, once the cause is fixed. Each is
    published with a publisher confirm before it leaves the dead-letter queue; its old death
    headers are dropped and x-chimp-reinjections counts the returns.

    \b
    Example:
      chimp-worker dlq reinject work --all --yes
      chimp-worker dlq reinject events --message-id 5f0c... --yes
    """
    from chimp_worker.broker.dead_letters import DeadLetterQueues
    from chimp_worker.errors import ChimpError

    select = _selector(take_all, reasons, message_ids)
    broker = _broker(app)
    resolved = _resolve(broker, queues)
    with DeadLetterQueues(broker) as queues_:
        chosen = sum(sum(map(select, queues_.browse(queue, limit=limit))) for queue in resolved)
        if not chosen:
            click.echo("no dead letters match")
            return
        _confirm(f"reinject {chosen} message(s) from {', '.join(resolved)}?", yes)
        moved = [m for queue in resolved for m in queues_.reinject(queue, select, limit=limit)]
    done = Counter(f"{m.letter.queue} -> {m.target}" for m in moved if m.target)
    for route, count in done.items():
        click.echo(f"reinjected {count}: {route}")
    left = [m for m in moved if m.error]
    for m in left:
        click.echo(
            f"not reinjected: {m.letter.message_id or m.letter.position}: {m.error}", err=True
        )
    if left:
        raise ChimpError(f"{len(left)} message(s) could not be reinjected", reason="dlq_reinject")


@dlq.command("purge")
@_queue_argument()
@_selection_options()
@click.option(
    "--save",
    "save_to",
    type=FOLDER,
    help="Write each message to a JSON file in this folder before removing it.",
)
@pass_app
def purge(
    app: AppContext,
    queues: tuple[str, ...],
    take_all: bool,
    reasons: tuple[str, ...],
    message_ids: tuple[str, ...],
    limit: int | None,
    yes: bool,
    save_to: Path | None,
) -> None:
    """Remove chosen messages for good (with --save, each is first written to a JSON file).

    \b
    Example:
      chimp-worker dlq purge events --reason event_not_json --yes
      chimp-worker dlq purge --all --save /var/tmp/chimp-dlq --yes
    """
    from chimp_worker.broker.dead_letters import DeadLetterQueues

    select = _selector(take_all, reasons, message_ids)
    broker = _broker(app)
    resolved = _resolve(broker, queues)
    with DeadLetterQueues(broker) as queues_:
        chosen = sum(sum(map(select, queues_.browse(queue, limit=limit))) for queue in resolved)
        if not chosen:
            click.echo("no dead letters match")
            return
        saved = f" (saved to {save_to})" if save_to else " (not saved)"
        _confirm(f"remove {chosen} message(s) from {', '.join(resolved)}{saved}?", yes)
        removed = Counter(
            letter.queue
            for queue in resolved
            for letter in queues_.purge(queue, select, limit=limit, save_to=save_to)
        )
    for queue, count in removed.items():
        click.echo(f"removed {count} from {queue}{saved}")


def _clip(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= DETAIL_WIDTH else flat[: DETAIL_WIDTH - 3] + "..."

"""The ``yl-status`` command: one entry point, one subcommand per job.

Each subcommand imports its component when it runs (the ``# noqa: PLC0415`` imports): a
``yl-status node`` or ``check-config`` never loads Flask, the HTTP client or a database
driver, and a broken optional extra fails only the command that needs it.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from collections.abc import Sequence

import yaml

from yl_core.config import Config, load_config
from yl_core.errors import ConfigError, YLStatusError
from yl_core.protocol import check_node_id
from yl_core.service import configure_logging, stop_event_on_signals

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_FATAL = 3


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    print(f"# effective configuration from {config.source} (secrets masked)")
    print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
    return EXIT_OK


def cmd_node(args: argparse.Namespace) -> int:
    from yl_status.simulated_node import run_nodes  # noqa: PLC0415

    config = _load(args)
    if args.node_id is not None:
        try:
            check_node_id(args.node_id)
        except YLStatusError as exc:
            raise ConfigError(str(exc), key="--node-id") from exc
    if args.count < 1:
        raise ConfigError("must be at least 1", key="--count")
    if not 0 <= args.toggle_every < float("inf"):
        raise ConfigError("must be a number of seconds, 0 for never", key="--toggle-every")
    if not 0 <= args.hang_seconds < float("inf"):
        raise ConfigError("must be a number of seconds, 0 for never", key="--hang-seconds")
    configure_logging(config.logging)
    stop = stop_event_on_signals()
    return run_nodes(config, node_id=args.node_id, count=args.count,
                     toggle_every=args.toggle_every, duration=args.duration, stop=stop,
                     hang_seconds=args.hang_seconds)


def cmd_bridge(args: argparse.Namespace) -> int:
    from bridge.main import run_bridge  # noqa: PLC0415
    return int(run_bridge(_load(args)))


def cmd_serve(args: argparse.Namespace) -> int:
    from status_app.server import run_server  # noqa: PLC0415
    return int(run_server(_load(args)))


def cmd_watch(args: argparse.Namespace) -> int:
    from yl_status.watch import run_watch  # noqa: PLC0415

    config = _load(args)
    # The screen is the output: its summary line says what is wrong with the broker link.
    logging.getLogger().addHandler(logging.NullHandler())
    login = args.login or os.environ.get("YL_WATCH_LOGIN") or None
    password = None
    if login is not None:
        password = os.environ.get("YL_WATCH_PASSWORD") or getpass.getpass(
            f"broker password for {login}: ")
    return run_watch(config, login=(login, password), stop=stop_event_on_signals())


def cmd_alerts(args: argparse.Namespace) -> int:
    from bridge.alerts import list_alerts  # noqa: PLC0415
    return int(list_alerts(_load(args), status=args.status, level=args.level,
                           as_json=args.json, out=sys.stdout))


def cmd_ack(args: argparse.Namespace) -> int:
    from bridge.alerts import acknowledge  # noqa: PLC0415
    return int(acknowledge(_load(args), args.alert_id, user=args.user, out=sys.stdout))


def cmd_outbox_migrate(args: argparse.Namespace) -> int:
    from bridge.migrate import migrate  # noqa: PLC0415
    migrate(args.source, args.target, sys.stdout)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yl-status",
                                     description="AR Live Studio status over MQTT")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("-c", "--config", metavar="FILE",
                       help="YAML config (default: $YL_STATUS_CONFIG, else "
                            "config/monitor_config.yaml, else built-in defaults)")
        return p

    p = command("check-config", "validate a config file and print the effective settings")
    p.set_defaults(func=cmd_check_config)

    p = command("node", "run simulated GUI node(s) that publish status")
    p.add_argument("--node-id", help="node id (default: monitor.node_id)")
    p.add_argument("--count", type=int, default=1,
                   help="run N nodes ID-0001..ID-N, each with its own connection")
    p.add_argument("--toggle-every", type=float, default=0.0, metavar="SECONDS",
                   help="flip a random GUI flag on every node this often (default 0: never)")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="stop after this long (default: until SIGTERM/Ctrl-C)")
    p.add_argument("--hang-seconds", type=float, default=0.0, metavar="SECONDS",
                   help="on SIGUSR1, block the simulated GUI loop this long (a hung GUI)")
    p.set_defaults(func=cmd_node)

    p = command("bridge", "forward every node's status to YL-monitor")
    p.set_defaults(func=cmd_bridge)

    p = command("serve", "serve /health, /status, /stats and the live view")
    p.set_defaults(func=cmd_serve)

    p = command("watch", "every node, problems first, in the terminal (updates in place)")
    p.add_argument("--login", metavar="NAME",
                   help="the broker login to watch with, a watcher of its own (default: "
                        "$YL_WATCH_LOGIN; password from $YL_WATCH_PASSWORD, else asked)")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("outbox", help="work on a bridge's outbox",
                       description="work on a bridge's outbox")
    outbox = p.add_subparsers(dest="outbox_command", required=True, metavar="COMMAND")
    p = outbox.add_parser(
        "migrate", help="move a stopped bridge's SQLite outbox into PostgreSQL",
        description="move a stopped bridge's pending work from its SQLite outbox into an "
                    "empty PostgreSQL outbox (for active/standby bridges), losing nothing")
    p.add_argument("--from", dest="source", required=True, metavar="sqlite:PATH")
    p.add_argument("--to", dest="target", required=True, metavar="postgresql://...")
    p.set_defaults(func=cmd_outbox_migrate)

    p = command("alerts", "list YL-monitor alerts")
    p.add_argument("--status", help="only alerts with this status")
    p.add_argument("--level", help="only alerts of this level")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_alerts)

    p = command("ack", "acknowledge a YL-monitor alert")
    p.add_argument("alert_id")
    p.add_argument("--user", required=True, help="who acknowledges it")
    p.set_defaults(func=cmd_ack)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"yl-status {args.command}: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except YLStatusError as exc:
        print(f"yl-status {args.command}: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""``python -m lab_kit ...``: broker control, doctor, topics, bench and drills."""

from __future__ import annotations

import argparse
import json
import sys

from lab_kit import api, bench, broker
from lab_kit.broker import BrokerError
from lab_kit.doctor import main as doctor_main
from lab_kit.drills import runner as drills
from lab_kit.moderation.backend import ModerationBackend
from lab_kit.topics import ensure_topics


def _broker_cmd(args: argparse.Namespace) -> int:
    if args.action == "up":
        b = broker.ensure(nodes=args.nodes, backend=args.backend, port=args.port,
                          timeout_s=args.timeout)
        if args.topics:
            ensure_topics(b.client_config())
        print(b.bootstrap_servers)
        return 0
    b = broker.current()
    if b is None:
        if args.action in ("status", "down"):
            if args.action == "status" and args.check:
                return 3
            if args.action == "status" and args.json:
                print(json.dumps({"backend": None, "nodes": []}))
            else:
                print("no broker is set up (start one with `python -m lab_kit broker up`)")
            return 0 if args.action == "down" else 1
        raise broker.BrokerError("no broker is set up: run `python -m lab_kit broker up` first")
    if args.action == "status":
        st = b.status()
        if args.check:
            return 0 if st["nodes"] and all(n["state"] == "running" for n in st["nodes"]) else 3
        if args.json:
            print(json.dumps(st, indent=2))
        else:
            print(f"{st['backend']} Kafka {st['kafka_version']} at {st['bootstrap_servers']}")
            for n in st["nodes"]:
                print(f"  node {n['id']}: {n['state']:<8} pid={n['pid']} port={n['port']}")
        return 0
    if args.action == "down":
        b.down(purge=args.purge)
        print("broker stopped" + (" and its data purged" if args.purge else ""))
        return 0
    getattr(b, args.action)(args.node)
    print(f"{args.action}: node {args.node if args.node is not None else 'all'} done")
    return 0


def _backend_cmd(action: str) -> int:
    running = ModerationBackend.load()
    if action == "up":
        backend = running or ModerationBackend.ensure()
        print(backend.url)
    elif action == "status":
        print(running.url if running else "no moderation backend is running")
        return 0 if running else 3
    elif running is not None:
        running.stop()
        print("moderation backend stopped")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lab_kit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    bp = sub.add_parser("broker", help="start, stop and inject faults into the Kafka broker")
    bsub = bp.add_subparsers(dest="action", required=True)
    up = bsub.add_parser("up", help="start (or reuse) the broker; prints bootstrap servers")
    up.add_argument("--nodes", type=int, default=1, help="1 or 3")
    up.add_argument("--backend", default="auto", help="auto | local | docker | external")
    up.add_argument("--port", type=int, default=None, help="first listener port (local)")
    up.add_argument("--timeout", type=float, default=90, help="seconds to wait for ready")
    up.add_argument("--topics", action="store_true", help="also create the lab's topics")
    st = bsub.add_parser("status", help="backend, version, bootstrap servers and nodes")
    st.add_argument("--json", action="store_true")
    st.add_argument("--check", action="store_true",
                    help="print nothing; exit 0 if every node runs, 3 otherwise")
    dn = bsub.add_parser("down", help="stop every node (data kept unless --purge)")
    dn.add_argument("--purge", action="store_true", help="also delete data dirs and state")
    for action, text in (("stop", "graceful stop (SIGTERM)"), ("start", "start a stopped node"),
                         ("kill", "kill -9"), ("pause", "SIGSTOP"), ("resume", "SIGCONT")):
        a = bsub.add_parser(action, help=text)
        a.add_argument("--node", type=int, default=None, help="node id (default: all)")

    mb = sub.add_parser("backend", help="the moderation backend service (HTTP)")
    mb.add_argument("action", choices=("up", "status", "down"))
    sub.add_parser("doctor", help="check python, java, mvn, jars, docker, ports")
    tp = sub.add_parser("topics", help="create the StreamSocial topics (idempotent)")
    tp.add_argument("--json", action="store_true")

    api.add_parser(sub)
    bench.add_parser(sub)
    drills.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "broker":
            return _broker_cmd(args)
        if args.command == "backend":
            return _backend_cmd(args.action)
        if args.command == "doctor":
            return doctor_main()
        if args.command == "topics":
            out = ensure_topics(broker.ensure().client_config())
            print(json.dumps(out, indent=2) if args.json else "\n".join(out))
            return 0
        return args.func(args)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


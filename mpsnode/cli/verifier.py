"""``mpsnode verifier``, ``mpsnode export`` and ``mpsnode replay``: checking a chain without trusting it.

``replay`` exits 0 when every root matched, 1 at the first divergence (printing the same report the
verifier daemon writes), 2 on bad input. ``verifier`` exits 0 on SIGINT/SIGTERM and, with
``--exit-on-divergence``, 3 once it found and reported a divergence.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mpsnode.cli.common import server_options
from mpsnode.consensus.errors import DecodeError
from mpsnode.consensus.genesis import Genesis
from mpsnode.node import collector
from mpsnode.node.errors import WrongGenesis
from mpsnode.node.export import export_store, is_export
from mpsnode.node.files import load_genesis, load_key
from mpsnode.node.home import Home
from mpsnode.node.l1.follower import L1Follower
from mpsnode.node.store import LmdbStore
from verifier.daemon import run_daemon
from verifier.divergence import Bundle, write_report
from verifier.replay.engine import ExportSource, HomeSource, ReplayOutcome, replay
from verifier.replay.plot import plot_audit

EXIT_DIVERGED_REPLAY = 1


# ---------------------------------------------------------------------------------------------
# verifier


def cmd_verifier(args: argparse.Namespace) -> int:
    return run_daemon(
        args.home,
        upstream=args.upstream,
        genesis_file=args.genesis,
        listen=args.listen,
        metrics=args.metrics,
        http=args.http,
        exit_on_divergence=args.exit_on_divergence,
        server=server_options(args),
        l1=args.l1,
        l1_confirmations=args.l1_confirmations,
        l1_key=args.l1_key,
    )


# ---------------------------------------------------------------------------------------------
# export


def cmd_export(args: argparse.Namespace) -> int:
    home = Home.open(args.home)
    if not home.data_path.exists():
        raise FileNotFoundError(f"{home.data_path} holds no chain yet: start a node on this home first")
    store = LmdbStore(home.data_path, map_size=home.map_size, readonly=True)
    try:
        summary = export_store(store, home.genesis(), args.out)
    finally:
        store.close()
    out = {
        "out": str(summary.path),
        "blocks": summary.blocks,
        "head_height": summary.head_height,
        "head_hash": summary.head_hash.hex(),
        "bytes": summary.bytes,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"exported {summary.blocks} blocks (head {summary.head_height} "
            f"{summary.head_hash.hex()[:16]}...) to {summary.path}, {summary.bytes} bytes"
        )
    return 0


# ---------------------------------------------------------------------------------------------
# replay


def cmd_replay(args: argparse.Namespace) -> int:
    if (args.file is None) == (args.home is None):
        given = "both" if args.file is not None else "neither"
        raise ValueError(f"replay takes --home DIR or an export FILE (or a divergence bundle): {given} given")
    if args.file is not None and Path(args.file).is_dir():
        raise ValueError(f"{args.file} is a directory: replay a node's home with --home {args.file}")
    if args.file is not None and not is_export(args.file):
        return _replay_bundle(args)
    pin = _pinned_genesis(args)
    source = HomeSource(args.home) if args.home else ExportSource(args.file)
    try:
        if pin is None and args.file is not None:
            print(
                f"mpsnode: the genesis is the file's own ({source.genesis.hash().hex()}), not pinned: pass "
                "--genesis FILE or --genesis-hash HEX to check that it is the chain you mean",
                file=sys.stderr,
            )
        with collector.tuned():
            outcome = replay(
                source, progress=args.progress, genesis_hash=pin, l1=_l1_follower(args, source.genesis)
            )
        if not outcome.ok and args.reports and outcome.investigation is not None:
            assert outcome.report is not None
            write_report(args.reports, outcome.report, outcome.investigation.bundle(outcome.claimed))
    finally:
        source.close()
    if args.plot:
        targets = {
            t.task_id: t.target_accuracy_bps
            for t in outcome.audit.tasks.values()
            if t.target_accuracy_bps is not None
        }
        plot_audit(outcome.audit, args.plot, targets, _key_names(args.home))
    if args.json:
        out = outcome.to_json()
        if args.plot:
            out["plot"] = args.plot
        print(json.dumps(out, indent=2))
    else:
        _print_outcome(outcome, source.description, args)
    return 0 if outcome.ok and outcome.settled else EXIT_DIVERGED_REPLAY


def _l1_follower(args: argparse.Namespace, genesis: Genesis) -> L1Follower | None:
    """The L1 a settlement-mode chain is replayed against: ``--l1``, else the home's."""
    if genesis.l1 is None:
        return None
    url = args.l1 or (Home.open(args.home).l1 if args.home else "")
    if not url:
        raise ValueError(
            "this chain settles on L1: give --l1 URL (a replay reads the deposits and outputs there)"
        )
    return L1Follower(url, genesis.l1)


def _key_names(home: str | None) -> dict[bytes, str]:
    """Address -> key name, for the keys a home holds (its keys/ folder); none without a home."""
    names: dict[bytes, str] = {}
    if home is not None:
        for path in sorted((Path(home) / "keys").glob("*.json")):
            try:
                names[load_key(path).address] = path.stem
            except ValueError:
                continue  # not a key file: no name for it
    return names


def _pinned_genesis(args: argparse.Namespace) -> bytes | None:
    """The genesis hash ``--genesis FILE`` or ``--genesis-hash HEX`` pins (they must agree)."""
    pins = []
    if args.genesis:
        pins.append(load_genesis(args.genesis).hash())
    if args.genesis_hash:
        try:
            pinned = bytes.fromhex(args.genesis_hash.removeprefix("0x"))
        except ValueError:
            pinned = b""
        if len(pinned) != 32:
            raise ValueError(
                f"--genesis-hash {args.genesis_hash!r}: give the 64 hex digits `mpsnode init` printed"
            )
        pins.append(pinned)
    if len(set(pins)) > 1:
        raise ValueError("--genesis and --genesis-hash name different chains")
    return pins[0] if pins else None


def _print_outcome(outcome: ReplayOutcome, description: str, args: argparse.Namespace) -> None:
    rate = f"{outcome.blocks / outcome.seconds:.1f} blocks/s" if outcome.seconds else ""
    head = outcome.head
    genesis = outcome.genesis
    pinned = "pinned" if outcome.genesis_pinned else "NOT pinned (--genesis / --genesis-hash)"
    print(f"chain {genesis.chain_id}, genesis {genesis.hash().hex()} ({pinned})")
    params = genesis.params.to_json()
    print("params " + ", ".join(f"{k}={v}" for k, v in params.items()))
    if outcome.ok:
        print(
            f"replayed {outcome.blocks} blocks ({outcome.txs} txs) of {description} from genesis in a "
            f"fresh state in {outcome.seconds:.2f} s ({rate}): every root matches"
        )
        print(f"head {head.height} {head.hash().hex()}  state root {head.state_root.hex()}")
        print(
            "supply: balances + bonded + unbonding + escrows + burned + withdrawn = genesis + deposits, every block"
        )
        if outcome.settlement is not None:
            s = outcome.settlement
            print(
                f"settlement: portal holds {s['portal_balance_wei'] / 10**18:.9f} ETH; L2 holds {s['l2_held_units']} "
                f"units + {s['withdrawals_pending_units']} pending withdrawals + {s['deposits_in_flight_units']} "
                f"deposits in flight: {'equal' if s['portal_equals_l2'] else 'NOT EQUAL'}; "
                f"{s['outputs_checked']} posted outputs checked, {len(s['outputs_mismatched'])} differ"
                + ("" if s["deposits_match_l1"] else "; the credited deposits DIFFER from L1's")
            )
    else:
        print(
            f"replayed {outcome.blocks} blocks of {description}: every root matches up to height "
            f"{head.height}"
        )
        report = outcome.report or {}
        print(format_report(report))
        if args.reports:
            print(f"report written to {Path(args.reports) / (str(report.get('height')) + '.json')}")
    print()
    print(outcome.audit.format_text())
    if args.plot:
        print(f"\nplot written to {args.plot}")


def format_report(report: dict[str, Any]) -> str:
    """A divergence report in a few lines (the JSON holds everything)."""
    lines = [
        f"DIVERGENCE at height {report['height']} (block {str(report['block_hash'])[:16]}...): "
        f"{report['check']}: {report['reason']}",
        f"  computed locally:  {json.dumps(report['computed'])}",
        f"  claimed by header: {json.dumps(report['claimed'])}",
    ]
    for name, root in (report.get("roots") or {}).items():
        mark = "ok" if root["match"] else "MISMATCH"
        lines.append(
            f"  {name:<14} {mark:<8} computed {root['computed'][:16]}...  claimed {root['claimed'][:16]}..."
        )
    receipts = report.get("receipts")
    if receipts:
        lines.append(
            f"  receipts: {len(receipts['differ'])} differ (claimed receipts match the header: "
            f"{receipts['claimed_match_header']})"
        )
        for entry in receipts["differ"][:5]:
            only_c = ", ".join(e["event"] for e in entry.get("events_only_computed", []))
            only_h = ", ".join(e["event"] for e in entry.get("events_only_claimed", []))
            lines.append(f"    #{entry['index']}: only computed [{only_c}]  only claimed [{only_h}]")
    state = report.get("state")
    if state and not state["match"]:
        lines.append(
            f"  state: {len(state['diverging'])} diverging keys of {state['keys_compared']} compared"
            + (f" ({state['note']})" if state.get("note") else "")
        )
        for entry in state["diverging"][:8]:
            lines.append(f"    {entry['what']}: computed {json.dumps(entry['computed_value'])}")
    return "\n".join(lines)


def _replay_bundle(args: argparse.Namespace) -> int:
    try:
        bundle = Bundle.decode(Path(args.file).read_bytes())
    except DecodeError as exc:
        raise DecodeError(
            f"{args.file} is neither an export (mpsnode export) nor a divergence bundle: {exc}"
        ) from None
    pin = _pinned_genesis(args)
    if pin is not None and bundle.genesis.hash() != pin:
        raise WrongGenesis(
            f"{args.file} is a bundle of genesis {bundle.genesis.hash().hex()}, not of the pinned {pin.hex()}"
        )
    again = bundle.rerun()
    if again is None:
        out = {"ok": True, "height": bundle.height, "note": "the bundled block passes every check"}
        print(json.dumps(out, indent=2) if args.json else f"block {bundle.height} passes every check")
        return 0
    report = again.report(bundle.claimed)
    if args.reports:
        write_report(args.reports, report, again.bundle(bundle.claimed))
    print(json.dumps({"ok": False, "divergence": report}, indent=2) if args.json else format_report(report))
    return EXIT_DIVERGED_REPLAY

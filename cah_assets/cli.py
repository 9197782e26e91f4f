"""The `cah` command: register crawls, run the offline demo, and (scale-out) fleet and worker commands."""

import argparse
import os
import sys


def _register(args: argparse.Namespace) -> int:
    import dagster as dg

    from cah_assets.crawls import register_and_add
    from cah_resources.resources import CommonCrawl
    from cah_resources.resources import StorageResource

    instance = dg.DagsterInstance.get()
    registration, added = register_and_add(
        instance, CommonCrawl(base_url=args.source), StorageResource(root=args.data_root), args.crawl, args.files_per_segment
    )
    print(
        f"{registration.crawl}: {len(registration.wat_paths)} WAT files, {registration.files_per_segment} per segment, "
        f"{registration.segment_count} segments, {added} new partitions (first {registration.keys()[0]})"
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from cah_assets.demo import run_demo

    return run_demo(args.workdir, crawl=args.crawl, wat_files=args.wat_files, seed=args.seed)


def _fleet(args: argparse.Namespace) -> int:
    from cah_resources.hetzner import fleet_main

    return fleet_main(args.argv)


def _worker(args: argparse.Namespace) -> int:
    from cah_resources.gpu_worker import worker_main

    return worker_main(args.argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cah", description="Crawling@Home on Dagster")
    commands = parser.add_subparsers(dest="command", required=True)

    register = commands.add_parser("register", help="register a crawl: its segments become partitions")
    register.add_argument("crawl", help="crawl id, e.g. CC-MAIN-2024-10")
    register.add_argument("--files-per-segment", type=int, default=0, help="WAT files per segment (default: ~2000 segments)")
    register.add_argument("--source", default=os.environ.get("CAH_CRAWL_SOURCE", "https://data.commoncrawl.org"),
                          help="base URL or local folder holding crawl-data/<CRAWL>/wat.paths.gz")
    register.add_argument("--data-root", default=os.environ.get("CAH_DATA_ROOT", "data"))
    register.set_defaults(run=_register)

    demo = commands.add_parser("demo", help="run the pipeline offline on a generated crawl")
    demo.add_argument("--workdir", default=".demo")
    demo.add_argument("--crawl", default="CC-MAIN-SAMPLE")
    demo.add_argument("--wat-files", type=int, default=4)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)

    # fleet and worker parse their own arguments (`cah fleet --help`), so hcloud and Dask load only when used.
    fleet = commands.add_parser("fleet", help="Hetzner CPU runners: up N | down | status", add_help=False, prefix_chars="\0")
    fleet.add_argument("argv", nargs="*")
    fleet.set_defaults(run=_fleet)

    worker = commands.add_parser("worker", help="join a Dask cluster as CPU runners or, with --gpu, a GPU executor",
                                 add_help=False, prefix_chars="\0")
    worker.add_argument("argv", nargs="*")
    worker.set_defaults(run=_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, KeyError, FileNotFoundError, ConnectionError) as error:
        print(f"cah {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

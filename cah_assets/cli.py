"""The `cah` command: demo, UI, registering crawls, materializing segments, and (scale-out) fleet and worker."""

import os
import sys

import click

from cah_resources.contract import CRAWL_FORMATS, FORMAT_WAT, FORMATS, PAGE_SCORES, STAGES
from cah_resources.fleet.settings import DEFAULTS as FLEET_DEFAULTS
from cah_resources.fleet.settings import FLEET_ENV, WORKER_DEFAULTS, WorkerSettings
from cah_resources.redaction import redact_text, redact_url

REGISTER_ATTEMPTS = 3  # a crawl source that stays unreachable this many times is reported, not waited on
REGISTER_TIMEOUT_S = 30.0
REGISTER_BACKOFF_S = 2.0
RANGE = ".."


class UserError(click.ClickException):
    """An error the user can fix: printed as one line, `cah <command>: <what to do>`, exit status 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        context = click.get_current_context(silent=True)
        self.command = context.command_path if context is not None else "cah"

    def show(self, file=None) -> None:
        click.echo(f"{self.command}: {self.message}", err=True)


class Stopped(UserError):
    """A run stopped on request (Ctrl-C, SIGTERM): the command stops too, with a shell's status for it."""

    exit_code = 130


def _instance():
    """The instance of $DAGSTER_HOME and the code location's definitions for its deployment."""
    from cah_assets.deployment import instance_home, read_deployment

    try:
        home = instance_home()
    except LookupError as error:
        raise UserError(str(error)) from None
    import dagster as dg

    from cah_assets.definitions import build_definitions

    return dg.DagsterInstance.get(), build_definitions(read_deployment(home))


def _known_crawls(source_base: str, crawl_list: str) -> str:
    """The crawl ids the source (a folder) or the crawl list offers, for an unknown-crawl message."""
    if "://" not in source_base:
        folder = os.path.join(source_base, "crawl-data")
        ids = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        return ", ".join(ids) if ids else f"none under {folder}"
    from cah_resources.crawl.crawl_list import CrawlListError, read_crawl_list

    try:
        ids = read_crawl_list(crawl_list, timeout_s=REGISTER_TIMEOUT_S)
    except CrawlListError as error:
        return f"unknown ({error})"
    shown = ", ".join(ids[:8])
    return f"{shown}, ... ({len(ids)} in all, {crawl_list})" if len(ids) > 8 else shown


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def cah() -> None:
    """Crawling@Home on Dagster: Common Crawl's WAT or WARC files -> a LAION-style image-text dataset;
    page text (WARC pages, any Parquet dataset) -> classifier scores; any webdataset -> CLIP scores.

    Start with `cah demo`, then `cah dev` to see and re-run it in Dagster's UI.
    """
    from cah_assets.progress import quiet_console

    quiet_console()


@cah.command()
@click.option(
    "--workdir",
    default=None,
    type=click.Path(file_okay=False),
    help="Folder for the generated crawl, the data root and the Dagster instance (dagster_home/) "
    "[default: .demo, with --cluster .demo-cluster, emptied first].",
)
@click.option("--crawl", default="CC-MAIN-SAMPLE", show_default=True, help="Id given to the generated crawl.")
@click.option(
    "--wat-files",
    default=4,
    show_default=True,
    type=click.IntRange(1),
    help="WAT files to generate; two make one segment (partition).",
)
@click.option(
    "--warc-files",
    default=2,
    show_default=True,
    type=click.IntRange(0),
    help="WARC files of a second crawl run beside the WAT one (images and page text from the HTML); 0: none.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the generated pages and images.")
@click.option(
    "--cluster",
    is_flag=True,
    help="Rehearse a fleet on this machine: Postgres instance and dedup index, TLS scheduler, two `cah "
    "worker` runners in folders of their own, crawl over HTTP, data root on an S3 peer (moto); "
    "compared with the one-machine run, one worker killed mid-shard.",
)
def demo(workdir: str | None, crawl: str, wat_files: int, warc_files: int, seed: int, cluster: bool) -> None:
    """Run the whole pipeline offline on a generated crawl and a local image web (no network needed)."""
    from cah_assets.demo import run_demo

    if cluster:
        from cah_assets.rehearsal import run_rehearsal_command

        try:
            code = run_rehearsal_command(workdir or ".demo-cluster", crawl=crawl, wat_files=wat_files, seed=seed)
        except RuntimeError as error:  # a failed run or a missing service: one line
            raise UserError(str(error)) from None
        sys.exit(code)
    from cah_assets.policies import RunStopped

    workdir = workdir or ".demo"
    try:
        code = run_demo(workdir, crawl=crawl, wat_files=wat_files, seed=seed, warc_files=warc_files)
    except RunStopped as error:  # Ctrl-C or SIGTERM: the run that was going on is named
        raise Stopped(str(error)) from None
    except RuntimeError as error:  # a failed run: its logs are on the instance
        raise UserError(str(error)) from None
    sys.exit(code)


@cah.command()
@click.option("--port", default=3000, show_default=True, type=int, help="Port of the UI on 127.0.0.1.")
def dev(port: int) -> None:
    """Open Dagster's UI on $DAGSTER_HOME; on the demo's instance, serve its image web again so runs can redo it.

    Prints where the UI is, then only warnings, errors and one line per stage a run made (the UI has every event).
    """
    import contextlib

    from cah_assets.deployment import instance_home, read_deployment
    from cah_assets.dev import dagster_dev_command, port_taken, run_quietly, wait_until_serving

    try:
        home = instance_home()
    except LookupError as error:
        raise UserError(str(error)) from None
    if port_taken(port):  # the webserver would log it among Dagster's chatter and the UI would never come up
        raise UserError(f"port {port} on 127.0.0.1 is taken (another cah dev or dagster dev?): stop it, or use --port")
    deployment = read_deployment(home)
    url = f"http://127.0.0.1:{port}"
    with contextlib.ExitStack() as serving:
        served = ""
        if deployment.name == "demo":
            from cah_assets.demo import serve_demo

            try:
                serving.enter_context(serve_demo(deployment))
            except OSError as error:
                raise UserError(str(error)) from None
            served = (
                f"; serving its image web ({deployment.web_hosts[0]} and {len(deployment.web_hosts) - 1} more) "
                f"and data root ({deployment.files_url})"
            )
        click.echo(f"cah dev: UI {url} (loading), instance {home}, deployment {deployment.name}{served}")
        wait_until_serving(url, lambda: click.echo(f"cah dev: the UI is up at {url}"))
        code = run_quietly(dagster_dev_command(port), click.echo)
    sys.exit(code)


def _register_with_retries(instance, common_crawl, storage, crawl: str, files_per_segment: int, **dataset):
    """Register, retrying an unreachable source a few times, visibly; a missing crawl is not retried."""
    from cah_assets.crawls import register_and_add
    from cah_resources.crawl.common_crawl import IncompleteDownload
    from cah_resources.errors import one_line
    from cah_resources.retries import unreachable_source

    def unreachable(error: BaseException) -> bool:
        # A crawl or dataset file that is not there (CrawlFileMissing among them) is final, not a network hiccup.
        return isinstance(error, (IncompleteDownload, OSError)) and not isinstance(error, FileNotFoundError)

    def reason(error: BaseException) -> str:
        # The connection's own error, not the download's wrapper; a URL in it shown without secrets.
        return redact_text(one_line(error.__cause__ or error, 200))

    def tell(error: BaseException, attempt: int, delay: float) -> None:
        shown = redact_url(common_crawl.base_url)
        click.echo(
            f"{shown} did not answer ({reason(error)}); attempt {attempt}/{REGISTER_ATTEMPTS} in {delay:.0f} s",
            err=True,
        )

    if dataset.get("files"):
        # A dataset's files are asked for where they are, each retried by its own policy
        # (retries.existence_check): what is still unanswered then is the error, in one line.
        try:
            return register_and_add(instance, common_crawl, storage, crawl, files_per_segment, **dataset)
        except OSError as error:
            if not unreachable(error):
                raise
            raise UserError(f"{crawl}: {redact_text(str(error))}; check the network and the --files URLs") from None
    retrying = unreachable_source(REGISTER_ATTEMPTS, REGISTER_BACKOFF_S, unreachable, tell)
    try:
        return retrying(register_and_add, instance, common_crawl, storage, crawl, files_per_segment, **dataset)
    except (IncompleteDownload, OSError) as error:
        if not unreachable(error):
            raise
        raise UserError(
            f"{redact_url(common_crawl.base_url)} is unreachable after {REGISTER_ATTEMPTS} attempts "
            f"({reason(error)}); check the network or pass --source a mirror or folder"
        ) from None


@cah.command()
@click.argument("crawl")
@click.option(
    "--files-per-segment",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Files per segment; 0 sizes the crawl to about 2000 segments.",
)
@click.option(
    "--source",
    default=None,
    help="Base URL or folder holding crawl-data/<CRAWL>/wat.paths.gz or warc.paths.gz "
    "(default: the instance's, else Common Crawl).",
)
@click.option("--data-root", default=None, help="Where outputs go (default: the instance's, else ./data).")
@click.option(
    "--format",
    "format_",
    type=click.Choice(FORMATS),
    default=FORMAT_WAT,
    show_default=True,
    help="What the crawl's files are: Common Crawl's WAT files (images), its WARC files (images and page "
    "text from the HTML), an existing dataset's Parquet files, or a webdataset's tars (clip_pairs scores "
    "them). A crawl keeps the format it was registered with.",
)
@click.option(
    "--files",
    multiple=True,
    help="A dataset's files, read where they are: any fsspec URL, globs, brace ranges "
    "('s3://bucket/fineweb/{000..249}.parquet'); repeatable.",
)
@click.option("--text-column", default="", help="A Parquet dataset's column holding the page text [default: text].")
def register(
    crawl: str,
    files_per_segment: int,
    source: str | None,
    data_root: str | None,
    format_: str,
    files: tuple[str, ...],
    text_column: str,
) -> None:
    """Register a crawl such as CC-MAIN-2024-10, or a dataset: its segments become the partitions of every stage."""
    from cah_assets.resources import CommonCrawl, StorageResource
    from cah_resources.crawl.common_crawl import CrawlFileMissing

    instance, defs = _instance()
    common_crawl = (
        CommonCrawl(base_url=source, retries=0, timeout_s=REGISTER_TIMEOUT_S)
        if source
        else defs.resources["common_crawl"].model_copy(update={"retries": 0, "timeout_s": REGISTER_TIMEOUT_S})
    )
    storage = StorageResource(root=data_root) if data_root else defs.resources["storage"]
    try:
        registration, added = _register_with_retries(
            instance,
            common_crawl,
            storage,
            crawl,
            files_per_segment,
            format=format_,
            files=files,
            text_column=text_column,
        )
    except CrawlFileMissing:
        known = _known_crawls(common_crawl.base_url, defs.resources["crawl_discovery"].crawl_list)
        shown = redact_url(common_crawl.base_url)
        raise UserError(f"{crawl} is not a crawl of {shown}; known crawls: {redact_text(known)}") from None
    except (ValueError, KeyError) as error:
        raise UserError(redact_text(str(error.args[0] if error.args else error))) from None
    except FileNotFoundError as error:
        raise UserError(redact_text(f"{crawl}: {error}")) from None
    click.echo(
        f"{registration.crawl}: {len(registration.files)} {registration.format} files, "
        f"{registration.files_per_segment} per segment, {registration.segment_count} segments, {added} new partitions "
        f"(first {registration.keys()[0]})"
    )


@cah.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--out", required=True, help="Folder (or fsspec URL) for candidates.parquet, pages.parquet, counts.json.")
@click.option(
    "--format",
    "format_",
    type=click.Choice(CRAWL_FORMATS),
    default=None,
    help="What the files are [default: wat for *.wat.gz, else warc].",
)
def extract(files: tuple[str, ...], out: str, format_: str | None) -> None:
    """Run the candidates step (and for WARC files the pages step) on FILES, local or fsspec URLs, without Dagster.

    This is how to check a file before registering a crawl: the rows and every drop reason are written to --out.
    """
    from cah_resources.extract import extract_files, summary, write_extracted
    from cah_resources.storage import S3_PREFIXES, DataRoot, s3_options_from_environment

    options = s3_options_from_environment()  # s3:// files and --out: AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ...
    try:
        extracted = extract_files(files, format=format_, storage_options=options)
        written = write_extracted(DataRoot(out, options if out.startswith(S3_PREFIXES) else {}), extracted)
    except (FileNotFoundError, PermissionError, ValueError) as error:
        raise UserError(str(error).splitlines()[0]) from None
    click.echo(summary(extracted))
    click.echo("wrote " + ", ".join(written))


def expand_segments(requested: tuple[str, ...], known: list[str]) -> list[str]:
    """Segment keys from KEY, FIRST..LAST (a range of registered keys) or a crawl id (all its segments)."""
    from cah_assets.segment_runs import segment_problem
    from cah_resources.crawl.segments import parse_segment_key

    crawls: dict[str, list[str]] = {}
    for key in known:
        crawls.setdefault(parse_segment_key(key)[0], []).append(key)
    chosen: list[str] = []
    for item in requested:
        if item in crawls:
            chosen += crawls[item]
        elif RANGE in item:
            first, last = item.split(RANGE, 1)
            missing = [k for k in (first, last) if k not in known]
            if missing:
                raise UserError(segment_problem(missing[0], known))
            start, end = sorted((known.index(first), known.index(last)))
            chosen += known[start : end + 1]
        elif item in known:
            chosen.append(item)
        elif any(item.startswith(f"{crawl}_") for crawl in crawls):  # a key past its crawl's range
            raise UserError(segment_problem(item, known))
        else:
            hint = f"registered crawls: {', '.join(crawls)}" if crawls else "no crawl is registered yet"
            raise UserError(f"{item} is not a registered segment or crawl ({hint}); `cah register <crawl>` first")
    return list(dict.fromkeys(chosen))


@cah.command()
@click.argument("segments", nargs=-1, required=True)
@click.option(
    "--stage",
    "stages",
    multiple=True,
    type=click.Choice((*STAGES, PAGE_SCORES)),
    help=(
        "Stage to run (repeatable); default: a crawl's three image stages in order, a webdataset's "
        "clip_pairs, a Parquet dataset's page_scores (page_scores: also a WARC crawl's pages)."
    ),
)
def materialize(segments: tuple[str, ...], stages: tuple[str, ...]) -> None:
    """Run stages of SEGMENTS: keys (CC-MAIN-2024-10_00042), ranges (FIRST..LAST) or crawl ids (all segments).

    Each segment is one run of a named job on the instance (see it in `cah dev`); the checks run with it.
    """
    from cah_assets.definitions import PIPELINE_JOB, stage_job_name
    from cah_assets.launch import run_job
    from cah_assets.partitions import segments as segment_partitions
    from cah_assets.policies import stop_message, was_stopped
    from cah_assets.progress import QUIET_RUN_CONFIG, run_summary, stage_progress

    instance, defs = _instance()
    keys = expand_segments(segments, instance.get_dynamic_partitions(segment_partitions.name))
    asked = tuple(s for s in (*STAGES, PAGE_SCORES) if s in stages)
    root = defs.resources["storage"].data_root()

    def jobs_of(key: str) -> list[str]:
        """The stages asked for; without --stage, a crawl's image pipeline or the stage a dataset starts at."""
        picked = asked or _default_stages(root, key)
        return [PIPELINE_JOB] if picked == STAGES else [stage_job_name(s) for s in picked]

    plan = {key: jobs_of(key) for key in keys}
    failed = []
    with stage_progress(sum(map(len, plan.values())), f"{len(keys)} segment(s)") as advance:
        for key, jobs in plan.items():
            for job in jobs:
                result = run_job(instance, defs, job, key, QUIET_RUN_CONFIG)
                stages_of_job = STAGES if job == PIPELINE_JOB else (job.removesuffix("_job"),)
                for line in run_summary(result, stages_of_job):
                    click.echo(f"{key} {line}")
                advance()
                if not result.success and was_stopped(result):
                    raise Stopped(stop_message(key, result.run_id))
                if not result.success:
                    failed.append(f"{key} (run {result.run_id[:8]})")
                    break
    if failed:
        raise UserError(f"{len(failed)} segment(s) failed: {', '.join(failed)}; their logs are in the UI (`cah dev`)")


def _default_stages(root, key: str) -> tuple[str, ...]:
    """What `cah materialize` runs for a segment when no --stage is given."""
    from cah_resources.contract import DATASET_STAGE
    from cah_resources.crawl.segments import registration_for_key

    try:
        registration = registration_for_key(root, key)
    except (KeyError, ValueError):
        return STAGES  # its run says what is wrong, in one line
    return (DATASET_STAGE[registration.format],) if registration.format in DATASET_STAGE else STAGES


def _fleet_options(command):
    """The options every `cah fleet` subcommand takes: which fleet, and (hidden, for tests) which API."""
    command = click.option(
        "--endpoint", default=FLEET_DEFAULTS.endpoint, envvar=FLEET_ENV["endpoint"], hidden=True, help="Hetzner API."
    )(command)
    return click.option(
        "--name",
        default=FLEET_DEFAULTS.name,
        envvar=FLEET_ENV["name"],
        show_default=True,
        show_envvar=True,
        help="Fleet name: label and server-name prefix.",
    )(command)


def _scheduler_options(scheduler_help: str):
    """--scheduler and --tls-dir: where the fleet's workers join, and the certificates to ask the scheduler with."""

    def add(command):
        command = click.option(
            "--tls-dir",
            default=FLEET_DEFAULTS.tls_dir,
            envvar=FLEET_ENV["tls_dir"],
            show_envvar=True,
            help="Folder made by deploy/make_tls.sh.",
        )(command)
        return click.option(
            "--scheduler",
            "scheduler_address",
            default=FLEET_DEFAULTS.scheduler_address,
            envvar=FLEET_ENV["scheduler_address"],
            show_envvar=True,
            help=scheduler_help,
        )(command)

    return add


@cah.group()
def fleet() -> None:
    """Hetzner CPU runners: up N | down | status (tokens from $HCLOUD_TOKENS, else $HCLOUD_TOKEN)."""


@fleet.command("up")
@click.argument("count", type=int)
@_fleet_options
@click.option("--location", default=FLEET_DEFAULTS.location, show_default=True, help="Hetzner location.")
@click.option(
    "--type", "server_type", default=FLEET_DEFAULTS.server_type, show_default=True, help="Hetzner server type."
)
@click.option("--image", default=FLEET_DEFAULTS.image, show_default=True, help="Image the servers boot.")
@click.option(
    "--ssh-key",
    "ssh_keys",
    multiple=True,
    default=FLEET_DEFAULTS.ssh_keys,
    help="SSH key name in the project (repeatable).",
)
@_scheduler_options("Address the workers join, tls://HOST:8786.")
@click.option(
    "--package",
    default=FLEET_DEFAULTS.package,
    envvar=FLEET_ENV["package"],
    show_envvar=True,
    help="Pip requirement that installs this project on the servers.",
)
@click.option(
    "--pip",
    "extra_packages",
    multiple=True,
    default=FLEET_DEFAULTS.extra_packages,
    help="Extra pip requirement, e.g. s3fs (repeatable).",
)
@click.option(
    "--nthreads", default=FLEET_DEFAULTS.nthreads, show_default=True, type=int, help="Threads per worker process."
)
@click.option(
    "--max-servers",
    default=FLEET_DEFAULTS.max_servers,
    envvar=FLEET_ENV["max_servers"],
    type=int,
    show_default=True,
    show_envvar=True,
    help="Refuse to run more servers than this.",
)
@click.option(
    "--max-price-per-hour",
    default=FLEET_DEFAULTS.max_price_per_hour,
    envvar=FLEET_ENV["max_price_per_hour"],
    type=float,
    show_default=True,
    show_envvar=True,
    help="Refuse to cost more per hour than this, in EUR incl. VAT.",
)
@click.option(
    "--join-timeout",
    "join_timeout_s",
    default=FLEET_DEFAULTS.join_timeout_s,
    type=float,
    show_default=True,
    help="Seconds to wait for the workers to join.",
)
@click.option("--no-wait", is_flag=True, help="Do not wait for the workers to join.")
def fleet_up_command(count: int, no_wait: bool, **settings) -> None:
    """Grow the fleet to COUNT servers and wait for their workers.

    Exits 1 when fewer servers exist or joined than asked, 2 when refused (budget, quota, settings).
    """
    from cah_resources.fleet.hetzner import fleet_up

    sys.exit(fleet_up(count, wait=not no_wait, **settings))


@fleet.command("down")
@_fleet_options
@click.option("--keep", default=0, show_default=True, type=int, help="Keep this many servers (the oldest names).")
def fleet_down_command(keep: int, **settings) -> None:
    """Delete the fleet's servers (only those with its labels)."""
    from cah_resources.fleet.hetzner import fleet_down

    sys.exit(fleet_down(keep, **settings))


@fleet.command("status")
@_fleet_options
@_scheduler_options("Also show which servers' workers joined this scheduler.")
def fleet_status_command(**settings) -> None:
    """List the fleet's servers and their price per hour."""
    from cah_resources.fleet.hetzner import fleet_status

    sys.exit(fleet_status(**settings))


@cah.command()
@click.option("--scheduler", required=True, help="Scheduler address, e.g. tls://203.0.113.7:8786.")
@click.option(
    "--gpu",
    is_flag=True,
    default=WORKER_DEFAULTS.gpu,
    help="Serve GPU work: --processes-per-gpu worker processes per CUDA device, GPU=1 each.",
)
@click.option(
    "--processes-per-gpu",
    default=WORKER_DEFAULTS.processes_per_gpu,
    show_default=True,
    type=int,
    help="With --gpu: worker processes per device, each with its own models (fewer where memory is short).",
)
@click.option(
    "--nworkers",
    default=WORKER_DEFAULTS.nworkers,
    type=int,
    help="CPU worker processes [default: one per core; with --gpu: none].",
)
@click.option(
    "--nthreads", default=WORKER_DEFAULTS.nthreads, show_default=True, type=int, help="Threads per CPU worker."
)
@click.option("--name", default=WORKER_DEFAULTS.name, help="Worker name prefix [default: hostname].")
@click.option(
    "--memory-limit",
    default=WORKER_DEFAULTS.memory_limit,
    help="Per worker, e.g. 8GB [default: the machine's RAM shared by its workers].",
)
@click.option(
    "--min-free-gb",
    default=WORKER_DEFAULTS.min_free_gb,
    show_default=True,
    type=float,
    help="Free GPU memory a device needs per worker process.",
)
@click.option(
    "--tls-ca-file", default=WORKER_DEFAULTS.tls_ca_file, help="The cluster CA certificate (or $CAH_TLS_CA_FILE)."
)
@click.option("--tls-cert", default=WORKER_DEFAULTS.tls_cert, help="This worker's certificate (or $CAH_TLS_CERT_FILE).")
@click.option("--tls-key", default=WORKER_DEFAULTS.tls_key, help="This worker's key (or $CAH_TLS_KEY_FILE).")
def worker(**settings) -> None:
    """Join a Dask cluster as CPU runners or, with --gpu, a GPU executor."""
    from cah_resources.fleet.gpu_worker import run_worker

    sys.exit(run_worker(WorkerSettings(**settings)))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cah` console script; returns the exit status instead of exiting (tests call it)."""
    try:
        cah.main(args=argv, prog_name="cah", standalone_mode=False)
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except click.exceptions.Abort:
        return 1
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

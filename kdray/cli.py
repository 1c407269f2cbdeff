"""The ``kdray`` command line: argument parsing at the edge, work done by the modules.

Heavy imports (torch, ray, transformers) happen inside each command so that
``kdray --help`` and config errors answer instantly.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from typing import Callable, Sequence

from kdray import __version__
from kdray.cli_measure import add_measure_commands
from kdray.config import GLUE_TASKS, ConfigError


def _cmd_tasks(args: argparse.Namespace) -> int:
    from kdray.glue.catalog import describe_tasks, find_glue_dir

    folder, tried = find_glue_dir(args.data_dir)
    rows = describe_tasks(folder)
    print(f"{'task':<6} {'metrics':<34} {'splits':<48} local rows")
    for row in rows:
        counts = row.get("local_rows") or {}
        local = ", ".join(f"{split}={n}" for split, n in counts.items()) or "-"
        print(f"{row['name']:<6} {'/'.join(row['metrics']):<34} {', '.join(row['splits']):<48} {local}")
    print(f"local GLUE folder: {folder}" if folder else  # stderr: stdout stays the table
          f"no local GLUE folder (looked in: {', '.join(tried)}); pass --data-dir or set $KDRAY_GLUE_DIR",
          file=sys.stderr)
    return 0


def _cmd_teacher(args: argparse.Namespace) -> int:
    from kdray.config import DataConfig, TeacherConfig
    from kdray.teacher import finetune_teacher

    teacher = TeacherConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    data = DataConfig(
        source=args.source,
        dir=args.data_dir,
        max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples,
    )
    result = finetune_teacher(args.task, teacher, data, args.max_seq_length, args.out)
    print(json.dumps({"path": str(result.path), "score": result.score, "metrics": result.metrics,
                      "seconds": round(result.seconds, 1)}, indent=2))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from kdray.config import load_run_config
    from kdray.distill import train

    overrides = dict(_parse_override(o) for o in args.set or [])
    config = load_run_config(args.config, overrides)
    if args.output_dir:
        config = config.with_output(args.output_dir)
    if not config.train.progress:  # no bar: say that the run started, and where it writes
        print(f"[kdray] training {config.task} with {config.selector.name} into {config.output_dir}", flush=True)
    result = train(config, teacher_path=args.teacher)
    print(json.dumps({"task": result.task, "method": result.method, "dev_score": result.dev_score,
                      "dev_metrics": result.dev_metrics, "holdout_score": result.holdout_score,
                      "train_seconds": round(result.train_seconds, 1),
                      "samples_per_second": round(result.samples_per_second, 1),
                      "output_dir": config.output_dir}, indent=2))
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from kdray.sweep import run_sweep

    return run_sweep(
        args.space,
        address=args.address,
        storage=args.storage,
        name=args.name,
        resume=args.resume,
        dry_run=args.dry_run,
        max_concurrent=args.max_concurrent,
        num_samples=args.num_samples,
        overrides=dict(_parse_override(o) for o in args.set or []),
        teachers_only=args.teachers_only,
        rerun_changed=args.rerun_changed,
        tasks=None if args.tasks is None else [t.strip() for t in args.tasks.split(",") if t.strip()],
    )


def _cmd_report(args: argparse.Namespace) -> int:
    from kdray.report import render

    text = render(args.results_dir, fmt=args.format, by=args.by, plots_dir=args.plots, out=args.out,
                  paired=args.paired, against=args.against, avg_exclude=args.avg_exclude)
    if not args.out:
        print(text)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from kdray.export import export_best

    row = export_best(args.results_dir, args.task, args.out)
    print(f"[kdray] exported {row['trial_id']} ({row['method']}, dev_score={row['dev_score']:.4f}) to {args.out}")
    return 0


def _cmd_best(args: argparse.Namespace) -> int:
    from kdray.best import best_overrides

    print(best_overrides(args.sweep_dir, metric=args.metric, prefix=args.prefix, direction=args.mode))
    return 0


def _cmd_learner_replay(args: argparse.Namespace) -> int:
    from kdray.learner_replay import render, summarise
    from kdray.selection.bandit_prior import load_learners

    overrides = dict(_parse_override(o) for o in args.set or [])
    drop = [k for k in (args.drop_without or "").split(",") if k]
    scored = [k for k in (args.score_with or "").split(",") if k]
    table = summarise(load_learners(args.results_dir), overrides, drop, args.by, args.cross_seed, scored)
    settings = [f"{k}={v}" for k, v in overrides.items()]
    if drop:
        settings.append(f"without rows lacking {'/'.join(drop)}")
    if args.cross_seed:
        settings.append("each seed after its group's other seeds")
    if scored:
        settings.append(f"scoring only rows with {'/'.join(scored)}")
    print(render(table, f"Learner replay ({', '.join(settings) or 'as run'})", args.by), end="")
    return 0


def _parse_override(text: str) -> tuple[str, object]:
    """``key.path=value`` with the value parsed as YAML (so lists and numbers work), safely: a ``!!python`` tag
    or a duplicated key is refused, and a syntax error is one line naming the option."""
    import yaml

    from kdray import config_yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY.PATH=VALUE")
    try:
        return key.strip(), config_yaml.load(value)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML: {config_yaml.describe_error(err)}") from None


def _positive_int(text: str) -> int:
    """argparse type of a count that must be at least 1 (``--max-concurrent 0`` is refused, not ignored)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: must be >= 1")
    return value


def _describe(err: BaseException) -> str:
    """The message of an error the user can act on: a file problem as ``path: reason``, else its text."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return str(err)


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, except where the help already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False) or "(default" in text:
            return text
        return super()._get_help_string(action) or text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdray",
        description="Knowledge distillation sweeps on Ray with actor-critic knowledge selection.",
        formatter_class=_DefaultsFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kdray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add = functools.partial(sub.add_parser, formatter_class=_DefaultsFormatter)
    _add_run_commands(add)
    _add_result_commands(add)
    add_measure_commands(add)
    return parser


def _add_run_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """sweep, train, teacher: the commands that train something."""
    p = add("sweep", help="run a search space on local Ray or a cluster")
    p.add_argument("space", help="search-space YAML, e.g. search_spaces/smoke.yaml")
    p.add_argument("--address", default=None, help="Ray address: 'auto' or ray://host:port (default: local Ray)")
    p.add_argument("--storage", default=None, help="results root: a path or URI (s3://, gs://, NFS path)")
    p.add_argument("--name", default=None, help="sweep name (default: the YAML's name)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep without re-running trials")
    p.add_argument("--dry-run", action="store_true", help="print the expanded trials and exit")
    p.add_argument("--max-concurrent", type=_positive_int, default=None, help="at most N trials at once (N >= 1)")
    p.add_argument("--num-samples", type=_positive_int, default=None, help="override search.num_samples (N >= 1)")
    p.add_argument("--tasks", default=None, metavar="TASK[,TASK]",
                   help="run only these of the file's tasks (trial keys as in the whole file: a later --resume "
                        "of the whole file runs the rest); seeds: --set train.seeds=[1,2]")
    p.add_argument("--set", action="append", metavar="KEY.PATH=VALUE",
                   help="override a base setting of the space file, e.g. resources.use_gpu=true")
    p.add_argument("--teachers-only", action="store_true",
                   help="fine-tune (or find) the sweep's teachers under --storage and stop (no Ray)")
    p.add_argument("--rerun-changed", action="store_true",
                   help="resume, running again the recorded grid trials whose settings the file has changed")
    p.set_defaults(func=_cmd_sweep)

    p = add("train", help="one distillation run in-process (no Ray)")
    p.add_argument("config", help="run config YAML (the RunConfig keys)")
    p.add_argument("--teacher", default=None, help="folder of a fine-tuned teacher (default: fine-tune/cache one)")
    p.add_argument("--output-dir", default=None, help="override output_dir")
    p.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a config value")
    p.set_defaults(func=_cmd_train)

    p = add("teacher", help="fine-tune and save a teacher")
    p.add_argument("task", choices=GLUE_TASKS)
    p.add_argument("--model", default="minilm-l6", help="hub id, local folder or short name (minilm-l6, tiny-bert)")
    p.add_argument("--out", default=None, help="output folder (default: the teacher cache)")
    p.add_argument("--epochs", type=float, default=3.0, help="fine-tuning epochs")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size")
    p.add_argument("--lr", type=float, default=5e-5, help="learning rate")
    p.add_argument("--seed", type=int, default=42, help="random seed")
    p.add_argument("--max-seq-length", type=int, default=128, help="truncation length")
    p.add_argument("--source", choices=["auto", "hub", "local"], default="auto", help="where GLUE comes from")
    p.add_argument("--data-dir", default=None, help="official GLUE TSV folder (default: $KDRAY_GLUE_DIR)")
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--max-eval-samples", type=int, default=None)
    p.set_defaults(func=_cmd_teacher)


def _add_result_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """report, export, best, learner-replay, tasks: the commands that read results or data."""
    p = add("report", help="paper-style tables and plots from a sweep's Parquet files")
    p.add_argument("results_dir")
    p.add_argument("--format", choices=["md", "latex", "csv"], default="md", help="table format")
    p.add_argument("--by", default="method",
                   help="what the table compares: method (default), pool, phase_steps, reward, action, or any "
                        "searched parameter (its dotted key, e.g. knowledge.normalize)")
    p.add_argument("--plots", default=None, help="write PNG plots into this folder")
    p.add_argument("--out", default=None, help="write the table to this file instead of stdout")
    p.add_argument("--paired", default=None, metavar="METHOD[,METHOD]",
                   help="add every method's difference to METHOD (e.g. all,random_soft; with --by, METHOD@SETTING "
                        "such as all@none), paired by seed, with 95%% t-intervals: one table per METHOD")
    p.add_argument("--against", default=None, metavar="DIR",
                   help="add every trial's difference to the same trial key in the sweep folder DIR")
    p.add_argument("--avg-exclude", default=None, metavar="TASK[,TASK]",
                   help="show these tasks but leave them out of Avg and Retention (e.g. rte, a task whose "
                        "teacher is near chance)")
    p.set_defaults(func=_cmd_report)

    p = add("export", help="copy a sweep's best student of a task (a transformers folder) out")
    p.add_argument("results_dir", help="the sweep folder (holding trials.parquet and students/)")
    p.add_argument("--task", required=True, choices=GLUE_TASKS)
    p.add_argument("--out", required=True, help="a new (or empty) folder to copy the student into")
    p.set_defaults(func=_cmd_export)

    p = add("best", help="a search's best values per task, as a task_overrides block for a space file")
    p.add_argument("sweep_dir", help="the sweep folder (holding trials.parquet)")
    p.add_argument("--metric", default="holdout_score", help="the trials.parquet column the best trial is chosen by")
    p.add_argument("--mode", choices=["max", "min"], default="max", help="whether the metric is maximised")
    p.add_argument("--prefix", default="selector.schedule",
                   help="print the searched keys under this dotted prefix ('' = every searched key)")
    p.set_defaults(func=_cmd_best)

    p = add("learner-replay", help="replay saved bandit learners: does their prediction track the realised reward?")
    p.add_argument("results_dir", help="a sweep folder (or results/ copy) with trials/<id>/selector.pt")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="replay under another selector.bandit option, e.g. pairwise=true or features=[progress]")
    p.add_argument("--drop-without", default=None, metavar="KIND[,KIND]",
                   help="leave out the transitions that gave every one of these kinds weight 0")
    p.add_argument("--by", default=None, metavar="FIELD",
                   help="a row per value of this run_record.json field (dotted), e.g. reward_shaping.score or "
                        "phase_steps: the arms of a sweep, each pooled over its seeds; or of selector.pt's "
                        "prior_phases (0: a learner that did not start from selector.init_from)")
    p.add_argument("--score-with", default=None, metavar="KIND[,KIND]",
                   help="score only the transitions that gave one of these kinds weight; every one is still learned")
    p.add_argument("--cross-seed", action="store_true",
                   help="each learner first learns its group's other seeds' memories (leave one seed out): "
                        "would more stage-1 data than one run's make it predict?")
    p.set_defaults(func=_cmd_learner_replay)

    p = add("tasks", help="the GLUE tasks, their metrics and local row counts")
    p.add_argument("--data-dir", default=None,
                   help="official GLUE TSV folder (default: $KDRAY_GLUE_DIR, else ../shared/glue)")
    p.set_defaults(func=_cmd_tasks)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # `kdray sweep --dry-run | head`: the reader left; end quietly instead of with a traceback, and keep
        # the interpreter's final flush from raising again (as the Python docs on SIGPIPE advise)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except FloatingPointError as err:
        # a diverged run (the loop names the step and the loss that went non-finite): a result, not a bug
        print(f"kdray {args.command}: error: {err}", file=sys.stderr)
        return 1
    except (ConfigError, ValueError, OSError) as err:
        # Config errors, data and model errors (GlueDataError, unknown names: ValueErrors with a user-facing
        # message), and files that cannot be read or written (a model that will not load offline, a report
        # --out into a folder without write access) end as one line, not a traceback.
        print(f"kdray {args.command}: error: {_describe(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

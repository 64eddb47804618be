"""``smoothsk report``: tables and certified-accuracy curves from certification TSVs."""

from __future__ import annotations

from pathlib import Path

from smoothsk.cli.options import CommandError, check_writable, positive_float, text_table


def add_parser(subparsers) -> None:
    report = subparsers.add_parser("report",
                                   help="tables and curves from certification TSV files")
    report.add_argument("runs", nargs="+", help="TSV files (smoothsk's or the authors')")
    report.add_argument("--radii", default="0:2:0.25", help="start:stop:step or a comma list")
    report.add_argument("--labels", default=None, help="comma-separated names of the runs")
    report.add_argument("--markdown", default=None, help="write the table here")
    report.add_argument("--plot", default=None,
                        help="write certified-accuracy curves here (.pdf, .svg or .png)")
    report.add_argument("--max-radius", type=positive_float, default=None,
                        help="end of the plot's radius axis (default: the largest radius "
                             "+ 5%%)")
    report.add_argument("--title", default=None,
                        help="a title line above the plot's N, n and α line")
    report.set_defaults(func=run)


def print_runs(runs, radii) -> None:
    """The report table (run, N, ACR, certified accuracy % per radius) on stdout."""
    from smoothsk.io.report import run_labels

    header = ["run", "N", "ACR", *[f"r={r:g}" for r in radii]]
    labels = run_labels(runs)
    rows = [[label, run.size_text, f"{run.average_certified_radius:.3f}",
             *[f"{100 * a:.1f}" for a in run.certified_accuracy(radii)]]
            for run, label in zip(runs, labels)]
    print("certified accuracy (%) at l2 radius r")
    print(text_table(rows, header))
    for run, label in zip(runs, labels):
        if run.planned is not None and len(run.radius) < run.planned:
            print(f"note: {label} is incomplete: {len(run.radius)} of the {run.planned} inputs "
                  "it was started for are certified (run its certify command again to "
                  "finish it); its figures describe those inputs only")


def write_markdown(path, runs, radii) -> None:
    from smoothsk.io.files import atomic_write
    from smoothsk.io.report import markdown_table

    table = markdown_table(runs, radii).encode()
    atomic_write(Path(path), lambda stream: stream.write(table))


def run(args) -> int:
    from smoothsk.io.report import (
        PLOT_FORMATS,
        parse_radii,
        plot_certified_accuracy,
        read_certification_tsv,
    )

    try:
        radii = parse_radii(args.radii)
        names = args.labels.split(",") if args.labels else [None] * len(args.runs)
        if len(names) != len(args.runs):
            raise ValueError(f"--labels has {len(names)} names for {len(args.runs)} runs.")
        runs = [read_certification_tsv(path, name) for path, name in zip(args.runs, names)]
        if args.plot:
            check_writable(args.plot)  # a directory, say, is named as such first
        if args.plot and Path(args.plot).suffix.lower().lstrip(".") not in PLOT_FORMATS:
            # refused before anything is written (the table would be left behind)
            raise ValueError(f"--plot must end in one of "
                             f"{', '.join('.' + f for f in PLOT_FORMATS)}; got "
                             f"{Path(args.plot).name!r}.")
    except (FileNotFoundError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    print_runs(runs, radii)
    if args.markdown:
        check_writable(args.markdown)
        write_markdown(args.markdown, runs, radii)
        print(f"Markdown table: {args.markdown}")
    if args.plot:
        check_writable(args.plot)
        plot_certified_accuracy(runs, args.plot, max_radius=args.max_radius, title=args.title)
        print(f"plot: {args.plot}")
    return 0

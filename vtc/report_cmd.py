"""``vtc report``: tables, figures and one offline HTML page from any mix of rows."""

from __future__ import annotations

from reports.build import build_report

HELP = "build a report (Markdown, CSV, PNG, self-contained HTML) from prediction/profile/eval/published rows"


def add_arguments(p) -> None:
    p.add_argument("runs", nargs="+", help="JSON Lines files")
    p.add_argument("--out", required=True, help="report folder (must not exist unless --force)")
    p.add_argument("--force", action="store_true", help="replace an existing report folder")
    p.add_argument("--group-by", choices=["model", "gpu"], help="allow rows of several models / GPUs")
    p.add_argument("--gpu-spec", help="hardware spec for predictions of CPU-measured runs (a spec file)")
    p.add_argument("--saliency", nargs="+", metavar="DIR", help="folders written by vtc saliency, to include")
    p.add_argument("--calibration", metavar="JSON|GPU", help="show calibrated predictions beside the roofline's "
                                                           "(a file written by vtc validate, or a shipped GPU name)")
    p.add_argument("--title", default="Visual-token compression report")


def run(args) -> int:
    rep = build_report(args.runs, args.out, force=args.force, group_by=args.group_by, gpu_spec=args.gpu_spec,
                       title=args.title, saliency=args.saliency, calibration=args.calibration)
    if rep.headline:
        print(rep.headline)
        print()
    print(f"report: {rep.files['report.html']} (and summary.md, {sum(1 for f in rep.files if f.endswith('.csv'))} "
          f"CSV tables, {len(list(rep.out.glob('*.png')))} figures in {rep.out})")
    return 0

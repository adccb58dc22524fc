"""Command line: ``python -m rrglib.labeler agreement | frequencies | --text "..."``.

``agreement``: the rule labeler and the naive baseline (and CheXbert with ``--chexbert PATH``)
against IU X-Ray's MeSH major tags; ``frequencies``: the rule labeler's label counts over the IU
X-Ray reports, and its speed; ``--text``: the labels of one report.
"""

from __future__ import annotations

import argparse
import time

from data_prep.iu_reports import read_iu_xray_reports
from rrglib.labeler import get_labeler, label_frequency_table, label_report
from rrglib.labeler.agreement import format_agreement, iu_agreement, naive_label_reports


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rrglib.labeler",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", choices=("agreement", "frequencies"))
    parser.add_argument("--text", help="label one report given on the command line")
    parser.add_argument("--reports", help="NLMCXR_reports.tgz (default: torchxrayvision's copy)")
    parser.add_argument("--chexbert", help="also score CheXbert from this local chexbert.pth")
    parser.add_argument("--u0", action="store_true", help="count uncertain labels as negative")
    args = parser.parse_args(argv)
    if not args.command and not args.text:
        parser.error("give a command (agreement, frequencies) or --text")
    if args.text:
        for obs, value in label_report(args.text).items():
            print(f"{obs:28s} {value}")
    reports = read_iu_xray_reports(args.reports) if args.command else None
    if args.command == "frequencies":
        start = time.perf_counter()
        labels = get_labeler().label_reports(reports["report"], index=reports["id"])
        seconds = time.perf_counter() - start
        print(f"{len(labels)} IU X-Ray reports labelled in {seconds:.2f} s "
              f"({len(labels) / seconds:.0f} reports/s)")  # fmt: skip
        print(label_frequency_table(labels).to_string())
    if args.command == "agreement":
        labelers = {"rule": get_labeler().label_reports, "naive": naive_label_reports}
        if args.chexbert:
            labelers["chexbert"] = get_labeler(args.chexbert).label_reports
        tables = iu_agreement(labelers, reports, uncertain_positive=not args.u0)
        rule = "uncertain = negative" if args.u0 else "positive or uncertain = positive"
        print(f"Agreement with IU X-Ray MeSH major tags ({len(reports)} reports, findings + "
              f"impression; {rule})")  # fmt: skip
        print(format_agreement(tables))


if __name__ == "__main__":
    main()

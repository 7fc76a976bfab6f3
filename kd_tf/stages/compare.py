"""`compare`: teacher, then student from that teacher, then scratch, then a comparison.

The sub-runs' configs come composed in `config.compare.runs` (the command
line builds them from their flag files with compare's own flags on top, see
`kd_tf.command_line`). The comparison goes to the export directory:
`comparison.png` (test accuracy and loss per epoch), `confusion.png` (each
run's test confusion matrix, named by class), `report.json` (with
`per_class`: each class's test accuracy in each run) and `summary.md` (the
runs' table, then the per-class table). Ctrl-C names the sub-run it stopped and the complete exports of
the sub-runs before it.
"""

import os

from absl import logging

from kd_tf import atomic, distribution, interrupts, reporting
from kd_tf import config as config_lib
from kd_tf.stages.training_run import export_dir_for


def run(config, run_stage):
    """`--stage=compare`, running each sub-run with `run_stage(config)`;
    returns the comparison report."""
    runs = dict(config.compare.runs)
    if set(runs) != set(config_lib.COMPARE_STAGES):
        raise ValueError(
            f"compare needs config.compare.runs for {config_lib.COMPARE_STAGES}, got {sorted(runs)}"
        )
    strategy = distribution.strategy_for(config.runtime, config.optimization.batch_size)
    export_dir = export_dir_for(config, "compare", strategy)
    reports = _run_all(runs, run_stage)
    rows = reporting.summary_rows(reports)
    matrices = {name: report["confusion"] for name, report in reports.items()}
    class_names = reports["teacher"]["data"]["class_names"]
    per_class = reporting.per_class_rows(matrices, class_names)
    table = reporting.markdown_table(rows) + "\n\n" + reporting.markdown_table(per_class)
    summary = {
        "stage": "compare",
        "flags": config_lib.fields(config),
        "runs": {name: r["export_dir"] for name, r in reports.items()},
        "summary": rows,
        "per_class": per_class,
    }
    with atomic.staged(export_dir, overwrite=config.export.overwrite) as staging:
        reporting.plot_comparison(
            {f"{name} ({r['model']})": r["epochs"] for name, r in reports.items()},
            os.path.join(staging, "comparison.png"),
        )
        reporting.plot_confusion(matrices, class_names, os.path.join(staging, "confusion.png"))
        reporting.write_json(summary, os.path.join(staging, "report.json"))
        with open(os.path.join(staging, "summary.md"), "w") as f:
            f.write(table + "\n")
    with interrupts.outcome(f"the comparison is complete at {export_dir}"):
        logging.info("comparison written to %s\n%s", export_dir, table)
    summary["export_dir"] = export_dir
    return summary


def _run_all(runs, run_stage):
    """Runs the sub-runs in order, the student from the teacher's export;
    Ctrl-C says which sub-run it stopped and which exports are complete."""
    reports = {}
    for stage in config_lib.COMPARE_STAGES:
        run = runs[stage]
        if stage == "student":
            run = config_lib.with_fields(run, teacher_dir=reports["teacher"]["export_dir"])
        try:
            reports[stage] = run_stage(run)
        except KeyboardInterrupt as error:
            message = (
                f"{stage} run: {interrupts.outcome_of(error, 'no partial export was written')}"
            )
            if reports:
                message += "; finished: " + ", ".join(
                    f"{name} at {report['export_dir']}" for name, report in reports.items()
                )
            raise interrupts.Interrupted(message) from error
    return reports

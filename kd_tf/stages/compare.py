"""`compare`: teacher, then student from that teacher, then scratch, then a comparison.

The sub-runs' configs come composed in `config.compare.runs` (the command
line builds them from their flag files with compare's own flags on top, see
`kd_tf.command_line`). The comparison goes to the export directory:
`comparison.png` (test accuracy and loss per epoch), `report.json` and
`summary.md`.
"""

import os

from absl import logging

from kd_tf import atomic, distribution, reporting
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
    reports = {"teacher": run_stage(runs["teacher"])}
    teacher_dir = reports["teacher"]["export_dir"]
    reports["student"] = run_stage(config_lib.with_fields(runs["student"], teacher_dir=teacher_dir))
    reports["scratch"] = run_stage(runs["scratch"])
    rows = reporting.summary_rows(reports)
    table = reporting.markdown_table(rows)
    summary = {
        "stage": "compare",
        "flags": config_lib.fields(config),
        "runs": {name: r["export_dir"] for name, r in reports.items()},
        "summary": rows,
    }
    with atomic.staged(export_dir, overwrite=config.export.overwrite) as staging:
        reporting.plot_comparison(
            {f"{name} ({r['model']})": r["epochs"] for name, r in reports.items()},
            os.path.join(staging, "comparison.png"),
        )
        reporting.write_json(summary, os.path.join(staging, "report.json"))
        with open(os.path.join(staging, "summary.md"), "w") as f:
            f.write(table + "\n")
    logging.info("comparison written to %s\n%s", export_dir, table)
    summary["export_dir"] = export_dir
    return summary

"""Reports: one module per notebook, each importing only `shared` (what every report has: the
figure canvas, the header, the paths a report may show, the sentences more than one summary reads)
and `tables` (the one table style), so that a notebook loads its own report and no other's.

    01_preprocess      icdlib.report.preprocess
    02_label_stats     icdlib.report.label_stats
    03_train           icdlib.report.train
    04_evaluate        icdlib.report.evaluate     (also the terminal's headline and reports/index.html)
    05_error_analysis  icdlib.report.error_analysis
    06_compare         icdlib.report.compare

A notebook imports its module as `report` (`from icdlib.report import evaluate as report`), so
its cells read `report.pr_curve(...)`, `report.table(...)`, `report.summary(...)`. Nothing is
imported here: importing one notebook's module does not load the others.
"""

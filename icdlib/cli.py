"""`python -m icdlib COMMAND`: the whole pipeline, the synthetic twin, torchrun training, coding notes, memory plans.

User errors print as one line (`icdlib: error: ...`) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from icdlib.run.errors import IcdlibError


def _overrides(pairs: list[str]) -> dict:
    from icdlib.run.config import parse_override

    return dict(parse_override(p) for p in pairs or [])


def cmd_run(args) -> None:
    from icdlib.model import backbone_files
    from icdlib.run import config
    from icdlib import pipeline

    pipeline.require_notebook_stack()
    params = with_seeds(_overrides(args.param), args.seeds)
    if args.output_root:
        params["output_root"] = args.output_root
    params = config.absolute_paths(params)  # relative paths mean: from here, in every notebook
    named = {"run": args.run, "mimic_dir": args.mimic_dir}
    cfg = config.resolve(args.backbone, {**{k: v for k, v in named.items() if v}, **params})
    backbone_files.check(cfg)  # a wrong backbone path stops here, before step 01 does any work
    notebooks = pipeline.NOTEBOOKS if not args.only else tuple(n for n in pipeline.NOTEBOOKS if n[:2] in args.only)
    if cfg.mimic_dir and pipeline.NOTEBOOKS[0] in notebooks:
        from icdlib.data import preprocess

        preprocess.sources(cfg)  # MIMIC's tables and columns, checked before a kernel starts or a folder is made
    htmls = pipeline.run_all(cfg, params, notebooks, progress=not args.quiet)
    print(f"[icdlib] reports in {cfg.run_dir / 'reports'}:")
    for h in htmls:
        print(f"  {h}")
    print(f"[icdlib] every run and comparison of {cfg.run_dir.parent}: {cfg.run_dir.parent / pipeline.ROOT_INDEX}")
    line = pipeline.headline(cfg)
    if line:
        print(f"[icdlib] {line}")


def cmd_compare(args) -> None:
    from icdlib import compare, pipeline

    pipeline.require_notebook_stack()
    html, index, result = compare.report(list(args.runs) + list(args.run_dir or []), output_root=args.output_root,
                                         out=args.out, resamples=args.resamples, seed=args.seed,
                                         progress=not args.quiet)
    print(f"[icdlib] comparison in {html.parent}: {html.name}, {html.with_suffix('.ipynb').name}, {compare.RESULT}")
    print(f"[icdlib] every run and comparison of {index.parent}: {index}")
    for line in result.get("summary", []):
        print(f"[icdlib] {line}")


def with_seeds(params: dict, seeds: list[int] | None) -> dict:
    """`params` with `--seeds` as the `seeds` parameter; refused when `-p seeds=` says otherwise."""
    if seeds is None:
        return params
    if "seeds" in params and params["seeds"] != seeds:
        raise IcdlibError(f"--seeds {' '.join(map(str, seeds))} and -p seeds={params['seeds']} disagree: give one")
    return {**params, "seeds": seeds}


def cmd_synth(args) -> None:
    if args.dataset == "mimic3":
        from icdlib.twin import synth
        from icdlib.bench.preprocess import FULL_SIZE

        admissions = FULL_SIZE if args.full else args.admissions
        paths = synth.generate(Path(args.out), admissions=admissions, seed=args.seed, gzip=args.gzip,
                               short=args.short, progress=not args.quiet)
        evidence = Path(args.out) / synth.EVIDENCE_FILE
    else:
        from icdlib.twin import synth4

        icd9, icd10 = synth4.FULL if args.full else synth4.counts_for(args.dataset, args.admissions)
        paths = synth4.generate(Path(args.out), icd9=icd9, icd10=icd10, seed=args.seed, short=args.short,
                                progress=not args.quiet)
        evidence = Path(args.out) / synth4.EVIDENCE_FILE
    for table, path in paths.items():
        print(f"{table}: {path}")
    print(f"evidence spans: {evidence}")


def train_run_dir(args) -> Path:
    """The run folder `train` reads and writes: --run-dir, or <--output-root>/RUN; absolute."""
    import os

    from icdlib.run import config

    name = args.run or args.run_option
    if args.run_dir and (name or args.output_root):
        raise IcdlibError("train takes either RUN (with --output-root) or --run-dir, not both")
    if not (args.run_dir or name):
        raise IcdlibError("train needs a run: python -m icdlib train RUN [--output-root DIR], or --run-dir DIR")
    if args.run_dir:
        run_dir = Path(args.run_dir).expanduser()
    else:
        run_dir = (Path(args.output_root).expanduser() if args.output_root else config.OUTPUTS_DIR) / name
    return Path(os.path.abspath(run_dir))


def cmd_train(args) -> None:
    import dataclasses

    from icdlib.run import config
    from icdlib.model import train
    from icdlib.run.runfolder import Run

    run_dir = train_run_dir(args)
    path = Run(run_dir).config
    if not path.is_file():
        raise IcdlibError(f"{path} does not exist: run 01_preprocess (and config.load) for this run first")
    overrides = with_seeds(_overrides(args.param), args.seeds)
    if {"output_root", "run"} & set(overrides):
        raise IcdlibError("train trains in the run folder it reads: name it with RUN and --output-root, or "
                          "--run-dir, not with -p output_root=/run=")
    cfg = config.from_json(path)
    here = config.located(cfg, run_dir)
    if overrides:
        cfg = config.resolve(cfg.backbone, {**{k: v for k, v in cfg.to_dict().items() if k != "backbone"},
                                            **overrides, **here})
    else:
        cfg = dataclasses.replace(cfg, **here)
    train.fit(cfg, progress=not args.quiet)


def cmd_predict(args) -> None:
    from icdlib import predict

    text = predict.read_text_file(Path(args.text_file))
    if args.evidence_method is not None:
        from icdlib.model.explain import check_method

        check_method(args.evidence_method)  # before the model loads
    coder = predict.load(args.model, device=args.device, model_path=args.backbone_path,
                         base_model_path=args.base_model_path, max_segments=args.max_segments, threshold=args.threshold)
    every = coder.predict([text])[0]
    table = every.head(args.top_k)
    for line in (predict.truncation_line(every.attrs, coder.truncation_mode),
                 predict.decision_line(every, len(table), coder.threshold, coder.threshold_source)):
        if line:
            print(line, file=sys.stderr)
    if args.evidence or args.evidence_html:
        table = with_evidence(args, coder, text, table)
    if args.json:
        print(json.dumps(table.to_dict(orient="records"), indent=1))
    else:
        shown = table.assign(assigned=table["assigned"].map({True: "yes", False: "no"}))
        print(shown.drop(columns="evidence", errors="ignore").to_string(index=False, float_format=lambda x: f"{x:.4f}"))
        if args.evidence:
            print(f"\nevidence ({coder.evidence_method(args.evidence_method)}): code  [begin:end]  score  text")
            print("\n".join(predict.evidence_lines(table)))


def with_evidence(args, coder, text: str, table):
    """`table` with its evidence column (with --evidence); the HTML page written (--evidence-html)."""
    from icdlib import predict

    if args.evidence_spans < 1:
        raise IcdlibError(f"--evidence-spans must be at least 1, got {args.evidence_spans}")
    method = coder.evidence_method(args.evidence_method)
    words = coder.explain(text, table["code"].tolist(), method)
    if args.evidence:
        table = table.assign(evidence=predict.evidence_column(text, words, args.evidence_spans))
    if args.evidence_html:
        path = Path(args.evidence_html)
        try:
            path.write_text(predict.evidence_page(text, table, words, method), encoding="utf-8")
        except OSError as e:
            raise IcdlibError(f"cannot write {path}: {e.strerror}") from None
        print(f"[icdlib] evidence of {len(table)} codes highlighted in {path}", file=sys.stderr)
    return table


def cmd_bench(args) -> None:
    from icdlib import bench
    from icdlib.bench import results

    command = "python -m icdlib bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else ""
    doc = bench.run_suite(args.suite, args.scale, args.repeats, args.warmup, args.data_dir or None, args.out or None,
                          args.markdown or None, progress=not args.quiet, command=command, dataset=args.dataset)
    for c in doc.get("comparisons", []):
        r = c["ratio"]
        print(f"[icdlib bench] {c['what']}: {r['median']:.2f} ({r['min']:.2f}–{r['max']:.2f})"
              + (f", target {c['target']}" if c.get("target") else ""))
    for c in doc.get("checks", []):
        print(f"[icdlib bench] check {'passed' if c['ok'] else 'FAILED'}: {c['what']}")
    out, markdown = bench.destinations(bench.record_name(args.suite, args.dataset), args.scale, args.out or None,
                                       args.markdown or None)
    smoke = "" if args.scale == "full" else " (smoke scale: the recorded figures in benchmarks/results/ are untouched)"
    print(f"[icdlib bench] results: {results.shown(out)}, {results.shown(markdown)}{smoke}")


def cmd_plan(args) -> int:
    from icdlib.model import memory_plan

    cfg = memory_plan.for_backbone(args.backbone, _overrides(args.param))
    plan = memory_plan.plan(cfg, args.device, round(args.gpu_memory * memory_plan.GB), args.labels)
    print(memory_plan.render(plan))
    return 0 if plan.fits else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m icdlib", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run notebooks 01→05 through papermill and export HTML reports",
                       description="Run the five notebooks in order for one backbone; executed notebooks "
                                   "and HTML reports go to <output_root>/<run>/reports/.")
    r.add_argument("--backbone", required=True, help="params file name: params/<backbone>.yaml")
    r.add_argument("--run", default="", help="run folder name (default: the backbone name)")
    r.add_argument("--mimic-dir", default="", help="MIMIC-III v1.4 folder, or MIMIC-IV v2.2's with -p dataset=mimic4_icd9 "
                                                   "or mimic4_icd10 (default: the synthetic twin)")
    r.add_argument("--output-root", default="", help="folder holding run folders (default: <repo>/outputs)")
    r.add_argument("-p", "--param", action="append", metavar="KEY=VALUE",
                   help="override a parameter, value read as YAML (repeatable), e.g. -p max_steps=50")
    r.add_argument("--only", nargs="+", metavar="NN", help="run only these notebooks, e.g. --only 04 05")
    r.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                   help="train one model per seed (its LoRA/head initialisation, data order, dropout) in the same run "
                        "folder, e.g. --seeds 0 1 2: the first is the run's model, the others go to 03_train/seed_<s>/; "
                        "04 reports each and their mean ± sd (default: one model, trained with -p seed)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("compare", help="compare runs side by side: metrics with 95%% intervals, paired tests, "
                                       "per-code differences, disagreements (notebook 06_compare)",
                       description="Compare runs of one benchmark, dataset, split and label space, scored on the "
                                   "same test admissions (others are refused in one line): each run's metrics with "
                                   "bootstrap intervals, paired differences RUN_A − RUN_X, the codes whose F1 and "
                                   "AUPRC differ most, and where the decisions differ. Writes 06_compare.ipynb, "
                                   ".html and comparison.json to <output_root>/comparisons/<A>_vs_<B>/ and lists "
                                   "every run and comparison in <output_root>/index.html.")
    c.add_argument("runs", nargs="*", metavar="RUN", help="run names under --output-root, or run folders "
                                                         "(a path: with a /, or starting with . or ~); the first is A")
    c.add_argument("--run-dir", action="append", metavar="DIR", help="a run folder (repeatable), after the RUNs")
    c.add_argument("--output-root", default="", help="where run names are looked up, and where comparisons/ goes "
                                                     "(default: <repo>/outputs for names; the folder holding RUN_A)")
    c.add_argument("--out", default="", help="the comparison's folder (default: <output_root>/comparisons/<A>_vs_<B>)")
    c.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the test admissions")
    c.add_argument("--seed", type=int, default=0, help="the bootstrap's random seed")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_compare)

    s = sub.add_parser("synth", help="write a synthetic MIMIC-III twin (five tables) or MIMIC-IV twin (hosp/, note/), "
                                     "and where its notes mention each code (EVIDENCE.csv.gz, note/evidence.csv.gz)",
                       description="Write a synthetic twin of MIMIC-III v1.4 (NOTEEVENTS, DIAGNOSES_ICD, "
                                   "PROCEDURES_ICD, D_ICD_DIAGNOSES, D_ICD_PROCEDURES) or of MIMIC-IV v2.2 with "
                                   "MIMIC-IV-Note (hosp/, note/), in PhysioNet's layout: discharge summaries made from "
                                   "templates and the official ICD titles, coded, for trying icdlib without "
                                   "credentialed access (--mimic-dir takes the folder). Its numbers are not "
                                   "comparable to published results.")
    s.add_argument("--out", required=True, help="folder to write the tables into")
    s.add_argument("--dataset", default="mimic3", choices=["mimic3", "mimic4_icd9", "mimic4_icd10"],
                   help="mimic3: MIMIC-III v1.4's tables; mimic4_*: MIMIC-IV v2.2 + MIMIC-IV-Note as PhysioNet ships "
                        "them (.csv.gz), with ADMISSIONS coded in that ICD version and a quarter as many in the other")
    s.add_argument("--admissions", type=int, default=1000, help="admissions to generate (MIMIC-III has 58,976)")
    s.add_argument("--full", action="store_true", help="the dataset's full size (MIMIC-III: 58,976 admissions; "
                                                       "MIMIC-IV: ~331k discharge notes, both ICD versions)")
    s.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same twin (default: 0)")
    s.add_argument("--gzip", action="store_true", help="MIMIC-III: write .csv.gz as PhysioNet ships them")
    s.add_argument("--short", action="store_true", help="short notes for fast demos")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_synth)

    # Every option here must pass torchrun's own parser untouched (it takes unique prefixes of its
    # options, and rejects ambiguous ones: `--run` could be its --run-path), hence RUN positional.
    t = sub.add_parser("train", help="step 03 alone, e.g. torchrun --nproc_per_node N -m icdlib train RUN",
                       description="Train with the run's config.json (written by the notebooks' config cell), "
                                   "in that run folder. Under torchrun: torchrun --nproc_per_node N -m icdlib "
                                   "train RUN.")
    t.add_argument("run", nargs="?", default="", metavar="RUN", help="run folder name under --output-root")
    t.add_argument("--output-root", default="", help="folder holding run folders (default: <repo>/outputs)")
    t.add_argument("--run-dir", default="", help="the run folder itself (instead of RUN): trains and writes there")
    t.add_argument("--run", dest="run_option", default="", help=argparse.SUPPRESS)  # the old spelling, without torchrun
    t.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="override a parameter (repeatable)")
    t.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                   help="train one model per seed (its LoRA/head initialisation, data order, dropout) in the same run "
                        "folder, e.g. --seeds 0 1 2: the first is the run's model, the others go to 03_train/seed_<s>/; "
                        "04 reports each and their mean ± sd (default: one model, trained with -p seed)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    q = sub.add_parser("predict", help="code a note with a trained model folder",
                       description="Score every code of a trained model folder on one note and print the best "
                                   "--top-k, each marked assigned when its score reaches the threshold (the one the "
                                   "run's 04_evaluate tuned on validation, or --threshold).")
    q.add_argument("--model", required=True, help="the trained model folder, e.g. outputs/demo/03_train/best")
    q.add_argument("--text-file", required=True, help="UTF-8 text file holding one note")
    q.add_argument("--top-k", type=int, default=15, help="codes to print, best first")
    q.add_argument("--threshold", type=float, default=None,
                   help="a code is assigned when its score is at least this (default: the threshold the run's "
                        "04_evaluate tuned on validation)")
    q.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where the model runs (default: auto, a CUDA or Apple GPU when there is one, else the CPU)")
    q.add_argument("--backbone-path", default="", help="where the backbone is now (the LLM2Vec model folder or hub "
                                                       "name), when the run folder moved away from it")
    q.add_argument("--model-path", dest="backbone_path", default="", help=argparse.SUPPRESS)  # its old name, for scripts
    q.add_argument("--base-model-path", default="", help="where the base LLM of an adapter-only backbone is now")
    q.add_argument("--max-segments", type=int, default=None, help="segments of the note to read (default: as trained)")
    q.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    q.add_argument("--evidence", action="store_true",
                   help="per code, its top spans in the note (character offsets into the file's text, the text, "
                        "the score); with --json an `evidence` list in each record")
    q.add_argument("--evidence-method", default=None, metavar="METHOD",
                   help="how evidence is found: attention, attingrad, input_x_gradient, integrated_gradients or "
                        "occlusion (of sentences); default attingrad, label attention × input × gradient (Edin et "
                        "al. 2024), input_x_gradient for a mean head")
    q.add_argument("--evidence-spans", type=int, default=3, metavar="N", help="evidence spans per code")
    q.add_argument("--evidence-html", default="", metavar="FILE",
                   help="write an HTML page with the note's words shaded by their evidence for each code (one "
                        "section per code, a colour legend; only the note's text, codes and scores: no paths)")
    q.set_defaults(func=cmd_predict)

    m = sub.add_parser("plan", help="will a run fit the GPU? step 03's memory, worked out before anything loads",
                       description="Print the memory of step 03 for a backbone's params file (and -p overrides): "
                                   "weights, what trains with AdamW, activations with and without gradient "
                                   "checkpointing, the head's tensors, the MNTP stage, CUDA's overhead; each term "
                                   "with its formula, in GB (10^9 bytes). Then whether it fits --gpu-memory and, "
                                   "when not, the first of batch_size=1 (grad_accum raised), "
                                   "grad_checkpointing=true, both, load_in=4bit (then with those) that fits, as -p "
                                   "overrides. Nothing is downloaded: the backbone's shape comes from its local "
                                   "config.json, the Hugging Face cache or icdlib's table of shipped backbones. "
                                   "Exit status: 0 fits, 1 does not fit, 2 a user error.")
    m.add_argument("--backbone", required=True, help="params file name: params/<backbone>.yaml")
    m.add_argument("--gpu-memory", type=float, required=True, metavar="GB",
                   help="the GPU's memory in GB (10^9 bytes), e.g. 80 for an A100/H100 80GB (which holds 85 GB)")
    m.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="override a parameter (repeatable)")
    m.add_argument("--labels", type=int, default=None, metavar="N",
                   help="labels of the run (default: the benchmark's published count, else 8,922 assumed)")
    m.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="where it trains (default: cuda)")
    m.set_defaults(func=cmd_plan)

    from icdlib.bench import SUITES

    b = sub.add_parser("bench", help="measure speed and memory against the usual alternative (see benchmarks/)",
                       description="Run one benchmark suite; at full scale writes benchmarks/results/SUITE.json and "
                                   "rewrites benchmarks/RESULTS.md, at --scale smoke writes outputs/bench-smoke/ "
                                   "(git-ignored; never the recorded files). Medians of --repeats timed runs after "
                                   "--warmup runs.")
    b.add_argument("suite", choices=SUITES, help="what to measure: " + ", ".join(SUITES))
    b.add_argument("--scale", default="full", help="full (the recorded numbers) or smoke (seconds, for tests)")
    b.add_argument("--repeats", type=int, default=3, help="timed runs per figure")
    b.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    b.add_argument("--out", default="", help="results JSON (default: benchmarks/results/SUITE.json; smoke: "
                                             "outputs/bench-smoke/results/SUITE.json)")
    b.add_argument("--markdown", default="", help="markdown summary, rendered from every JSON beside --out "
                                                  "(default: benchmarks/RESULTS.md; smoke: "
                                                  "outputs/bench-smoke/RESULTS.md; with --out: RESULTS.md beside it)")
    b.add_argument("--dataset", default="mimic3", choices=["mimic3", "mimic4_icd9", "mimic4_icd10"],
                   help="preprocess suite only: mimic3 (default), or a MIMIC-IV dataset: step 01 on a full-size "
                        "MIMIC-IV twin against Edin et al.'s pandas preparation (benchmarks/results/"
                        "preprocess-DATASET.json)")
    b.add_argument("--data-dir", default="", help="where synthetic twins are generated once (default: benchmarks/data)")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        status = args.func(args)
    except IcdlibError as e:
        from icdlib.model.distributed import RanksStopped, rank_from_environment
        from icdlib.pipeline import Interrupted

        if isinstance(e, RanksStopped):
            from icdlib.model.distributed import leave_together

            if rank_from_environment() == 0:  # every rank holds the same line: rank 0 prints it
                print(f"icdlib: error: {e}", file=sys.stderr, flush=True)
            leave_together()  # before torchrun, seeing the first exit, stops the others mid-print
            return 2
        print(f"icdlib: {'stopped' if isinstance(e, Interrupted) else 'error'}: {e}", file=sys.stderr)
        return 130 if isinstance(e, Interrupted) else 2
    except KeyboardInterrupt:
        print(f"icdlib: stopped: interrupted ({args.command}); nothing half-written is kept: "
              "rerun the command (training continues with -p resume=true)", file=sys.stderr)
        return 130
    return status or 0

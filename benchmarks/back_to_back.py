"""`mint run` of two commits back to back on this machine: the wall-time ratio, and the test figures side by side.

Speed claims ("1.8x faster than main") only hold against the same work on the same machine in the
same sitting: a host's speed drifts by 5-10% between hours, and two hosts of one type differ by
more. This script clones both commits from this repository into a work folder, gives each its own
virtual environment (its own entry points, since the built-in plugins' names change between commits;
the dependencies are the ones this interpreter already has, seen through a ``.pth`` file, so nothing
is downloaded), then runs ``mint run`` in each, alternating which goes first, ``--pairs`` times.
Every run starts from an empty ``runs/`` folder (a fresh run; the model cache under ``~/.cache/mint``
is shared, as a user's is).

It prints each pair's wall times and ratio (baseline / candidate: above 1 = the candidate is faster),
the pooled ratio (sum over sum) with a 95% t-interval on the mean log ratio (from 2 pairs up: with 2
it is wide, as it should be), and each version's test figures with their intervals, marking any
figure outside the other version's interval. Every pair's figures are compared, not only the last
pair's shown: it names any figure outside the other version's interval in some pair, and any figure
of a version that moved between its runs (the same seed must give the same numbers). Nothing else
should run meanwhile: the script warns when the CPUs are busy just before a run.

    python benchmarks/back_to_back.py --baseline e0cd770 --pairs 2 --json
    python benchmarks/back_to_back.py --baseline e0cd770 --first baseline --pairs 1
    python benchmarks/back_to_back.py --baseline e0cd770 --candidate HEAD -- --seed 1   # args after -- go to mint run

A demo pair takes ~20 minutes on a 2-core host. Only committed code is compared (clean clones).
The last line printed with ``--json`` is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import site
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]

#: The figures compared between versions: (role, metric key) as in a run's metrics.json.
FIGURES = (("teacher", "top1"), ("base", "rank_top1"), ("base", "rank_top10"), ("orpo", "top1"),
           ("orpo", "top10"), ("orpo", "rank_top1"), ("orpo", "rank_top10"), ("orpo", "well_formed"))


# -- statistics (tested in tests/test_benchmarks.py) -------------------------------------------
def ratio_summary(baseline_s: Sequence[float], candidate_s: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Per-pair ratios baseline/candidate, the pooled ratio (sum over sum), and a t-interval on the mean
    log ratio (``None`` with fewer than 2 pairs). Pairs are the unit: the order alternates within them.

    Not :func:`mint_core.stats.ratio_interval`'s bootstrap: over the 2-4 pairs a session affords,
    resampling pairs gives a handful of distinct values and an interval far too narrow (2 pairs: 3
    values); the t-interval widens with few pairs as it should.
    """
    from scipy import stats

    if len(baseline_s) != len(candidate_s) or not baseline_s:
        raise ValueError("need the same positive number of baseline and candidate runs")
    ratios = [b / c for b, c in zip(baseline_s, candidate_s)]
    logs = [math.log(r) for r in ratios]
    interval = None
    if len(logs) >= 2:
        mean, spread = sum(logs) / len(logs), float(stats.sem(logs))
        low, high = stats.t.interval(level, len(logs) - 1, loc=mean, scale=spread) if spread > 0 else (mean, mean)
        interval = [math.exp(low), math.exp(high)]
    return {"ratios": ratios, "pooled": sum(baseline_s) / sum(candidate_s),
            "geometric_mean": math.exp(sum(logs) / len(logs)), "interval": interval, "level": level}


def compare_figures(baseline: dict[str, Any], candidate: dict[str, Any]) -> list[dict[str, Any]]:
    """Each of :data:`FIGURES` both versions report: values, intervals, and whether each value lies in
    the other's interval (a figure without an interval compares by equality)."""
    rows = []
    for role, key in FIGURES:
        a, b = baseline.get(role, {}), candidate.get(role, {})
        if key not in a or key not in b:
            continue
        a_ci, b_ci = a.get(f"{key}_ci"), b.get(f"{key}_ci")
        rows.append({"figure": f"{role} {key}", "baseline": a[key], "baseline_ci": a_ci, "candidate": b[key],
                     "candidate_ci": b_ci,
                     "within": _inside(b[key], a_ci, a[key]) and _inside(a[key], b_ci, b[key])})
    return rows


def differing_figures(runs: Sequence[dict[str, Any]]) -> list[str]:
    """The :data:`FIGURES` whose value is not the same in every one of ``runs`` (one version's
    metrics.json, run after run): the same seed must give the same numbers, so any name here is a defect."""
    names = []
    for role, key in FIGURES:
        values = {run.get(role, {}).get(key) for run in runs}
        if len(values) > 1:
            names.append(f"{role} {key}")
    return names


def _inside(value: float, ci: Sequence[float] | None, other: float) -> bool:
    """``value`` lies in the interval ``ci`` (saved rounded, hence the slack); without one, equals ``other``."""
    return value == other if not ci else ci[0] - 1e-12 <= value <= ci[1] + 1e-12


def _shown(value: float, ci: Sequence[float] | None) -> str:
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


# -- clones and runs ---------------------------------------------------------------------------
def _git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def prepare(rev: str, work: Path, name: str) -> tuple[Path, Path, str]:
    """A clean clone of ``rev`` at ``work/name`` with its own venv; returns (clone, its mint, commit)."""
    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    clone = work / name
    if not clone.exists():
        _git("clone", "--quiet", str(REPO), str(clone))
    else:  # a clone kept from an earlier call: it may not hold commits made since
        _git("fetch", "--quiet", str(REPO), "+refs/heads/*:refs/remotes/origin/*", cwd=clone)
    _git("checkout", "--quiet", "--force", commit, cwd=clone)
    venv = clone / ".venv"
    python = venv / "bin" / "python"
    if not python.exists():
        # No pip or setuptools of its own: this interpreter's (and torch, transformers, ...) are seen
        # through a .pth file. A path added there is searched after the venv's own, and its .pth files
        # (this checkout's editable install) are not run, so the clone's install is the one imported.
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        packages = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                       check=True, capture_output=True, text=True).stdout.strip())
        (packages / "_mint_parent.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # Every time: a reused clone may now hold a commit with other entry points.
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-e", str(clone)], check=True)
    return clone, venv / "bin" / "mint", commit


def busy_share(seconds: float = 1.0) -> float | None:
    """The share of all CPUs' time spent busy over the next ``seconds`` (``/proc/stat``; None elsewhere).

    The load average would not do: it still counts the previous run of the pair for minutes."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def run_once(clone: Path, mint: Path, run_args: Sequence[str], log: Path) -> dict[str, Any]:
    """One fresh ``mint run`` in ``clone``: wall seconds, exit status, and the run's metrics.json."""
    runs = clone / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    busy = busy_share()
    if busy is not None and busy > 0.25:
        print(f"warning: the CPUs were {busy:.0%} busy just before a timed run: something else is running",
              file=sys.stderr)
    start = time.perf_counter()
    with log.open("w") as out:
        status = subprocess.run([str(mint), "run", *run_args], cwd=clone, stdout=out,
                                stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    metrics = next(iter(sorted(runs.glob("*/metrics.json"))), None)
    return {"seconds": seconds, "status": status, "log": str(log), "busy_before": busy,
            "metrics": json.loads(metrics.read_text()) if metrics else {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="commit (or ref) to compare against, e.g. e0cd770")
    parser.add_argument("--candidate", default="HEAD", help="commit (or ref) measured (default HEAD)")
    parser.add_argument("--pairs", type=int, default=2, help="back-to-back pairs; the order alternates (default 2)")
    parser.add_argument("--first", choices=("candidate", "baseline"), default="candidate",
                        help="which version runs first in the first pair (then the order alternates)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the clones live (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args, run_args = parser.parse_args(argv[:split]), argv[split + 1:]  # after --: mint run's own
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="mint-b2b-"))
    work.mkdir(parents=True, exist_ok=True)
    versions = {"baseline": prepare(args.baseline, work, "baseline"),
                "candidate": prepare(args.candidate, work, "candidate")}
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "candidate": []}
    for pair in range(args.pairs):
        order = (args.first, "baseline" if args.first == "candidate" else "candidate")
        order = order if pair % 2 == 0 else order[::-1]
        for who in order:
            clone, mint, _ = versions[who]
            result = run_once(clone, mint, run_args, work / f"{who}-{pair}.log")
            if result["status"] != 0:
                sys.exit(f"{who} run of pair {pair} failed (exit {result['status']}): see {result['log']}")
            runs[who].append({**result, "pair": pair, "first": who == order[0]})
            print(f"pair {pair} {who}: {result['seconds']:.1f} s", file=sys.stderr, flush=True)
    summary = ratio_summary([r["seconds"] for r in runs["baseline"]], [r["seconds"] for r in runs["candidate"]])
    # Every pair's figures are compared (a version whose numbers moved between its runs is reported,
    # and a figure outside the other version's interval in any pair is marked), the last pair's shown.
    by_pair = [compare_figures(b["metrics"], c["metrics"]) for b, c in zip(runs["baseline"], runs["candidate"])]
    figures = by_pair[-1]
    outside = sorted({row["figure"] for rows in by_pair for row in rows if not row["within"]})
    differing = {who: differing_figures([r["metrics"] for r in runs[who]]) for who in runs}
    print(f"baseline {versions['baseline'][2][:10]}, candidate {versions['candidate'][2][:10]}, "
          f"mint run {' '.join(run_args) or '(no flags)'}")
    for pair in range(args.pairs):
        b, c = runs["baseline"][pair], runs["candidate"][pair]
        first = "baseline" if b["first"] else "candidate"
        print(f"  pair {pair} ({first} first): baseline {b['seconds']:.1f} s, candidate {c['seconds']:.1f} s, "
              f"ratio {summary['ratios'][pair]:.3f}")
    interval = summary["interval"]
    print(f"  pooled ratio {summary['pooled']:.3f}"
          + (f", 95% interval of the mean ratio [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""))
    print(f"  test figures of pair {args.pairs - 1} (OUTSIDE: not in the other version's interval):")
    for row in figures:
        print(f"  {row['figure']:<18} baseline {_shown(row['baseline'], row['baseline_ci']):<24} candidate "
              f"{_shown(row['candidate'], row['candidate_ci']):<24}{'' if row['within'] else '  OUTSIDE'}")
    for who in runs:
        print(f"  {who}: " + (f"figures differ between its {args.pairs} runs: {', '.join(differing[who])}"
                              if differing[who] else f"the same figures in all {args.pairs} runs"))
    print("  outside the other version's interval in some pair: " + (", ".join(outside) or "none"))
    if args.json:
        print(json.dumps({"baseline": versions["baseline"][2], "candidate": versions["candidate"][2],
                          "run_args": run_args, "work_dir": str(work), **summary,
                          "seconds": {k: [r["seconds"] for r in v] for k, v in runs.items()},
                          "first": {k: [r["first"] for r in v] for k, v in runs.items()},
                          "figures": figures, "figures_by_pair": by_pair, "outside_in_any_pair": outside,
                          "differing_between_runs": differing}))


if __name__ == "__main__":
    main()

"""Benchmark: every customer feature for one cutoff on ~10M cleaned order lines, local engine
(``crmkit.pipelines.features.customer_table`` on pandas) against the Spark engine
(``crmkit.spark.customer_table``) in local mode, ``local[2]``, and a projection of the Spark
path to 1B lines on N cores from what is measured here.

Both engines read the same cached Parquet file of cleaned simulated lines (``_data.py``, the
lines of ``bench_rfm.py``) and write the customer table as Parquet. Each runs in a fresh
process (``_harness.measure``):

- local: read, ``customer_table``, ``to_parquet``, timed apart; peak RSS of the process;
- Spark: session start, then ``customer_table(read_lines(...))`` (the validation pass, the
  table before the scores computed and persisted, the quantile ranks) and
  ``write_customers(...)`` (scores, segment, columns, sort, write), timed apart and together;
  peak RSS of the Python driver (VmHWM), of the driver JVM (its VmHWM, read before the
  session stops) and of the whole process tree (psutil, sampled every 50 ms). Every stage's
  metrics (tasks, task time, wall time, longest task, shuffle bytes) come from Spark's status
  store (``AppStatusStore.stageList`` / ``taskSummary``, filled with the web UI off) and are
  printed, with the time during which no stage ran (driver: planning, range-partition
  sampling, collecting the rows per partition).

Projection (printed with its assumptions): the work of every multi-task stage is spread over
N cores at the per-core rate measured here; single-task stages (if any) stay serial and grow
with the data; the time with no stage running stays as measured; the shuffle crosses the
network at an assumed bandwidth per core.

    python benchmarks/bench_spark.py [--lines 10000000] [--partitions 8] [--driver-memory 4g]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import simulated_lines_path  # noqa: E402
from _harness import machine, measure  # noqa: E402

AS_OF = "2023-06-30"
MASTER_CORES = 2
TARGET_LINES = 1_000_000_000
PROJECT_CORES = (8, 32, 128)
#: Assumed network bandwidth per executor core for the shuffle: a 10 Gbit/s node link
#: (~1,200 MB/s) shared by 8 cores.
NET_MB_S_PER_CORE = 150.0
#: A single-task stage moving less than this (input + shuffle read + shuffle write bytes)
#: merges partial results or reads file footers: its time does not grow with the lines.
SMALL_IO = 2**20


def _vmhwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def run_local(path: str, out: str) -> dict:
    import pandas as pd

    from crmkit.pipelines.features import customer_table

    t0 = time.perf_counter()
    lines = pd.read_parquet(path)
    t1 = time.perf_counter()
    table = customer_table(lines, AS_OF)
    t2 = time.perf_counter()
    table.to_parquet(out)
    t3 = time.perf_counter()
    return {
        "read": t1 - t0,
        "compute": t2 - t1,
        "write": t3 - t2,
        "lines": len(lines),
        "customers": len(table),
    }


def _stages(spark, phase: dict[int, str]) -> list[dict]:  # noqa: ANN001
    """Metrics of the completed stages from Spark's status store (py4j): task time, wall
    time (submission to completion), the longest task, shuffle and input bytes. ``phase``
    maps stage ids already seen to a phase name; new stages get the name of the phase that
    just ended (the caller sets it)."""
    sc = spark.sparkContext
    gw = sc._gateway
    store = sc._jsc.sc().statusStore()
    seq = store.stageList(
        None, False, False, gw.new_array(gw.jvm.double, 0), gw.jvm.java.util.ArrayList()
    )
    top = gw.new_array(gw.jvm.double, 1)
    top[0] = 1.0
    out = []
    for i in range(seq.size()):
        s = seq.apply(i)
        if str(s.status()) != "COMPLETE":
            continue
        started, ended = s.submissionTime(), s.completionTime()
        wall = (
            (ended.get().getTime() - started.get().getTime()) / 1000.0
            if started.isDefined() and ended.isDefined()
            else float("nan")
        )
        summary = store.taskSummary(s.stageId(), s.attemptId(), top)
        longest = summary.get().executorRunTime().apply(0) / 1000.0 if summary.isDefined() else 0
        out.append(
            {
                "id": s.stageId(),
                "phase": phase.get(s.stageId(), ""),
                "start": started.get().getTime() / 1000.0 if started.isDefined() else 0.0,
                "end": ended.get().getTime() / 1000.0 if ended.isDefined() else 0.0,
                "tasks": s.numTasks(),
                "wall_s": wall,
                "longest_s": longest,
                "run_s": s.executorRunTime() / 1000.0,
                "shuffle_write": s.shuffleWriteBytes(),
                "shuffle_read": s.shuffleReadBytes(),
                "input": s.inputBytes(),
                "spilled": s.diskBytesSpilled(),
                "name": str(s.description().get())
                if s.description().isDefined()
                else str(s.name()),
            }
        )
    return out


def run_spark(path: str, out: str, partitions: int, driver_memory: str) -> dict:
    import psutil

    # local mode: the executors are threads of the driver JVM, so its heap is theirs
    os.environ["PYSPARK_SUBMIT_ARGS"] = f"--driver-memory {driver_memory} pyspark-shell"

    from crmkit.spark import customer_table, read_lines, spark_session, write_customers

    t0 = time.perf_counter()
    spark = spark_session(f"local[{MASTER_CORES}]", shuffle_partitions=partitions)
    t1 = time.perf_counter()
    # customer_table runs the validation pass, computes and persists the table before the
    # scores and ranks the customers (eager); write_customers runs the rest and writes
    table = customer_table(read_lines(spark, path), AS_OF)
    t_table = time.perf_counter()
    phase = {s["id"]: "customer_table" for s in _stages(spark, {})}
    spark.sparkContext.setJobDescription("write_customers: scores, segment, columns, write")
    write_customers(table, out)
    t2 = time.perf_counter()
    phase.update({s["id"]: "write_customers" for s in _stages(spark, phase) if not s["phase"]})
    stages = _stages(spark, phase)
    jvm = [p for p in psutil.Process().children(recursive=True) if p.name() == "java"]
    jvm_peak = max((_vmhwm_mb(p.pid) for p in jvm), default=float("nan"))
    spark.stop()
    import pyarrow.dataset as ds

    return {
        "start": t1 - t0,
        "job": t2 - t1,
        "table": t_table - t1,
        "write": t2 - t_table,
        "stages": stages,
        "jvm_peak_mb": jvm_peak,
        "customers": ds.dataset(out, format="parquet").count_rows(),
    }


def _line_bytes(path: str) -> dict:
    """Data-side sizes for the shuffle estimate: lines, distinct customer-orders and
    customer-days, and the bytes of one line as a Spark UnsafeRow of the shuffled columns."""
    import pandas as pd

    lines = pd.read_parquet(path)
    day = lines["order_ts"].dt.floor("D")
    n_cd = len(pd.DataFrame({"c": lines["customer_id"], "d": day}).drop_duplicates())
    n_co = len(lines[["customer_id", "order_id"]].drop_duplicates())
    # UnsafeRow: 8-byte null bitset per 64 fields + 8 bytes per field + strings rounded up to 8.
    fixed = 8 + 8 * (len(lines.columns) + 1)  # + the line-order column read_lines adds
    var = 0.0
    for c in lines.columns:
        if lines[c].dtype == object or str(lines[c].dtype) in ("string", "str", "category"):
            var += float(((lines[c].astype(str).str.len() + 7) // 8 * 8).mean())
    return {
        "lines": len(lines),
        "customer_days": n_cd,
        "customer_orders": n_co,
        "row_bytes": fixed + var,
    }


def _fmt_s(s: float) -> str:
    return f"{s:,.0f} s ({s / 60:.1f} min)" if s >= 60 else f"{s:.1f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=10_000_000)
    ap.add_argument(
        "--partitions", type=int, default=8, help="spark.sql.shuffle.partitions (default 8)"
    )
    ap.add_argument("--driver-memory", default="4g", help="driver JVM heap (default 4g)")
    args = ap.parse_args()
    path = str(simulated_lines_path(args.lines))
    tmp = Path(tempfile.mkdtemp(prefix="bench_spark_"))
    try:
        loc = measure("local", run_local, path, str(tmp / "local.parquet"))
        spk = measure(
            "spark",
            run_spark,
            path,
            str(tmp / "spark_customers"),
            args.partitions,
            args.driver_memory,
        )
        data = measure("data", _line_bytes, path).result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lr, sr = loc.result, spk.result
    assert lr["customers"] == sr["customers"], "engines disagree on the number of customers"
    n, n_cust = lr["lines"], lr["customers"]
    print(
        f"bench_spark: {n:,} cleaned order lines, {n_cust:,} customers, as of {AS_OF}; "
        f"{machine()}; Spark local[{MASTER_CORES}], {args.partitions} shuffle partitions, "
        f"driver memory {args.driver_memory}"
    )
    local_total = lr["read"] + lr["compute"] + lr["write"]
    print(
        f"local  customer_table: read {lr['read']:.1f} s + compute {lr['compute']:.1f} s + "
        f"write {lr['write']:.1f} s = {local_total:.1f} s; peak RSS {loc.peak_rss_mb:,.0f} MB"
    )
    print(
        f"spark  session start {sr['start']:.1f} s; read + customer_table + write "
        f"{sr['job']:.1f} s; peak RSS: Python driver {spk.peak_rss_mb:,.0f} MB, driver JVM "
        f"{sr['jvm_peak_mb']:,.0f} MB (sum {spk.peak_rss_mb + sr['jvm_peak_mb']:,.0f} MB), "
        f"process tree sampled {spk.tree_peak_mb:,.0f} MB"
    )
    local_tp = n / local_total  # the pandas engine runs on one core
    spark_tp = n / sr["job"] / MASTER_CORES
    print(
        f"throughput per core: local {local_tp:,.0f} lines/s (1 core, read + compute + write); "
        f"spark {spark_tp:,.0f} lines/s/core ({MASTER_CORES} cores, job wall time)"
    )
    st = sr["stages"]
    sw = sum(s["shuffle_write"] for s in st)
    sread = sum(s["shuffle_read"] for s in st)
    task_s = sum(s["run_s"] for s in st)
    single = [s for s in st if s["tasks"] == 1]
    # a single-task stage that moves next to nothing (the final merge of partial aggregates,
    # Parquet footers) costs the same at any size: kept fixed, not scaled with the lines; one
    # that scans the input file (one split here: a small file) gets more splits as the data
    # grow: parallel; one that reads shuffled data in one task is serial
    fixed = [s for s in single if s["shuffle_read"] + s["input"] + s["shuffle_write"] < SMALL_IO]
    scans = [s for s in single if s not in fixed and s["shuffle_read"] == 0]
    serial = [s for s in single if s not in fixed and s not in scans]
    serial_s = sum(s["run_s"] for s in serial)
    fixed_s = sum(s["run_s"] for s in fixed)
    spilled = sum(s["spilled"] for s in st)
    driver_s = sr["job"] - _covered(st)  # no stage running: planning, sampling, collecting
    est = data["row_bytes"] * n * 3
    print(
        f"spark  customer_table (validation, table before the scores persisted, ranks) "
        f"{sr['table']:.1f} s + write_customers (scores, segment, columns, sort, write) "
        f"{sr['write']:.1f} s"
    )
    print(
        f"spark stages: {len(st)} completed, task time {task_s:.1f} core-s; single-task "
        f"stages: {len(serial)} reading shuffled data ({serial_s:.1f} s), {len(scans)} "
        f"scanning the input file ({sum(s['run_s'] for s in scans):.1f} s, parallel with more "
        f"splits), {len(fixed)} moving < {SMALL_IO / 2**20:.0f} MB ({fixed_s:.1f} s); no "
        f"stage running {driver_s:.1f} s of the {sr['job']:.1f} s job; shuffle write "
        f"{sw / 2**20:,.0f} MB, shuffle read {sread / 2**20:,.0f} MB ({sw / n:.0f} B/line), "
        f"spilled to disk {spilled / 2**20:,.0f} MB"
    )
    print(
        f"  {'phase':<15} {'tasks':>5} {'task s':>7} {'wall s':>7} {'longest':>7} "
        f"{'mean':>6} {'input':>7} {'sh.write':>8} {'sh.read':>8}  stage"
    )
    for s in st:
        mean = s["run_s"] / max(s["tasks"], 1)
        print(
            f"  {s['phase']:<15} {s['tasks']:>5} {s['run_s']:>7.1f} {s['wall_s']:>7.1f} "
            f"{s['longest_s']:>7.2f} {mean:>6.2f} {s['input'] / 2**20:>5.0f}MB "
            f"{s['shuffle_write'] / 2**20:>6.0f}MB "
            f"{s['shuffle_read'] / 2**20:>6.0f}MB  {s['name']}"
        )
    print(
        f"shuffle upper bound from the data: 3 line-level exchanges x {n:,} lines x "
        f"{data['row_bytes']:.0f} B (UnsafeRow of all the columns) = "
        f"{est / 2**20:,.0f} MB uncompressed (Spark shuffles only the needed columns, "
        f"compressed); {data['customer_orders']:,} customer-orders, "
        f"{data['customer_days']:,} customer-days, {n_cust:,} customers in the later stages"
    )

    # Projection to TARGET_LINES on N cores, same lines per customer as measured here.
    scale = TARGET_LINES / n
    multi_s = task_s - serial_s - fixed_s
    par_s = multi_s * scale  # core-seconds of the multi-task stages at 1B lines
    ser_s = serial_s * scale  # single-task stages reading shuffled data grow with it
    shuffle_1b = sw * scale
    const_s = driver_s + fixed_s  # not scaled
    model_here = multi_s / MASTER_CORES + serial_s + const_s
    print(
        f"\nprojection to {TARGET_LINES:,} lines ({n_cust * scale:,.0f} customers at "
        f"{n / n_cust:.1f} lines each, as here). Assumptions: every stage's work grows "
        f"linearly with lines; the multi-task stages' task time ({multi_s:.1f} "
        f"core-s here) spreads evenly over N cores at this machine's per-core speed (as many "
        f"shuffle partitions as needed); single-task stages reading shuffled data "
        f"({serial_s:.1f} s here) stay on one core and grow with the data; the time with no "
        f"stage running ({driver_s:.1f} s here: planning, range-partition sampling, "
        f"collecting counts) and the single-task stages moving < {SMALL_IO / 2**20:.0f} MB "
        f"({fixed_s:.1f} s) stay as measured; "
        f"the shuffle, {shuffle_1b / 2**30:,.0f} GiB (measured bytes/line x lines), crosses "
        f"the network at {NET_MB_S_PER_CORE:.0f} MB/s per core, not overlapped with compute; "
        f"no stragglers, skew, executor start-up or spill beyond what was measured here. "
        f"(The same model on this run: {model_here:.1f} s on {MASTER_CORES} cores against "
        f"{sr['job']:.1f} s measured.)"
    )
    print(
        f"{'cores':>6}  {'parallel':>16}  {'serial':>10}  {'fixed':>9}  {'shuffle net':>14}"
        f"  {'total':>16}"
    )
    for cores in PROJECT_CORES:
        p = par_s / cores
        net = shuffle_1b / 2**20 / (NET_MB_S_PER_CORE * cores)
        tot = p + ser_s + const_s + net
        print(
            f"{cores:>6}  {_fmt_s(p):>16}  {_fmt_s(ser_s):>10}  {_fmt_s(const_s):>9}  "
            f"{_fmt_s(net):>14}  {_fmt_s(tot):>16}"
        )
    print(
        f"(simple rate check: {TARGET_LINES:,} lines / ({spark_tp:,.0f} lines/s/core x N) = "
        + ", ".join(f"{_fmt_s(TARGET_LINES / spark_tp / c)} on {c}" for c in PROJECT_CORES)
        + ")"
    )


def _covered(stages: list[dict]) -> float:
    """Seconds during which at least one of the stages was running."""
    spans = sorted((s["start"], s["end"]) for s in stages if s["end"] >= s["start"] > 0)
    total, until = 0.0, float("-inf")
    for a, b in spans:
        if b > until:
            total += b - max(a, until)
            until = b
    return total


if __name__ == "__main__":
    main()

"""Two settings of the engine compared on whole AlexNet training steps, interleaved.

Each setting is a set of environment variables (OPENBLAS_THREAD_TIMEOUT,
TINYNET_CPU_LOOPS, ...).  For every batch size, ``pairs`` times: one fresh
process with the first setting, then one with the second (benchmarks/alexnet.py's
worker: 1000 classes, float32, random data, median of ``repeat`` steps, then
three profiled steps, each kind's median).  Pair by pair, the shared machine's drift
hits both alike, so the ratio inside a pair is the number to read, never one setting's time alone.
"""

import statistics

from benchmarks.alexnet import profile_groups, run_worker, summarise

# the passes between the GEMMs: every group of profile_groups but the GEMMs themselves and the
# rest (glue, allocation): im2col, col2im, the output pass, Winograd's transforms, LRN, ...
BETWEEN_GEMMS = tuple(name for name in profile_groups({}) if name not in ("GEMM", "other (glue, allocation)"))


def compare(settings, batches, pairs, repeat):
    """settings: {name: env} with two entries, the baseline first.  Returns one row per
    (batch, pair): {name: {median_s, gemm_ms, between_gemms_ms, groups_ms}}, and the ratio
    second / first of the median step times."""
    (base, _), (other, _) = settings.items()
    rows = []
    for batch in batches:
        for pair in range(pairs):
            row = dict(batch=batch, pair=pair)
            for name, env in settings.items():
                r = summarise(run_worker("tinynet", batch, "train", repeat, "cpu", False, env=env,
                                           extras=("profile",)), batch)
                if "error" in r:
                    raise SystemExit(f"batch {batch}, {name}: the worker failed: {r['error']}")
                groups = profile_groups(r.get("profile_ms", {}), r.get("fused_products_share"))
                row[name] = dict(median_s=r["median"], gemm_ms=groups["GEMM"], groups_ms=groups,
                                 between_gemms_ms=sum(groups[g] for g in BETWEEN_GEMMS))
            row["ratio"] = row[other]["median_s"] / row[base]["median_s"]
            rows.append(row)
            print(f"batch {batch} pair {pair}: {base} {row[base]['median_s'] * 1e3:.0f} ms, "
                  f"{other} {row[other]['median_s'] * 1e3:.0f} ms per step, ratio {row['ratio']:.2f}; "
                  f"between GEMMs {row[base]['between_gemms_ms']:.0f} -> {row[other]['between_gemms_ms']:.0f} ms",
                  flush=True)
    return rows


def table(rows, names, batches):
    """Markdown lines: one row per pair, then each batch's median ratio and range."""
    base, other = names
    lines = [f"| batch | pair | {base} ms/step | {other} ms/step | {other} / {base} | between GEMMs ms, "
             f"{base} → {other} | GEMM ms, {base} → {other} |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['pair']} | {r[base]['median_s'] * 1e3:.0f} | "
                     f"{r[other]['median_s'] * 1e3:.0f} | {r['ratio']:.2f} | "
                     f"{r[base]['between_gemms_ms']:.0f} → {r[other]['between_gemms_ms']:.0f} | "
                     f"{r[base]['gemm_ms']:.0f} → {r[other]['gemm_ms']:.0f} |")
    lines.append("")
    for batch in batches:
        ratios = [r["ratio"] for r in rows if r["batch"] == batch]
        lines.append(f"Batch {batch}: median ratio {statistics.median(ratios):.2f} "
                     f"(range {min(ratios):.2f}-{max(ratios):.2f}, {len(ratios)} pairs).")
    return lines

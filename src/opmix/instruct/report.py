"""The table ``opmix instruct`` prints: each task's accuracy after every stage, and the compute by kind."""

from __future__ import annotations


def format_instruct(summary: dict) -> str:
    tasks = summary["domains"]
    lines = [f"method: {summary['method']}", "accuracy of each task after every stage (- : not seen yet)"]
    lines.append("  " + f"{'stage':<6}" + "".join(f"{t[:10]:>11}" for t in tasks) + f"{'average':>10}"
                 + f"{'new share':>10}{'FLOPs':>11}")
    for s in summary["stages"]:
        accuracy = s.get("accuracy", {})
        cells = "".join(f"{accuracy[t]:11.3f}" if t in accuracy else f"{'-':>11}" for t in tasks)
        share = s["mixture"].get(s["domain"], 0.0)
        lines.append(f"  {s['stage']:<6}{cells}{s.get('mean_accuracy', float('nan')):10.3f}{share:10.3f}"
                     f"{s['flops']['total']:11.3e}")
    first, last = summary["stages"][0], summary["stages"][-1]
    t1 = tasks[0]
    if t1 in first.get("accuracy", {}) and t1 in last.get("accuracy", {}):
        lines.append(f"forgetting of {t1}: {first['accuracy'][t1] - last['accuracy'][t1]:+.3f} (accuracy after stage "
                     "1 minus at the end)")
    kinds = summary.get("flops_by_kind") or {}
    lines.append("compute (FLOPs): " + ", ".join(f"{g} {v:.3e}" for g, v in summary["flops"].items() if v))
    if kinds:
        lines.append("  by kind: " + ", ".join(f"{k} {v:.3e}" for k, v in kinds.items() if v))
    lines += [f"warning: {w}" for w in summary["warnings"]]
    lines.append(f"elapsed: {summary['elapsed_s']:.1f} s")
    return "\n".join(lines)

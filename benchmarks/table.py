"""Print a results JSON (from ``fastgen bench ... --json``) as the markdown table in README.md.

    python3 benchmarks/table.py benchmarks/results/h100/conv.json
"""
import json
import sys


def main(path):
    data = json.load(open(path))
    env = data["env"]
    print(f"{env.get('gpu', env['device'])}, torch {env['torch']}, triton {env['triton']}, "
          f"commit {str(env.get('commit'))[:10]}\n")
    print("| case | fastgen ms | fastgen ms (channels-last in) | best alternative | its ms | speedup | speedup (cl) | % of floor (cl) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in data["results"]:
        ms = r["ms"]
        best = r["best_alternative"]
        cl = ms.get("fastgen_channels_last")
        floor = f"{100 * r['floor_ms_h100'] / cl:.0f}%" if cl and r["floor_ms_h100"] and "float16_" in r["case"] else "n/a"
        print(f"| {r['case']} | {ms['fastgen']:.3f} | {cl:.3f} | {best} | {ms[best]:.3f} | "
              f"{r['speedup_vs_best']:.2f}x | {r['speedup_channels_last_vs_best']:.2f}x | {floor} |")


if __name__ == "__main__":
    main(sys.argv[1])

"""Whole-model conversion: time, peak RSS and perplexity against llama.cpp, same run.

On the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) exported to a bf16 HF checkpoint:

- ``convert HF -> F16`` (ours) against llama.cpp's ``convert_hf_to_gguf.py`` (from the
  llama-cpp-python sdist; needs torch, reported as unavailable otherwise);
- ``F16 -> preset`` with our requantizer against llama.cpp's ``llama_model_quantize``
  (the C++ llama-quantize through llama-cpp-python) on the same F16 file;
- llama.cpp's perplexity of both preset files on WikiText-2 (n_ctx 512, the second half of each
  chunk scored, as llama-perplexity does), and whether the tensor-type lists agree.

Each timed step runs in its own process, which reports its own peak RSS.

    python benches/bench_convert.py --out benches/results [--presets Q4_K_M,Q6_K] [--chunks 24]
      [--llama-cpp-src DIR]   # the sdist's vendor/llama.cpp, for convert_hf_to_gguf.py

Writes ``bench_convert.json`` and ``bench_convert.md`` into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
kind, args = sys.argv[1], sys.argv[2:]
if kind == "ours-convert":
    from ferroquant.convert import convert
    convert(args[0], args[1], args[2], progress=False)
elif kind == "ours-quantize":
    from ferroquant.convert import requantize
    requantize(args[0], args[1], args[2], progress=False)
elif kind == "llama-quantize":
    import ctypes, llama_cpp
    from ferroquant import presets
    cb = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)(lambda *a: None)
    llama_cpp.llama_log_set(cb, None)
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = presets.file_type(args[2]).ftype
    p.nthread = int(args[3])
    rc = llama_cpp.llama_model_quantize(args[0].encode(), args[1].encode(), ctypes.byref(p))
    assert rc == 0, rc
elif kind == "llama-convert":
    import os, runpy
    sys.path.insert(0, os.path.dirname(os.path.abspath(args[0])))
    sys.argv = [args[0], args[1], "--outfile", args[2], "--outtype", args[3].lower()]
    runpy.run_path(args[0], run_name="__main__")
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across execve, so it would report the parent's
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
print("RESULT " + json.dumps({"seconds": time.perf_counter() - t0, "peak_rss": peak}))
"""


def run_child(kind: str, *args: str) -> Optional[dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, kind, *args], capture_output=True, text=True, cwd=ROOT
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    print(f"  {kind} failed: {' | '.join(tail)}", file=sys.stderr)
    return None


def tensor_types(path: Path) -> dict[str, str]:
    from ferroquant.gguf_io import open_gguf, tensor_infos

    return {i.name: i.qtype for i in tensor_infos(open_gguf(path))}


def same_file_content(a: Path, b: Path) -> bool:
    """Same tensors (names, types, bytes) and metadata, ignoring general.name."""
    import numpy as np

    from ferroquant.gguf_header import read_header

    ha, hb = read_header(a), read_header(b)
    ta, tb = {t.name: t for t in ha.tensors}, {t.name: t for t in hb.tensors}
    if ta.keys() != tb.keys():
        return False
    for name, t in ta.items():
        u = tb[name]
        if t.qtype != u.qtype or not np.array_equal(ha.tensor_bytes(t), hb.tensor_bytes(u)):
            return False
    skip = {"general.name"}
    return {k: v for k, v in ha.kv.items() if k not in skip} == {
        k: v for k, v in hb.kv.items() if k not in skip
    }


def perplexity(path: Path, tokens: list[int], n_ctx: int, chunks: int, threads: int) -> float:
    """llama-perplexity's measure: per chunk of n_ctx tokens, NLL of the second half."""
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        logits_all=True,
        verbose=False,
        n_threads=threads,
    )
    nll, count = 0.0, 0
    for c in range(chunks):
        chunk = tokens[c * n_ctx : (c + 1) * n_ctx]
        if len(chunk) < n_ctx:
            break
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[:n_ctx], dtype=np.float64)
        first = n_ctx // 2
        lg = logits[first - 1 : n_ctx - 1]
        lg = lg - lg.max(-1, keepdims=True)
        logp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
        target = np.asarray(chunk[first:])
        nll -= float(logp[np.arange(len(target)), target].sum())
        count += len(target)
    del llm
    return float(np.exp(nll / count))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benches/results")
    ap.add_argument("--model", help="source GGUF (default: the fixture model)")
    ap.add_argument("--presets", default="Q4_K_M")
    ap.add_argument("--chunks", type=int, default=24)
    ap.add_argument("--n-ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--llama-cpp-src", help="vendor/llama.cpp of the llama-cpp-python sdist")
    ap.add_argument("--work", help="scratch directory (default: a temporary one)")
    args = ap.parse_args()

    from ferroquant.hf_export import export_hf

    model = (
        Path(args.model)
        if args.model
        else Path(
            subprocess.check_output(
                [sys.executable, str(ROOT / "fixtures/fetch.py"), "--print-model"], text=True
            ).strip()
        )
    )
    work_ctx = tempfile.TemporaryDirectory(prefix="fq-bench-") if not args.work else None
    work = Path(args.work) if args.work else Path(work_ctx.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    hf = work / "hf"
    if not (hf / "model.safetensors").is_file():
        print(f"exporting {model.name} -> {hf} (bfloat16)")
        export_hf(model, hf, "bfloat16", progress=False)

    results: dict[str, Any] = {
        "model": model.name,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "n_ctx": args.n_ctx,
        "chunks": args.chunks,
    }
    f16 = work / "ours-f16.gguf"
    print("convert HF -> F16 (ours)")
    results["convert_f16_ours"] = run_child("ours-convert", str(hf), str(f16), "F16")
    results["convert_f16_llama_cpp"] = None
    src = Path(args.llama_cpp_src) if args.llama_cpp_src else None
    if src and (src / "convert_hf_to_gguf.py").is_file():
        print("convert HF -> F16 (llama.cpp convert_hf_to_gguf.py)")
        results["convert_f16_llama_cpp"] = run_child(
            "llama-convert",
            str(src / "convert_hf_to_gguf.py"),
            str(hf),
            str(work / "lc-f16.gguf"),
            "F16",
        )
        if results["convert_f16_llama_cpp"]:
            results["f16_identical_to_llama_cpp"] = same_file_content(f16, work / "lc-f16.gguf")
            print(f"  identical tensors and metadata: {results['f16_identical_to_llama_cpp']}")

    with open(ROOT / "fixtures/wikitext-2-raw-test.txt", encoding="utf-8") as f:
        text = f.read()
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(f16), vocab_only=True, verbose=False)
    tokens = vocab.tokenize(text.encode("utf-8"), add_bos=False)[: args.n_ctx * args.chunks]
    del vocab
    results["ppl_f16"] = perplexity(f16, tokens, args.n_ctx, args.chunks, args.threads)
    print(f"  F16 perplexity {results['ppl_f16']:.4f}")

    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    rows = []
    for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
        ours, theirs = work / f"ours-{preset}.gguf", work / f"lc-{preset}.gguf"
        print(f"F16 -> {preset}")
        r_ours = run_child("ours-quantize", str(f16), str(ours), preset)
        r_lc = run_child("llama-quantize", str(f16), str(theirs), preset, str(args.threads))
        row: dict[str, Any] = {"preset": preset, "ours": r_ours, "llama_cpp": r_lc}
        if r_ours and r_lc:
            row["types_equal"] = tensor_types(ours) == tensor_types(theirs)
            row["size_ours"], row["size_llama_cpp"] = ours.stat().st_size, theirs.stat().st_size
            row["ppl_ours"] = perplexity(ours, tokens, args.n_ctx, args.chunks, args.threads)
            row["ppl_llama_cpp"] = perplexity(theirs, tokens, args.n_ctx, args.chunks, args.threads)
            row["ppl_rel_diff"] = row["ppl_ours"] / row["ppl_llama_cpp"] - 1
            row["time_ratio"] = r_ours["seconds"] / r_lc["seconds"]
            row["rss_ratio"] = r_ours["peak_rss"] / r_lc["peak_rss"]
            print(
                f"  ppl ours {row['ppl_ours']:.4f} llama.cpp {row['ppl_llama_cpp']:.4f} "
                f"({row['ppl_rel_diff'] * 100:+.2f}%), types equal: {row['types_equal']}"
            )
        rows.append(row)
        for p in (ours, theirs):
            p.unlink(missing_ok=True)
    results["presets"] = rows

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_convert.json").write_text(json.dumps(results, indent=2) + "\n")
    md = [
        f"# bench_convert: {model.name}",
        "",
        f"{results['cpus']} CPUs, {args.threads} threads; perplexity: WikiText-2 test, "
        f"{args.chunks} chunks of {args.n_ctx} tokens (second half scored), llama.cpp.",
        "",
    ]

    def fmt(r: Optional[dict[str, Any]]) -> str:
        return f"{r['seconds']:.1f} s, {r['peak_rss'] / 2**20:.0f} MiB" if r else "unavailable"

    md += ["| step | ferroquant | llama.cpp | time ratio | RSS ratio |", "|---|---|---|---|---|"]
    co, cl = results["convert_f16_ours"], results["convert_f16_llama_cpp"]
    ratio = (
        (f"{co['seconds'] / cl['seconds']:.2f}", f"{co['peak_rss'] / cl['peak_rss']:.2f}")
        if co and cl
        else ("-", "-")
    )
    md.append(f"| HF bf16 -> F16 | {fmt(co)} | {fmt(cl)} | {ratio[0]} | {ratio[1]} |")
    for r in rows:
        tr = f"{r['time_ratio']:.2f}" if "time_ratio" in r else "-"
        rr = f"{r['rss_ratio']:.2f}" if "rss_ratio" in r else "-"
        md.append(
            f"| F16 -> {r['preset']} | {fmt(r['ours'])} | {fmt(r['llama_cpp'])} | {tr} | {rr} |"
        )
    md += [
        "",
        "F16 file identical to convert_hf_to_gguf.py's (tensors + metadata): "
        + str(results.get("f16_identical_to_llama_cpp", "not compared")),
        "",
        f"F16 perplexity: {results['ppl_f16']:.4f}",
        "",
        "| preset | ppl ferroquant | ppl llama.cpp | diff | same tensor types | size ours / llama.cpp |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "ppl_ours" in r:
            md.append(
                f"| {r['preset']} | {r['ppl_ours']:.4f} | {r['ppl_llama_cpp']:.4f} | "
                f"{r['ppl_rel_diff'] * 100:+.2f}% | {r['types_equal']} | "
                f"{r['size_ours'] / 2**20:.1f} / {r['size_llama_cpp'] / 2**20:.1f} MiB |"
            )
    (out / "bench_convert.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    if work_ctx is not None:
        work_ctx.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

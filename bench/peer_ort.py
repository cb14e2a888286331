"""peer_ort.py - ONNX Runtime's side of bench/bench_vit.c's ViT-B/16
inference: torchvision's vit_b_16 (weights=None, seed 1, eval), exported
once by torch.onnx (its default exporter) and run by onnxruntime from PyPI
on the CPU in fp32, with as many intra-op threads as qkv has (the caller
is one of them), one inter-op thread, sequential execution and every graph
optimisation (ORT_ENABLE_ALL). Two steps:

    .venv/bin/python bench/peer_ort.py --export DIR
        writes DIR/vitb16_b1.onnx and DIR/vitb16_b8.onnx (static batch 1
        and 8, weights in .data files beside them) and prints the export
        time of each, apart from the timings;
    .venv/bin/python bench/peer_ort.py vitb16_b1_full|vitb16_b8_full --model-dir DIR [--threads N]
        one case per process, method and keys as bench/peer_util.py: the
        base after the imports and one tiny session run, the session's
        build time apart (graph optimisation, weights loaded), warm-up
        runs, then the median of the timed runs and their peak RSS.

Random images, as on the qkv side."""
import argparse
import contextlib
import os
import sys
import time

from peer_util import hwm_mib, peak_rss_mib, reset_hwm, rss_now_mib

CASES = {"vitb16_b1_full": 1, "vitb16_b8_full": 8, "vitb16_b1": 1, "vitb16_b8": 8}


def export(out_dir):
    import torch
    import torchvision

    os.makedirs(out_dir, exist_ok=True)
    for B in (1, 8):
        torch.manual_seed(1)
        m = torchvision.models.vit_b_16(weights=None).eval()
        x = torch.rand(B, 3, 224, 224)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # its progress lines are not results
            torch.onnx.export(m, (x,), os.path.join(out_dir, f"vitb16_b{B}.onnx"),
                              input_names=["images"], output_names=["logits"])
        print(f"vitb16_b{B}_full_export_s {time.perf_counter() - t0:.1f}", flush=True)


def session_options(ort, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


def tiny_run(ort, onnx, np, threads):
    """One (8, 8) product through a session of its own: the runtime's
    threads and allocator exist before the base is taken."""
    h = onnx.helper
    g = h.make_graph([h.make_node("MatMul", ["a", "a"], ["y"])], "tiny",
                     [h.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [8, 8])],
                     [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [8, 8])])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    s = ort.InferenceSession(model.SerializeToString(), session_options(ort, threads),
                             providers=["CPUExecutionProvider"])
    s.run(None, {"a": np.full((8, 8), 0.5, dtype=np.float32)})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("case", nargs="?", choices=sorted(CASES))
    ap.add_argument("--export", metavar="DIR")
    ap.add_argument("--model-dir", default="build/bench-results/onnx")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("QKV_THREADS", "2") or 2))
    args = ap.parse_args()
    if args.export:
        export(args.export)
        return
    if not args.case:
        ap.error("a case or --export DIR")
    import numpy as np
    import onnx
    import onnxruntime as ort

    case, B = args.case, CASES[args.case]
    print(f"impl onnxruntime {ort.__version__} (CPU, fp32)")
    print(f"threads {args.threads}")
    path = os.path.join(args.model_dir, f"vitb16_b{B}.onnx")
    if not os.path.exists(path):
        print(f"peer_ort: no {path} (run with --export first)", file=sys.stderr)
        print(f"{case}_ms n/a")
        return
    tiny_run(ort, onnx, np, args.threads)
    base = rss_now_mib()
    reset_hwm()
    t0 = time.perf_counter()
    sess = ort.InferenceSession(path, session_options(ort, args.threads),
                                providers=["CPUExecutionProvider"])
    session_s = time.perf_counter() - t0
    x = np.random.default_rng(1).random((B, 3, 224, 224), dtype=np.float32)
    warmup, reps = (2, 7) if B == 1 else (1, 3)
    for _ in range(warmup):
        sess.run(None, {"images": x})
    reset_hwm()
    ms, cpu = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        sess.run(None, {"images": x})
        ms.append(1e3 * (time.perf_counter() - t))
        cpu.append(1e3 * (time.process_time() - c))
    ms.sort()
    cpu.sort()
    print(f"{case}_ms {ms[len(ms) // 2]:.3f}")
    print(f"{case}_cpu_ms {cpu[len(cpu) // 2]:.3f}")
    print(f"{case}_peak_mib {hwm_mib():.1f}")
    print(f"{case}_rss_mib {peak_rss_mib():.1f}")
    print(f"{case}_base_mib {base:.1f}")
    print(f"{case}_session_s {session_s:.1f}")
    print(f"{case}_images {B}", flush=True)


if __name__ == "__main__":
    main()

"""Forward+backward time of HyperLSTM against torch.nn.LSTM of the same width, side by side.

    python benchmarks/hyperlstm_speed.py                 # input 64, hidden 512, hyper 64, n_z 4, batch 32, 100 steps
    python benchmarks/hyperlstm_speed.py --eager         # the readable reference loop instead of the fused one
    python benchmarks/hyperlstm_speed.py --device cuda   # on a GPU (wall time; torch.nn.LSTM is cuDNN's there)

Runs are interleaved (LSTM, HyperLSTM, LSTM, ...) and the best of ``--repeats`` is reported, so that
load from other processes affects both sides alike; ``--clock cpu`` (the default) counts this process's
CPU time, which waiting for a busy core does not inflate, ``--clock wall`` the elapsed time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hyperlab.models import HyperLSTM


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--hidden-size", type=int, default=512)
    p.add_argument("--hyper-size", type=int, default=64)
    p.add_argument("--n-z", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--layer-norm", action="store_true", help="LN HyperLSTM (eager path)")
    p.add_argument("--eager", action="store_true", help="time the eager reference loop")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="cpu time (CPU only) or wall time")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda implies --clock wall)")
    return p.parse_args(argv)


def _time_once(model: torch.nn.Module, x: torch.Tensor, clock, sync) -> float:
    sync()
    start = clock()
    output = model(x)[0]
    output.sum().backward()
    sync()
    return clock() - start


def main(argv=None) -> dict:
    """Print and return the best and median times (seconds) of both models and the ratio of the bests."""
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    lstm = torch.nn.LSTM(args.input_size, args.hidden_size).to(device)
    hyper = HyperLSTM(args.input_size, args.hidden_size, args.hyper_size, args.n_z, layer_norm=args.layer_norm,
                      impl="eager" if args.eager else "auto").to(device)
    x = torch.randn(args.steps, args.batch, args.input_size, device=device)
    if device.type == "cuda":
        args.clock = "wall"
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {"lstm": [], "hyperlstm": []}
    for _ in range(args.repeats + 1):  # the first round warms up
        times["lstm"].append(_time_once(lstm, x, clock, sync))
        times["hyperlstm"].append(_time_once(hyper, x, clock, sync))
    result = {name: {"best": min(t[1:]), "median": statistics.median(t[1:])} for name, t in times.items()}
    result["ratio"] = result["hyperlstm"]["best"] / result["lstm"]["best"]
    print(f"forward+backward, T={args.steps} B={args.batch} N_x={args.input_size} H={args.hidden_size} "
          f"Ĥ={args.hyper_size} N_z={args.n_z}, {args.device}, {args.threads} thread(s), {args.clock} time, "
          f"best of {args.repeats}"
          f"{', eager' if args.eager else ''}")
    for name in ("lstm", "hyperlstm"):
        print(f"  {name:10s} best {result[name]['best'] * 1e3:8.1f} ms   median {result[name]['median'] * 1e3:8.1f} ms")
    print(f"  ratio (best) {result['ratio']:.2f}x")
    return result


if __name__ == "__main__":
    main()

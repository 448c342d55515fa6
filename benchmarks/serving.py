"""The reward server under load and under faults, on loopback (issue 14, section 4).

    python benchmarks/serving.py [--clients 16] [--requests 8] [--repeats 3] [--steps 4] [--out serving.json]

A tiny pointwise reward model is exported (the shapes tiny Qwen2-VL; 64 px images), then served by
``python -m rewarddance serve`` in child process groups:

1. Throughput: ``--clients`` threads each send ``--requests`` one-image requests back to back, to a server with
   dynamic batching (``--max_batch_size 16 --batch_timeout 0.02``) and to one without (``--max_batch_size 1``),
   the two arms alternating ``--repeats`` times (the median run is reported). Reported: requests per second,
   latency p50 / p99, and the largest difference from in-process ``RewardModel.score`` on the same images.
2. An RL-shaped loop (``--steps``): each step "samples" a batch (a fixed random generator stands in for the
   diffusion sampler) and rewards it in-process (``RewardModel.score`` on the same 8-bit images, and the
   differentiable ``reward_model`` reward), with :class:`RemoteReward` blocking, and with ``submit`` overlapping
   the next step's sampling. Reported: identical rewards (largest difference) and seconds per step.
   With ``--rl-fit-steps N`` (from the repository root: it uses the bundled generator and reward model), also a
   real GRPO run (``configs/rl/shapes_grpo.yaml``, best-of-4 references) served and in-process: per-step
   ``train/reward`` of both, and the wall time of each fit.
3. Faults, counted: >= 10 kinds of malformed request (each answered 4xx, or a null reward with its reason per bad
   item) sent while good requests run, whose rewards must all still be right; a slow proxy that makes the first
   attempt of each request time out (the client retries); the server killed with SIGKILL mid-run and restarted
   (the run waits through the retries and goes on with the right rewards), and killed without a restart (the run
   stops with RemoteRewardError within its retry budget, no reward invented).

Every loop is bounded in count, and every wait in time.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
from PIL import Image

from rewarddance.errors import RewardDanceError
from rewarddance.models.pixels import to_pil_images
from rewarddance.serving.client import RemoteReward, RemoteRewardError
from rewarddance.serving.process import ServerProcess
from rewarddance.serving.protocol import encode_image

KEY = "benchmark-key"
PROMPTS = ["a red circle", "two blue squares", "a green triangle left of a red circle", "a white star"]
READY_TIMEOUT = 180.0


def export_model(folder: Path) -> Path:
    from rewarddance.tasks import GenerativeRewardTask

    task = GenerativeRewardTask(paradigm="pointwise")
    task.configure_model()
    return task.export_to(folder)


def sample_images(n: int, seed: int, size: int = 64) -> torch.Tensor:
    """Stand-in for a generator's samples: smooth random images in [0, 1] (deterministic per seed)."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 8, size // 8, generator=generator)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def post(url: str, path: str, body: bytes | dict, key: str | None = KEY, timeout: float = 120.0) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url + path, data, headers), timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- 1. throughput -----------------------------------------------------------------------------------------


def throughput(url: str, model, clients: int, requests: int) -> dict:
    images = to_pil_images(sample_images(clients * requests, seed=1))
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(images))]
    expected = model.score(prompts, images)
    # Serialised once, before timing: the clients' own work stays out of the measurement.
    bodies = [
        json.dumps({"items": [{"prompt": p, "image": encode_image(im)}]}).encode() for p, im in zip(prompts, images)
    ]
    latencies: list[float] = [0.0] * len(bodies)
    rewards: list[float | None] = [None] * len(bodies)

    def client(c: int) -> None:
        for r in range(requests):
            i = c * requests + r
            started = time.perf_counter()
            status, answer = post(url, "/score", bodies[i])
            latencies[i] = time.perf_counter() - started
            rewards[i] = answer["rewards"][0] if status == 200 else None

    post(url, "/score", bodies[0])  # warm-up: the first forward pays one-off costs
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - started
    missing = sum(r is None for r in rewards)
    diff = max((abs(r - float(e)) for r, e in zip(rewards, expected) if r is not None), default=None)
    return {
        "requests": len(bodies),
        "seconds": round(wall, 2),
        "requests_per_second": round(len(bodies) / wall, 2),
        "latency_p50_ms": round(1000 * statistics.median(latencies), 1),
        "latency_p99_ms": round(1000 * percentile(latencies, 0.99), 1),
        "missing": missing,
        "max_abs_diff_vs_score": diff,
    }


# -- 2. RL-shaped loop -------------------------------------------------------------------------------------


def rl_loop(url: str, folder: Path, model, steps: int, batch: int, sample_seconds: float) -> dict:
    from rewarddance.judge.reward import RewardModelReward

    in_process = RewardModelReward(str(folder))
    in_process.setup()
    remote = RemoteReward(url, api_key=KEY, chunk_size=8, max_concurrent=4)
    remote.setup()
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]

    def sample(step: int) -> torch.Tensor:
        # Sampling costs time in a real run; here a busy wait of fixed length keeps both arms comparable.
        started = time.perf_counter()
        images = sample_images(batch, seed=100 + step)
        while time.perf_counter() - started < sample_seconds:
            torch.mm(torch.rand(64, 64), torch.rand(64, 64))
        return images

    timings: dict[str, float] = {}
    diffs = {"remote_vs_score": 0.0, "remote_vs_reward_model_reward": 0.0, "overlapped_vs_blocking": 0.0}
    blocking: list[torch.Tensor] = []
    for step in range(steps):  # the rewards, compared
        images = sample_images(batch, seed=100 + step)
        expected = model.score(prompts, to_pil_images(images))
        with torch.no_grad():
            differentiable = in_process(images, prompts, [{}] * batch)
        got = remote(images, prompts, [{}] * batch)
        blocking.append(got)
        diffs["remote_vs_score"] = max(diffs["remote_vs_score"], float((got - expected).abs().max()))
        diffs["remote_vs_reward_model_reward"] = max(
            diffs["remote_vs_reward_model_reward"], float((got - differentiable.cpu()).abs().max())
        )
    # Per-step wall time of each way of rewarding (sampling included), timed separately.
    t = time.perf_counter()
    for step in range(steps):
        images = sample(step)
        model.score(prompts, to_pil_images(images))
    timings["in_process_step_s"] = (time.perf_counter() - t) / steps
    t = time.perf_counter()
    for step in range(steps):
        remote(sample(step), prompts, [{}] * batch)
    timings["remote_blocking_step_s"] = (time.perf_counter() - t) / steps
    t = time.perf_counter()
    pending = remote.submit(sample(0), prompts, [{}] * batch)
    overlapped = []
    for step in range(1, steps + 1):
        images = sample(step) if step < steps else None  # the next batch is sampled while the server scores
        overlapped.append(pending.result(timeout=120))
        if images is not None:
            pending = remote.submit(images, prompts, [{}] * batch)
    timings["remote_overlapped_step_s"] = (time.perf_counter() - t) / steps
    diffs["overlapped_vs_blocking"] = max(float((a - b).abs().max()) for a, b in zip(overlapped, blocking))
    return {
        "steps": steps,
        "batch": batch,
        "sample_seconds": sample_seconds,
        **{k: round(v, 3) for k, v in timings.items()},
        **diffs,
    }


# -- 2b. a real GRPO run ---------------------------------------------------------------------------------


def rl_fit(steps: int, root: Path) -> dict:
    """``fit --config configs/rl/shapes_grpo.yaml`` for ``steps`` steps with the bundled pairwise reward model, once
    served (``remote``) and once in-process (``reward_model``), best-of-4 top-1 references; the per-step
    ``train/reward`` of the two runs are compared."""
    import csv
    import subprocess
    import sys

    model = "data/reward_models/shapes-rm-pairwise"
    common = [
        sys.executable, "-m", "rewarddance", "fit", "--config", "configs/rl/shapes_grpo.yaml",
        "--trainer.max_steps", str(steps), "--trainer.log_every_n_steps", "1", "--model.init_args.eval_every", "1000",
        "--data.init_args.per_tag", "2", "--data.init_args.val_per_tag", "1",
    ]  # fmt: skip
    env = {**os.environ, "REWARDDANCE_API_KEY": KEY, "OMP_NUM_THREADS": "1"}
    out: dict[str, object] = {"steps": steps}
    rewards: dict[str, list[float]] = {}
    server = ServerProcess(model, api_key=KEY, log=root / "rl_server.log", args=["--accelerator", "cpu"])
    arms = {
        "remote": {"kind": "remote", "url": server.url, "best_of_n": 4, "top_k": 1},
        "in_process": {"kind": "reward_model", "path": model, "best_of_n": 4, "top_k": 1},
    }
    for arm, reward in arms.items():
        folder = root / f"rl_{arm}"
        if arm == "remote":
            server.start()
            server.wait_ready(READY_TIMEOUT)
        started = time.perf_counter()
        command = [*common, "--trainer.default_root_dir", str(folder), "--trainer.logger.init_args.save_dir",
                   str(folder), "--model.init_args.reward", json.dumps(reward)]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
        out[f"{arm}_fit_seconds"] = round(time.perf_counter() - started, 1)
        if arm == "remote":
            server.stop()
        if done.returncode != 0:
            return {**out, "error": f"{arm} fit failed: {done.stderr[-800:]}"}
        with open(folder / "version_0" / "metrics.csv") as metrics:
            rows = list(csv.DictReader(metrics))
        rewards[arm] = [float(r["train/reward"]) for r in rows if r.get("train/reward")]
    out["train_reward_remote"] = rewards["remote"]
    out["train_reward_in_process"] = rewards["in_process"]
    out["max_abs_diff"] = max(abs(a - b) for a, b in zip(rewards["remote"], rewards["in_process"]))
    return out


# -- 3. faults ---------------------------------------------------------------------------------------------


def malformed_requests(url: str, model) -> dict:
    good_image = to_pil_images(sample_images(1, seed=7))[0]
    good = {"prompt": PROMPTS[0], "image": encode_image(good_image)}
    big = Image.new("RGB", (600, 600), "gray")  # over --max_image_pixels 262144, yet a few KB as PNG
    gif, truncated = io.BytesIO(), base64.b64decode(encode_image(good_image))
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    bad_requests = {
        "not JSON": ("/score", b"{items: oops", KEY),
        "JSON list": ("/score", b"[1, 2, 3]", KEY),
        "no items": ("/score", {"things": []}, KEY),
        "items not a list": ("/score", {"items": good}, KEY),
        "empty items": ("/score", {"items": []}, KEY),
        "too many items": ("/score", {"items": [good] * 65}, KEY),
        "image over the byte limit": ("/score", {"items": [{"prompt": "p", "image": "A" * 200_000}]}, KEY),
        "image over the pixel limit": ("/score", {"items": [{"prompt": "p", "image": encode_image(big)}]}, KEY),
        "best-of-N body on /score": ("/score", {"prompt": "p", "candidates": [good["image"]]}, KEY),
        "best-of-N on a pointwise model": (
            "/best_of_n",
            {"prompt": "p", "reference": good["image"], "candidates": [good["image"]]},
            KEY,
        ),
        "no API key": ("/score", {"items": [good]}, None),
        "wrong API key": ("/score", {"items": [good]}, "not-the-key"),
    }
    bad_items = {
        "not base64": {"prompt": "p", "image": "@@@"},
        "not an image": {"prompt": "p", "image": base64.b64encode(b"hello").decode()},
        "a GIF": {"prompt": "p", "image": base64.b64encode(gif.getvalue()).decode()},
        "truncated PNG": {"prompt": "p", "image": base64.b64encode(truncated[: len(truncated) // 2]).decode()},
        "no prompt": {"image": good["image"]},
        "reference to a pointwise model": {**good, "reference": good["image"]},
        "unknown item field": {**good, "imgae": 1},
    }
    # Good requests run throughout; their rewards must be exactly what score() gives.
    expected = float(model.score([PROMPTS[0]], [good_image])[0])
    good_results: list[float | None] = []

    def good_client() -> None:
        for _ in range(10):
            status, answer = post(url, "/score", {"items": [good]})
            good_results.append(answer["rewards"][0] if status == 200 else None)

    threads = [threading.Thread(target=good_client) for _ in range(4)]
    for thread in threads:
        thread.start()
    counted: dict[str, object] = {}
    for name, (path, body, key) in bad_requests.items():
        status, answer = post(url, path, body, key=key)
        counted[name] = {"status": status, "reason": str(answer.get("detail"))[:90]}
    # All bad items in one request with two good ones: each bad one null with its reason, the good ones scored.
    status, answer = post(url, "/score", {"items": [good, *bad_items.values(), good]})
    for i, name in enumerate(bad_items, start=1):
        counted[f"item: {name}"] = {"status": status, "reward": answer["rewards"][i], "reason": answer["errors"][i]}
    good_in_mixed = [answer["rewards"][0], answer["rewards"][-1]]
    for thread in threads:
        thread.join(timeout=60)
    refused = sum(1 for v in counted.values() if v["status"] >= 400 or v.get("reward", 0) is None)  # type: ignore[union-attr]
    wrong = [r for r in [*good_results, *good_in_mixed] if r is None or abs(r - expected) > 1e-5]
    return {
        "kinds": len(counted),
        "refused_or_nulled": refused,
        "good_requests_meanwhile": len(good_results) + 1,
        "good_wrong_or_lost": len(wrong),
        "cases": counted,
    }


class SlowProxy:
    """Forwards to the server, but holds the first attempt of each body for ``delay`` s (the client times out)."""

    def __init__(self, target: str, delay: float) -> None:
        self.target, self.delay, self.seen, self.delayed = target, delay, set(), 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._forward(None)

            def do_POST(self) -> None:
                self._forward(self.rfile.read(int(self.headers["Content-Length"])))

            def _forward(self, body: bytes | None) -> None:
                if body is not None and body not in proxy.seen:
                    proxy.seen.add(body)
                    proxy.delayed += 1
                    time.sleep(proxy.delay)
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
                request = urllib.request.Request(proxy.target + self.path, body, headers)
                try:
                    with urllib.request.urlopen(request, timeout=120) as answer:
                        status, data = answer.status, answer.read()
                except urllib.error.HTTPError as err:
                    status, data = err.code, err.read()
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timed out) already
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def slow_responses(url: str, model) -> dict:
    proxy = SlowProxy(url, delay=1.5)
    try:
        reward = RemoteReward(proxy.url, api_key=KEY, timeout=1.0, retries=3, backoff=0.1, chunk_size=4)
        reward.pairwise = False  # /info through the proxy is not delayed, but skip it: only /score is measured
        images = sample_images(8, seed=11)
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(8)]
        started = time.perf_counter()
        got = reward(images, prompts, [{}] * 8)
        seconds = time.perf_counter() - started
    finally:
        proxy.close()
    expected = model.score(prompts, to_pil_images(images))
    return {
        "requests": reward.requests,
        "timed_out_attempts": proxy.delayed,
        "retries": reward.client.failures,
        "seconds": round(seconds, 2),
        "max_abs_diff_vs_score": float((got - expected).abs().max()),
    }


def kill_and_restart(server: ServerProcess, model, log: Path) -> dict:
    """SIGKILL the server while a request is in flight, restart it; the reward call waits through its retries."""
    reward = RemoteReward(server.url, api_key=KEY, timeout=30, retries=10, backoff=0.5, chunk_size=4)
    reward.setup()
    images = sample_images(16, seed=21)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(16)]
    pending = reward.submit(images, prompts, [{}] * 16)
    time.sleep(0.05)
    killed_at = time.perf_counter()
    server.kill()
    restarted = ServerProcess(server.model, port=server.port, args=server.args, api_key=KEY, log=log).start()
    try:
        got = pending.result(timeout=READY_TIMEOUT)
        recovered_after = time.perf_counter() - killed_at
    except RewardDanceError as err:
        restarted.stop()
        return {"recovered": False, "error": str(err)[:300]}
    expected = model.score(prompts, to_pil_images(images))
    outcome = {
        "recovered": True,
        "recovered_after_s": round(recovered_after, 1),
        "attempts": reward.client.attempts,
        "retries": reward.client.failures,
        "max_abs_diff_vs_score": float((got - expected).abs().max()),
    }
    # Down for good: the run stops with an error within its retry budget.
    restarted.kill()
    quick = RemoteReward(server.url, api_key=KEY, timeout=2, retries=3, backoff=0.2)
    quick.pairwise = False
    started = time.perf_counter()
    try:
        quick(images[:2], prompts[:2], [{}, {}])
        outcome["down_for_good"] = "no error (wrong)"
    except RemoteRewardError as err:
        outcome["down_for_good"] = f"RemoteRewardError after {time.perf_counter() - started:.1f} s: {str(err)[:120]}"
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=8, help="requests per client")
    parser.add_argument("--repeats", type=int, default=3, help="throughput runs per arm, alternating")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16, help="images per RL step")
    parser.add_argument("--sample-seconds", type=float, default=0.5)
    parser.add_argument("--rl-fit-steps", type=int, default=0, help="also a real GRPO run, remote vs in-process")
    parser.add_argument("--out", type=str, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from rewarddance.judge.reward_model import RewardModel

    results: dict[str, object] = {"load_average_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = export_model(root / "export")
        model = RewardModel.from_pretrained(folder)
        limits = ["--max_image_bytes", "100000", "--max_image_pixels", "262144", "--accelerator", "cpu"]
        arms = {
            "batched": ["--max_batch_size", "16", "--batch_timeout", "0.02"],
            "batch_size_1": ["--max_batch_size", "1"],
        }
        servers = {
            arm: ServerProcess(folder, args=[*flags, *limits], api_key=KEY, log=root / f"{arm}.log")
            for arm, flags in arms.items()
        }
        try:
            for server in servers.values():  # both start at once: the imports overlap on the two cores
                server.start()
            for arm, server in servers.items():
                results[f"startup_s_{arm}"] = round(server.wait_ready(READY_TIMEOUT), 1)
            # The arms alternate, so a change in machine load hits both alike; the median run of each is reported.
            runs: dict[str, list[dict]] = {arm: [] for arm in arms}
            for repeat in range(args.repeats):
                for arm, server in servers.items():
                    runs[arm].append(throughput(server.url, model, args.clients, args.requests))
                    print(arm, repeat, runs[arm][-1], flush=True)
            for arm, arm_runs in runs.items():
                ordered = sorted(arm_runs, key=lambda r: r["requests_per_second"])
                results[f"throughput_{arm}"] = {**ordered[len(ordered) // 2], "all_requests_per_second": [
                    r["requests_per_second"] for r in arm_runs]}  # fmt: skip
            servers["batch_size_1"].stop()
            batched, single = results["throughput_batched"], results["throughput_batch_size_1"]
            results["batching_speedup"] = round(batched["requests_per_second"] / single["requests_per_second"], 2)  # type: ignore[index]
            server = servers["batched"]
            results["rl_loop"] = rl_loop(server.url, folder, model, args.steps, args.batch, args.sample_seconds)
            print("rl_loop", results["rl_loop"], flush=True)
            results["malformed"] = malformed_requests(server.url, model)
            print("malformed", {k: v for k, v in results["malformed"].items() if k != "cases"}, flush=True)
            results["slow_responses"] = slow_responses(server.url, model)
            print("slow_responses", results["slow_responses"], flush=True)
            results["kill_and_restart"] = kill_and_restart(server, model, root / "restarted.log")
            print("kill_and_restart", results["kill_and_restart"], flush=True)
        finally:
            for server in servers.values():
                server.stop()
        if args.rl_fit_steps:
            results["rl_fit"] = rl_fit(args.rl_fit_steps, root)
            print("rl_fit", results["rl_fit"], flush=True)
    results["load_average_at_end"] = os.getloadavg()
    print(json.dumps(results, indent=2, default=str))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()

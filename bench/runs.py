"""Measuring several systems side by side: all started at once, measured in turn.

The machines this runs on are often shared, and their load comes and goes. So the systems of a
comparison (swallow-server, raw mlx-lm, mlx_lm.server) are started together and kept waiting
(idle, they take no CPU), and each measurement is taken of each system in turn, `repeat` times
round, keeping each system's best: a slow moment then hits one round, not one system.
"""

import time
from dataclasses import dataclass
from pathlib import Path

from bench import client, prompts, system


@dataclass
class Plan:
    decode_tokens: int  # single-stream decode length
    stream_counts: list  # e.g. [1, 4, 8, 16]
    stream_tokens: int  # tokens per stream in the concurrency runs
    reply_tokens: int  # turn 1 of the conversation: longer than the sliding window (128)
    turn2_tokens: int  # turn 2: only its first tokens matter
    repeat: int = 1  # rounds of each measurement; each system keeps its best


def log(message: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {message}", flush=True)


class HttpSystem:
    """A server: swallow-server on /v1/chat/completions, mlx_lm.server on /v1/completions."""

    def __init__(self, kind, model: Path, openblas, log_dir: Path, workload: prompts.Workload, name: str = ""):
        self.server = kind(model, openblas, log_dir)
        self.name, self.workload, self.chat = name or self.server.name, workload, kind is system.Swallow
        self.prompt_tokens = {}  # what the server counted, to compare with the rendering

    def request(self, req: prompts.Request, max_tokens: int):
        url = self.server.url
        if self.chat:
            return lambda c: client.chat_stream(c, url, req.messages, max_tokens)
        return lambda c: client.completion_stream(c, url, req.text, max_tokens)

    def wait_ready(self) -> None:
        self.server.wait_ready()
        client.run_one(self.request(self.workload.warmup, 4))  # loads what loads lazily, first-call costs

    def decode(self, n: int) -> dict:
        """decode_tps, and the CPU time the streaming client (this process) took per token: on a
        machine whose cores the model's compute keeps busy, that is time taken from it."""
        client_cpu = time.process_time()
        result = client.run_one(self.request(self.workload.decode, n))
        client_cpu = time.process_time() - client_cpu
        self.prompt_tokens["decode"] = (result.prompt_tokens, len(self.workload.decode.tokens))
        return {"decode_tps": result.decode_tps, "tokens": result.completion_tokens,
                "client_cpu_ms_per_token": 1000 * client_cpu / max(1, result.completion_tokens)}

    def streams(self, count: int, n: int) -> tuple[float, float, int]:
        """(aggregate tok/s, tok/s while all streams decode, tokens generated)."""
        agg = client.run_streams([self.request(r, n) for r in self.workload.streams[:count]])
        self.retries = getattr(self, "retries", 0) + sum(r.retries for r in agg.results)
        return agg.aggregate_tps, agg.steady_tps, agg.completion_tokens

    def conversation(self, conv: prompts.Conversation, reply_tokens: int, turn2_tokens: int) -> dict:
        first = client.run_one(self.request(conv.turn1, reply_tokens))
        self.prompt_tokens["turn 1"] = (first.prompt_tokens, len(conv.turn1.tokens))
        if self.chat:
            messages = prompts.turn2_messages(conv, "".join(first.reasoning), "".join(first.content))
            turn2 = prompts.Request(messages, [], "")
        else:  # a completions client sends the history back verbatim
            turn2 = prompts.Request([], [], conv.turn1.text + "".join(first.text) + conv.turn2_suffix_text)
        second = client.run_one(self.request(turn2, turn2_tokens))
        return {"cold_ttft_s": first.ttft_s, "warm_ttft_s": second.ttft_s, "reply_tokens": first.completion_tokens,
                "turn2_prompt_tokens": second.prompt_tokens, "turn2_cached_tokens": second.cached_tokens}

    def memory(self) -> float:
        return self.server.peak_rss_mb()

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far (all its threads)."""
        return self.server.cpu_seconds()

    def blas(self) -> str:
        return self.server.blas()

    def log_tail(self) -> str:
        return self.server.log_tail()

    def stop(self) -> None:
        self.server.stop()


class RawSystem:
    """Raw mlx-lm in its worker process (bench/raw.py)."""

    def __init__(self, model: Path, mode: str, openblas, log_dir: Path, workload: prompts.Workload):
        self.worker = system.RawWorker(model, mode, openblas, log_dir)
        self.name, self.workload = f"raw mlx-lm ({mode})", workload
        self.prompt_tokens = {}

    def wait_ready(self) -> None:
        self.worker.wait_ready()
        self.worker.call("decode", prompt=self.workload.warmup.tokens, n=4)

    def decode(self, n: int) -> dict:
        result = self.worker.call("decode", prompt=self.workload.decode.tokens, n=n)
        return {"decode_tps": result["decode_tps"], "tokens": result["completion_tokens"]}

    def streams(self, count: int, n: int) -> tuple[float, float, int]:
        result = self.worker.call("streams", prompts=[r.tokens for r in self.workload.streams[:count]], n=n)
        return result["aggregate_tps"], result["steady_tps"], result["completion_tokens"]

    def conversation(self, conv: prompts.Conversation, reply_tokens: int, turn2_tokens: int) -> dict:
        return self.worker.call("conversation", turn1=conv.turn1.tokens, reply_tokens=reply_tokens,
                                turn2_suffix=conv.turn2_suffix, turn2_tokens=turn2_tokens)

    def memory(self) -> float:
        return self.worker.call("memory")["peak_rss_mb"]

    def cpu_seconds(self) -> float:
        """CPU time the worker process has used so far (all its threads)."""
        return self.worker.cpu_seconds()

    def blas(self) -> str:
        return self.worker.blas()

    def log_tail(self) -> str:
        return self.worker.log_tail()

    def stop(self) -> None:
        self.worker.stop()


def measure(systems: dict, plan: Plan, workload: prompts.Workload, what=("decode", "streams", "conversation"),
            errors: dict | None = None, slow: dict | None = None) -> dict:
    """systems: key -> a started HttpSystem/RawSystem (stopped here). Returns key -> figures: the
    best of the rounds, and every round's value under "samples". A system that fails is reported
    in `errors` and left out of the rest. `slow`: key -> a shorter decode length for systems too
    slow for the plan's (measured in the first round only)."""
    slow = slow or {}
    errors = {} if errors is None else errors
    results = {key: {"samples": {}} for key in systems}
    live = dict(systems)

    def each(step: str, fn):
        for key, s in list(live.items()):
            try:
                fn(key, s)
            except Exception as e:
                errors[key] = f"{step}: {type(e).__name__}: {e}".splitlines()[0]
                log(f"{s.name} FAILED at {step}: {type(e).__name__}: {e}\n--- its log ---\n{s.log_tail()}")
                live.pop(key)
                s.stop()

    def record(key, figure: str, value: float, lower_is_better: bool = False) -> None:
        mine = results[key]
        mine["samples"].setdefault(figure, []).append(value)
        values = [v for v in mine["samples"][figure] if v == v]  # NaN: no figure that round
        mine[figure] = (min if lower_is_better else max)(values) if values else float("nan")

    def ready(key, s):
        s.wait_ready()
        results[key]["blas"] = s.blas()
        log(f"{s.name} ready ({results[key]['blas']})")

    def decode(round):
        def run(key, s):
            if key in slow and round > 0:
                return
            cpu = s.cpu_seconds()
            figures = s.decode(slow.get(key, plan.decode_tokens))
            record(key, "decode_tps", figures["decode_tps"])
            record(key, "cpu_ms_per_token", 1000 * (s.cpu_seconds() - cpu) / max(1, figures["tokens"]),
                   lower_is_better=True)
            if "client_cpu_ms_per_token" in figures:
                record(key, "client_cpu_ms_per_token", figures["client_cpu_ms_per_token"], lower_is_better=True)
        return run

    def streams(count):
        def run(key, s):
            cpu = s.cpu_seconds()
            aggregate, steady, tokens = s.streams(count, plan.stream_tokens)
            record(key, f"streams_{count}", aggregate)
            record(key, f"streamcpu_{count}", 1000 * (s.cpu_seconds() - cpu) / max(1, tokens), lower_is_better=True)
            if count > 1:
                record(key, f"steady_{count}", steady)
        return run

    def conversation(round):
        def run(key, s):
            r = s.conversation(workload.conversations[key][round], plan.reply_tokens, plan.turn2_tokens)
            cached = (f", turn 2: {r['turn2_cached_tokens']} of {r['turn2_prompt_tokens']} prompt tokens cached"
                      if "turn2_prompt_tokens" in r else "")
            log(f"{s.name}: TTFT cold {r['cold_ttft_s']:.2f} s, warm {r['warm_ttft_s']:.3f} s{cached}")
            for figure in ("cold_ttft_s", "warm_ttft_s"):
                record(key, figure, r.pop(figure), lower_is_better=True)
            results[key].update(r)
        return run

    try:
        each("start", ready)
        if "decode" in what:
            for round in range(plan.repeat):
                each("decode", decode(round))
            log("decode, 1 stream: " + _summary(live, results, "decode_tps"))
        if "streams" in what:
            for count in plan.stream_counts:
                for _ in range(plan.repeat):
                    each(f"{count} streams", streams(count))
                log(f"{count} stream{'s' if count > 1 else ''}: " + _summary(live, results, f"streams_{count}"))
        if "conversation" in what:
            for round in range(min(plan.repeat, len(next(iter(workload.conversations.values()), [])))):
                each("conversation", conversation(round))
        each("memory", lambda key, s: results[key].update(peak_rss_mb=s.memory(), prompt_tokens=s.prompt_tokens,
                                                          retries=getattr(s, "retries", 0)))
    finally:
        for s in live.values():
            s.stop()
    for mine in results.values():  # streams_N -> streams: {N: ...}, likewise steady_N, streamcpu_N (CPU ms a token)
        for name in ("streams", "steady", "streamcpu"):
            counts = sorted(int(k.split("_")[1]) for k in mine if k.startswith(f"{name}_"))
            if counts:
                mine[name] = {n: mine.pop(f"{name}_{n}") for n in counts}
    return results


def _summary(live: dict, results: dict, figure: str) -> str:
    return ", ".join(f"{s.name} {results[k][figure]:.1f} tok/s" for k, s in live.items() if figure in results[k])

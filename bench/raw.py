"""Raw mlx-lm in-process: the baseline with no server around it.

Runs as its own process (`python -m bench.raw --model DIR --mode default|float32`), so that its
peak memory is its own and LD_PRELOAD (OpenBLAS) applies from the start. It loads the model, then
answers JSON commands, one a line on stdin (decode, streams, conversation, memory: with the same
token ids the servers get), one JSON reply a line on stdout. Kept running beside the servers, it
is measured in turn with them.

- single stream: mlx_lm.generate.generate_step, as mlx-lm's own generate/stream_generate use it;
- concurrent streams: mlx_lm.generate.BatchGenerator (batch sizes as swallow-server's engine:
  decode batch 16, prefill batch 8);
- time to first token: a fresh prompt cache for turn 1 (cold), then the same cache object
  carried on to turn 2 (warm): mlx-lm's own way of keeping a conversation's cache.

--mode default keeps the model as mlx-lm loads it (bf16 activations for a bf16 or quantized
checkpoint); --mode float32 casts its floating-point parameters to float32, as swallow-server
does on CPU.
"""

import argparse
import json
import sys
import time

BODY_MARK = 200008  # <|message|>: what follows it is the first text a user sees


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def body_index(tokens: list) -> int:
    """Index of the first token of the reply's first message body (0 without a header)."""
    head = tokens[:16]
    return head.index(BODY_MARK) + 1 if BODY_MARK in head else 0


def load(path: str, mode: str, trust_remote_code: bool = False):
    from pathlib import Path

    import mlx.core as mx
    from mlx_lm.utils import load_model

    model, _ = load_model(Path(path), lazy=True, trust_remote_code=trust_remote_code)
    if mode == "float32":
        model.apply(lambda a: a.astype(mx.float32) if mx.issubdtype(a.dtype, mx.floating) else a)
    mx.eval(model.parameters())
    return model


STOP_TOKENS = (200002, 200012, 199999)  # <|return|>, <|call|>, <|endoftext|>: the servers stop there


def single_stream(model, prompt: list, n: int, cache=None, stop: bool = False) -> dict:
    """Greedy decode of n tokens (`stop`: or up to a stop token, as a server would): times of
    every token, from the call."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    start = time.perf_counter()
    tokens, times = [], []
    for token, _ in generate_step(mx.array(prompt), model, max_tokens=n, prompt_cache=cache):
        tokens.append(int(token))
        times.append(time.perf_counter() - start)
        if stop and tokens[-1] in STOP_TOKENS:
            break
    first = body_index(tokens)
    first = min(first, len(tokens) - 1)
    decode = (len(tokens) - 1 - first) / (times[-1] - times[first]) if len(tokens) - 1 > first else float("nan")
    return {"tokens": tokens, "ttft_s": times[first], "decode_tps": decode, "completion_tokens": len(tokens)}


def streams(model, prompts: list, n: int) -> dict:
    """len(prompts) requests at once through one BatchGenerator, n tokens each (more than 16: the
    BatchGenerator queues the rest and starts each as a row ends, as bench.batch compares)."""
    from mlx_lm.generate import BatchGenerator

    batch = BatchGenerator(model, stop_tokens=[[200002], [200012], [199999]],
                           completion_batch_size=16, prefill_batch_size=8)
    start = time.perf_counter()
    uids = batch.insert(prompts, max_tokens=[n] * len(prompts))
    times = {uid: [] for uid in uids}
    done = 0
    while done < len(uids):
        _, responses = batch.next()
        now = time.perf_counter() - start
        for r in responses:
            times[r.uid].append(now)
            done += r.finish_reason is not None
    batch.close()
    window = max(t[-1] for t in times.values()) - min(t[0] for t in times.values())
    tokens = sum(len(t) - 1 for t in times.values())
    # as bench.client.steady_rate: while every stream is decoding
    start_all, end_all = max(t[0] for t in times.values()), min(t[-1] for t in times.values())
    steady = (sum(sum(1 for x in t if start_all < x <= end_all) for t in times.values()) / (end_all - start_all)
              if end_all > start_all else float("nan"))
    total = max(t[-1] for t in times.values())  # from the insert to the last token: prefill included
    return {"streams": len(prompts), "aggregate_tps": tokens / window, "steady_tps": steady,
            "completion_tokens": sum(len(t) for t in times.values()), "wall_s": window, "total_s": total}


def conversation(model, turn1: list, reply_tokens: int, turn2_suffix: list, turn2_tokens: int) -> dict:
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    cold = single_stream(model, turn1, reply_tokens, cache)
    # The cache now holds turn 1 and its reply but the reply's last token.
    turn2 = cold["tokens"][-1:] + turn2_suffix
    warm = single_stream(model, turn2, turn2_tokens, cache)
    return {"cold_ttft_s": cold["ttft_s"], "warm_ttft_s": warm["ttft_s"], "reply_tokens": len(cold["tokens"]),
            "turn1_prompt_tokens": len(turn1), "turn2_new_tokens": len(turn2)}


def turns(model, prompts: list, reply_tokens: int) -> dict:
    """A conversation's turns with one prompt cache carried on, as mlx-lm alone would take them:
    before each turn the cache is cut back to what the turn's prompt shares with it (harmony drops
    a finished turn's analysis, so the reply in it is not always a prefix of the next prompt), and
    the rest is read. Each turn's time to its first body token, and the tokens it found cached."""
    from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

    cache, held, out = make_prompt_cache(model), [], []
    for prompt in prompts:
        common, limit = 0, min(len(held), len(prompt) - 1)  # at least one token is read
        while common < limit and held[common] == prompt[common]:
            common += 1
        trim_prompt_cache(cache, cache[0].offset - common)
        result = single_stream(model, prompt[common:], reply_tokens, cache, stop=True)
        held = (prompt + result["tokens"])[: cache[0].offset]  # what the cache holds now
        out.append({"ttft_s": result["ttft_s"], "cached_tokens": common, "prompt_tokens": len(prompt)})
    return {"turns": out}


def serve(path: str, mode: str, commands, replies, trust_remote_code: bool = False) -> None:
    """Loads the model, says so, then answers one JSON command per line until EOF."""
    import mlx.core as mx

    def reply(obj):
        replies.write(json.dumps(obj) + "\n")
        replies.flush()

    t = time.perf_counter()
    model = load(path, mode, trust_remote_code)
    reply({"ready": True, "load_s": time.perf_counter() - t})
    for line in commands:
        command = json.loads(line)
        op = command.pop("op")
        try:
            if op == "decode":
                result = single_stream(model, command["prompt"], command["n"])
                result.pop("tokens")
            elif op == "streams":
                result = streams(model, command["prompts"], command["n"])
            elif op == "conversation":
                result = conversation(model, **command)
            elif op == "turns":
                result = turns(model, **command)
            elif op == "memory":
                result = {"peak_rss_mb": peak_rss_mb(), "mlx_peak_mb": mx.get_peak_memory() / 2**20}
            else:
                result = {"error": f"unknown op {op!r}"}
        except Exception as e:  # reported to the orchestrator, which goes on without this figure
            result = {"error": f"{type(e).__name__}: {e}"}
        reply(result)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.raw", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--mode", choices=("default", "float32"), required=True)
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="the model's architecture is a file of its own (the near-free model)")
    args = parser.parse_args(argv)
    # Replies go to the real stdout; anything else that prints (mlx-lm warnings) to stderr.
    replies, sys.stdout = sys.stdout, sys.stderr
    serve(args.model, args.mode, sys.stdin, replies, args.trust_remote_code)
    return 0


if __name__ == "__main__":
    sys.exit(main())

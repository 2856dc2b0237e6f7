"""The real Vercel AI SDK (`ai` with `@ai-sdk/openai`'s `.responses()` provider) through a tool
loop against the server, generateText and streamText: tests/data/ai_sdk/tool_loop.cjs.

Runs when node finds the packages: set SWALLOW_TEST_NODE_MODULES to a node_modules folder that
holds them (`npm install ai @ai-sdk/openai zod` in any directory). Otherwise skipped; the
provider's request shapes are still replayed by tests/test_responses_sdks.py."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.scripts import TOOL_ANSWER

SCRIPT = Path(__file__).resolve().parent / "data" / "ai_sdk" / "tool_loop.cjs"
NODE_MODULES = os.environ.get("SWALLOW_TEST_NODE_MODULES", "")
HAS_SDK = bool(shutil.which("node")) and all(
    (Path(NODE_MODULES) / package / "package.json").is_file() for package in ("ai", "@ai-sdk/openai", "zod"))

needs_ai_sdk = pytest.mark.skipif(not HAS_SDK, reason="node or the AI SDK packages are missing (set "
                                  "SWALLOW_TEST_NODE_MODULES) — the real AI SDK run is NOT tested")


@needs_ai_sdk
@pytest.mark.parametrize("mode", ["generate", "stream"])
def test_the_ai_sdks_responses_provider_runs_a_tool_loop(scripted_server, mode):
    run = subprocess.run(["node", str(SCRIPT), mode], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "NODE_PATH": NODE_MODULES, "BASE_URL": f"{scripted_server.url}/v1"})
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert result["text"] == TOOL_ANSWER
    call, answer = result["steps"]
    assert call["toolCalls"] == [["get_weather", {"city": "Tokyo"}]] and call["finishReason"] == "tool-calls"
    # the provider reads reasoning from summaries only: each step's chain of thought arrives
    assert call["reasoning"] == "I should call the weather tool." and answer["reasoning"] == "The tool says sunny."
    # the second step sent the reasoning back by reference, which the server resolved
    assert result["sent"][1] == ["message:developer", "message:user", "item_reference", "function_call",
                                 "function_call_output"]

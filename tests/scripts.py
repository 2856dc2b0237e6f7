"""What the scripted test model answers, trigger by trigger (see models/scripted.py).

Each reply is a whole assistant turn in harmony markup; the tests compare what the server
returns with the plain texts below.
"""

JAPANESE_REASONING = "足し算です。2と2を足すと4になります 🤔"
JAPANESE_ANSWER = "答えは **4** です。🎉 ありがとう！"

LONG_WORDS = " ".join(f"word{i}" for i in range(3000))
STOP_ANSWER = "alpha beta END gamma delta"

TOOL_ARGUMENTS = '{"city": "Tokyo", "unit": "celsius", "details": "' + "temperature humidity wind " * 8 + '"}'
TOOL_ANSWER = "It is sunny in Tokyo."


def final(text: str) -> str:
    return f"<|channel|>final<|message|>{text}<|return|>"


def thought(reasoning: str, answer: str) -> str:
    return f"<|channel|>analysis<|message|>{reasoning}<|end|><|start|>assistant{final(answer)}"


SCRIPTS = {
    # channel split, with multi-byte characters split across tokens
    "What is 2+2?": thought(JAPANESE_REASONING, JAPANESE_ANSWER),
    # a reply with no channel header at all
    "Reply without a header": "Just plain words, no header.<|return|>",
    # a header the parser can't read
    "Reply with a broken header": "<|channel|>final<|channel|>final<|message|>Still delivered.<|return|>",
    # a final message closed with <|end|> instead of <|return|>, then more: the answer ends at <|end|>
    "Reply ending with end": "<|channel|>final<|message|>Done here.<|end|><|start|>assistant<|channel|>final<|message|>extra<|return|>",
    # long answers, for limits and disconnects
    "Write a long essay": thought("Plan the essay.", LONG_WORDS),
    # stop strings cut the answer, not the reasoning
    "Stop test": thought("The reasoning mentions END too.", STOP_ANSWER),
    # what reached the prompt: the effort line of the system message and the instructions
    "Reasoning: low": final("effort=low"),
    "Reasoning: medium": final("effort=medium"),
    "Reasoning: high": final("effort=high"),
    "Speak like a pirate.": final("Arr, instructions received."),
    # a tool loop: first a call, then (after the tool result) the answer
    "What is the weather in Tokyo?": [
        "<|channel|>analysis<|message|>I should call the weather tool.<|end|>"
        f"<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{TOOL_ARGUMENTS}<|call|>",
        thought("The tool says sunny.", TOOL_ANSWER),
    ],
    # a call written on the analysis channel, recipient after the channel
    "Call on analysis": "<|channel|>analysis to=functions.get_weather<|message|>{\"city\": \"Osaka\"}<|call|>",
    # a preamble (commentary without recipient) before a call
    "Preamble then call": (
        "<|channel|>commentary<|message|>Let me check.<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Kyoto\"}<|call|>"
    ),
    # a call to a tool whose client name is not an identifier ("get weather-now")
    "Use the odd tool": "<|channel|>commentary to=functions.get_weather_now <|constrain|>json<|message|>{}<|call|>",
}

# tool_choice: a reply that is a call from its first token, so a forced header fits it
NAGOYA_CALL = "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Nagoya\"}<|call|>"
SCRIPTS["Weather please"] = NAGOYA_CALL
# shows whether the tool definitions reached the developer message
SCRIPTS[" Get the current weather for a city"] = final("I can see the weather tool.")

# ---- Responses API (tests/test_responses.py) ----
# a conversation that needs its history: the second turn is only scripted when the first
# user message is still in the prompt (previous_response_id); without it the default reply comes
REMEMBER_FIRST = "Noted, I will remember it."
REMEMBER_SECOND = "You asked me to remember pineapple."
SCRIPTS["Remember the word pineapple."] = [final(REMEMBER_FIRST), final(REMEMBER_SECOND)]
# a call to a function of a namespace (Codex CLI's multi_agent_v1), flattened to one name
SPAWN_ANSWER = "The helper agent was spawned."
SCRIPTS["Spawn a helper agent"] = [
    "<|channel|>analysis<|message|>I will spawn an agent.<|end|>"
    "<|start|>assistant to=functions.multi_agent_v1_spawn_agent<|channel|>commentary <|constrain|>json"
    "<|message|>{\"task_name\": \"helper\", \"message\": \"Say hello\"}<|call|>",
    final(SPAWN_ANSWER),
]
# what Codex CLI's `codex exec` runs into: a shell command through exec_command, then an answer
CODEX_COMMAND_ANSWER = "The directory listing worked."
SCRIPTS["Codex: list the files"] = [
    "<|channel|>analysis<|message|>I should list the files with a shell command.<|end|>"
    "<|start|>assistant to=functions.exec_command<|channel|>commentary <|constrain|>json"
    "<|message|>{\"cmd\": \"ls\"}<|call|>",
    thought("The command printed the files.", CODEX_COMMAND_ANSWER),
]

# ---- reasoning budget, loop guard, structured output (tests/test_reasoning_control.py) ----
# A reply that thinks long: 240 analysis tokens (" step", "N" for N < 120), then an answer.
# After a forced transition the script plays on from where it was (the model keeps counting
# positions from its header), so the answer of a budgeted reply is the rest of the thinking.
THINK_LONG = "".join(f" step{i}" for i in range(120))
THINK_LONG_ANSWER = "I thought it through."
SCRIPTS["Think for a long time"] = thought(THINK_LONG, THINK_LONG_ANSWER)


# The loop guard's firing point, pinned from its documented rule (config.toml, [reasoning]) rather
# than computed with the server's own detector: the analysis below repeats one phrase of p <= 32
# tokens from its first token, so with the defaults (4 repeats, 128 tokens) the repetition is a
# loop once it covers max(4 p, 128) = 128 tokens.
LOOP_FIRES_AT = 128


def _loop_reasoning() -> tuple[str, str]:
    """(the looping analysis, the answer after it). The loop is scripted to last exactly 6
    tokens past LOOP_FIRES_AT (the length of the forced `<|end|><|start|>assistant<|channel|>final<|message|>`),
    so that with the guard the answer lands in the final channel, and without it in the analysis."""
    import toktok

    vocabulary = toktok._encoding("o200k_harmony")
    phrase = vocabulary.encode(" I will check the sum again.")
    assert len(phrase) <= 32 and len(set(phrase)) == len(phrase)  # one short period, no shorter one inside
    tokens = phrase * (LOOP_FIRES_AT // len(phrase) + 6)
    answer = "\n\nThe answer is 42."
    loop = vocabulary.decode(tokens[:LOOP_FIRES_AT + 6])
    assert vocabulary.encode(loop + answer) == tokens[:LOOP_FIRES_AT + 6] + vocabulary.encode(answer)
    return loop, answer


LOOP_REASONING, LOOP_ANSWER = _loop_reasoning()
SCRIPTS["Think in circles"] = f"<|channel|>analysis<|message|>{LOOP_REASONING}{LOOP_ANSWER}<|return|>"

# structured output: a reply whose answer is the JSON asked for, and one that won't write JSON
WEATHER_JSON = '{"city":"Tokyo","temperature":21}'
SCRIPTS["Weather as JSON"] = thought("The user wants JSON.", WEATHER_JSON)
SCRIPTS["Answer in prose"] = thought("I will not write JSON.", "Here is my answer in plain words, no braces.")
# a strict tool whose scripted arguments break its schema (spaces, an unknown unit)
SCRIPTS["Strict weather call"] = (
    "<|channel|>analysis<|message|>Call it.<|end|>"
    "<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json"
    "<|message|>{\"city\": \"Sapporo\", \"unit\": \"kelvin\"}<|call|>"
)

# ---- harmony edges (tests/test_harmony_edges.py) ----
# a reply that never writes a header: it must stream from its first token, not after 48
NO_HEADER_WORDS = "".join(f" 言葉{i}" for i in range(40))
SCRIPTS["Long reply without a header"] = NO_HEADER_WORDS.lstrip() + "<|return|>"

# ---- swallow-server generate / chat (tests/test_console.py) ----
# the model card's question, with its reasoning apart from its answer
CAPITAL_QUESTION = "日本の首都はどこですか？"
CAPITAL_REASONING = "日本の首都について聞かれています。東京です。"
CAPITAL_ANSWER = "日本の首都は東京です。"
SCRIPTS["日本の首都はどこですか"] = thought(CAPITAL_REASONING, CAPITAL_ANSWER)

# ---- forced calls on every API (test_tools.py, test_messages.py, test_responses_sdks.py) ----
# a call the model ends without writing arguments: a forced call still gets JSON ({})
SCRIPTS["Call without arguments"] = "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|><|call|>"

# ---- tools the server runs: MCP servers (tests/test_mcp.py) ----
# A reply that calls a server's tool, then (once the tool's message is in the prompt) goes on. Where
# the tool's result holds a trigger of its own, the next reply is that trigger's: proof that the
# result reached the model, in place.


def server_call(recipient: str, arguments: str, thinking: str = "I should use a tool.",
                channel: str = "commentary") -> str:
    return (f"<|channel|>analysis<|message|>{thinking}<|end|>"
            f"<|start|>assistant to={recipient}<|channel|>{channel} <|constrain|>json<|message|>{arguments}<|call|>")


NOTE_TEXT = "The secret word is kumquat."  # the file the filesystem server reads
NOTE_ANSWER = "The note says the secret word is kumquat."
SCRIPTS["Read the note file."] = server_call("fs.read_text_file", '{"path": "note.txt"}', "The note is in note.txt.")
SCRIPTS[NOTE_TEXT] = thought("The tool gave me the note.", NOTE_ANSWER)
# server-everything's get-sum: a tool name with a dash, called by its safe name
SUM_ANSWER = "Two and three make five."
SCRIPTS["Add two and three."] = server_call("everything.get_sum", '{"a": 2, "b": 3}')
SCRIPTS["The sum of 2 and 3 is 5."] = final(SUM_ANSWER)
# the SDK server over streamable HTTP, on the analysis channel (its result goes back there)
SHOUT_ANSWER = "It shouted back."
SCRIPTS["Shout it over HTTP."] = server_call("web.shout", '{"text": "hello over http"}', channel="analysis")
SCRIPTS["HELLO OVER HTTP"] = final(SHOUT_ANSWER)
# a tool that errors, one that hangs past its time limit, one that returns 10 MB (over HTTP: the SDK's
# stdio client takes ~15 s to read a 10 MB line), one that is not there
TOOL_FAILED_ANSWER = "The tool failed, so I answer without it."
SCRIPTS["Use the failing tool."] = [server_call("tools.fail", '{"reason": "testing"}'), final(TOOL_FAILED_ANSWER)]
SLOW_ANSWER = "The tool took too long."
SCRIPTS["Wait for the slow tool."] = [server_call("tools.hang", '{"seconds": 120}'), final(SLOW_ANSWER)]
SCRIPTS["Wait for the slow web tool."] = [server_call("web.hang", '{"seconds": 120}'), final(SLOW_ANSWER)]
FLOOD_ANSWER = "That was a lot of text."
SCRIPTS["Flood me with text."] = [server_call("web.flood", '{"megabytes": 10}'), final(FLOOD_ANSWER)]
MISSING_TOOL_ANSWER = "I can't search here, so I answer from memory."
SCRIPTS["Search the web for swallows."] = [server_call("browser.search", '{"query": "swallows"}', channel="analysis"),
                                           final(MISSING_TOOL_ANSWER)]
# the tool server dies in the middle of a call and is started again: its pid, the crash, its pid again
CRASH_ANSWER = "The tool server came back."
SCRIPTS["Crash the tool server."] = [server_call("tools.pid", "{}"), server_call("tools.crash", "{}"),
                                     server_call("tools.pid", "{}"), final(CRASH_ANSWER)]
# a model that keeps calling: past tool_max_rounds it is told no more, and then the reply ends
SCRIPTS["Keep calling tools."] = [server_call("tools.pid", "{}")] * 8

# ---- the Batch API (tests/test_batches.py) ----
# short answers, so that a few hundred lines take little time; which one a line got shows that
# its answer is its own request's
BATCH_RED, BATCH_BLUE = "red", "blue"
SCRIPTS["Batch line: say red"] = final(BATCH_RED)
SCRIPTS["Batch line: say blue"] = final(BATCH_BLUE)


# ---- the built-in browser and python, run by the server (tests/test_builtin_tools.py) ----
# Built-in calls as GPT-OSS writes them: on the analysis channel, the recipient after the channel,
# content type `code`. Where a result holds a trigger of its own, the next reply is that trigger's.


def builtin_call(recipient: str, body: str, thinking: str = "I should use a tool.") -> str:
    return (f"<|channel|>analysis<|message|>{thinking}<|end|>"
            f"<|start|>assistant<|channel|>analysis to={recipient} code<|message|>{body}<|call|>")


# search the local site (tests/web_site.py), open the first result (cursor 1), find 雨 in it (cursor 2),
# and answer citing a line of each view
BROWSE_QUESTION = "Search the local web for Tokyo weather."
BROWSE_ANSWER = "今日の東京は晴れです【1†L2】。明日は午後から雨が降る見込みです【2†L1】。"
SCRIPTS[BROWSE_QUESTION] = [
    builtin_call("browser.search", '{"query": "東京 天気"}', "I will search the web."),
    builtin_call("browser.open", '{"id": 0}', "The first result is the weather page."),
    builtin_call("browser.find", '{"pattern": "雨"}', "Does it say anything about rain?"),
    thought("Sunny today, rain tomorrow afternoon.", BROWSE_ANSWER),
]
# python keeps its variables from one call to the next, and from one request of a conversation to the next
PYTHON_QUESTION = "Compute six times seven with python."
PYTHON_KEPT = "The interpreter kept x = 42"  # no full stop: ".\n" is one token
PYTHON_ANSWER = "Six times seven is 42, and the interpreter kept it."
SCRIPTS[PYTHON_QUESTION] = [builtin_call("python", "x = 6 * 7\nx", "I will compute it."),
                            builtin_call("python", 'print(f"The interpreter kept x = {x}")', "Is x kept?")]
SCRIPTS[PYTHON_KEPT] = thought("It kept x.", PYTHON_ANSWER)
PYTHON_AGAIN = "Is x still there?"
PYTHON_STILL = "Still there: x = 42"
PYTHON_STILL_ANSWER = "Yes: x is still 42."
SCRIPTS[PYTHON_AGAIN] = builtin_call("python", 'print(f"Still there: x = {x}")')
SCRIPTS[PYTHON_STILL] = final(PYTHON_STILL_ANSWER)
# python called where it is off: told it is not available here, the model answers without it
PYTHON_OFF_ANSWER = "I can't run code here, so I answer from memory: 42."
SCRIPTS["Run python where it is off."] = [builtin_call("python", "print(6 * 7)"), final(PYTHON_OFF_ANSWER)]

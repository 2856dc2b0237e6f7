"""What `swallow-server chat`, `generate` and `batch` say, in English and Japanese: one table.

The terminal's locale picks the language, as gettext reads it: LC_ALL, else LC_MESSAGES, else
LANG; a value starting with "ja" (ja_JP.UTF-8) is Japanese, anything else English. Command-line
help stays English; the model's words and the server's error messages come as they are.
"""

import os

STRINGS = {
    "en": {
        "banner": "swallow-server chat: {model} at {url}. Enter sends, Alt+Enter adds a line, "
                  "/help lists the commands.",
        "help": """\
Enter sends; Alt+Enter (or Esc then Enter) adds a line. Up/down: input history.
Ctrl-C stops a reply (or clears the line); Ctrl-D or /quit leaves.
  /effort low|medium|high   reasoning effort of the next replies (no argument: show it)
  /system TEXT              set the instructions (system message); /system alone removes them
  /reasoning show|fold|hide how the model's reasoning is shown
  /clear                    forget the conversation (keeps /system and /effort)
  /save FILE                write the conversation as JSON: {{"reasoning_effort", "messages": [...]}}
  /quit                     leave (also /exit)
A message that starts with / is sent as is when written //...""",
        "effort_is": "reasoning effort: {effort}",
        "server_default": "the server default",
        "effort_usage": "usage: /effort low|medium|high",
        "system_is": "system message: {text}",
        "system_removed": "system message removed",
        "reasoning_is": "reasoning: {mode}",
        "reasoning_usage": "usage: /reasoning show|fold|hide",
        "cleared": "conversation cleared",
        "save_usage": "usage: /save FILE",
        "unknown_command": "unknown command {name}; /help lists them",
        "cannot_save": "cannot save: {error}",
        "saved": "saved {count} messages to {path}",
        "thought_for": "▸ thought for {seconds:.1f} s ({characters} characters)",
        "thinking": "thinking…",
        "stopped": "[stopped]",
        "error": "error: {error}",
        "not_a_terminal": "standard input is not a terminal (use `swallow-server generate`)",
        "usage_line": "usage: prompt {prompt} tokens ({cached} cached), completion {completion} "
                      "({reasoning} reasoning), {seconds:.1f} s, {rate:.1f} tok/s",
        "usage_seconds": "usage: {seconds:.1f} s",
        "finish": ", finish: {reason}",
        "give_a_prompt": "give --prompt TEXT or the prompt on standard input",
        "empty_prompt": "the prompt is empty",
        "interrupted": "interrupted",
        "loading_here": "no server at {url}; loading {model} in this process…",
        "no_server": "no server answers at {url} (give --model to load one in this process)",
        "not_started": "the in-process server did not start",
        "server_answered": "the server answered {status}: {message}",
        "server_reported": "the server reported: {message}",
        "lost_server": "lost the server at {url}: {error}",
        "cannot_read_schema": "cannot read the JSON schema {path}: {error}",
        "not_a_schema": "{path} is not a JSON schema (an object)",
        "cannot_read_input": "cannot read {path}: {error}",
        "no_url": "{path}: its first request has no \"url\" (a batch input file is JSONL: {{\"custom_id\", "
                  "\"method\": \"POST\", \"url\", \"body\"}} a line)",
        "batch_created": "batch {id}: {total} requests to {endpoint}",
        "batch_resumed": "resuming batch {id} ({status}, {done} of {total} lines done)",
        "batch_progress": "{id}: {done}/{total} lines, {rate:.1f} tokens/s, {eta} left",
        "batch_lines": "lines",
        "batch_ended": "batch {id} {status}: {completed} answered, {failed} failed; answers in {output}",
        "batch_errors_in": "; errors in {path}",
        "batch_unfinished": "batch {id} ended {status} before every line was answered",
        "batch_interrupted": "interrupted; batch {id} is kept: run the same command again to go on",
    },
    "ja": {
        "banner": "swallow-server chat: {model}（{url}）。Enter で送信、Alt+Enter で改行、"
                  "/help でコマンド一覧。",
        "help": """\
Enter で送信、Alt+Enter（または Esc のあと Enter）で改行。↑/↓ で入力履歴。
Ctrl-C で応答を止める（入力中なら行を消す）。Ctrl-D か /quit で終了。
  /effort low|medium|high   次からの応答の推論の深さ（引数なしなら今の値を表示）
  /system TEXT              指示（システムメッセージ）を設定。/system だけなら削除
  /reasoning show|fold|hide モデルの推論の見せ方
  /clear                    会話を消す（/system と /effort はそのまま）
  /save FILE                会話を JSON で保存: {{"reasoning_effort", "messages": [...]}}
  /quit                     終了（/exit でも可）
/ で始まるメッセージは // と書くとそのまま送られます""",
        "effort_is": "推論の深さ: {effort}",
        "server_default": "サーバーの既定値",
        "effort_usage": "使い方: /effort low|medium|high",
        "system_is": "システムメッセージ: {text}",
        "system_removed": "システムメッセージを削除しました",
        "reasoning_is": "推論の表示: {mode}",
        "reasoning_usage": "使い方: /reasoning show|fold|hide",
        "cleared": "会話を消去しました",
        "save_usage": "使い方: /save FILE",
        "unknown_command": "{name} というコマンドはありません。/help で一覧を表示します",
        "cannot_save": "保存できません: {error}",
        "saved": "{count} 件のメッセージを {path} に保存しました",
        "thought_for": "▸ {seconds:.1f} 秒考えました（{characters} 文字）",
        "thinking": "考え中…",
        "stopped": "[停止しました]",
        "error": "エラー: {error}",
        "not_a_terminal": "標準入力が端末ではありません（`swallow-server generate` を使ってください）",
        "usage_line": "使用量: プロンプト {prompt} トークン（キャッシュ {cached}）、生成 {completion}"
                      "（推論 {reasoning}）、{seconds:.1f} 秒、{rate:.1f} トークン/秒",
        "usage_seconds": "使用量: {seconds:.1f} 秒",
        "finish": "、終了理由: {reason}",
        "give_a_prompt": "--prompt TEXT か標準入力でプロンプトを渡してください",
        "empty_prompt": "プロンプトが空です",
        "interrupted": "中断しました",
        "loading_here": "{url} にサーバーがありません。{model} をこのプロセスで読み込みます…",
        "no_server": "{url} で応答するサーバーがありません（--model を付けるとこのプロセスで読み込みます）",
        "not_started": "プロセス内のサーバーが起動しませんでした",
        "server_answered": "サーバーの応答 {status}: {message}",
        "server_reported": "サーバーからのエラー: {message}",
        "lost_server": "{url} のサーバーとの接続が切れました: {error}",
        "cannot_read_schema": "JSON スキーマ {path} を読めません: {error}",
        "not_a_schema": "{path} は JSON スキーマ（オブジェクト）ではありません",
        "cannot_read_input": "{path} を読めません: {error}",
        "no_url": "{path}: 最初のリクエストに \"url\" がありません（バッチの入力は 1 行に 1 つの JSON: "
                  "{{\"custom_id\", \"method\": \"POST\", \"url\", \"body\"}}）",
        "batch_created": "バッチ {id}: {endpoint} への {total} 件のリクエスト",
        "batch_resumed": "バッチ {id} を再開します（{status}、{total} 行中 {done} 行完了）",
        "batch_progress": "{id}: {total} 行中 {done} 行、{rate:.1f} トークン/秒、残り {eta}",
        "batch_lines": "行",
        "batch_ended": "バッチ {id} {status}: 成功 {completed}、失敗 {failed}。結果は {output}",
        "batch_errors_in": "、エラーは {path}",
        "batch_unfinished": "バッチ {id} はすべての行に答える前に {status} で終わりました",
        "batch_interrupted": "中断しました。バッチ {id} は残っています。同じコマンドをもう一度実行すると続きから再開します",
    },
}


def language(environ=os.environ) -> str:
    """"ja" or "en", from the locale variables in gettext's order."""
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = environ.get(name)
        if value:
            return "ja" if value.lower().startswith("ja") else "en"
    return "en"


LANGUAGE = language()


def say(key: str, **values) -> str:
    """The message `key` in the terminal's language, filled in."""
    return STRINGS[LANGUAGE][key].format(**values)

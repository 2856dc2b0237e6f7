"""A GPT-OSS checkpoint in transformers' bf16 layout (as GPT-OSS-Swallow ships) served directly.

The server's greedy reply must be the tokens transformers' own GptOssForCausalLM picks for the
same prompt: the layout patch, the float32 compute on CPU and the harmony rendering all agree.
The prompt is written out here as harmony's documented format and tokenized with toktok, not
rendered with the server's own code.
"""

import datetime

import pytest
import toktok

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from models import vocab  # noqa: E402

QUESTION = "Hello, who are you?"
REPLY_TOKENS = 8


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory, cache_dir):
    from transformers import GptOssConfig, GptOssForCausalLM

    path = tmp_path_factory.mktemp("swallow-like-bf16")
    torch.manual_seed(0)
    config = GptOssConfig(
        vocab_size=vocab.VOCAB_SIZE, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        layer_types=["sliding_attention", "full_attention"], num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, num_local_experts=4, num_experts_per_tok=2, sliding_window=128,
        eos_token_id=[200002, 199999, 200012], attn_implementation="eager")
    model = GptOssForCausalLM(config).eval()
    with torch.no_grad():  # logits with some spread, so greedy choices are clear-cut
        model.lm_head.weight.normal_(0, 0.5)
    model.to(torch.bfloat16).save_pretrained(path)
    vocab.write_tokenizer_files(path)
    reference = GptOssForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return path, reference


def test_bf16_checkpoint_answers_like_transformers(bf16_checkpoint, start_server):
    path, reference = bf16_checkpoint
    server = start_server(["--model", str(path), "--served-model-name", "swallow-like"],
                          env={"SWALLOW_TEMPERATURE": "0"})
    assert "transformers-bf16" in server.log()

    reply = server.client().chat.completions.create(
        model="swallow-like", max_tokens=REPLY_TOKENS, messages=[{"role": "user", "content": QUESTION}])

    prompt = ("<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
              "Knowledge cutoff: 2024-06\n"
              f"Current date: {datetime.date.today().isoformat()}\n\n"
              "Reasoning: medium\n\n"
              "# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>"
              f"<|start|>user<|message|>{QUESTION}<|end|><|start|>assistant")
    vocabulary = toktok._encoding("o200k_harmony")
    tokens = vocabulary.encode(prompt, allowed_special="all")
    assert reply.usage.prompt_tokens == len(tokens)
    with torch.no_grad():
        generated = reference.generate(torch.tensor([tokens]), max_new_tokens=REPLY_TOKENS, do_sample=False)
    new = generated[0, len(tokens):].tolist()
    assert len(new) == REPLY_TOKENS and all(t < 199998 for t in new)  # plain tokens, no markup
    expected = vocabulary.decode(new)
    # No harmony header in a random model's reply: the parser delivers it as content, intact.
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason == "length"

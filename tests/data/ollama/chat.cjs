// One streamed chat through the `ollama` npm library (tests/test_ollama.py): node chat.cjs HOST
const { Ollama } = require("ollama");

async function main() {
  const ollama = new Ollama({ host: process.argv[2] });
  const stream = await ollama.chat({
    model: "scripted", messages: [{ role: "user", content: "What is 2+2?" }], stream: true, think: "high",
  });
  let content = "", thinking = "", last = null;
  for await (const part of stream) {
    content += part.message.content;
    thinking += part.message.thinking ?? "";
    last = part;
  }
  console.log(JSON.stringify({ content, thinking, done_reason: last.done_reason }));
}

main().catch((error) => { console.error(error); process.exit(1); });

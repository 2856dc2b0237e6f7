// A tool loop through the Vercel AI SDK's OpenAI Responses provider (`@ai-sdk/openai`'s
// `.responses()`, store on: its default), run by tests/test_ai_sdk.py against a server.
// Usage: BASE_URL=http://127.0.0.1:8000/v1 node tool_loop.cjs generate|stream
// Prints one JSON object: the steps, the answer, the reasoning, and the input item types it sent.
const { generateText, streamText, tool, stepCountIs } = require("ai");
const { createOpenAI } = require("@ai-sdk/openai");
const { z } = require("zod");

async function main() {
  const sent = [];
  const openai = createOpenAI({
    baseURL: process.env.BASE_URL, apiKey: "not-needed",
    fetch: async (url, init) => {
      sent.push(JSON.parse(init.body));
      return fetch(url, init);
    },
  });
  const options = {
    model: openai.responses("gpt-oss-swallow"),
    tools: {
      get_weather: tool({
        description: "Get the current weather for a city.",
        inputSchema: z.object({ city: z.string() }),
        execute: async ({ city }) => ({ city, weather: "sunny" }),
      }),
    },
    stopWhen: stepCountIs(4),
    providerOptions: { openai: { forceReasoning: true, reasoningSummary: "auto" } },
    system: "You are helpful.",
    prompt: "What is the weather in Tokyo?",
  };
  let result;
  if (process.argv[2] === "stream") {
    const stream = streamText(options);
    for await (const part of stream.fullStream) {
      if (part.type === "error") throw part.error;
    }
    result = { text: await stream.text, steps: await stream.steps };
  } else {
    result = await generateText(options);
  }
  console.log(JSON.stringify({
    text: result.text,
    steps: result.steps.map((step) => ({
      finishReason: step.finishReason,
      toolCalls: step.toolCalls.map((call) => [call.toolName, call.input]),
      reasoning: step.reasoning.map((part) => part.text).join(""),
    })),
    sent: sent.map((body) => body.input.map((item) => item.type || `message:${item.role}`)),
  }));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});

// Drive rhemad's AI gateway with the official `openai` npm client (issue 10,
// "a real client that nobody here wrote").  Run by test_openai_client.py:
//   node openai_client.mjs BASE_URL MODEL EMBED_MODEL
// with NODE_PATH naming the node_modules that holds `openai`.  Prints one
// JSON object: what each call returned, for the test to check.
import { createRequire } from "node:module";
import path from "node:path";

const [baseURL, model, embedModel] = process.argv.slice(2);
// an ES module ignores NODE_PATH: resolve `openai` from there explicitly
const require = createRequire(path.join(process.env.NODE_PATH || process.cwd(), "x.js"));
const OpenAI = require("openai");

const client = new OpenAI({ baseURL, apiKey: "sk-unused-by-rhemad", maxRetries: 0, timeout: 20000 });
const out = {};

const models = await client.models.list();
out.models = models.data.map((m) => m.id);

const chat = await client.chat.completions.create({
  model,
  messages: [{ role: "user", content: "hello from node" }],
});
out.chat = chat.choices[0].message.content;

const stream = await client.chat.completions.create({
  model,
  messages: [{ role: "user", content: "stream please" }],
  stream: true,
});
out.stream = [];
for await (const ev of stream) {
  out.stream.push(ev.choices[0]?.delta?.content ?? "");
}

const emb = await client.embeddings.create({ model: embedModel, input: ["a", "b"] });
out.embeddings = emb.data.map((d) => d.embedding);

// a stream that the upstream cuts: the client must see an error, not a silent end
try {
  const cut = await client.chat.completions.create({
    model: model + "-cut",
    messages: [{ role: "user", content: "cut" }],
    stream: true,
  });
  out.cut = [];
  for await (const ev of cut) out.cut.push(ev.choices[0]?.delta?.content ?? "");
  out.cut_error = null;
} catch (e) {
  out.cut_error = String(e && e.message);
}

console.log(JSON.stringify(out));

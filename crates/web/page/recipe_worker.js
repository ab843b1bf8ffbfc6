// The recipe in a Web Worker, so that no step (the CPU backend's, or one long read-back)
// holds the page: it takes {start}, {stop}, {download}, {bench} and answers {backend},
// {started}, {report}, {finished}, {files}, {bench} and {error}. The model's tool calls go to
// a second worker (tool.js) that is ended and replaced when a call outlives its deadline.
import init, { WebRecipe, backend_description, bench_matmul } from './pkg/rstar2_web.js';
import { PythonWorker } from './tool.js';

let recipe = null, tool = null, stopped = false;
const loaded = init();

async function run({ config, tokenizer, settings, device }) {
  stopped = false;
  recipe = await WebRecipe.start(config, tokenizer, settings, device);
  tool?.close();
  tool = new PythonWorker(recipe.tool_timeout_ms(), recipe.tool_memory_mib());
  recipe.use_tool_function((call) => tool.call(call));
  self.postMessage({ started: { backend: recipe.backend(), total: recipe.total_steps() } });
  while (!stopped && !recipe.done()) {
    self.postMessage({ report: JSON.parse(await recipe.step()), toolRestarts: tool.restarts });
    // Lets a waiting {stop} in.
    await new Promise((r) => setTimeout(r, 0));
  }
  self.postMessage({ finished: { stopped } });
}

self.onmessage = async ({ data }) => {
  try {
    await loaded;
    if (data.start) await run(data.start);
    else if (data.stop) stopped = true;
    else if (data.bench) {
      const { size, reps, rounds } = data.bench;
      self.postMessage({ bench: JSON.parse(await bench_matmul(size, size, size, reps, rounds)) });
    } else if (data.download) {
      const files = await recipe.model_files();
      self.postMessage({ files }, files.map(([, bytes]) => bytes.buffer));
    }
  } catch (e) {
    self.postMessage({ error: String(e) });
  }
};

loaded.then(() => backend_description()).then((backend) => self.postMessage({ backend }), (e) => self.postMessage({ error: String(e) }));

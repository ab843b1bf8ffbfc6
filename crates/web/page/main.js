// The page: loads the module, says which backend it found, and runs the recipe one awaited step
// at a time, giving the browser its event loop back between steps.
import init, { WebRecipe, PythonTool, backend_description } from './pkg/rstar2_web.js';

const $ = (id) => document.getElementById(id);
const sft = [], reward = [], toolErrors = [];
let recipe = null, stopped = false;

function plot(canvas, series) {
  const g = canvas.getContext('2d');
  g.clearRect(0, 0, canvas.width, canvas.height);
  const all = series.flatMap((s) => s.values);
  if (all.length === 0) return;
  const hi = Math.max(...all, 1e-9), n = Math.max(...series.map((s) => s.values.length), 2);
  for (const s of series) {
    g.strokeStyle = s.color;
    g.beginPath();
    s.values.forEach((v, i) => {
      const x = (i / (n - 1)) * (canvas.width - 10) + 5, y = canvas.height - 5 - (v / hi) * (canvas.height - 10);
      i === 0 ? g.moveTo(x, y) : g.lineTo(x, y);
    });
    g.stroke();
  }
}

function show(r) {
  const line = r.phase === 'sft'
    ? `step ${r.step}/${r.total_steps} sft loss ${r.loss.toFixed(3)} (${r.tokens} tokens, ${r.seconds.toFixed(2)} s)`
    : `step ${r.step}/${r.total_steps} rl reward ${r.reward.toFixed(3)} tool calls ${r.tool_calls} tool errors ${r.tool_error_ratio.toFixed(3)} loss ${r.loss.toFixed(4)} (${r.seconds.toFixed(2)} s)`;
  $('log').textContent = line + '\n' + $('log').textContent;
  $('progress').textContent = `${r.step} / ${r.total_steps}`;
  if (r.phase === 'sft') sft.push(r.loss); else { reward.push(r.reward); toolErrors.push(r.tool_error_ratio); $('rollouts').textContent = r.samples.join('\n\n----\n\n'); }
  plot($('loss'), [{ values: sft, color: 'black' }]);
  plot($('reward'), [{ values: reward, color: 'blue' }, { values: toolErrors, color: 'red' }]);
}

async function start() {
  $('start').disabled = true;
  stopped = false;
  const [config, tokenizer] = await Promise.all(['model/config.json', 'model/tokenizer.json'].map((f) => fetch(f).then((r) => r.text())));
  $('progress').textContent = 'building the SFT traces (their tool calls run here)…';
  await new Promise((r) => setTimeout(r, 0));
  recipe = await WebRecipe.start(config, tokenizer, $('settings').value, $('cpu').checked);
  $('backend').textContent = recipe.backend();
  $('stop').disabled = false;
  $('download').disabled = false;
  while (!stopped && !recipe.done()) {
    show(JSON.parse(await recipe.step()));
    await new Promise((r) => setTimeout(r, 0));
  }
  $('progress').textContent += stopped ? ' (stopped)' : ' (done)';
  $('stop').disabled = true;
  $('start').disabled = false;
}

async function download() {
  for (const [name, bytes] of await recipe.model_files()) {
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([bytes]));
    a.download = name;
    a.click();
  }
}

await init();
$('backend').textContent = await backend_description();
const tool = new PythonTool(4000, 256);
$('run').onclick = () => { const r = JSON.parse(tool.run($('code').value)); $('tool').textContent = `[${r.status}]\n${r.stdout}${r.stderr}`; };
$('start').onclick = () => start().catch((e) => { $('progress').textContent = `failed: ${e}`; $('start').disabled = false; });
$('stop').onclick = () => { stopped = true; };
$('download').onclick = () => download();
for (const id of ['start', 'run']) $(id).disabled = false;
$('progress').textContent = 'ready';

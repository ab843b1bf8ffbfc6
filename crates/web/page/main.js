// The page: the recipe runs in a Web Worker (recipe_worker.js) and reports each step here, so
// the tab stays responsive whatever the backend; the Python box runs in its own worker (tool.js).
import { PythonWorker } from './tool.js';

const $ = (id) => document.getElementById(id);
const sft = [], reward = [], toolErrors = [];
const recipe = new Worker(new URL('./recipe_worker.js', import.meta.url), { type: 'module' });
// When Start was pressed, and whether a step has been reported since (the start-up figures).
let startedAt = 0, firstStep = true;

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

function show(r, toolRestarts) {
  const line = r.phase === 'sft'
    ? `step ${r.step}/${r.total_steps} sft loss ${r.loss.toFixed(3)} (${r.tokens} tokens, ${r.seconds.toFixed(2)} s)`
    : `step ${r.step}/${r.total_steps} rl reward ${r.reward.toFixed(3)} tool calls ${r.tool_calls} tool errors ${r.tool_error_ratio.toFixed(3)} loss ${r.loss.toFixed(4)} (${r.seconds.toFixed(2)} s)`
      + (toolRestarts ? ` [tool worker restarted ${toolRestarts}x]` : '');
  $('log').textContent = line + '\n' + $('log').textContent;
  $('progress').textContent = `${r.step} / ${r.total_steps}`;
  if (r.phase === 'sft') sft.push(r.loss); else { reward.push(r.reward); toolErrors.push(r.tool_error_ratio); $('rollouts').textContent = r.samples.join('\n\n----\n\n'); }
  plot($('loss'), [{ values: sft, color: 'black' }]);
  plot($('reward'), [{ values: reward, color: 'blue' }, { values: toolErrors, color: 'red' }]);
}

function save(files) {
  for (const [name, bytes] of files) {
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([bytes]));
    a.download = name;
    a.click();
  }
}

recipe.onmessage = ({ data }) => {
  if (data.backend) {
    $('backend').textContent = data.backend;
    $('start').disabled = false;
    $('measure').disabled = false;
    $('progress').textContent = `ready (module loaded in ${(performance.now() / 1000).toFixed(1)} s)`;
  } else if (data.started) {
    $('backend').textContent = data.started.backend;
    $('progress').textContent = `0 / ${data.started.total}`;
    $('log').textContent = `started in ${((performance.now() - startedAt) / 1000).toFixed(1)} s (SFT traces built, model initialized)\n`;
    $('stop').disabled = false;
    $('download').disabled = false;
  } else if (data.report) {
    if (firstStep) $('log').textContent = `first step done ${((performance.now() - startedAt) / 1000).toFixed(1)} s after Start\n` + $('log').textContent;
    firstStep = false;
    show(data.report, data.toolRestarts);
  } else if (data.finished) {
    $('progress').textContent += data.finished.stopped ? ' (stopped)' : ' (done)';
    $('stop').disabled = true;
    $('start').disabled = false;
    $('measure').disabled = false;
  } else if (data.bench) {
    showBench(data.bench);
  } else if (data.files) {
    save(data.files);
  } else if (data.error) {
    $('progress').textContent = `failed: ${data.error}`;
    $('start').disabled = false;
    $('measure').disabled = false;
  }
};
// Median and range of a side's rounds.
function summary(values) {
  const v = [...values].sort((x, y) => x - y);
  return `${v[Math.floor(v.length / 2)].toFixed(2)} GFLOP/s (${v[0].toFixed(2)} to ${v[v.length - 1].toFixed(2)})`;
}

function showBench(b) {
  $('bench').textContent = `matmul [${b.m} x ${b.k}] · [${b.k} x ${b.n}], ${b.gpu_gflops.length} rounds\n`
    + `WebGPU (${b.adapter}): ${summary(b.gpu_gflops)}\n`
    + `CPU backend (WebAssembly, one thread): ${summary(b.cpu_gflops)}\n`
    + `largest difference between the two: ${b.max_abs_diff.toExponential(2)}`;
  $('measure').disabled = false;
}

recipe.onerror = (e) => { $('progress').textContent = `the recipe's worker failed: ${e.message}`; };

async function start() {
  $('start').disabled = true;
  $('measure').disabled = true;
  startedAt = performance.now();
  firstStep = true;
  sft.length = reward.length = toolErrors.length = 0;
  const [config, tokenizer] = await Promise.all(['model/config.json', 'model/tokenizer.json'].map((f) => fetch(f).then((r) => r.text())));
  $('progress').textContent = 'building the SFT traces (their tool calls run in the worker)…';
  recipe.postMessage({ start: { config, tokenizer, settings: $('settings').value, device: $('device').value } });
}

// The Python box: 4 s deadline, 256 MiB.
const tool = new PythonWorker(4000, 256);
async function runBox() {
  $('run').disabled = true;
  $('tool').textContent = 'running…';
  const r = JSON.parse(await tool.call(JSON.stringify({ code: $('code').value })));
  $('tool').textContent = `[${r.status}]\n${r.stdout}${r.stderr}`;
  $('run').disabled = false;
}

$('run').onclick = () => runBox().catch((e) => { $('tool').textContent = `failed: ${e}`; $('run').disabled = false; });
$('start').onclick = () => start().catch((e) => { $('progress').textContent = `failed: ${e}`; $('start').disabled = false; });
$('measure').onclick = () => {
  $('measure').disabled = true;
  $('bench').textContent = 'measuring…';
  recipe.postMessage({ bench: { size: Number($('size').value), reps: 4, rounds: 5 } });
};
$('stop').onclick = () => recipe.postMessage({ stop: true });
$('download').onclick = () => recipe.postMessage({ download: true });
$('run').disabled = false;

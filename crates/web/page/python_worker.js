// A Web Worker holding one Python interpreter (rstar2_web.PythonTool): it answers
// {id, call} with {id, result}, both JSON as the sandbox's HTTP service speaks it. The first
// message sets the limits: {timeoutMs, memoryMib}; {ready: true} says it can take calls.
import init, { PythonTool } from './pkg/rstar2_web.js';

let tool = null;
let started = null;
self.onmessage = async ({ data }) => {
  if (data.timeoutMs !== undefined) {
    started = init().then(() => { tool = new PythonTool(data.timeoutMs, data.memoryMib); });
    await started;
    self.postMessage({ ready: true });
    return;
  }
  await started;
  self.postMessage({ id: data.id, result: tool.run(data.call) });
};
